"""Storage: the order in which this process's SQLite writers get the write lock, and the
schema the migrations build (the same as the models describe, upgraded in place)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from consentgate.bot import outbox
from consentgate.storage.db import Database, WriteTurns
from consentgate.storage.models import metadata
from consentgate.testing.waiting import eventually

# -- WriteTurns ---------------------------------------------------------------------------


async def _holder(turns: WriteTurns, got: asyncio.Event, release: asyncio.Event) -> None:
    await turns.acquire(bulk=True)
    got.set()
    await release.wait()
    turns.release()


async def _queued(turns: WriteTurns, name: str, bulk: bool, order: list[str]) -> None:
    await turns.acquire(bulk=bulk)
    order.append(name)
    turns.release()


async def _wait_until_waiting(turns: WriteTurns, urgent: int, bulk: int) -> None:
    """Let the new tasks run up to their wait (a few passes of the event loop, no timer)."""
    for _ in range(1000):
        if turns.waiting == (urgent, bulk):
            return
        await asyncio.sleep(0)
    raise AssertionError(f"waiting {turns.waiting}, expected {(urgent, bulk)}")


async def test_a_person_s_change_goes_before_queued_bulk_writers() -> None:
    turns = WriteTurns()
    got, release = asyncio.Event(), asyncio.Event()
    order: list[str] = []
    holder = asyncio.create_task(_holder(turns, got, release))
    await got.wait()
    bulk = [asyncio.create_task(_queued(turns, f"bulk{i}", True, order)) for i in range(3)]
    await _wait_until_waiting(turns, 0, 3)
    stop = asyncio.create_task(_queued(turns, "stop", False, order))
    await _wait_until_waiting(turns, 1, 3)
    release.set()
    await asyncio.gather(holder, stop, *bulk)
    assert order == ["stop", "bulk0", "bulk1", "bulk2"]
    assert turns.waiting == (0, 0)


async def test_a_cancelled_waiter_does_not_keep_the_turn() -> None:
    turns = WriteTurns()
    got, release = asyncio.Event(), asyncio.Event()
    order: list[str] = []
    holder = asyncio.create_task(_holder(turns, got, release))
    await got.wait()
    doomed = asyncio.create_task(_queued(turns, "doomed", False, order))
    later = asyncio.create_task(_queued(turns, "later", True, order))
    await _wait_until_waiting(turns, 1, 1)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    release.set()
    await asyncio.gather(holder, later)
    assert order == ["later"]
    # and the lock is free again
    await asyncio.wait_for(turns.acquire(bulk=False), 1)
    turns.release()


async def test_a_write_opened_inside_another_fails_instead_of_waiting_for_itself(
        sqlite_url: str) -> None:
    db = Database(sqlite_url)
    await db.migrate()
    try:
        async with db.write() as conn:
            await conn.execute(text("SELECT 1"))
            with pytest.raises(RuntimeError, match="inside another"):
                async with db.write():
                    pass
        async with db.write(bulk=True) as conn:  # and the lock was given back
            await conn.execute(text("SELECT 1"))
    finally:
        await db.dispose()


async def test_an_urgent_write_transaction_waits_for_one_bulk_transaction_only(
        sqlite_url: str) -> None:
    """Real transactions on one SQLite file: a bulk transaction is running, three more are
    queued; the urgent one commits second."""
    db = Database(sqlite_url)
    await db.migrate()
    order: list[str] = []
    running, finish = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with db.write(bulk=True) as conn:
            running.set()
            await finish.wait()
            await conn.execute(text("UPDATE campaigns SET name = name"))
            order.append("first")

    async def write(name: str, bulk: bool) -> None:
        async with db.write(bulk=bulk) as conn:
            await conn.execute(text("UPDATE campaigns SET name = name"))
            order.append(name)

    try:
        t0 = asyncio.create_task(first())
        await running.wait()
        assert db.turns is not None
        queued = [asyncio.create_task(write(f"bulk{i}", True)) for i in range(3)]
        await _wait_until_waiting(db.turns, 0, 3)
        urgent = asyncio.create_task(write("stop", False))
        await _wait_until_waiting(db.turns, 1, 3)
        finish.set()
        await asyncio.gather(t0, urgent, *queued)
    finally:
        await db.dispose()
    assert order == ["first", "stop", "bulk0", "bulk1", "bulk2"]


async def test_a_connection_given_back_inside_a_transaction_is_rolled_back(
        sqlite_url: str) -> None:
    """The pool does not roll back every connection it takes back (only one still in a
    transaction): one given back with its transaction open must not keep the write lock."""
    db = Database(sqlite_url)
    await db.migrate()
    try:
        async with db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute("BEGIN IMMEDIATE")
            await raw.driver_connection.execute("UPDATE campaigns SET name = name")
            assert raw.driver_connection.in_transaction
        # Another process's connection: it gets the write lock at once, or fails at once.
        path = sqlite_url.split("///", 1)[1]
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()
        async with db.write() as conn:  # and the pooled connection is usable again
            await conn.execute(text("UPDATE campaigns SET name = name"))
    finally:
        await db.dispose()


_NEW_CAMPAIGN = ("INSERT INTO campaigns (slug, name, imprint, consent_text, "
                 "consent_text_version, updated_at) VALUES (:slug, 'A', :imprint, '', '1', 0)")


async def _campaigns(db: Database) -> list[tuple[Any, ...]]:
    async with db.read() as conn:
        return [tuple(r) for r in await conn.execute(
            text("SELECT slug, name FROM campaigns ORDER BY slug"))]


def _other_process_writing(sqlite_url: str) -> sqlite3.Connection:
    """A connection of its own holding the write lock, as another process's would."""
    other = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


