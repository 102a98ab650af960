"""The consent invariants of ARCHITECTURE.md, each with a test that fails if it breaks.

1 no send without a gate decision at dispatch; 2 an opt-out wins from the moment it commits
(also mid-broadcast, under provider latency); 5 group posts only to own chats; 6 nothing sent
twice across retries; 7 every change is attributable.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from consentgate.testing.harness import BOB_TOKEN, Harness, running_gateway
from tests.dbutil import rows

ROOT = Path(__file__).resolve().parent.parent


def numbers(n: int, start: int = 0) -> list[str]:
    return [f"+4474001{i:05d}" for i in range(start, start + n)]


async def bulk_subscribe(gw: Harness, addresses: list[str]) -> None:
    csv = "channel,address,method,source,evidence\n" + "".join(
        f"sms,{a},paper_form,street stall,form {i}\n" for i, a in enumerate(addresses))
    status, report = await gw.api("POST", "/api/v1/consents/import", raw=csv)
    assert status == 200 and report["imported"] == len(addresses), report


async def wait_done(gw: Harness, broadcast_id: int, within: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + within
    while True:
        _, view = await gw.api("GET", f"/api/v1/broadcasts/{broadcast_id}")
        if view["status"] in ("done", "cancelled"):
            return dict(view)
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)  # polling the API for progress, bounded by the deadline


# -- 1: only the gate, at dispatch time, lets a message reach a provider -----------------------

def test_only_the_gate_issues_permits_and_only_the_dispatcher_sends() -> None:
    issuers, senders = [], []
    for path in list((ROOT / "bot").rglob("*.py")) + list((ROOT / "adapters").rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        if "_issue_permit" in text:
            issuers.append(rel)
        if re.search(r"adapter\w*\.send\(", text):
            senders.append(rel)
    assert sorted(issuers) == ["adapters/base.py", "bot/gate.py"]
    assert senders == ["bot/dispatch.py"]


async def test_the_gate_decides_again_at_dispatch(sqlite_url: str) -> None:
    async with running_gateway(sqlite_url, dispatch=False) as gw:
        person = "+447911123456"
        await gw.subscribe(person)
        status, queued = await gw.api("POST", "/api/v1/messages",
                                      {"channel": "sms", "to": person, "text": "hello"})
        assert status == 202
        # A block recorded by a path that does not touch the queue (as a bounce or an erasure
        # on another campaign would): the queued message must still not go.
        async with gw.db.write() as conn:
            await gw.gateway.ledger.suppress(conn, "sms", person, "hard_bounce",
                                             campaign=None, actor="provider")
        task = asyncio.create_task(gw.gateway.dispatcher.run())
        gw.runs.append(task)
        deadline = time.monotonic() + 10
        while True:
            _, view = await gw.api("GET", f"/api/v1/messages/{queued['id']}")
            if view["status"] != "queued":
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert (view["status"], view["reason"]) == ("blocked", "suppressed")
        assert gw.twilio.messages == []


# -- 2: an opt-out wins from the moment it commits, mid-broadcast ------------------------------

@pytest.mark.parametrize("dispatch_thread", [False, True], ids=["one-loop", "own-thread"])
async def test_stop_mid_broadcast_stops_every_later_send(sqlite_url: str,
                                                         dispatch_thread: bool) -> None:
    """Also with the dispatcher on a thread of its own, as ``serve`` runs it: its permits
    and the STOP's transaction meet only in the database and the shared write turns."""
    async with running_gateway(sqlite_url, rate=400.0, twilio_latency=0.02,
                               dispatch_thread=dispatch_thread) as gw:
        audience = numbers(1000)
        await bulk_subscribe(gw, audience)
        ids = []
        for text in ("First of two: polling cards are out", "Second of two: vote Thursday"):
            status, b = await gw.api("POST", "/api/v1/broadcasts", {"channel": "sms",
                                                                    "text": text})
            assert status == 202 and b["audience"]["eligible"] == 1000
            ids.append(b["id"])
        await gw.twilio.wait_for(300, timeout=30)
        running_on = gw.gateway.dispatcher.loop
        assert running_on is not None
        assert (running_on is not asyncio.get_running_loop()) is dispatch_thread
        stoppers = audience[100::17][:50]
        assert len(stoppers) == 50
        answered: dict[str, float] = {}

        async def stop(number: str, delay: float) -> None:
            await asyncio.sleep(delay)  # spread the STOPs over the run (not synchronisation)
            status, twiml = await gw.sms_in(number, "STOP")
            assert status == 200 and "unsubscribed" in twiml
            answered[number] = time.monotonic()

        await asyncio.gather(*[stop(n, i * 0.03) for i, n in enumerate(stoppers)])
        for b in ids:
            view = await wait_done(gw, b)
            assert view["status"] == "done"
        by_number: dict[str, list[object]] = {}
        for sms in gw.twilio.messages:
            by_number.setdefault(sms.to, []).append(sms)
        for number in stoppers:
            late = [s for s in by_number.get(number, []) if s.received_at > answered[number]]  # type: ignore[attr-defined]
            opted = [e for e in await rows(gw.db, "consent_events", address=number)
                     if e.event == "opted_out"]
            assert len(opted) == 1
            msgs = await rows(gw.db, "messages", address=number)
            # A message already on the wire when the opt-out committed (admitted by the gate
            # before the commit) is answered by the provider before the STOP is: nothing
            # reaches the provider after the answer.
            assert late == [], number
            for m in msgs:
                if m.dispatched_at is None or m.dispatched_at >= opted[0].at:
                    assert (m.status, m.reason) in {("cancelled", "opted_out"),
                                                     ("blocked", "opted_out")}, m
        # Everyone else got both messages, exactly once each.
        for number in set(audience) - set(stoppers):
            assert len(by_number[number]) == 2, number


