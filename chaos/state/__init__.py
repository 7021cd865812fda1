"""What outlives one run and is shared between processes: run history, firings, leases, audit.

One database (SQLite in the state directory by default, or PostgreSQL for several operators),
reached through SQLAlchemy's async engine and migrated with alembic. ``chaos run`` uses it for
leases and to index its run; ``chaos serve`` for everything. The run folders' journals stay the
record: the ``runs`` table is an index that ``chaos serve --reindex`` can rebuild from them.
"""