async def test_a_dispatch_write_runs_on_the_event_loop_and_commits_or_leaves_nothing(
        sqlite_url: str) -> None:
    db = Database(sqlite_url)
    await db.migrate()

    def insert(conn: Any) -> str:
        assert threading.current_thread() is threading.main_thread()
        conn.execute(text(_NEW_CAMPAIGN), {"slug": "a", "imprint": ""})
        return "done"

    def fails(conn: Any) -> None:
        conn.execute(text(_NEW_CAMPAIGN), {"slug": "z", "imprint": ""})
        raise ValueError("half-way")

    try:
        assert await db.write_sync(insert, bulk=True) == "done"
        # and it never waits for a lock there (see the next test)
        assert await db.write_sync(
            lambda conn: conn.exec_driver_sql("PRAGMA busy_timeout").scalar()) == 0
        with pytest.raises(ValueError, match="half-way"):
            await db.write_sync(fails)
        assert await _campaigns(db) == [("a", "A")]
        assert db.turns is not None and db.turns.waiting == (0, 0)
    finally:
        await db.dispose()


async def test_while_another_process_writes_a_dispatch_write_waits_off_the_loop(
        sqlite_url: str) -> None:
    """The loop's own connection does not wait for the lock: the transaction goes to the
    writer thread, which does, holding the write turn; a person's change goes next."""
    db = Database(sqlite_url)
    await db.migrate()
    order: list[str] = []

    def insert(conn: Any) -> str:
        conn.execute(text(_NEW_CAMPAIGN), {"slug": "a", "imprint": ""})
        order.append("dispatch")
        return threading.current_thread().name

    async def urgent() -> None:
        async with db.write() as conn:
            await conn.execute(text("UPDATE campaigns SET name = 'B' WHERE slug = 'a'"))
            order.append("stop")

    other = _other_process_writing(sqlite_url)
    try:
        job = asyncio.create_task(db.write_sync(insert, bulk=True))
        assert db.turns is not None
        stop = asyncio.create_task(urgent())
        await _wait_until_waiting(db.turns, 1, 0)  # the loop runs; the dispatch write waits
        assert not job.done()
        other.rollback()
        assert (await job).startswith("sqlite-writer")
        await stop
        assert order == ["dispatch", "stop"]
        assert await _campaigns(db) == [("a", "B")]
    finally:
        other.close()
        await db.dispose()


