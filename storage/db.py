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
The dispatcher's short transactions run on the event loop's own connection
(:meth:`Database.write_sync`), which never waits for a lock or checkpoints on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import structlog
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["CHECKPOINT_EVERY", "PRECEDENCE_LIMIT", "Database", "DatabaseBusy", "Precedence",
           "WriteTurns"]

T = TypeVar("T")

_log = structlog.get_logger("consentgate.storage")

#: Commits on the event loop's connection between two WAL checkpoints (each commit of the
#: dispatcher writes some tens of pages; SQLite's own default is every 1,000 pages).
CHECKPOINT_EVERY = 16


class DatabaseBusy(Exception):
    """The SQLite database is already served by another process."""


class _LockedElsewhere(Exception):
    """Another process holds SQLite's write lock."""


#: Every engine is created with ``hide_parameters=True``: a failed statement's error (and so
#: its traceback in the log) shows the SQL but not the values bound to it, which are
#: people's numbers, addresses and message texts.
_HIDE_PARAMETERS = True

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x636F6E73  # pg_advisory_lock key: one migrating process at a time


class _Turn:
    """One writer waiting for its turn, on its own event loop."""

    __slots__ = ("future", "granted", "loop", "task", "yielding")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None,
                 yielding: bool = False) -> None:
        self.loop = loop
        self.task = task
        self.yielding = yielding
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class WriteTurns:
    """An in-process write lock handed over in order, urgent waiters before bulk ones.

    Not an :class:`asyncio.Lock` because it has two queues, because a nested write
    transaction in one task must fail loudly here rather than wait for ever for itself, and
    because its writers may live on different event loops (the web server's and the
    dispatcher's thread, :class:`consentgate.bot.dispatch.DispatchThread`): SQLite has one
    write lock for the file, so both loops must take the same turns. The state is guarded by
    a thread lock held only for a few assignments; a turn passes to a writer on another loop
    through that loop's ``call_soon_threadsafe``.

    A turn taken with ``yielding=True`` (a WAL checkpoint: it keeps writers out so it can
    copy the whole log back, but writes nothing itself) keeps bulk writers waiting and lets
    one urgent writer at a time run beside it: a checkpoint syncs the database file, some
    tens of milliseconds, and a STOP need not wait for that.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._held = False
        self._yielding = False  # the holder lets an urgent writer run beside it
        self._beside: asyncio.Task[Any] | None = None
        self._beside_held = False
        self._urgent: deque[_Turn] = deque()
        self._bulk: deque[_Turn] = deque()

    @property
    def waiting(self) -> tuple[int, int]:
        """(urgent, bulk) writers waiting for their turn."""
        with self._mutex:
            return len(self._urgent), len(self._bulk)

    async def acquire(self, *, bulk: bool, yielding: bool = False) -> None:
        """Wait for the turn. ``yielding``: a bulk turn that an urgent writer may share
        (see the class's docstring)."""
        task = asyncio.current_task()
        bulk = bulk or yielding
        with self._mutex:
            if task is not None and ((self._held and task is self._holder)
                                     or (self._beside_held and task is self._beside)):
                raise RuntimeError("a write transaction was opened inside another one")
            if not self._held and not self._urgent and not self._bulk:
                self._held, self._holder, self._yielding = True, task, yielding
                return
            if (not bulk and self._held and self._yielding and not self._beside_held
                    and not self._urgent):
                self._beside_held, self._beside = True, task
                return
            turn = _Turn(asyncio.get_running_loop(), task, yielding)
            queue = self._bulk if bulk else self._urgent
            queue.append(turn)
        try:
            await turn.future
        except asyncio.CancelledError:
            with self._mutex:
                granted = turn.granted
                if not granted and turn in queue:
                    queue.remove(turn)
            if granted:
                self.release()  # handed the turn while being cancelled: pass it on
            raise

    def release(self) -> None:
        task = asyncio.current_task()
        with self._mutex:
            if self._beside_held and (task is self._beside or not self._held):
                self._beside_held, self._beside = False, None
                turn = self._next_beside()
            elif self._beside_held:
                # The yielding holder is done while an urgent writer runs beside it: that
                # writer holds the turn now, and hands it on when it is done.
                self._holder, self._yielding = self._beside, False
                self._beside_held, self._beside = False, None
                return
            else:
                turn = None
                for queue in (self._urgent, self._bulk):
                    if queue:
                        turn = queue.popleft()
                        # The turn passes straight to the next writer.
                        turn.granted, self._holder = True, turn.task
                        self._yielding = turn.yielding
                        break
                else:
                    self._held, self._holder, self._yielding = False, None, False
                    return
        if turn is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is turn.loop:
            _wake(turn.future)
        else:
            turn.loop.call_soon_threadsafe(_wake, turn.future)

    def _next_beside(self) -> _Turn | None:
        """After a writer beside a yielding holder: the next urgent one goes beside it."""
        if self._held and self._yielding and self._urgent:
            turn = self._urgent.popleft()
            turn.granted = True
            self._beside_held, self._beside = True, turn.task
            return turn
        return None


#: The longest the dispatcher's loop stands aside for people's changes in a row (seconds):
#: long enough for a STOP's transaction, short enough that a flood of STOPs, or a change
#: waiting for a row the dispatcher has locked (PostgreSQL), cannot stop it for long.
PRECEDENCE_LIMIT = 0.025


class Precedence:
    """A person's change first, across threads: while one is being applied
    (:meth:`Database.write_now`), the dispatcher's event loop, on a thread of its own, waits
    between its turns (:meth:`selector`).

    The two threads share one interpreter lock. A STOP's transaction gives it up at every
    statement (the driver lets it go while the database works) and then waits for the busy
    dispatcher to hand it back, up to the switch interval each time: a dozen statements
    added 10 to 30 ms during a full-speed broadcast (docs/benchmarks.md, section 3). A loop
    that waits does not take the lock. It waits at most :data:`PRECEDENCE_LIMIT` from the
    first change of a run of them, then goes on until none is being applied.
    """

    def __init__(self, limit: float = PRECEDENCE_LIMIT) -> None:
        self.limit = limit
        self._changed = threading.Condition(threading.Lock())
        self._applying = 0
        self._since = 0.0
        self._aside = 0

    @property
    def standing_aside(self) -> int:
        """How many loops are waiting now (for tests and diagnostics)."""
        with self._changed:
            return self._aside

    @contextlib.contextmanager
    def applying(self) -> Iterator[None]:
        """Hold while a person's change is being applied."""
        with self._changed:
            if self._applying == 0:
                self._since = time.monotonic()
            self._applying += 1
        try:
            yield
        finally:
            with self._changed:
                self._applying -= 1
                if self._applying == 0:
                    self._changed.notify_all()

    def stand_aside(self) -> float:
        """Wait while a change is being applied, within the limit; return the time waited."""
        if not self._applying:  # unlocked read: at worst one loop turn early or late
            return 0.0
        started = time.monotonic()
        with self._changed:
            self._aside += 1
            try:
                while self._applying:
                    left = self._since + self.limit - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
            finally:
                self._aside -= 1
        return time.monotonic() - started

    def selector(self) -> selectors.BaseSelector:
        """A selector for the dispatcher's event loop
        (``asyncio.SelectorEventLoop(precedence.selector())``) that stands aside before
        each poll, that is between two turns of the loop."""
        return _StandingAsideSelector(self)


class _StandingAsideSelector(selectors.DefaultSelector):
    def __init__(self, precedence: Precedence) -> None:
        super().__init__()
        self._precedence = precedence

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        waited = self._precedence.stand_aside()
        if waited and timeout is not None:
            timeout = max(0.0, timeout - waited)  # timers keep their time
        return super().select(timeout)


class Database:
    """One engine and the two kinds of transaction the services use."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False,
                 turns: WriteTurns | None = None,
                 precedence: Precedence | None = None) -> None:
        """``turns``, ``precedence``: another :class:`Database`'s, to share (see
        :meth:`for_another_loop`)."""
        self.url = url
        self.precedence = precedence or Precedence()
        self.pool_size = pool_size
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(
                url, echo=echo, connect_args={"timeout": 30}, pool_size=pool_size,
                max_overflow=pool_size, pool_reset_on_return=None,  # see _on_reset
                hide_parameters=_HIDE_PARAMETERS,
            )
            _install_sqlite_hooks(self.engine.sync_engine, _begin_via_adapter)
            self.turns: WriteTurns | None = turns or WriteTurns()
            database = make_url(url).database
            # A file's own synchronous connections (see write_sync); an in-memory database
            # is private to its one connection, so it has none.
            self._sync_url = (None if database in (None, "", ":memory:")
                              else make_url(url).set(drivername="sqlite+pysqlite"))
        else:
            self.engine = create_async_engine(
                url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                pool_pre_ping=True, hide_parameters=_HIDE_PARAMETERS,
            )
            self.turns = None  # row locks: writers of different rows never wait for each other
            self._sync_url = None
        self._loop_engine: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._writer_engine: Engine | None = None
        self._commits = 0
        self._checkpoint: asyncio.Task[None] | None = None

    def for_another_loop(self) -> Database:
        """The same database for use on another event loop (another thread): pooled
        connections belong to the loop that opened them (asyncpg's outright; aiosqlite's and
        SQLAlchemy's pool waits through that loop's futures), so each loop needs an engine of
        its own. On SQLite both share the write turns, so the file's one write lock is
        still taken in order, a person's change first; on both, the other loop stands aside
        while a person's change is applied (:class:`Precedence`). Engines connect only when
        first used."""
        return Database(self.url, pool_size=self.pool_size, turns=self.turns,
                        precedence=self.precedence)

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

        For the dispatcher's hot path: claims, gate admissions and results, a few
        milliseconds of SQLite work each. On a SQLite file, once the write turn is ours,
        ``fn`` runs at once on the event loop's own connection. Any hand-over costs more
        than the work: through aiosqlite every statement waits for a turn of an event loop
        busy with provider calls, and in a thread every row's step gives up the GIL and
        waits to get it back. That connection never makes the loop wait: it does not wait
        for a lock (while another process writes, ``fn`` runs in this database's writer
        thread instead, which does), and it never checkpoints the WAL (the writer thread
        does, every :data:`CHECKPOINT_EVERY` commits, in a bulk write turn of its own).
        Elsewhere ``fn`` runs on a pooled connection through
        :meth:`AsyncConnection.run_sync`.
        """
        if self._sync_url is None or self.turns is None:
            async with self.write(bulk=bulk) as conn:
                return await conn.run_sync(fn)
        await self.turns.acquire(bulk=bulk)
        try:
            try:
                result = self._on_loop(fn)
            except _LockedElsewhere:
                return await self._in_writer_thread(fn)
            self._committed_on_loop()
            return result
        finally:
            self.turns.release()

    @asynccontextmanager
    async def write_now(self) -> AsyncIterator[AsyncConnection]:
        """A person's write transaction (an opt-out), as :meth:`write`, made for speed.

        On a SQLite file, once the write turn is ours, each statement runs when awaited, on
        the event loop's own connection (as :meth:`write_sync`'s): through aiosqlite every
        statement is two hand-overs between threads, and with the dispatcher on a thread of
        its own each hand-over also waits for the interpreter lock. While another process
        holds SQLite's lock it is an ordinary :meth:`write`. Only ``execute``, ``run_sync``
        and ``dialect`` of the connection are there; the opt-out path needs no more.

        While it runs, a dispatcher on another loop of this process stands aside
        (:class:`Precedence`); on SQLite only once the write turn is ours, so it never stands
        aside holding the turn this change waits for.
        """
        if self.turns is None:  # PostgreSQL: no write turn to wait for first
            with self.precedence.applying():
                async with self.write() as conn:
                    yield conn
            return
        if self._sync_url is None:  # an in-memory SQLite database: no other loop shares it
            async with self.write() as conn:
                yield conn
            return
        await self.turns.acquire(bulk=False)
        try:
            with self.precedence.applying():
                with self._loop_connection() as sync_conn:
                    try:
                        transaction: Any = sync_conn.begin()
                    except OperationalError as exc:
                        if not _locked(exc):
                            raise
                        transaction = None
                    if transaction is not None:
                        with transaction:
                            yield cast(AsyncConnection, _Immediate(sync_conn))
                if transaction is None:
                    async with self.engine.begin() as conn:
                        yield conn
                else:
                    self._committed_on_loop()
        finally:
            self.turns.release()

    def _committed_on_loop(self) -> None:
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0 and self._checkpoint is None:
            self._checkpoint = asyncio.create_task(self._checkpoint_wal())

    def _loop_connection(self) -> Connection:
        if self._loop_engine is None:
            assert self._sync_url is not None
            self._loop_engine = create_engine(
                self._sync_url, connect_args={"timeout": 0}, pool_size=1, max_overflow=0,
                pool_reset_on_return=None, hide_parameters=_HIDE_PARAMETERS)  # see _on_reset
            _install_sqlite_hooks(self._loop_engine, _begin_via_connection,
                                  busy_timeout_ms=0, checkpoints=False)
        return self._loop_engine.connect()

    def _on_loop(self, fn: Callable[[Connection], T]) -> T:
        with self._loop_connection() as conn:
            try:
                transaction = conn.begin()
            except OperationalError as exc:
                if _locked(exc):
                    raise _LockedElsewhere from exc
                raise
            with transaction:
                return fn(conn)

    async def _in_writer_thread(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a transaction in the writer thread (the caller holds the write
        turn). The thread cannot be interrupted: a cancelled caller keeps the turn until it
        has finished."""
        return await self._in_thread(functools.partial(self._in_writer, fn))

    async def _in_thread(self, work: Callable[[], T]) -> T:
        job = asyncio.get_running_loop().run_in_executor(self._writer_thread(), work)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait([job])
            raise

    async def _checkpoint_wal(self) -> None:
        try:
            assert self.turns is not None
            await self.turns.acquire(bulk=True, yielding=True)
            try:
                # With no bulk writer in between, the checkpoint can copy the whole WAL
                # back, and the next transaction then starts it again from the beginning.
                # A person's change may still run beside it (see WriteTurns).
                await self._in_thread(self._checkpoint_in_writer)
            finally:
                self.turns.release()
        except Exception:
            _log.exception("storage.checkpoint_failed")
        finally:
            self._checkpoint = None

    def _writer_thread(self) -> ThreadPoolExecutor:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        return self._writer

    def _writer_connection(self) -> Connection:
        if self._writer_engine is None:
            assert self._sync_url is not None
            self._writer_engine = create_engine(
                self._sync_url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0,
                pool_reset_on_return=None, hide_parameters=_HIDE_PARAMETERS)  # see _on_reset
            _install_sqlite_hooks(self._writer_engine, _begin_via_connection)
        return self._writer_engine.connect()

    def _in_writer(self, fn: Callable[[Connection], T]) -> T:
        with self._writer_connection() as conn, conn.begin():
            return fn(conn)

    def _checkpoint_in_writer(self) -> None:
        # Outside any transaction (SQLite refuses to checkpoint inside one), so straight
        # to the driver: the connection would begin one for a statement of its own.
        with self._writer_connection() as conn:
            driver = conn.connection.dbapi_connection
            assert driver is not None
            driver.execute("PRAGMA wal_checkpoint(PASSIVE)")

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
        path = self._sqlite_path()
        lock = open(f"{path}.lock", "ab")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise DatabaseBusy(
                f"another consentgate process is dispatching from {path}; "
                "run several processes on PostgreSQL") from None
        return lock

    def single_process_claimed(self) -> bool:
        """Whether a process holds :meth:`claim_single_process`'s lock now (a ``serve`` or
        ``worker`` dispatching from this SQLite file). Asks by taking a shared lock and
        dropping it at once: a process starting in that same instant would be refused."""
        try:
            fd = os.open(f"{self._sqlite_path()}.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock, if it was taken
        return False

    def _sqlite_path(self) -> str:
        return self.url.split("///", 1)[-1].split("?", 1)[0]

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
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
        if self._loop_engine is not None:
            self._loop_engine.dispose()
            self._loop_engine = None
        if self._writer is not None:
            writer, engine, self._writer = self._writer, self._writer_engine, None
            self._writer_engine = None
            if engine is not None:
                await asyncio.get_running_loop().run_in_executor(writer, engine.dispose)
            writer.shutdown()
        await self.engine.dispose()


def _locked(exc: OperationalError) -> bool:
    """Whether SQLite refused because another connection holds its write lock."""
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


class _Immediate:
    """What :meth:`Database.write_now` hands out: a synchronous connection's statements,
    run when awaited."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Any, parameters: Any = None, **kw: Any) -> Any:
        return self._conn.execute(statement, parameters, **kw)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return fn(self._conn, *args, **kw)


def _install_sqlite_hooks(sync_engine: Engine, begin: Callable[[Connection, str], None], *,
                          busy_timeout_ms: int = 30000, checkpoints: bool = True) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so our BEGIN is the one that runs.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        if not checkpoints:
            cur.execute("PRAGMA wal_autocheckpoint=0")
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

    async def begin(driver: Any) -> Any:
        if driver.in_transaction:
            # Given back mid-transaction by a task cancelled where the pool could not
            # reset it (not asyncio-safe there): that work was abandoned, so roll it back
            # rather than fail every later BEGIN on this connection.
            await driver.rollback()
        return await driver.execute(sql)

    dbapi.run_async(begin)


def _begin_via_connection(conn: Connection, sql: str) -> None:
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and getattr(dbapi, "in_transaction", False):
        dbapi.rollback()  # as in _begin_via_adapter
    conn.exec_driver_sql(sql)


def _upgrade(sync_conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")
