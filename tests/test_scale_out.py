"""Scale-out on PostgreSQL, and provider outages on either backend.

Several ``consentgate`` processes share one database.

Two ``worker`` processes and one ``serve`` (which dispatches too) start at once (migrations
under the advisory lock), and a broadcast reaches every recipient exactly once, at no more
than the sender's rate in total. A worker killed with SIGKILL mid-broadcast leaves its
claimed rows to the others once their lease expires, and its in-flight rows ``failed`` /
``interrupted``: nobody gets the message twice. Skipped where no PostgreSQL server answers.
A provider that refuses connections or answers 500 gets retries with backoff, then the message
is ``failed`` with a reason, never left ``sending``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import psutil
import pytest

from consentgate.bot.outbox import MAX_ATTEMPTS
from consentgate.bot.pgpacer import SharedPacer
from consentgate.storage.db import Database
from consentgate.testing.fakes.twilio_api import FakeTwilio, SentSms
from consentgate.testing.harness import JANE_AUTH, JANE_SID, running_gateway
from tests.procs import (
    Client,
    GatewayProcess,
    Launcher,
    eventually,
    free_port,
    numbers,
    write_config,
)


def _pg_config(tmp_path: Path, pg_url: str, twilio_url: str, port: int, *, rate: float,
               lease_seconds: float) -> Path:
    """The subprocess config of :func:`tests.procs.write_config`, on PostgreSQL."""
    return write_config(tmp_path / "consentgate.toml", storage_url=pg_url,
                        twilio_url=twilio_url, port=port, rate=rate, pool_size=5,
                        lease_seconds=lease_seconds)


async def _rows(pg_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _message_id(sms: SentSms) -> int:
    assert sms.status_callback, "every send carries a status callback"
    return int(parse_qs(urlsplit(sms.status_callback).query)["m"][0])


def _busiest_second(messages: Sequence[SentSms]) -> int:
    """The most sends the provider received within any one second."""
    times = sorted(m.received_at for m in messages)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _db_client_ports(pid: int) -> list[int]:
    """The local ports of a process's connections to PostgreSQL."""
    return [c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == 5432]


def _worker_id(p: GatewayProcess) -> str:
    match = re.search(r'"worker": "([^"]+)"', p.log())
    assert match, p.log()
    return match.group(1)


@pytest.mark.slow
@pytest.mark.postgres
async def test_shared_pacer_holds_one_budget_across_engines(pg_url: str) -> None:
    """Two processes' worth of pacers (separate engines) on one sender: together they start
    no more than the sender's rate."""
    rate, seconds = 200.0, 1.5
    dbs = [Database(pg_url, pool_size=2), Database(pg_url, pool_size=2)]
    try:
        await dbs[0].migrate()
        pacers = [SharedPacer(db, "twilio:+447400123456", rate) for db in dbs]
        taken = [0, 0]

        async def drain(i: int) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                taken[i] += await pacers[i].take(50)

        await asyncio.gather(drain(0), drain(1))
    finally:
        for db in dbs:
            await db.dispose()
    chunk = pacers[0].chunk
    assert sum(taken) <= rate * seconds + 2 * chunk + 5, taken
    assert sum(taken) >= rate * seconds * 0.6, taken  # the budget is used, not starved
    assert min(taken) > 0, taken  # both share it