async def test_a_cancelled_write_in_the_writer_thread_keeps_the_turn_until_it_ends(
        sqlite_url: str) -> None:
    """The thread cannot be interrupted: the turn stays taken until its transaction is
    over, so no other writer of this process starts while it may still write."""
    db = Database(sqlite_url)
    await db.migrate()

    def insert(conn: Any) -> None:
        conn.execute(text(_NEW_CAMPAIGN), {"slug": "a", "imprint": ""})

    other = _other_process_writing(sqlite_url)
    try:
        job = asyncio.create_task(db.write_sync(insert, bulk=True))
        assert db.turns is not None
        later = asyncio.create_task(db.turns.acquire(bulk=False))
        await _wait_until_waiting(db.turns, 1, 0)
        job.cancel()
        for _ in range(50):  # passes of the event loop: the cancellation is delivered
            await asyncio.sleep(0)
        assert not job.done() and not later.done()  # still held by the cancelled write
        other.rollback()
        with pytest.raises(asyncio.CancelledError):
            await job
        await later
        db.turns.release()
        assert await _campaigns(db) == [("a", "A")]  # it ran to its end
    finally:
        other.close()
        await db.dispose()


async def test_the_wal_is_checkpointed_although_the_loop_s_connection_never_does_it(
        sqlite_url: str) -> None:
    """Without checkpoints the WAL of this test would grow past 12 MB."""
    db = Database(sqlite_url)
    await db.migrate()
    imprint = "x" * 40_000
    wal = sqlite_url.split("///", 1)[1] + "-wal"
    largest = 0
    try:
        for n in range(300):
            await db.write_sync(lambda conn, n=n: conn.execute(
                text(_NEW_CAMPAIGN), {"slug": f"c{n}", "imprint": imprint}), bulk=True)
            largest = max(largest, await asyncio.to_thread(os.path.getsize, wal))
    finally:
        await db.dispose()
    assert largest < 3_000_000


# -- the schema ---------------------------------------------------------------------------


def _differences(sync_conn: Any) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(sync_conn), metadata))


async def _schema_differences(url: str) -> list[Any]:
    db = Database(url)
    try:
        await db.migrate()
        async with db.engine.connect() as conn:
            return await conn.run_sync(_differences)
    finally:
        await db.dispose()


async def test_the_migrations_build_what_the_models_describe_on_sqlite(
        sqlite_url: str) -> None:
    assert await _schema_differences(sqlite_url) == []


@pytest.mark.postgres
async def test_the_migrations_build_what_the_models_describe_on_postgresql(
        pg_url: str) -> None:
    assert await _schema_differences(pg_url) == []


async def test_a_database_at_the_first_revision_upgrades_in_place_keeping_its_data(
        tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    db = Database(url)

    def to_first(sync_conn: Any) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path("storage/migrations").resolve()))
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "0001")

    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(to_first)
        async with db.engine.begin() as conn:
            await outbox.enqueue(conn, campaign="c", channel="sms", address="+447700900001",
                                 address_hash="h" * 64, text="hello", created_by="test")
        await db.migrate()
    finally:
        await db.dispose()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM messages").fetchone() == (1,)
        cols = [r[2] for r in raw.execute("PRAGMA index_info('ix_messages_recipient')")]
        assert cols == ["channel", "address_hash", "campaign", "status"]


