"""The first schema: runs, firings, leases, audit, pauses.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("experiment", sa.String(200), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("site", sa.String(100), nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("triggered_by", sa.String(200)),
        sa.Column("scheduled_for", sa.Float),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("verdict", sa.String(40)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("reason", sa.Text),
        sa.Column("outage_max_s", sa.Float),
        sa.Column("failover_max_s", sa.Float),
        sa.Column("figures", sa.Text),
        sa.Column("faults_injected", sa.Integer, nullable=False),
        sa.Column("faults_undone", sa.Integer, nullable=False),
        sa.Column("report_dir", sa.Text, nullable=False),
        sa.Column("operator", sa.String(300)),
        sa.Column("aborted_by", sa.String(200)),
    )
    op.create_index("ix_runs_experiment_started", "runs", ["experiment", "started_at"])
    op.create_index("ix_runs_started", "runs", ["started_at"])
    op.create_index("ix_runs_verdict_started", "runs", ["verdict", "started_at"])
    op.create_table(
        "firings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("site", sa.String(100), nullable=False),
        sa.Column("experiment", sa.String(200), nullable=False),
        sa.Column("scheduled_for", sa.Float, nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("fired_at", sa.Float),
        sa.Column("lag_s", sa.Float),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("run_id", sa.String(128)),
        sa.Column("operator", sa.String(300), nullable=False),
        sa.UniqueConstraint("site", "experiment", "scheduled_for", name="uq_firings_claim"),
    )
    op.create_index("ix_firings_experiment", "firings", ["experiment", "scheduled_for"])
    op.create_table(
        "leases",
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("mode", sa.String(10), nullable=False),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("experiment", sa.String(200), nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("key", "holder", name="pk_leases"),
    )
    op.create_index("ix_leases_holder", "leases", ["holder"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("remote", sa.String(100), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_table(
        "pauses",
        sa.Column("site", sa.String(100), nullable=False),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("paused_by", sa.String(200), nullable=False),
        sa.Column("paused_at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("site", "scope", name="pk_pauses"),
    )


def downgrade() -> None:
    for table in ("pauses", "audit", "leases", "firings", "runs"):
        op.drop_table(table)