@pytest.mark.slow
@pytest.mark.postgres
async def test_two_workers_and_serve_send_a_broadcast_exactly_once(
        pg_url: str, tmp_path: Path) -> None:
    audience = numbers(2000)
    rate = 400.0
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        fake.latency = 0.005
        config = _pg_config(tmp_path, pg_url, fake.base_url, port, rate=rate,
                            lease_seconds=30)
        # All three start together: the schema is created once, under the advisory lock.
        serve, *workers = await asyncio.gather(
            launch.serve(config, port), launch.worker(config), launch.worker(config))
        client = Client(session, port)
        await client.import_consents(audience)
        created = await client.broadcast("Polling day is Thursday: find your polling station")
        assert created["audience"]["eligible"] == len(audience)
        view = await client.wait_done(created["id"], timeout=45)
        for p in (serve, *workers):
            rc, took = await p.stop()
            assert rc == 0 and took < 10, p.log()
        logs = [p.log() for p in (serve, *workers)]

    assert view["counts"]["sent"] + view["counts"]["delivered"] == len(audience), view
    received = Counter(sms.to for sms in fake.messages)
    assert set(received) == set(audience)
    assert max(received.values()) == 1, [to for to, n in received.items() if n > 1][:10]
    # The three processes shared one budget for the sender (each alone may use all of it).
    chunk = 20  # SharedPacer's reservation at this rate: 50 ms worth
    assert _busiest_second(fake.messages) <= rate * 1.25 + 3 * chunk
    # And the work was shared: more than one process sent.
    assert sum(1 for log in logs if '"message.sent"' in log) >= 2
    buckets = await _rows(pg_url, "SELECT count(*) FROM rate_buckets")
    assert buckets[0][0] == 1  # one budget for the one sender


@pytest.mark.slow
@pytest.mark.postgres
async def test_worker_killed_mid_broadcast_rest_finish_without_duplicates(
        pg_url: str, tmp_path: Path) -> None:
    audience = numbers(2000)
    lease = 3.0
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        fake.latency = 0.02  # sends are on the wire when the plug is pulled
        config = _pg_config(tmp_path, pg_url, fake.base_url, port, rate=400,
                            lease_seconds=lease)
        serve, victim, survivor = await asyncio.gather(
            launch.serve(config, port), launch.worker(config), launch.worker(config))
        dead = _worker_id(victim)
        client = Client(session, port)
        await client.import_consents(audience)
        created = await client.broadcast("Canvassing this Saturday, meet at 10")
        assert created["audience"]["eligible"] == len(audience)

        async def victim_sent_some() -> bool:
            rows = await _rows(pg_url, "SELECT count(*) FROM messages WHERE lease_owner = $1"
                               " AND status = 'sending'", dead)
            return bool(rows[0][0])

        await fake.wait_for(300, timeout=30)
        await eventually(victim_sent_some, timeout=10, what="the victim mid-call")
        ports = _db_client_ports(victim.pid)
        await victim.crash()

        async def its_sessions_ended() -> bool:
            # A COMMIT the victim sent just before it died still completes on the server.
            rows = await _rows(pg_url, "SELECT count(*) FROM pg_stat_activity"
                               " WHERE client_port = ANY($1::int[])", ports)
            return rows[0][0] == 0

        await eventually(its_sessions_ended, timeout=10, what="the victim's sessions end")
        # What the dead process left: in flight (sending) and merely claimed (queued).
        in_flight = {r["id"] for r in await _rows(
            pg_url, "SELECT id FROM messages WHERE lease_owner = $1 AND status = 'sending'",
            dead)}
        claimed = await _rows(pg_url, "SELECT count(*) FROM messages WHERE lease_owner = $1"
                              " AND status = 'queued'", dead)
        assert len(fake.messages) < len(audience), "the broadcast finished before the crash"

        view = await client.wait_done(created["id"], timeout=60)
        for p in (serve, survivor):
            rc, took = await p.stop()
            assert rc == 0 and took < 10, p.log()

    counts = view["counts"]
    assert sum(counts.values()) == len(audience), counts
    assert counts["queued"] == counts["sending"] == 0, counts
    received = Counter(sms.to for sms in fake.messages)
    twice = {to: n for to, n in received.items() if n > 1}
    assert not twice, f"numbers that got the broadcast more than once: {twice}"

    rows = await _rows(pg_url, "SELECT id, address, status, reason, provider_id FROM messages"
                       " WHERE broadcast_id = $1", created["id"])
    by_id = {r["id"]: r for r in rows}
    for sms in fake.messages:
        assert by_id[_message_id(sms)]["address"] == sms.to
    interrupted = {r["id"] for r in rows if (r["status"], r["reason"]) == ("failed",
                                                                           "interrupted")}
    # Only what the dead worker had on the wire is in doubt, and it is never resent.
    assert interrupted <= in_flight, (interrupted - in_flight)
    assert counts["failed"] == len(interrupted)
    for r in rows:
        if r["status"] in ("sent", "delivered"):
            assert received[r["address"]] == 1, dict(r)
    # Its claimed-but-unsent rows went to the others after the lease: everyone else got it.
    unsent = {r["address"] for r in rows if r["id"] not in interrupted}
    assert unsent <= set(received)
    assert claimed[0][0] + len(in_flight) > 0


