"""Resuming a broadcast that paused itself on too many failures: the held messages go once
each through the real dispatcher and the Twilio fake, the gate still decides every one of
them, the operator's resume is audited, and only failures since the resume count towards
another pause.

The pause rule is shrunk to 10 attempts (from 200) so a small audience trips it; every number
is refused by the fake (21211, a permanent failure) until the broadcast has paused.

That nothing was sent is proved, not slept on: a one-off message queued afterwards to someone
outside the broadcast (the probe) is sent, so the dispatcher has been over the queue since,
and anything wrongly due would have gone out before it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from consentgate.bot import broadcasts
from consentgate.testing.harness import (
    BOB_TOKEN,
    JANE_AUDITOR,
    JANE_TOKEN,
    Harness,
    running_gateway,
)
from tests.dbutil import counts, rows
from tests.procs import eventually

PAUSE_AFTER = 10
PEOPLE = [f"+44791110{n:04d}" for n in range(60)]
PROBE = "+447911199999"


@pytest.fixture
async def h(sqlite_url: str) -> AsyncIterator[Harness]:
    # 20 a second: the pause comes after a few of the 60, most of them are still queued.
    async with running_gateway(sqlite_url, rate=20.0, pause_after_attempts=PAUSE_AFTER) as h:
        yield h


async def dispatcher_has_caught_up(h: Harness) -> None:
    """Queue a one-off message to PROBE (subscribed now, so in no earlier broadcast) and wait
    until the fake has it: the dispatcher takes due messages oldest first, so whatever was
    due before it has been sent by then."""
    await h.subscribe(PROBE)
    status, body = await h.api("POST", "/api/v1/messages",
                               {"channel": "sms", "to": PROBE, "text": "Probe"})
    assert status == 202, body

    async def sent() -> bool:
        return bool(h.twilio.sent_to(PROBE))
    await eventually(sent, timeout=20.0, what="the probe message sent")


def sent_to_people(h: Harness) -> list[str]:
    """The numbers the fake accepted messages for, the probe left out."""
    return [sms.to for sms in h.twilio.messages if sms.to != PROBE]


async def view(h: Harness, broadcast_id: int) -> dict[str, Any]:
    status, body = await h.api("GET", f"/api/v1/broadcasts/{broadcast_id}")
    assert status == 200, body
    return dict(body)


async def settles(h: Harness, broadcast_id: int, status: str) -> dict[str, Any]:
    """The broadcast's view once it has ``status`` and nothing of it is on the wire."""
    async def reached() -> dict[str, Any] | None:
        v = await view(h, broadcast_id)
        return v if v["status"] == status and v["counts"]["sending"] == 0 else None
    found: dict[str, Any] = await eventually(reached, timeout=20.0, what=f"status {status}")
    return found


async def held_addresses(h: Harness, broadcast_id: int) -> list[str]:
    return [m.address for m in await rows(h.db, "messages", broadcast_id=broadcast_id)
            if m.status == "queued" and m.not_before == broadcasts.HELD_UNTIL]


async def paused_broadcast(h: Harness) -> tuple[int, list[str]]:
    """A broadcast to PEOPLE that paused itself; returns its id and the held addresses (in
    the order they would be sent). The fake accepts every number again afterwards."""
    await h.import_consents(PEOPLE)
    h.twilio.invalid.update(PEOPLE)
    status, body = await h.api("POST", "/api/v1/broadcasts",
                               {"channel": "sms", "text": "Polling day is Thursday"})
    assert status == 202, body
    paused = await settles(h, body["id"], "paused")
    assert paused["paused"]["attempted"] >= PAUSE_AFTER
    assert paused["paused"]["failed"] == paused["paused"]["attempted"]
    assert "resumed or cancelled" in paused["paused"]["detail"]
    assert paused["resumed_at"] is None
    held = await held_addresses(h, body["id"])
    assert len(held) >= 2 * PAUSE_AFTER  # enough left for the rule to judge them afresh
    assert paused["counts"]["queued"] == len(held)
    h.twilio.invalid.clear()
    await dispatcher_has_caught_up(h)
    assert sent_to_people(h) == []  # held: nothing goes while it is paused
    return body["id"], held


async def test_resume_sends_every_held_message_once_and_is_audited(h: Harness) -> None:
    broadcast_id, held = await paused_broadcast(h)
    failed_before = len(PEOPLE) - len(held)

    status, resumed = await h.api("POST", f"/api/v1/broadcasts/{broadcast_id}/resume")

    assert status == 200, resumed
    assert resumed["id"] == broadcast_id
    assert resumed["status"] in ("sending", "done") and "paused" not in resumed
    assert resumed["resumed_at"] is not None
    done = await settles(h, broadcast_id, "done")
    assert done["counts"]["sent"] == len(held)
    assert done["counts"]["failed"] == failed_before
    assert done["counts"]["queued"] == 0
    assert sorted(sent_to_people(h)) == sorted(held)  # each exactly once
    status, audit = await h.api("GET", "/api/v1/audit?action=broadcast.resumed")
    assert status == 200
    [event] = audit
    assert event["actor"] == "Jane Doe"
    assert event["subject"] == f"broadcast#{broadcast_id}"
    assert json.loads(event["detail"]) == {"released": len(held)}


