"""Engine set-up and transactions for SQLite (the embedded default) and PostgreSQL.

SQLite: WAL, a busy timeout, and write transactions opened with ``BEGIN IMMEDIATE`` so that a
read-then-write transaction takes the write lock up front instead of failing with
SQLITE_BUSY half-way (pysqlite's legacy mode emits no BEGIN before a SELECT).
PostgreSQL: a pooled asyncpg engine; the outbox claims rows with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Database", "DatabaseBusy"]


class DatabaseBusy(Exception):
    """The SQLite database is already served by another process."""

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x636F6E73  # pg_advisory_lock key: one migrating process at a time


class Database:
    """One engine and the two kinds of transaction the services use."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(
                url, echo=echo, connect_args={"timeout": 30}, pool_size=pool_size,
                max_overflow=pool_size,
            )
            _install_sqlite_hooks(self.engine)
        else:
            self.engine = create_async_engine(
                url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                pool_pre_ping=True,
            )

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on success, rolled back on any exception."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (a deferred BEGIN on SQLite, so readers never queue
        behind the write lock)."""
        async with self.engine.connect() as conn:
            await conn.execution_options(consentgate_readonly=True)
            async with conn.begin():
                yield conn

    async def migrate(self) -> None:
        """Create or upgrade the schema to the newest revision; never drops data.
        On PostgreSQL an advisory lock lets several processes start at once safely."""
        async with self.engine.connect() as conn:
            if not self.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            try:
                await conn.run_sync(_upgrade)
                await conn.commit()
            finally:
                if not self.is_sqlite:
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK}
                    )
                    await conn.commit()

    def claim_single_process(self) -> IO[bytes]:
        """SQLite serves one dispatching process: take an exclusive lock beside the database
        file (held until the returned file is closed), or raise :class:`DatabaseBusy`."""
        path = self.url.split("///", 1)[-1].split("?", 1)[0]
        lock = open(f"{path}.lock", "ab")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise DatabaseBusy(
                f"another consentgate process is dispatching from {path}; "
                "run several processes on PostgreSQL") from None
        return lock

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so our BEGIN is the one that runs.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("consentgate_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _upgrade(sync_conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")