# -- 5: group posts only to the campaign's own chats: covered by the gate's decision table and
# the Telegram tests; here, a channel the campaign lacks is refused at the gate.

async def test_broadcasts_reach_only_the_eligible_and_report_exclusions(gw: Harness) -> None:
    subscribed, out, stopped = numbers(5), numbers(2, 100), numbers(1, 200)
    await bulk_subscribe(gw, subscribed + out + stopped)
    for n in out:
        await gw.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": n})
    await gw.sms_in(stopped[0], "STOPALL")
    await gw.subscribe(numbers(1, 300)[0], token=BOB_TOKEN)  # another campaign's subscriber
    status, dry = await gw.api("POST", "/api/v1/broadcasts",
                               {"channel": "sms", "text": "Canvass at 10", "dry_run": True})
    assert status == 200 and dry["id"] is None
    assert dry["audience"] == {"eligible": 5, "excluded": {"opted_out": 2, "suppressed": 1}}
    assert await rows(gw.db, "messages") == []
    status, b = await gw.api("POST", "/api/v1/broadcasts",
                             {"channel": "sms", "text": "Canvass at 10"})
    assert status == 202 and b["audience"]["eligible"] == 5
    view = await wait_done(gw, b["id"])
    assert view["counts"]["sent"] == 5
    assert sorted(s.to for s in gw.twilio.messages) == sorted(subscribed)
    assert all(s.body.endswith("Reply STOP to opt out") for s in gw.twilio.messages)
    status, refused = await gw.api("POST", "/api/v1/broadcasts",
                                   {"channel": "telegram", "text": "hi"})
    assert (status, refused["code"]) == (403, "channel_disabled")


