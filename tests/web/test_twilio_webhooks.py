"""Inbound SMS through Twilio's signed webhooks: STOP, STOPALL, START, HELP, replies, retries,
forged signatures and delivery reports. The real twilio RequestValidator signs every request."""

from __future__ import annotations

import asyncio

import pytest

from consentgate.testing.fakes.twilio_webhooks import post_signed, status_callback_form
from consentgate.testing.harness import (
    BOB,
    BOB_AUTH,
    BOB_NUMBER,
    BOB_SID,
    BOB_TOKEN,
    JANE,
    JANE_AUTH,
    JANE_NUMBER,
    JANE_SID,
    PUBLIC_URL,
    Harness,
)
from tests.dbutil import counts, rows

PERSON = "+447911123456"


def _message_text(twiml: str) -> str | None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    messages = root.findall("Message")
    assert len(messages) <= 1
    return messages[0].text if messages else None


async def _status(gw: Harness, token: str | None = None) -> str:
    from consentgate.testing.harness import JANE_TOKEN

    _, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{PERSON}",
                          token=token or JANE_TOKEN)
    return str(sub["status"])


@pytest.mark.parametrize("text", ["STOP", "stop", "Stop please", "Stop. Thank you 🙏",
                                  "please unsubscribe", "remove me from your list",
                                  "OPT OUT", "wrong number"])
async def test_stop_opts_out_with_one_confirmation(gw: Harness, text: str) -> None:
    await gw.subscribe(PERSON)
    status, twiml = await gw.sms_in(PERSON, text)
    assert status == 200
    reply = _message_text(twiml)
    assert reply is not None and "unsubscribed" in reply
    assert "Vote" not in reply  # no campaign content in a confirmation
    assert await _status(gw) == "opted_out"
    status, refused = await gw.api("POST", "/api/v1/messages",
                                   {"channel": "sms", "to": PERSON, "text": "hi"})
    assert (status, refused["code"]) == (403, "opted_out")


async def test_stop_cancels_queued_messages_before_answering(gw: Harness) -> None:
    gw.gateway.dispatcher.stop()  # nothing dispatches: the messages stay queued
    await gw.runs.pop()
    await gw.subscribe(PERSON)
    ids = []
    for i in range(3):
        status, body = await gw.api("POST", "/api/v1/messages",
                                    {"channel": "sms", "to": PERSON, "text": f"m{i}"})
        ids.append(body["id"])
    await gw.sms_in(PERSON, "STOP")
    for message_id in ids:
        _, view = await gw.api("GET", f"/api/v1/messages/{message_id}")
        assert (view["status"], view["reason"]) == ("cancelled", "opted_out")


