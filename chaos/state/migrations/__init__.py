"""alembic migrations of the state database (run by ``chaos.state.db.open_store``)."""
