"""Opening the state database: engine, SQLite settings, migrations, and one place for its URL.

SQLite (the default, ``<state dir>/chaos.db``) is shared by processes on one machine: WAL lets
readers run beside the one writer, ``busy_timeout`` makes a writer wait its turn instead of
failing, and transactions that must see a stable picture before writing (a lease, a migration)
start with ``BEGIN IMMEDIATE``. PostgreSQL (``postgresql+asyncpg://...``) is for several
operators sharing history and leases; the same code runs on both, and the tests run on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from chaos.errors import InfrastructureError, InvalidInput
from chaos.log import get_logger

log = get_logger("state")

DB_TIMEOUT = 15.0  # every database await is bounded: a hung PostgreSQL must not hang a run
SQLITE_BUSY_MS = 10_000
MIGRATION_LOCK = 7_272_010  # pg_advisory_xact_lock key: one migrating process at a time


def database_url(state_dir: Path, url: str | None) -> str:
    """The URL to use: the one given, else SQLite in the state directory (created if need be)."""
    if url:
        return url
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InfrastructureError(
            f"cannot create the state directory {state_dir}: {exc.strerror}",
            hint="set CHAOS_STATE_DIR (or --state-dir) to a writable folder, or CHAOS_DATABASE_URL",
        ) from None
    return f"sqlite+aiosqlite:///{state_dir.resolve() / 'chaos.db'}"


def redacted(url: str) -> str:
    """The URL without its password, for logs, the API and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def _engine(url: str) -> AsyncEngine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInput(f"the database URL {redacted(url)!r} is not a URL SQLAlchemy reads") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.get_driver_name() != "aiosqlite":
            raise InvalidInput(f"the database URL {redacted(url)}: use sqlite+aiosqlite:///PATH")
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})
        _sqlite_settings(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() not in ("asyncpg", "psycopg"):
            raise InvalidInput(f"the database URL {redacted(url)}: use postgresql+asyncpg://USER:PASSWORD@HOST/DB")
        return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=DB_TIMEOUT)
    raise InvalidInput(f"the database URL {redacted(url)}: only sqlite+aiosqlite and postgresql+asyncpg are supported")


def _sqlite_settings(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """An async engine with bounded transactions; ``Store`` and ``LeaseStore`` build on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self.dialect = make_url(url).get_backend_name()

    @property
    def display_url(self) -> str:
        return redacted(self.url)

    @asynccontextmanager
    async def transaction(self, *, exclusive: str | None = None, write: bool = True) -> AsyncIterator[AsyncConnection]:
        """A transaction; ``exclusive`` names a table to lock for its whole length (SQLite locks
        the database, PostgreSQL the table), for read-then-write decisions such as a lease.

        On SQLite every writing transaction starts ``BEGIN IMMEDIATE``: one that began as a read
        and then writes fails at once with "database is locked" when another process wrote in
        between (WAL cannot wait there); taking the write lock first makes it wait its turn.
        ``write=False`` keeps reads concurrent with the writer."""
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                async with self.engine.connect() as conn:
                    if (exclusive or write) and self.dialect == "sqlite":
                        conn = await conn.execution_options(immediate=True)
                    async with conn.begin():
                        if exclusive and self.dialect == "postgresql":
                            await conn.execute(text(f"LOCK TABLE {exclusive} IN SHARE ROW EXCLUSIVE MODE"))
                        yield conn
        except TimeoutError:
            raise InfrastructureError(f"the state database {self.display_url} did not answer within {DB_TIMEOUT:g}s") from None
        except IntegrityError:
            raise  # a constraint doing its job (a firing claimed twice): the caller decides
        except (SQLAlchemyError, OSError) as exc:
            raise InfrastructureError(f"the state database {self.display_url} failed: {_short(exc)}") from None

    async def migrate(self) -> None:
        """Bring the schema to alembic's head; safe when several processes start at once."""
        from alembic import command
        from alembic.config import Config

        def upgrade(sync_conn: Any) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self.transaction(exclusive=None if self.dialect == "postgresql" else "migrate") as conn:
            if self.dialect == "postgresql":
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            await conn.run_sync(upgrade)

    async def close(self) -> None:
        await self.engine.dispose()


def _short(exc: BaseException) -> str:
    """A driver error in one line, without the SQL statement and parameters SQLAlchemy appends."""
    text_ = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text_[0][:300] if text_ else type(exc).__name__
