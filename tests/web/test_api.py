"""The operators' API: tokens and roles, campaign isolation, problem+json errors, and bad
input that changes nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from consentgate.testing.harness import BOB_TOKEN, JANE_AUDITOR, Harness
from tests.dbutil import counts, rows
from tests.procs import eventually

NUMBER = "+447911123456"


async def test_missing_or_wrong_token_is_401(gw: Harness) -> None:
    for token in (None, "not-a-token", ""):
        status, body = await gw.api("GET", "/api/v1/replies", token=token)
        assert status == 401
        assert body["code"] == "unauthorized"
        assert set(body) >= {"type", "title", "status", "detail", "code"}


async def test_the_auditor_reads_but_every_change_is_403(gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    before = await counts(gw.db)
    changes = [
        ("POST", "/api/v1/consents", {"channel": "sms", "address": "07911 123457",
                                      "method": "verbal", "source": "x", "evidence": "y"}),
        ("POST", "/api/v1/opt-outs", {"channel": "sms", "address": NUMBER}),
        ("POST", "/api/v1/messages", {"channel": "sms", "to": NUMBER, "text": "hi"}),
        ("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "hi"}),
        ("POST", "/api/v1/broadcasts/1/cancel", {}),
        ("POST", "/api/v1/broadcasts/1/resume", {}),
    ]
    for method, path, body in changes:
        status, answer = await gw.api(method, path, body, token=JANE_AUDITOR)
        assert status == 403, path
        assert answer["code"] == "forbidden"
    assert await counts(gw.db) == before
    status, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{NUMBER}", token=JANE_AUDITOR)
    assert status == 200 and sub["status"] == "subscribed"
    status, audit = await gw.api("GET", "/api/v1/audit", token=JANE_AUDITOR)
    assert status == 200 and any(a["action"] == "consent.recorded" for a in audit)


async def test_another_campaigns_token_never_sees_this_campaigns_data(gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    status, sent = await gw.api("POST", "/api/v1/messages",
                                {"channel": "sms", "to": NUMBER, "text": "Jane here"})
    assert status == 202
    status, _ = await gw.api("GET", f"/api/v1/messages/{sent['id']}", token=BOB_TOKEN)
    assert status == 404
    status, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{NUMBER}", token=BOB_TOKEN)
    assert status == 200
    assert sub["status"] == "unknown" and sub["history"] == [] and not sub["can_send"]
    status, audit = await gw.api("GET", "/api/v1/audit", token=BOB_TOKEN)
    assert all(a["actor"] != "Jane Doe" for a in audit)
    # Jane's consent never carries over to Bob's campaign.
    status, refused = await gw.api("POST", "/api/v1/messages",
                                   {"channel": "sms", "to": NUMBER, "text": "Bob here"},
                                   token=BOB_TOKEN)
    assert (status, refused["code"]) == (403, "no_consent")


async def test_consent_is_recorded_with_its_evidence_and_operator(gw: Harness) -> None:
    status, body = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": "07911 123456", "method": "paper_form",
        "source": "Market St stall", "evidence": "form #12"})
    assert (status, body) == (201, {"channel": "sms", "address": NUMBER,
                                    "status": "subscribed"})
    [event] = await rows(gw.db, "consent_events", address=NUMBER)
    assert (event.method, event.source, event.evidence, event.actor) == (
        "paper_form", "Market St stall", "form #12", "Jane Doe")
    assert event.consent_text_version
    status, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{NUMBER}")
    assert sub["can_send"] is True and sub["reason"] is None
    assert sub["history"][0]["actor"] == "Jane Doe"


BAD_CONSENTS = [
    ({"channel": "sms", "address": "12", "method": "verbal", "source": "s", "evidence": "e"},
     422, "invalid_address"),
    ({"channel": "fax", "address": NUMBER, "method": "verbal", "source": "s",
      "evidence": "e"}, 422, "invalid_channel"),
    ({"channel": "sms", "address": NUMBER, "method": "verbal", "source": "",
      "evidence": "e"}, 422, "missing_evidence"),
    ({"channel": "sms", "address": NUMBER, "method": "verbal", "source": "s"},
     422, "missing_evidence"),
    ({"channel": "sms", "address": NUMBER, "method": "import",
      "source": "the Society Group Chat export", "evidence": "e"}, 422, "denied_source"),
    ({"channel": "sms", "address": NUMBER, "method": "scraped", "source": "s",
      "evidence": "e"}, 422, "invalid_method"),
    ({"channel": "telegram", "address": "42", "method": "verbal", "source": "s",
      "evidence": "e"}, 422, "channel_disabled"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_CONSENTS)
async def test_bad_consents_are_refused_and_change_nothing(
        gw: Harness, body: dict[str, str], status: int, code: str) -> None:
    before = await counts(gw.db)
    got, answer = await gw.api("POST", "/api/v1/consents", body)
    assert (got, answer["code"]) == (status, code)
    assert await counts(gw.db) == before


@pytest.mark.parametrize(("raw", "code"), [
    ("{not json", "malformed_json"),
    ("[1, 2]", "invalid_body"),
    ("", "malformed_json"),
    ('"text"', "invalid_body"),
])
async def test_malformed_bodies_get_400_and_change_nothing(gw: Harness, raw: str,
                                                           code: str) -> None:
    before = await counts(gw.db)
    for path in ("/api/v1/consents", "/api/v1/messages", "/api/v1/opt-outs",
                 "/api/v1/broadcasts"):
        status, answer = await gw.api("POST", path, raw=raw)
        assert (status, answer["code"]) == (400, code), path
    assert await counts(gw.db) == before


async def test_an_oversized_body_is_413_and_changes_nothing(gw: Harness) -> None:
    before = await counts(gw.db)
    huge = json.dumps({"channel": "sms", "to": NUMBER, "text": "x" * 2_000_000})
    status, answer = await gw.api("POST", "/api/v1/messages", raw=huge)
    assert (status, answer["code"]) == (413, "body_too_large")
    assert await counts(gw.db) == before


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"channel": "sms", "to": "not a number", "text": "hi"}, 422, "invalid_address"),
    ({"channel": "sms", "to": NUMBER, "text": ""}, 422, "invalid_text"),
    ({"channel": "sms", "to": NUMBER, "text": 5}, 422, "invalid_text"),
    ({"channel": "sms", "to": NUMBER, "text": "x" * 5000}, 422, "invalid_text"),
    ({"channel": "sms", "to": NUMBER, "text": "hi"}, 403, "no_consent"),
    ({"channel": "telegram", "to": "42", "text": "hi"}, 403, "channel_disabled"),
])
async def test_bad_messages_are_refused_and_change_nothing(gw: Harness, body: dict[str, object],
                                                          status: int, code: str) -> None:
    before = await counts(gw.db)
    got, answer = await gw.api("POST", "/api/v1/messages", body)
    assert (got, answer["code"]) == (status, code)
    assert await counts(gw.db) == before


async def test_unknown_ids_and_paths_are_404_problems(gw: Harness) -> None:
    for path in ("/api/v1/messages/999", "/api/v1/messages/abc", "/api/v1/broadcasts/7",
                 "/api/v1/nothing-here"):
        status, body = await gw.api("GET", path)
        assert status == 404 and body["status"] == 404, path


async def test_operators_cannot_resubscribe_an_opted_out_address(gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    status, _ = await gw.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": NUMBER,
                                                          "reason": "asked at the door"})
    assert status == 201
    before = await counts(gw.db)
    status, body = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": NUMBER, "method": "paper_form", "source": "stall",
        "evidence": "form #13"})
    assert (status, body["code"]) == (409, "opted_out")
    assert await counts(gw.db) == before
    status, refused = await gw.api("POST", "/api/v1/messages",
                                   {"channel": "sms", "to": NUMBER, "text": "hi"})
    assert (status, refused["code"]) == (403, "opted_out")


async def test_an_idempotency_key_sends_once(gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    body = {"channel": "sms", "to": NUMBER, "text": "Polls close at 10pm"}
    answers = await asyncio.gather(*[
        gw.api("POST", "/api/v1/messages", body, headers={"Idempotency-Key": "eve-1"})
        for _ in range(5)])
    assert {a[0] for a in answers} == {202}
    assert len({a[1]["id"] for a in answers}) == 1
    await gw.twilio.wait_for(1)
    status, again = await gw.api("POST", "/api/v1/messages", body,
                                 headers={"Idempotency-Key": "eve-1"})
    assert (status, again) == (202, answers[0][1])
    status, other = await gw.api("POST", "/api/v1/messages", {**body, "text": "changed"},
                                 headers={"Idempotency-Key": "eve-1"})
    assert (status, other["code"]) == (422, "idempotency_key_reused")
    assert len(await rows(gw.db, "messages")) == 1
    # Dispatched once: only one SMS ever reaches the provider for that key.
    async def sent() -> bool:
        _, view = await gw.api("GET", f"/api/v1/messages/{answers[0][1]['id']}")
        return bool(view["status"] == "sent")
    await eventually(sent, what="message recorded as sent")
    assert len(gw.twilio.sent_to(NUMBER)) == 1


async def test_consent_import_keeps_good_rows_and_lists_bad_ones(gw: Harness) -> None:
    await gw.subscribe("+447911000001")
    await gw.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": "+447911000001"})
    csv = ("channel,address,method,source,evidence\n"
           "sms,07911 000002,paper_form,stall,form 1\n"
           "sms,bogus,paper_form,stall,form 2\n"
           "sms,07911 000003,paper_form,,form 3\n"
           "sms,07911 000004,import,union mailing list,row 9\n"
           "sms,07911 000001,paper_form,stall,form 5\n"
           "email,jane@example.org,web_form,site,ip 1.2.3.4\n")
    status, report = await gw.api("POST", "/api/v1/consents/import", raw=csv,
                                  headers={"Content-Type": "text/csv"})
    assert status == 200
    assert report["imported"] == 2
    assert [(r["line"], r["code"]) for r in report["rejected"]] == [
        (3, "invalid_address"), (4, "missing_evidence"), (5, "denied_source"),
        (6, "opted_out")]
    status, sub = await gw.api("GET", "/api/v1/subscribers/sms/+447911000002")
    assert sub["status"] == "subscribed"
    status, sub = await gw.api("GET", "/api/v1/subscribers/sms/+447911000001")
    assert sub["status"] == "opted_out"
    audit = [a for a in (await gw.api("GET", "/api/v1/audit"))[1]
             if a["action"] == "consents.imported"]
    assert len(audit) == 1 and "sha256" in audit[0]["detail"]


async def test_an_import_with_a_wrong_header_is_refused_whole(gw: Harness) -> None:
    before = await counts(gw.db)
    status, body = await gw.api("POST", "/api/v1/consents/import",
                                raw="phone,name\n07911000002,Ann\n")
    assert (status, body["code"]) == (422, "invalid_csv")
    assert await counts(gw.db) == before


async def test_metrics_and_health(gw: Harness) -> None:
    status, text = await gw.api("GET", "/metrics", token=None)
    assert status == 200 and "consentgate_messages_total" in text
    assert "consentgate_gate_refusals_total" in text
