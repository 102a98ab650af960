"""The review loop, black-box: replies arrive over Twilio's signed webhook, are read by the
classifier (intent and rule kept with them), flagged ones wait for a person, and a person's
``opt_out`` has exactly the effect of the sender's own STOP."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from consentgate.bot import outbox
from consentgate.testing.harness import BOB_TOKEN, JANE, JANE_AUDITOR, Harness

PERSON = "+447911123456"
OTHER_PERSON = "+447911123457"


async def _flagged_waiting(gw: Harness) -> list[dict[str, Any]]:
    status, replies = await gw.api("GET", "/api/v1/replies?flagged=true&unresolved=true")
    assert status == 200
    return list(replies)


async def _gauges(gw: Harness) -> tuple[float, float]:
    status, text = await gw.api("GET", "/metrics", token=None)
    assert status == 200
    waiting = re.search(rf'consentgate_flagged_replies_waiting{{campaign="{JANE}"}} (\S+)', text)
    oldest = re.search(
        rf'consentgate_flagged_reply_oldest_age_seconds{{campaign="{JANE}"}} (\S+)', text)
    assert waiting is not None and oldest is not None
    return float(waiting.group(1)), float(oldest.group(1))


async def _queue_for_later(gw: Harness, address: str) -> int:
    async with gw.db.write() as conn:
        return await outbox.enqueue(
            conn, campaign=JANE, channel="sms", address=address,
            address_hash=gw.gateway.ledger.hash("sms", address), text="Polling day soon",
            created_by="Jane Doe", not_before=time.time() + 3600)


async def test_each_reply_carries_its_intent_and_the_rule_that_fired(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    await gw.sms_in(PERSON, "Count me in! We have got to STOP this terrible bill")
    await gw.sms_in(PERSON, "Thanks, see you Saturday")

    status, replies = await gw.api("GET", "/api/v1/replies")
    assert status == 200
    newest, flagged = replies
    assert (newest["intent"], newest["flag"], newest["resolution"]) == ("other", None, None)
    assert flagged["intent"] == "possible_opt_out" and flagged["flag"] == "possible_opt_out"
    assert flagged["rule"] == "opt-out word about something else"
    assert flagged["resolved_by"] is None and flagged["resolved_at"] is None


async def test_a_plain_language_request_opts_out_and_names_its_rule(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    status, twiml = await gw.sms_in(PERSON, "I no longer wish to receive messages from you")
    assert status == 200 and "unsubscribed" in twiml
    _, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{PERSON}")
    assert sub["status"] == "opted_out"
    _, replies = await gw.api("GET", "/api/v1/replies")
    assert replies[0]["intent"] == "opt_out"
    assert replies[0]["rule"] == "request: doesn't want messages"


async def test_a_flagged_reply_waits_until_a_person_says_it_is_not_an_opt_out(
    gw: Harness,
) -> None:
    await gw.subscribe(PERSON)
    assert await _gauges(gw) == (0.0, 0.0)
    await gw.sms_in(PERSON, "Can you stop by the office on Monday?")

    [waiting] = await _flagged_waiting(gw)
    count, oldest = await _gauges(gw)
    assert count == 1.0 and oldest >= 0.0

    status, body = await gw.api("POST", f"/api/v1/replies/{waiting['id']}/resolve",
                                {"action": "not_an_opt_out", "note": "a visit"})
    assert status == 200, body
    assert body["resolution"] == "not_an_opt_out" and body["resolved_by"] == "Jane Doe"
    assert body["resolved_at"] is not None and body["note"] == "a visit"
    assert await _flagged_waiting(gw) == []
    assert await _gauges(gw) == (0.0, 0.0)
    _, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{PERSON}")
    assert sub["status"] == "subscribed"
    _, flagged = await gw.api("GET", "/api/v1/replies?flagged=true")
    assert [r["resolution"] for r in flagged] == ["not_an_opt_out"]


async def test_resolving_as_opt_out_has_the_effect_of_the_senders_stop(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    await gw.subscribe(OTHER_PERSON)
    later = await _queue_for_later(gw, PERSON)
    untouched = await _queue_for_later(gw, OTHER_PERSON)
    await gw.sms_in(PERSON, "fuck you")
    [waiting] = await _flagged_waiting(gw)
    assert waiting["rule"] == "hostile, no request"

    status, body = await gw.api("POST", f"/api/v1/replies/{waiting['id']}/resolve",
                                {"action": "opt_out"})
    assert status == 200, body
    assert body["resolution"] == "opted_out" and body["cancelled"] == 1

    _, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{PERSON}")
    assert sub["status"] == "opted_out" and not sub["can_send"]
    last = sub["history"][-1]
    assert (last["event"], last["method"], last["actor"]) == (
        "opted_out", "reviewed_reply", "Jane Doe")
    _, queued = await gw.api("GET", f"/api/v1/messages/{later}")
    assert (queued["status"], queued["reason"]) == ("cancelled", "opted_out")
    _, other = await gw.api("GET", f"/api/v1/messages/{untouched}")
    assert other["status"] == "queued"
    status, refused = await gw.api("POST", "/api/v1/messages",
                                   {"channel": "sms", "to": PERSON, "text": "hi"})
    assert (status, refused["code"]) == (403, "opted_out")

    _, audit = await gw.api("GET", "/api/v1/audit?action=reply.resolved")
    assert [(a["actor"], json.loads(a["detail"])["resolution"]) for a in audit] == [
        ("Jane Doe", "opted_out")]
    _, opt_outs = await gw.api("GET", "/api/v1/audit?action=opt_out.recorded")
    assert opt_outs[-1]["actor"] == "Jane Doe"
    assert json.loads(opt_outs[-1]["detail"])["method"] == "reviewed_reply"
    _, text = await gw.api("GET", "/metrics", token=None)
    assert 'consentgate_opt_outs_total{channel="sms",method="reviewed_reply"} 1.0' in text


async def test_resolving_twice_is_409_and_changes_nothing(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    await gw.sms_in(PERSON, "The end of the month suits me")
    [waiting] = await _flagged_waiting(gw)
    path = f"/api/v1/replies/{waiting['id']}/resolve"
    assert (await gw.api("POST", path, {"action": "not_an_opt_out"}))[0] == 200

    status, problem = await gw.api("POST", path, {"action": "opt_out"})
    assert (status, problem["code"]) == (409, "already_resolved")
    _, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{PERSON}")
    assert sub["status"] == "subscribed"
    _, replies = await gw.api("GET", "/api/v1/replies")
    assert replies[0]["resolution"] == "not_an_opt_out"


async def test_bad_resolutions_get_a_clear_4xx_and_change_nothing(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    await gw.sms_in(PERSON, "Stop the war")
    [waiting] = await _flagged_waiting(gw)
    path = f"/api/v1/replies/{waiting['id']}/resolve"

    status, problem = await gw.api("POST", path, {"action": "opt_out"}, token=JANE_AUDITOR)
    assert (status, problem["code"]) == (403, "forbidden")
    status, problem = await gw.api("POST", path, {"action": "delete"})
    assert (status, problem["code"]) == (422, "invalid_action")
    status, problem = await gw.api("POST", path, {"action": "opt_out", "note": 5})
    assert (status, problem["code"]) == (422, "invalid_note")
    status, problem = await gw.api("POST", "/api/v1/replies/999999/resolve",
                                   {"action": "opt_out"})
    assert (status, problem["code"]) == (404, "reply_not_found")
    status, problem = await gw.api("POST", "/api/v1/replies/x1/resolve", {"action": "opt_out"})
    assert status == 404
    # Another campaign's operator never sees, nor resolves, this campaign's replies.
    status, problem = await gw.api("POST", path, {"action": "opt_out"}, token=BOB_TOKEN)
    assert (status, problem["code"]) == (404, "reply_not_found")
    status, theirs = await gw.api("GET", "/api/v1/replies", token=BOB_TOKEN)
    assert (status, theirs) == (200, [])

    assert [r["id"] for r in await _flagged_waiting(gw)] == [waiting["id"]]
    _, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{PERSON}")
    assert sub["status"] == "subscribed"
    status, problem = await gw.api("GET", "/api/v1/replies", token=JANE_AUDITOR)
    assert status == 200  # an auditor reads the queue


async def test_the_oldest_waiting_reply_ages_on_the_gauge(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    await gw.sms_in(PERSON, "I quit smoking thanks to the NHS")
    # Age it: as if it had arrived an hour ago.
    from sqlalchemy import update

    from consentgate.storage.models import inbound_messages

    async with gw.db.write() as conn:
        await conn.execute(update(inbound_messages).values(at=time.time() - 3600))
    await gw.sms_in(PERSON, "not interested")
    count, oldest = await _gauges(gw)
    assert count == 2.0 and 3600 <= oldest < 3700
