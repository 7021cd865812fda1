"""The database schema, as SQLAlchemy Core tables (alembic's migrations create exactly these).

Times are unix seconds as floats, the journal's own clock, so rows and journals compare
directly and both SQLite and PostgreSQL store them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(128), primary_key=True),
    Column("experiment", String(200), nullable=False),  # the experiment file's name without .yaml
    Column("title", Text, nullable=False, default=""),
    Column("site", String(100), nullable=False, default="default"),
    Column("trigger", String(20), nullable=False),  # schedule | manual | cli
    Column("triggered_by", String(200)),  # token name, "schedule", or user@host for the CLI
    Column("scheduled_for", Float),  # the cron time of a scheduled run
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("status", String(20), nullable=False),  # running | finished
    Column("verdict", String(40)),
    Column("exit_code", Integer),
    Column("reason", Text),
    Column("outage_max_s", Float),
    Column("failover_max_s", Float),
    Column("figures", Text),  # JSON: {metric: {p50, p95, max}} of the summary's aggregates
    Column("faults_injected", Integer, nullable=False, default=0),
    Column("faults_undone", Integer, nullable=False, default=0),
    Column("report_dir", Text, nullable=False),
    Column("operator", String(300)),  # the operator instance that ran it (None: the CLI)
    Column("aborted_by", String(200)),
    Index("ix_runs_experiment_started", "experiment", "started_at"),
    Index("ix_runs_started", "started_at"),
    Index("ix_runs_verdict_started", "verdict", "started_at"),
)

firings = Table(
    "firings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site", String(100), nullable=False),
    Column("experiment", String(200), nullable=False),
    Column("scheduled_for", Float, nullable=False),  # the cron time (before jitter)
    Column("due_at", Float, nullable=False),  # cron time + jitter: when it should start
    Column("fired_at", Float),
    Column("lag_s", Float),  # fired_at - due_at
    Column("outcome", String(20), nullable=False),  # started | skipped | missed | queued
    Column("reason", Text),
    Column("run_id", String(128)),
    Column("operator", String(300), nullable=False),
    # one claim per firing, whichever operator of a site makes it first
    UniqueConstraint("site", "experiment", "scheduled_for", name="uq_firings_claim"),
    Index("ix_firings_experiment", "experiment", "scheduled_for"),
)

leases = Table(
    "leases",
    metadata,
    Column("key", String(300), nullable=False),  # router:<id> | node:<target>/<name>
    Column("holder", String(128), nullable=False),  # the run id
    Column("mode", String(10), nullable=False),  # shared | exclusive
    Column("owner", String(300), nullable=False),  # operator instance, or cli:<host>:<pid>
    Column("experiment", String(200), nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    PrimaryKeyConstraint("key", "holder", name="pk_leases"),
    Index("ix_leases_holder", "holder"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("who", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target", String(300), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
    Column("remote", String(100), nullable=False, default=""),
    Column("ok", Boolean, nullable=False, default=True),
    Index("ix_audit_at", "at"),
)

pauses = Table(
    "pauses",
    metadata,
    Column("site", String(100), nullable=False),
    Column("scope", String(200), nullable=False),  # an experiment, or "*" for every schedule
    Column("paused_by", String(200), nullable=False),
    Column("paused_at", Float, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    PrimaryKeyConstraint("site", "scope", name="pk_pauses"),
)