async def test_a_stop_for_every_campaign_finds_the_queue_through_the_index(
        sqlite_url: str) -> None:
    """STOPALL cancels with no campaign: it must not scan the whole outbox inside the
    opt-out's transaction."""
    db = Database(sqlite_url)
    await db.migrate()
    try:
        async with db.read() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            async with driver.execute(
                    "EXPLAIN QUERY PLAN UPDATE messages SET status = 'cancelled' "
                    "WHERE channel = ? AND address_hash = ? AND status = 'queued' "
                    "AND kind != 'reply'", ("sms", "h" * 64)) as cursor:
                plan = " ".join(str(r[-1]) for r in await cursor.fetchall())
    finally:
        await db.dispose()
    assert "ix_messages_recipient" in plan, plan


async def test_the_audience_count_reads_the_suppressions_first_and_the_list_from_its_index(
        sqlite_url: str) -> None:
    """SQLite's planner keeps no statistics: asked plainly it read a million subscribers and
    probed the (empty) suppression list once each, 2 s a dry run. The count of everyone in a
    segment is read from the audience index alone."""
    from sqlalchemy import and_, func, select

    from consentgate.storage.models import subscriptions as s
    from consentgate.storage.models import suppressions as p
    from consentgate.storage.sql import driving_join

    db = Database(sqlite_url)
    await db.migrate()
    bits = s.c.tag_bits.bitwise_and(6)
    outranked = (select(s.c.status, func.count())
                 .select_from(driving_join(p, s, and_(s.c.channel == p.c.channel,
                                                      s.c.address_hash == p.c.address_hash)))
                 .where(p.c.channel == "sms", s.c.campaign == "c", bits != 0)
                 .group_by(s.c.status))
    everyone = (select(s.c.status, s.c.restricted, func.count())
                .where(s.c.campaign == "c", s.c.channel == "sms", bits != 0)
                .group_by(s.c.status, s.c.restricted))
    plans = []
    try:
        async with db.read() as conn:
            for stmt in (outranked, everyone):
                compiled = stmt.compile(dialect=conn.dialect,
                                        compile_kwargs={"literal_binds": True})
                rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
                plans.append([str(r[-1]) for r in rows])
    finally:
        await db.dispose()
    assert plans[0][0].startswith("SEARCH suppressions"), plans[0]
    assert "ix_subscriptions_hash" in plans[0][1], plans[0]
    assert "COVERING INDEX ix_subscriptions_audience" in plans[1][0], plans[1]


# -- two event loops (the dispatcher on a thread of its own) ------------------------------


async def test_write_turns_pass_between_loops_in_order_a_person_s_change_first() -> None:
    """A bulk writer on another thread's loop holds the turn; bulk writers of both loops
    and then a person's change queue behind it. The person's change goes next, and each
    turn reaches the loop its writer waits on."""
    turns = WriteTurns()
    order: list[str] = []
    other_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=other_loop.run_forever, name="other-loop")
    thread.start()
    try:
        held, release = threading.Event(), threading.Event()

        async def hold_on_other_loop() -> None:
            await turns.acquire(bulk=True)
            held.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait)
            order.append("holder")
            turns.release()

        async def queued_on_other_loop(name: str) -> None:
            await turns.acquire(bulk=True)
            order.append(name)
            assert threading.current_thread() is thread
            turns.release()

        holder = asyncio.run_coroutine_threadsafe(hold_on_other_loop(), other_loop)
        await asyncio.get_running_loop().run_in_executor(None, held.wait)
        there = asyncio.run_coroutine_threadsafe(queued_on_other_loop("bulk-there"),
                                                 other_loop)
        await _until_waiting_anywhere(turns, 0, 1)
        here = asyncio.create_task(_queued(turns, "bulk-here", True, order))
        await _until_waiting_anywhere(turns, 0, 2)
        stop = asyncio.create_task(_queued(turns, "stop", False, order))
        await _until_waiting_anywhere(turns, 1, 2)
        release.set()
        await asyncio.gather(asyncio.wrap_future(holder), asyncio.wrap_future(there),
                             here, stop)
        assert order == ["holder", "stop", "bulk-there", "bulk-here"]
        assert turns.waiting == (0, 0)
    finally:
        other_loop.call_soon_threadsafe(other_loop.stop)
        thread.join()
        other_loop.close()