async def test_a_cancelled_broadcast_sends_nothing_after_the_answer(sqlite_url: str) -> None:
    async with running_gateway(sqlite_url, rate=50.0) as gw:
        await bulk_subscribe(gw, numbers(200))
        _, b = await gw.api("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "x"})
        await gw.twilio.wait_for(5, timeout=20)
        status, _ = await gw.api("POST", f"/api/v1/broadcasts/{b['id']}/cancel")
        answered = time.monotonic()
        assert status == 200
        view = await wait_done(gw, b["id"])
        assert view["status"] == "cancelled"
        c = view["counts"]
        assert c["cancelled"] > 100
        late = [s for s in gw.twilio.messages if s.received_at > answered]
        msgs = {m.provider_id: m for m in await rows(gw.db, "messages")}
        _, audit = await gw.api("GET", "/api/v1/audit?action=broadcast.cancelled")
        assert len(audit) == 1 and audit[0]["actor"] == "Jane Doe"
        cancelled_at = (await rows(gw.db, "audit_events", action="broadcast.cancelled"))[0].at
        assert all(msgs[s.sid].dispatched_at < cancelled_at for s in late)


# -- 6: retries never send twice; provider refusals become opt-outs ----------------------------

async def test_transient_failures_retry_and_the_message_goes_once(gw: Harness) -> None:
    gw.gateway.dispatcher.retry_base_seconds = 0.01
    person = "+447911123456"
    await gw.subscribe(person)
    gw.twilio.fail_next(500, count=2)
    _, sent = await gw.api("POST", "/api/v1/messages",
                           {"channel": "sms", "to": person, "text": "hi"})
    await gw.twilio.wait_for(1)
    deadline = time.monotonic() + 10
    while (view := (await gw.api("GET", f"/api/v1/messages/{sent['id']}"))[1])["status"] \
            != "sent":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert view["attempts"] == 3
    assert len(gw.twilio.sent_to(person)) == 1


async def test_a_429_retry_after_is_waited_out(gw: Harness) -> None:
    person = "+447911123456"
    await gw.subscribe(person)
    gw.twilio.fail_next(429, retry_after=1)
    _, sent = await gw.api("POST", "/api/v1/messages",
                           {"channel": "sms", "to": person, "text": "hi"})
    started = time.monotonic()
    [sms] = await gw.twilio.wait_for(1)
    assert sms.received_at - started >= 0.9
    assert len(gw.twilio.requests) == 2


@pytest.mark.parametrize(("knob", "reason", "status"), [
    ("unsubscribed", "twilio_21610", "opted_out"),
    ("invalid", "twilio_21211", "subscribed"),
])
async def test_permanent_refusals_fail_once_and_21610_opts_out(
        gw: Harness, knob: str, reason: str, status: str) -> None:
    person = "+447911123456"
    await gw.subscribe(person)
    getattr(gw.twilio, knob).add(person)
    _, sent = await gw.api("POST", "/api/v1/messages",
                           {"channel": "sms", "to": person, "text": "hi"})
    deadline = time.monotonic() + 10
    while (view := (await gw.api("GET", f"/api/v1/messages/{sent['id']}"))[1])["status"] \
            in ("queued", "sending"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert (view["status"], view["reason"], view["attempts"]) == ("failed", reason, 1)
    _, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{person}")
    assert sub["status"] == status
    assert len(gw.twilio.requests) == 1


async def test_quiet_hours_delay_a_message_and_never_drop_it(sqlite_url: str) -> None:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo("Europe/London"))
    start = (now - timedelta(minutes=5)).strftime("%H:%M")
    end = (now + timedelta(minutes=30)).strftime("%H:%M")
    policy = f'quiet_hours = "{start}-{end}"\ntimezone = "Europe/London"'
    async with running_gateway(sqlite_url, extra_policy=policy) as gw:
        person = "+447911123456"
        await gw.subscribe(person)
        _, sent = await gw.api("POST", "/api/v1/messages",
                               {"channel": "sms", "to": person, "text": "hi"})
        deadline = time.monotonic() + 10
        while True:
            [m] = await rows(gw.db, "messages")
            if m.not_before > time.time() + 60:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert m.status == "queued"
        assert m.not_before == pytest.approx((now + timedelta(minutes=30)).replace(
            second=0, microsecond=0).timestamp(), abs=61)
        # A STOP (a reply, not campaign content) is still answered at once.
        status, twiml = await gw.sms_in(person, "STOP")
        assert "unsubscribed" in twiml


# -- 7: everything is attributable -------------------------------------------------------------

async def test_every_change_is_in_the_audit_chain_under_its_author(gw: Harness) -> None:
    person = "+447911123456"
    await gw.subscribe(person)
    await gw.api("POST", "/api/v1/messages", {"channel": "sms", "to": person, "text": "hi"})
    await gw.sms_in(person, "STOP")
    _, audit = await gw.api("GET", "/api/v1/audit")
    actions = [(a["actor"], a["action"]) for a in audit]
    assert ("Jane Doe", "consent.recorded") in actions
    assert ("Jane Doe", "message.queued") in actions
    assert ("recipient", "opt_out.recorded") in actions
    assert all(person not in a["subject"] for a in audit)
    from consentgate.bot.audit import AuditRecord, first_broken

    records = [AuditRecord(r.seq, r.at, r.actor, r.action, r.subject, r.detail, r.prev_hash,
                           r.hash) for r in await rows(gw.db, "audit_events",
                                                       campaign="jane-2026")]
    assert first_broken(records) is None
    assert [a["hash"] for a in audit] == [r.hash for r in records]
    assert all(audit[i]["prev_hash"] == audit[i - 1]["hash"] for i in range(1, len(audit)))