async def test_the_failures_that_paused_it_do_not_pause_it_again(h: Harness) -> None:
    broadcast_id, held = await paused_broadcast(h)
    # One more failure, the last held message: judged with every failure since the start
    # (over 5% of them) it would pause again; judged since the resume it does not.
    h.twilio.invalid.add(held[-1])

    status, _ = await h.api("POST", f"/api/v1/broadcasts/{broadcast_id}/resume")

    assert status == 200
    done = await settles(h, broadcast_id, "done")
    assert done["counts"]["failed"] == len(PEOPLE) - len(held) + 1
    assert done["counts"]["failed"] > broadcasts.PAUSE_FAILURE_RATE * len(PEOPLE)
    assert done["counts"]["sent"] == len(held) - 1


async def test_failures_after_a_resume_pause_it_again(h: Harness) -> None:
    broadcast_id, held = await paused_broadcast(h)
    h.twilio.invalid.update(held)  # the list was not cleaned after all

    status, _ = await h.api("POST", f"/api/v1/broadcasts/{broadcast_id}/resume")

    assert status == 200
    again = await settles(h, broadcast_id, "paused")
    # The figures are those since the resume, not the whole broadcast's.
    assert PAUSE_AFTER <= again["paused"]["attempted"] < len(held)
    assert again["paused"]["failed"] == again["paused"]["attempted"]
    assert "since it was resumed" in again["paused"]["detail"]
    assert again["counts"]["queued"] > 0
    assert sent_to_people(h) == []
    _, audit = await h.api("GET", "/api/v1/audit")
    assert [a["action"] for a in audit if a["action"].startswith("broadcast.")] == [
        "broadcast.created", "broadcast.paused", "broadcast.resumed", "broadcast.paused"]


async def test_a_stop_while_paused_is_still_honoured_after_the_resume(h: Harness) -> None:
    broadcast_id, held = await paused_broadcast(h)
    stopped = held[0]  # the first one the resume would send
    status, _ = await h.sms_in(stopped, "STOP")
    assert status == 200

    status, _ = await h.api("POST", f"/api/v1/broadcasts/{broadcast_id}/resume")

    assert status == 200
    done = await settles(h, broadcast_id, "done")
    assert h.twilio.sent_to(stopped) == []
    assert sorted(sent_to_people(h)) == sorted(held[1:])
    assert done["counts"]["cancelled"] == 1
    [message] = [m for m in await rows(h.db, "messages", broadcast_id=broadcast_id)
                 if m.address == stopped]
    assert message.status == "cancelled"


async def test_resuming_a_broadcast_that_is_not_paused_is_409_and_changes_nothing(
    gw: Harness
) -> None:
    number = PEOPLE[0]
    await gw.subscribe(number)
    _, sending = await gw.api("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "One"})
    _, cancelled = await gw.api("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "Two"})
    assert (await gw.api("POST", f"/api/v1/broadcasts/{cancelled['id']}/cancel"))[0] == 200
    await settles(gw, sending["id"], "done")
    await settles(gw, cancelled["id"], "cancelled")
    before = (await counts(gw.db), await rows(gw.db, "broadcasts"),
              await rows(gw.db, "messages"), len(gw.twilio.messages))

    for broadcast_id, state in ((sending["id"], "not paused"),
                                (cancelled["id"], "cancelled")):
        status, problem = await gw.api("POST", f"/api/v1/broadcasts/{broadcast_id}/resume")
        assert status == 409, problem
        assert problem["code"] == "broadcast_not_paused"
        assert problem["status"] == 409 and problem["title"] == "Conflict"
        assert problem["type"] == "urn:consentgate:problem:broadcast_not_paused"
        assert state in problem["detail"]

    # The refusals changed nothing (they answered after their transaction)...
    assert (await counts(gw.db), await rows(gw.db, "broadcasts"),
            await rows(gw.db, "messages"), len(gw.twilio.messages)) == before
    # ... and woke nothing that sends later: the dispatcher has been over the queue since.
    broadcast_messages = [m for m in await rows(gw.db, "messages") if m.broadcast_id]
    await dispatcher_has_caught_up(gw)
    assert [m for m in await rows(gw.db, "messages") if m.broadcast_id] == broadcast_messages
    assert len(sent_to_people(gw)) == before[3]
    assert (await view(gw, cancelled["id"]))["status"] == "cancelled"


async def test_resuming_an_unknown_broadcast_is_404(gw: Harness) -> None:
    await gw.subscribe(PEOPLE[0])
    _, jane = await gw.api("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "One"})
    before = await counts(gw.db)
    for path, token in (("/api/v1/broadcasts/999/resume", JANE_TOKEN),
                        ("/api/v1/broadcasts/abc/resume", JANE_TOKEN),
                        (f"/api/v1/broadcasts/{jane['id']}/resume", BOB_TOKEN)):
        status, problem = await gw.api("POST", path, token=token)
        assert status == 404, path
        assert problem["code"] == "broadcast_not_found" and problem["status"] == 404
    assert await counts(gw.db) == before


async def test_an_auditor_cannot_resume_a_paused_broadcast(h: Harness) -> None:
    broadcast_id, held = await paused_broadcast(h)
    before = await counts(h.db)

    status, problem = await h.api("POST", f"/api/v1/broadcasts/{broadcast_id}/resume",
                                  token=JANE_AUDITOR)

    assert status == 403 and problem["code"] == "forbidden"
    assert await counts(h.db) == before
    assert (await view(h, broadcast_id))["status"] == "paused"
    assert await held_addresses(h, broadcast_id) == held
    await dispatcher_has_caught_up(h)
    assert sent_to_people(h) == []
    assert await held_addresses(h, broadcast_id) == held