async def _until_waiting_anywhere(turns: WriteTurns, urgent: int, bulk: int) -> None:
    """As :func:`_wait_until_waiting`, for waiters on another thread too: each check gives
    that thread the interpreter (a thread switch, not a timer standing in for an event)."""
    async def check() -> bool:
        return turns.waiting == (urgent, bulk)

    await eventually(check, what=f"waiting {(urgent, bulk)}")


async def test_an_opt_out_write_runs_on_the_loop_s_connection_and_commits_or_leaves_nothing(
        sqlite_url: str) -> None:
    db = Database(sqlite_url)
    await db.migrate()
    try:
        async with db.write_now() as conn:
            await conn.execute(text(_NEW_CAMPAIGN), {"slug": "a", "imprint": ""})
            # no hand-over to aiosqlite's thread: the loop's own connection, no lock wait
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 0
        with pytest.raises(ValueError, match="half-way"):
            async with db.write_now() as conn:
                await conn.execute(text(_NEW_CAMPAIGN), {"slug": "z", "imprint": ""})
                raise ValueError("half-way")
        assert await _campaigns(db) == [("a", "A")]
        assert db.turns is not None and db.turns.waiting == (0, 0)
    finally:
        await db.dispose()


async def test_while_another_process_writes_an_opt_out_write_waits_for_the_lock(
        sqlite_url: str) -> None:
    """The loop's connection would not wait for another process's lock: the opt-out then
    goes the ordinary way (aiosqlite's thread waits), and commits once the lock is free."""
    db = Database(sqlite_url)
    await db.migrate()

    async def opt_out() -> None:
        async with db.write_now() as conn:
            await conn.execute(text(_NEW_CAMPAIGN), {"slug": "a", "imprint": ""})

    other = _other_process_writing(sqlite_url)
    try:
        job = asyncio.create_task(opt_out())
        for _ in range(50):  # passes of the event loop: the transaction has begun waiting
            await asyncio.sleep(0)
        assert not job.done()
        other.rollback()
        await job
        assert await _campaigns(db) == [("a", "A")]
    finally:
        other.close()
        await db.dispose()


async def test_a_checkpoint_s_turn_keeps_bulk_writers_out_but_not_a_person_s_change() -> None:
    """A WAL checkpoint holds a yielding turn (it syncs the file, tens of milliseconds):
    queued bulk writers wait for it, an urgent one runs beside it (one at a time), and when
    the checkpoint ends first the urgent writer keeps the turn until it is done."""
    turns = WriteTurns()
    order: list[str] = []

    async def hold(name: str, got: asyncio.Event, done: asyncio.Event, *, bulk: bool,
                   yielding: bool = False) -> None:
        await turns.acquire(bulk=bulk, yielding=yielding)
        order.append(name)
        got.set()
        await done.wait()
        order.append(f"{name} done")
        turns.release()

    ck_got, ck_done, stop_got, stop_done = (asyncio.Event() for _ in range(4))
    checkpoint = asyncio.create_task(hold("checkpoint", ck_got, ck_done, bulk=True,
                                          yielding=True))
    await ck_got.wait()
    bulk = asyncio.create_task(_queued(turns, "bulk", True, order))
    await _wait_until_waiting(turns, 0, 1)
    stop = asyncio.create_task(hold("stop", stop_got, stop_done, bulk=False))
    await stop_got.wait()  # beside the checkpoint, at once
    second = asyncio.create_task(_queued(turns, "second stop", False, order))
    await _wait_until_waiting(turns, 1, 1)  # one person's change at a time beside it
    ck_done.set()
    await checkpoint  # it ends first; the stop still holds the turn
    await _wait_until_waiting(turns, 1, 1)
    stop_done.set()
    await asyncio.gather(stop, second, bulk)
    assert order == ["checkpoint", "stop", "checkpoint done", "stop done", "second stop",
                     "bulk"]
    assert turns.waiting == (0, 0)
