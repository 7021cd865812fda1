"""alembic environment: always given a connection by ``chaos.state.db`` (never run by hand)."""

from __future__ import annotations

from alembic import context

from chaos.state.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