@pytest.mark.parametrize("outage", ["connection_refused", "http_500"])
async def test_provider_outage_ends_in_failed_with_a_reason_never_stuck(
        sqlite_url: str, outage: str) -> None:
    async with running_gateway(sqlite_url) as gw:
        gw.gateway.dispatcher.retry_base_seconds = 0.005  # the backoff schedule, shrunk
        person = "+447911123456"
        await gw.subscribe(person)
        if outage == "connection_refused":
            await gw.twilio.stop()
        else:
            gw.twilio.fail_next(500, count=MAX_ATTEMPTS)
        status, queued = await gw.api("POST", "/api/v1/messages",
                                      {"channel": "sms", "to": person, "text": "hello"})
        assert status == 202, queued

        async def final() -> dict[str, Any] | None:
            _, view = await gw.api("GET", f"/api/v1/messages/{queued['id']}")
            return view if view["status"] not in ("queued", "sending") else None

        view = await eventually(final, timeout=30, what="the message's final state")
        async with gw.db.read() as conn:
            row = (await conn.exec_driver_sql(
                "SELECT attempts, last_error, lease_owner FROM messages WHERE id = ?",
                (queued["id"],))).one()
    assert view["status"] == "failed" and view["reason"], view
    assert row.attempts == MAX_ATTEMPTS, tuple(row)  # retried, then gave up
    assert row.lease_owner is None
    assert gw.twilio.messages == []


@pytest.mark.slow
@pytest.mark.postgres
async def test_serve_that_does_not_dispatch_answers_stops_while_a_worker_sends(
        pg_url: str, tmp_path: Path) -> None:
    """``[dispatch] in_serve = false``: ``serve`` answers the webhooks and the API and
    sends nothing; the worker sends the whole broadcast. STOPs answered by ``serve``
    mid-broadcast win: nothing reaches the provider for a STOP'd number after its answer."""
    audience = numbers(1500)
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        fake.latency = 0.02  # sends are on the wire when the STOPs arrive
        config = _pg_config(tmp_path, pg_url, fake.base_url, port, rate=400,
                            lease_seconds=30)
        with config.open("a", encoding="utf-8") as fh:
            fh.write("in_serve = false\n")  # the [dispatch] table is the file's last
        serve = await launch.serve(config, port)
        worker = await launch.worker(config)
        client = Client(session, port)
        await client.import_consents(audience)
        created = await client.broadcast("Canvassing this Saturday, meet at 10")
        await fake.wait_for(200, timeout=30)
        stoppers = audience[-300::10]
        answered: dict[str, float] = {}
        for i, number in enumerate(stoppers):
            status, twiml = await client.sms_in(number, "STOP", f"SM{i:032d}")
            answered[number] = time.monotonic()
            assert status == 200 and "unsubscribed" in twiml
        view = await client.wait_done(created["id"], timeout=60)
        for p in (serve, worker):
            rc, took = await p.stop()
            assert rc == 0 and took < 10, p.log()
        serve_log, worker_log = serve.log(), worker.log()

    assert len(fake.messages) < len(audience)  # the STOPs came mid-broadcast
    assert '"message.sent"' not in serve_log and '"message.sent"' in worker_log
    for number in stoppers:
        assert [m for m in fake.sent_to(number) if m.received_at > answered[number]] == []
    received = Counter(sms.to for sms in fake.messages)
    assert set(received) >= set(audience) - set(stoppers)
    assert max(received.values()) == 1
    assert view["counts"]["sent"] + view["counts"]["delivered"] == len(fake.messages)
