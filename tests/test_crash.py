"""Invariant 6 across a real crash: ``consentgate serve`` is killed with SIGKILL (no handler,
no clean-up) and started again on the same SQLite file.

Outbound: each message is either not sent, or sent once and recorded; a row the dead process
left ``sending`` is failed as ``interrupted`` and never resent. Inbound: a STOP is either
fully applied (opted out, queued messages cancelled, audited) or not at all, so Twilio's
retry applies it exactly once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from consentgate.bot.addresses import address_hash
from consentgate.bot.audit import subject_for
from consentgate.testing.fakes.twilio_api import FakeTwilio, new_sid
from consentgate.testing.harness import JANE_AUTH, JANE_SID, SECRET
from tests.procs import Client, Launcher, db_rows, free_port, numbers, write_config

pytestmark = pytest.mark.slow


def _message_id(status_callback: str | None) -> int:
    """Our message id, which the gateway puts in each send's status callback URL."""
    assert status_callback, "every send carries a status callback"
    return int(parse_qs(urlsplit(status_callback).query)["m"][0])


async def test_kill_9_mid_broadcast_completes_without_resending(tmp_path: Path) -> None:
    audience = numbers(600)
    db = tmp_path / "consentgate.db"
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        fake.latency = 0.02
        config = write_config(tmp_path / "consentgate.toml", db_path=db,
                              twilio_url=fake.base_url, port=port, rate=200)
        client = Client(session, port)
        first = await launch.serve(config, port)
        await client.import_consents(audience)
        created = await client.broadcast("Polling day is Thursday: find your polling station")
        assert created["audience"]["eligible"] == len(audience)
        broadcast_id = created["id"]

        await fake.wait_for(150, timeout=30)
        await first.crash()
        assert len(fake.messages) < len(audience), "the broadcast finished before the crash"
        left_sending = db_rows(db, "SELECT count(*) FROM messages WHERE status = 'sending'")[0][0]

        second = await launch.serve(config, port)
        view = await client.wait_done(broadcast_id, timeout=40)
        rc, _ = await second.stop()
        assert rc == 0, second.log()

    counts = view["counts"]
    assert sum(counts.values()) == len(audience), counts
    assert counts["queued"] == counts["sending"] == 0, counts
    assert counts["blocked"] == counts["cancelled"] == 0, counts

    received = Counter(sms.to for sms in fake.messages)
    twice = {to: n for to, n in received.items() if n > 1}
    assert not twice, f"numbers that got the broadcast more than once: {twice}"
    assert set(received) <= set(audience)

    rows = db_rows(db, "SELECT id, address, status, reason, provider_id FROM messages "
                       "WHERE broadcast_id = ?", (broadcast_id,))
    assert sorted(r["address"] for r in rows) == sorted(audience)
    by_id = {r["id"]: r for r in rows}
    for sms in fake.messages:
        row = by_id[_message_id(sms.status_callback)]
        assert row["address"] == sms.to, "a send went out under another message's id"
        assert row["status"] in ("sent", "delivered") or (
            row["status"], row["reason"]) == ("failed", "interrupted"), dict(row)
    sids = {sms.sid for sms in fake.messages}
    interrupted = 0
    for row in rows:
        if row["status"] in ("sent", "delivered"):
            assert received[row["address"]] == 1, dict(row)
            assert row["provider_id"] in sids, dict(row)
        else:
            # Left mid-call by the killed process: not resent, whether or not it arrived.
            assert (row["status"], row["reason"]) == ("failed", "interrupted"), dict(row)
            assert received[row["address"]] <= 1
            interrupted += 1
    assert interrupted == counts["failed"]
    # Every interrupted row was one the killed process had on the wire.
    assert interrupted <= left_sending


def _quiet_now() -> str:
    """A quiet-hours window (UTC) around now: campaign messages stay queued all test long."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=2), now + timedelta(hours=2)
    return f'quiet_hours = "{start:%H:%M}-{end:%H:%M}"\ntimezone = "UTC"'


async def test_stop_is_applied_or_rejected_across_a_crash(tmp_path: Path) -> None:
    audience = numbers(150)
    stoppers = audience[:120]
    sids = {a: new_sid() for a in stoppers}
    db = tmp_path / "consentgate.db"
    port = free_port()
    answers: dict[str, int | None] = {}
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        config = write_config(tmp_path / "consentgate.toml", db_path=db,
                              twilio_url=fake.base_url, port=port, extra_policy=_quiet_now())
        client = Client(session, port)
        first = await launch.serve(config, port)
        await client.import_consents(audience)
        created = await client.broadcast("Canvassing this Saturday, meet at 10")
        assert created["audience"]["eligible"] == len(audience)

        async def stop(address: str) -> None:
            try:
                status, body = await client.sms_in(address, "STOP", sids[address])
            except (TimeoutError, aiohttp.ClientError):
                answers[address] = None  # no answer: Twilio will retry
                return
            answers[address] = status
            if status == 200:
                assert "unsubscribed" in body, body
            # Pull the plug while most STOPs are still in flight.
            if sum(1 for s in answers.values() if s == 200) >= 10:
                first.kill_9()

        await asyncio.gather(*(stop(a) for a in stoppers))
        await first.wait(10.0)
        confirmed = [a for a in stoppers if answers[a] == 200]
        assert len(confirmed) >= 10

        await launch.serve(config, port)

        async def applied(address: str) -> int:
            """How many times the opt-out of ``address`` is recorded, after checking that
            every part of it is there or none is."""
            sub = await client.subscriber(address)
            events = [h for h in sub["history"] if h["event"] == "opted_out"]
            status, audit = await client.api(
                "GET", "/api/v1/audit?action=opt_out.recorded&limit=10000")
            assert status == 200, audit
            subject = subject_for("sms", address_hash(SECRET, "sms", address))
            audited = [r for r in audit if r["subject"] == subject]
            msgs = db_rows(db, "SELECT status, reason FROM messages WHERE address = ?",
                           (address,))
            assert len(msgs) == 1
            if events:
                assert sub["status"] == "opted_out" and not sub["can_send"], sub
                assert (msgs[0]["status"], msgs[0]["reason"]) == ("cancelled", "opted_out")
                assert len(audited) == len(events)
            else:
                assert sub["status"] == "subscribed", sub
                assert msgs[0]["status"] == "queued", dict(msgs[0])
                assert not audited
            return len(events)

        for address in stoppers:
            n = await applied(address)
            if answers[address] == 200:
                assert n == 1, f"{address}: STOP answered 200 but not applied once"
            else:
                assert n in (0, 1)

        # Twilio retries what got no answer; a repeat of an answered one is a duplicate.
        for address in stoppers:
            status, _ = await client.sms_in(address, "STOP", sids[address])
            assert status == 200
        for address in stoppers:
            assert await applied(address) == 1, address
        for address in audience[len(stoppers):]:
            assert await applied(address) == 0, address

    assert fake.messages == [], "quiet hours hold every campaign message"