async def test_a_possible_opt_out_is_kept_and_flagged_not_applied(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    status, twiml = await gw.sms_in(PERSON, "We have got to STOP this terrible bill")
    assert status == 200 and _message_text(twiml) is None
    assert await _status(gw) == "subscribed"
    _, flagged = await gw.api("GET", "/api/v1/replies?flagged=true")
    assert [(r["from"], r["flag"]) for r in flagged] == [(PERSON, "possible_opt_out")]
    await gw.sms_in(PERSON, "See you Saturday")
    _, replies = await gw.api("GET", "/api/v1/replies")
    assert [r["text"] for r in replies] == ["See you Saturday",
                                            "We have got to STOP this terrible bill"]


async def test_stopall_suppresses_on_every_campaign(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    await gw.subscribe(PERSON, token=BOB_TOKEN)
    status, twiml = await gw.sms_in(PERSON, "STOP ALL")
    assert status == 200 and "every campaign" in (_message_text(twiml) or "")
    assert await _status(gw) == "suppressed"
    assert await _status(gw, BOB_TOKEN) == "suppressed"
    status, refused = await gw.api("POST", "/api/v1/messages",
                                   {"channel": "sms", "to": PERSON, "text": "hi"},
                                   token=BOB_TOKEN)
    assert (status, refused["code"]) == (403, "suppressed")


async def test_only_the_recipient_can_opt_back_in(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    await gw.sms_in(PERSON, "STOP")
    status, body = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": PERSON, "method": "verbal", "source": "phone call",
        "evidence": "said yes"})
    assert (status, body["code"]) == (409, "opted_out")
    status, twiml = await gw.sms_in(PERSON, "START")
    assert "subscribed" in (_message_text(twiml) or "")
    assert await _status(gw) == "subscribed"
    [event] = [e for e in await rows(gw.db, "consent_events", address=PERSON)
               if e.method == "keyword" and e.event == "subscribed"]
    assert event.actor == "recipient" and event.evidence.startswith("SM")


async def test_start_after_stopall_reopens_only_that_campaign(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    await gw.subscribe(PERSON, token=BOB_TOKEN)
    await gw.sms_in(PERSON, "STOPALL")
    await gw.sms_in(PERSON, "START")  # to Jane's number
    assert await _status(gw) == "subscribed"
    assert await _status(gw, BOB_TOKEN) == "suppressed"


async def test_help_answers_with_name_imprint_and_how_to_stop(gw: Harness) -> None:
    status, twiml = await gw.sms_in(PERSON, "HELP")
    reply = _message_text(twiml) or ""
    assert "Jane Doe for President" in reply and "Promoted by Jane Doe" in reply
    assert "STOP" in reply
    assert await _status(gw) == "unknown"


async def test_advanced_opt_out_is_applied_and_answered_empty(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    status, twiml = await gw.sms_in(PERSON, "Arrêt", opt_out_type="STOP")
    assert status == 200 and _message_text(twiml) is None
    assert await _status(gw) == "opted_out"


async def test_a_retried_webhook_is_applied_once(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    sid = "SM" + "a" * 32
    answers = await asyncio.gather(*[gw.sms_in(PERSON, "STOP", sid=sid) for _ in range(4)])
    assert all(status == 200 for status, _ in answers)
    confirmations = [t for _, t in answers if _message_text(t)]
    assert len(confirmations) == 1
    events = [e for e in await rows(gw.db, "consent_events", address=PERSON)
              if e.event == "opted_out"]
    assert len(events) == 1
    assert len(await rows(gw.db, "inbound_messages")) == 1


@pytest.mark.parametrize("case", ["forged", "missing", "other_campaign_token",
                                  "other_url", "tampered_body"])
async def test_a_bad_signature_is_403_and_changes_nothing(gw: Harness, case: str) -> None:
    from consentgate.testing.fakes.twilio_webhooks import inbound_sms_form, sign

    await gw.subscribe(PERSON)
    before = await counts(gw.db)
    path = f"/webhooks/twilio/{JANE}/sms"
    form = inbound_sms_form(PERSON, "+447400123456", "STOP")
    headers = {"X-Twilio-Signature": sign(JANE_AUTH, PUBLIC_URL + path, form)}
    if case == "forged":
        headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
    elif case == "missing":
        headers = {}
    elif case == "other_campaign_token":
        headers["X-Twilio-Signature"] = sign(BOB_AUTH, PUBLIC_URL + path, form)
    elif case == "other_url":
        headers["X-Twilio-Signature"] = sign(JANE_AUTH, PUBLIC_URL + f"/webhooks/twilio/{BOB}/sms",
                                             form)
    elif case == "tampered_body":
        form = {**form, "Body": "START"}
    async with gw.session.post(gw.url + path, data=form, headers=headers) as r:
        assert r.status == 403
        assert (await r.json())["code"] == "invalid_signature"
    assert await counts(gw.db) == before
    assert await _status(gw) == "subscribed"


async def test_a_signature_for_one_campaign_does_not_open_another(gw: Harness) -> None:
    # Bob's own token signs Bob's path: accepted there; it never reaches Jane's subscriber.
    await gw.subscribe(PERSON)
    status, _ = await gw.sms_in(PERSON, "STOP", campaign=BOB, auth_token=BOB_AUTH,
                                to=BOB_NUMBER, account_sid=BOB_SID)
    assert status == 200
    assert await _status(gw) == "subscribed"


async def test_unknown_campaign_and_bad_forms_are_4xx(gw: Harness) -> None:
    before = await counts(gw.db)
    status, _ = await gw.sms_in(PERSON, "STOP", campaign="nobody-2026")
    assert status == 404
    path = f"/webhooks/twilio/{JANE}/sms"
    form = {"Body": "STOP"}  # no From, no MessageSid
    async with await post_signed(gw.session, gw.url + path, form, JANE_AUTH,
                                 signature_url=PUBLIC_URL + path) as r:
        assert r.status == 422
    assert await counts(gw.db) == before


async def test_status_callback_records_delivery_and_21610(gw: Harness) -> None:
    await gw.subscribe(PERSON)
    status, sent = await gw.api("POST", "/api/v1/messages",
                                {"channel": "sms", "to": PERSON, "text": "hello"})
    [sms] = await gw.twilio.wait_for(1)
    assert sms.status_callback == f"{PUBLIC_URL}/webhooks/twilio/{JANE}/status?m={sent['id']}"
    path = f"/webhooks/twilio/{JANE}/status?m={sent['id']}"
    form = status_callback_form(sms.sid, "delivered", PERSON, JANE_NUMBER,
                                account_sid=JANE_SID)
    async with await post_signed(gw.session, gw.url + path, form, JANE_AUTH,
                                 signature_url=PUBLIC_URL + path) as r:
        assert r.status == 204
    _, view = await gw.api("GET", f"/api/v1/messages/{sent['id']}")
    assert (view["status"], view["provider_id"]) == ("delivered", sms.sid)
    form = status_callback_form(sms.sid, "undelivered", PERSON, JANE_NUMBER, "21610",
                                account_sid=JANE_SID)
    async with await post_signed(gw.session, gw.url + path, form, JANE_AUTH,
                                 signature_url=PUBLIC_URL + path) as r:
        assert r.status == 204
    assert await _status(gw) == "opted_out"
