"""Engine set-up and transactions for SQLite (the embedded default) and PostgreSQL.

SQLite: WAL, a busy timeout, and write transactions opened with ``BEGIN IMMEDIATE`` so that a
read-then-write transaction takes the write lock up front instead of failing with
SQLITE_BUSY half-way (pysqlite's legacy mode emits no BEGIN before a SELECT).
PostgreSQL: a pooled asyncpg engine; the outbox claims rows with ``FOR UPDATE SKIP LOCKED``.

SQLite has one write lock for the whole file, and its busy handler is neither fair nor aware
of what is waiting: during a broadcast a STOP could lose the race for the lock to dispatcher
transactions again and again. So this process's writers take turns in :class:`WriteTurns`
first, people's changes (STOP, START, the API) ahead of bulk work (claiming, recording,
enqueueing): an opt-out waits for at most the one transaction already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Database", "DatabaseBusy", "WriteTurns"]

T = TypeVar("T")


class DatabaseBusy(Exception):
    """The SQLite database is already served by another process."""

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x636F6E73  # pg_advisory_lock key: one migrating process at a time


class WriteTurns:
    """An in-process write lock handed over in order, urgent waiters before bulk ones.

    Not an :class:`asyncio.Lock` because it has two queues, and because a nested write
    transaction in one task must fail loudly here rather than wait for ever for itself.
    """

    def __init__(self) -> None:
        self._holder: asyncio.Task[Any] | None = None
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._bulk: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> tuple[int, int]:
        """(urgent, bulk) writers waiting for their turn."""
        return len(self._urgent), len(self._bulk)

    async def acquire(self, *, bulk: bool) -> None:
        task = asyncio.current_task()
        if self._held and task is not None and task is self._holder:
            raise RuntimeError("a write transaction was opened inside another one")
        if not self._held and not self._urgent and not self._bulk:
            self._held, self._holder = True, task
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._bulk if bulk else self._urgent
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._holder = task
                self.release()  # handed the turn while being cancelled: pass it on
            elif turn in queue:
                queue.remove(turn)
            raise
        self._holder = task

    def release(self) -> None:
        for queue in (self._urgent, self._bulk):
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    self._holder = None
                    turn.set_result(None)  # the turn passes straight to the next writer
                    return
        self._held, self._holder = False, None


class Database:
    """One engine and the two kinds of transaction the services use."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(
                url, echo=echo, connect_args={"timeout": 30}, pool_size=pool_size,
                max_overflow=pool_size, pool_reset_on_return=None,  # see _on_reset
            )
            _install_sqlite_hooks(self.engine.sync_engine, _begin_via_adapter)
            self.turns: WriteTurns | None = WriteTurns()
            database = make_url(url).database
            # A file's own writer thread (see write_sync); an in-memory database is private
            # to its one connection, so it has none.
            self._writer_url = (None if database in (None, "", ":memory:")
                                else make_url(url).set(drivername="sqlite+pysqlite"))
        else:
            self.engine = create_async_engine(
                url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                pool_pre_ping=True,
            )
            self.turns = None  # row locks: writers of different rows never wait for each other
            self._writer_url = None
        self._writer: ThreadPoolExecutor | None = None
        self._writer_engine: Engine | None = None

    @asynccontextmanager
    async def write(self, *, bulk: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on success, rolled back on any exception.
        ``bulk`` marks background work (the dispatcher, enqueueing, imports, retention)
        that should let a person's change go first."""
        if self.turns is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        await self.turns.acquire(bulk=bulk)
        try:
            async with self.engine.begin() as conn:
                yield conn
        finally:
            self.turns.release()

    async def write_sync(self, fn: Callable[[Connection], T], *, bulk: bool = False) -> T:
        """Run ``fn`` in one write transaction (as :meth:`write`) and return its result.

        For the dispatcher's hot path. On a SQLite file ``fn`` runs whole in this database's
        writer thread, on a connection of its own: one hand-over instead of one per
        statement, each of which would wait for a turn of an event loop busy with provider
        calls. The write turn is held meanwhile, so a STOP still goes first. Elsewhere
        ``fn`` runs on a pooled connection through :meth:`AsyncConnection.run_sync`.
        """
        if self._writer_url is None or self.turns is None:
            async with self.write(bulk=bulk) as conn:
                return await conn.run_sync(fn)
        await self.turns.acquire(bulk=bulk)
        try:
            job = asyncio.get_running_loop().run_in_executor(
                self._writer_thread(), self._in_writer, fn)
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                # The transaction runs to its end in the thread; keep the turn till then.
                with contextlib.suppress(Exception):
                    await asyncio.wait([job])
                raise
        finally:
            self.turns.release()

    def _writer_thread(self) -> ThreadPoolExecutor:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        return self._writer

    def _in_writer(self, fn: Callable[[Connection], T]) -> T:
        if self._writer_engine is None:
            assert self._writer_url is not None
            self._writer_engine = create_engine(
                self._writer_url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0,
                pool_reset_on_return=None)  # see _on_reset
            _install_sqlite_hooks(self._writer_engine, _begin_via_connection)
        with self._writer_engine.begin() as conn:
            return fn(conn)

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

    async def refresh_statistics(self, table: str) -> None:
        """Refresh the PostgreSQL planner's statistics of ``table`` now rather than when
        autovacuum gets to it (after a bulk load). SQLite's planner needs none."""
        if self.is_sqlite:
            return
        async with self.engine.connect() as conn:
            await conn.execute(text(f'ANALYZE "{table}"'))
            await conn.commit()

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self._writer is not None:
            writer, engine, self._writer = self._writer, self._writer_engine, None
            self._writer_engine = None
            if engine is not None:
                await asyncio.get_running_loop().run_in_executor(writer, engine.dispose)
            writer.shutdown()
        await self.engine.dispose()


def _install_sqlite_hooks(sync_engine: Engine, begin: Callable[[Connection, str], None]) -> None:
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
        begin(conn, "BEGIN" if conn.get_execution_options().get("consentgate_readonly")
              else "BEGIN IMMEDIATE")

    @event.listens_for(sync_engine.pool, "reset")
    def _on_reset(dbapi_conn: Any, _record: Any, state: Any) -> None:
        # In place of the pool's own reset (``pool_reset_on_return=None``), which rolls back
        # every connection it takes back even when its transaction has just committed.
        # (The asyncio adapter wraps the driver's connection; the writer thread's is bare.)
        driver = getattr(dbapi_conn, "driver_connection", dbapi_conn)
        if state.asyncio_safe and not state.terminate_only and driver.in_transaction:
            dbapi_conn.rollback()


def _begin_via_adapter(conn: Connection, sql: str) -> None:
    # Straight to the driver: one round trip to its thread, not three (cursor, execute,
    # close), and the event loop waits for every one while a broadcast keeps it busy.
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    dbapi.run_async(lambda driver: driver.execute(sql))


def _begin_via_connection(conn: Connection, sql: str) -> None:
    conn.exec_driver_sql(sql)


def _upgrade(sync_conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")
