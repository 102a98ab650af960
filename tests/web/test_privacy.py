"""Data rights over the API: subject access, erasure (down to the bytes of the database
file), re-consent after erasure, rectification, restriction, the suppression list as CSV,
and the auditor who may read all of it and change none of it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from consentgate.storage import models
from consentgate.testing.harness import (
    BOB_TOKEN,
    JANE,
    JANE_AUDITOR,
    Harness,
    running_gateway,
)
from tests.dbutil import counts, rows
from tests.procs import eventually

NUMBER = "+447911123456"
NATIONAL = "07911123456"
EMAIL = "ann.voter@example.org"
OTHER = "+447911123999"
CSV = {"Content-Type": "text/csv"}


async def _message_status(gw: Harness, message_id: int, wanted: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        _, view = await gw.api("GET", f"/api/v1/messages/{message_id}")
        return view if view["status"] == wanted else None
    result: dict[str, Any] = await eventually(check, timeout=15, what=f"message {wanted}")
    return result


async def _send(gw: Harness, to: str, text: str, token: str | None = None,
                channel: str = "sms", key: str | None = None) -> int:
    headers = {"Idempotency-Key": key} if key else None
    if token is None:
        status, body = await gw.api("POST", "/api/v1/messages",
                                    {"channel": channel, "to": to, "text": text},
                                    headers=headers)
    else:
        status, body = await gw.api("POST", "/api/v1/messages",
                                    {"channel": channel, "to": to, "text": text},
                                    token=token, headers=headers)
    assert status == 202, body
    return int(body["id"])


async def test_subject_access_export_has_the_whole_history_and_nothing_of_bob(
        gw: Harness) -> None:
    status, _ = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": "07911 123456", "method": "paper_form",
        "source": "Market St stall", "evidence": "signed form #12"})
    assert status == 201
    await gw.subscribe(NUMBER, token=BOB_TOKEN, source="Bob's hustings sheet")
    jane_msg = await _send(gw, NUMBER, "Jane: polls open at 7am")
    await _send(gw, NUMBER, "Bob: remember to vote Bob", token=BOB_TOKEN)
    await _message_status(gw, jane_msg, "sent")
    assert (await gw.sms_in(NUMBER, "Thanks, see you at the count"))[0] == 200
    assert (await gw.sms_in(NUMBER, "Bob, what is your policy?", campaign="bob-2026",
                            auth_token="bob-twilio-auth-token", to="+447400654321",
                            account_sid="AC" + "2" * 32))[0] == 200

    status, export = await gw.api("GET", "/api/v1/subjects/sms/07911%20123456")
    assert status == 200
    assert export["address"] == NUMBER and export["status"] == "subscribed"
    assert export["campaign"]["slug"] == JANE
    [consent] = export["consent_history"]
    assert (consent["event"], consent["method"], consent["source"], consent["evidence"],
            consent["recorded_by"]) == ("subscribed", "paper_form", "Market St stall",
                                        "signed form #12", "Jane Doe")
    assert consent["consent_text"].startswith("Yes, send me updates about Jane")
    [message] = export["messages"]
    assert message["text"] == "Jane: polls open at 7am" and message["status"] == "sent"
    assert message["sent_at"] and message["queued_at"]
    assert [r["text"] for r in export["replies"]] == ["Thanks, see you at the count"]
    assert export["suppression"] is None
    assert {"consent.recorded", "message.queued"} <= {a["action"]
                                                      for a in export["audit_trail"]}
    text = json.dumps(export)
    for bobs in ("Bob", "bob-2026", "hustings", "policy"):
        assert bobs not in text, bobs


async def test_subject_access_export_lists_joins_through_a_link(sqlite_url: str) -> None:
    async with running_gateway(sqlite_url,
                               jane_extra='join_keywords = { HALL = "hall-link-0001" }') as gw:
        async with gw.db.write() as conn:
            await conn.execute(models.links.insert().values(
                id="hall-link-0001", campaign=JANE, channel="sms", name="Town hall poster",
                url="https://gateway.example.org/join/hall-link-0001", joins=0,
                created_by="Jane Doe", created_at=0.0))
        assert (await gw.sms_in(NUMBER, "JOIN HALL"))[0] == 200
        status, export = await gw.api("GET", f"/api/v1/subjects/sms/{NUMBER}")
        assert status == 200 and export["status"] == "subscribed"
        [join] = export["link_joins"]
        assert (join["link_id"], join["link_name"]) == ("hall-link-0001", "Town hall poster")
        assert export["consent_history"][0]["link"]["name"] == "Town hall poster"


def _needles() -> list[bytes]:
    return [s.encode() for s in (NUMBER, NATIONAL, NUMBER[1:], "7911123456", EMAIL,
                                 EMAIL.upper(), "Ann Voter")]


async def _where_is(gw: Harness, needles: list[bytes]) -> list[str]:
    """Every table row that still holds one of ``needles`` in any column."""
    found = []
    async with gw.db.read() as conn:
        for name, table in models.metadata.tables.items():
            for row in (await conn.execute(select(table))).all():
                blob = repr(tuple(row)).encode()
                found += [f"{name}: {n.decode()}" for n in needles if n.lower() in
                          blob.lower()]
    return found


async def test_erasure_leaves_the_address_in_no_table_and_no_byte_of_the_file(
        sqlite_url: str) -> None:
    db_file = Path(sqlite_url.split("///", 1)[1])
    async with running_gateway(sqlite_url) as gw:
        await gw.subscribe(NUMBER)
        await gw.subscribe(EMAIL, channel="email")
        await gw.subscribe(OTHER)
        sent = await _send(gw, NUMBER, "Hi Ann Voter, polls open at 7am", key="ann-1")
        await _send(gw, EMAIL, "Hi Ann Voter, by email", channel="email")
        await _message_status(gw, sent, "sent")
        await gw.sms_in(NUMBER, f"This is Ann Voter, {NATIONAL}, my email is {EMAIL}")
        await gw.sms_in(NUMBER, "STOP")
        await gw.sms_in(NUMBER, "START")
        assert await _where_is(gw, _needles())  # the test looks in the right places

        for channel, address in (("sms", "07911 123456"), ("email", EMAIL.upper())):
            status, erased = await gw.api("DELETE", f"/api/v1/subjects/{channel}/{address}")
            assert status == 200, erased
            assert erased["erased"] is True and erased["removed"]["subscriptions"] == 1
            assert erased["file_scrubbed"] is True

        assert await _where_is(gw, _needles()) == []
        [supp] = await rows(gw.db, "suppressions", channel="sms")
        assert supp.address is None and supp.reason == "erased"
        assert supp.address_hash == gw.gateway.ledger.hash("sms", NUMBER)
        # Counts stay: the messages and consent records are there, without the person.
        [message] = await rows(gw.db, "messages", channel="sms")
        assert (message.status, message.address, message.text) == ("sent", None, None)
        events = await rows(gw.db, "consent_events", channel="sms")
        assert [e.event for e in events if e.address is None] == [
            "subscribed", "opted_out", "subscribed"]
        # Another subscriber is untouched.
        status, other = await gw.api("GET", f"/api/v1/subscribers/sms/{OTHER}")
        assert other["status"] == "subscribed"
        _, audit = await gw.api("GET", "/api/v1/audit?action=subject.erased")
        assert len(audit) == 2 and all("#" in a["subject"] for a in audit)
    for path in (db_file, db_file.with_name(db_file.name + "-wal")):
        if path.exists():
            data = path.read_bytes()
            assert [n for n in _needles() if n.lower() in data.lower()] == [], path


async def test_after_erasure_operators_and_imports_get_409_but_the_person_may_return(
        gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    status, _ = await gw.api("DELETE", f"/api/v1/subjects/sms/{NUMBER}")
    assert status == 200
    status, refused = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": NUMBER, "method": "paper_form", "source": "stall",
        "evidence": "form #14"})
    assert (status, refused["code"]) == (409, "suppressed")
    status, refused = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": NUMBER, "method": "verbal", "source": "doorstep",
        "evidence": "asked"}, token=BOB_TOKEN)
    assert (status, refused["code"]) == (409, "suppressed")
    status, report = await gw.api("POST", "/api/v1/consents/import", raw=(
        "channel,address,method,source,evidence\n"
        f"sms,{NATIONAL},paper_form,stall,form 15\n"), headers=CSV)
    assert status == 200 and report["imported"] == 0
    assert [r["code"] for r in report["rejected"]] == ["suppressed"]
    # An opt-out list naming the erased address does not bring the address back.
    status, report = await gw.api("POST", "/api/v1/suppressions/import", raw=(
        f"channel,address,reason\nsms,{NUMBER},old platform\n"), headers=CSV)
    assert status == 200 and report["rejected"] == []
    assert await rows(gw.db, "subscriptions", address=NUMBER) == []
    status, refused = await gw.api("POST", "/api/v1/messages",
                                   {"channel": "sms", "to": NUMBER, "text": "hi"})
    assert (status, refused["code"]) == (403, "suppressed")
    # Only the person can opt in again, and then they can be messaged.
    assert (await gw.sms_in(NUMBER, "START"))[0] == 200
    status, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{NUMBER}")
    assert sub["status"] == "subscribed" and sub["can_send"] is True


async def test_rectification_moves_the_records_to_the_corrected_address(gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    await _message_status(gw, await _send(gw, NUMBER, "Welcome"), "sent")
    await gw.subscribe(OTHER)
    status, problem = await gw.api("PATCH", f"/api/v1/subjects/sms/{NUMBER}",
                                   {"address": OTHER})
    assert (status, problem["code"]) == (409, "address_in_use")
    corrected = "+447911123465"
    status, answer = await gw.api("PATCH", f"/api/v1/subjects/sms/{NUMBER}",
                                  {"address": "07911 123465"})
    assert status == 200, answer
    assert answer["address"] == corrected and answer["moved"]["consent_events"] == 1
    _, old = await gw.api("GET", f"/api/v1/subjects/sms/{NUMBER}")
    assert old["status"] == "unknown" and old["consent_history"] == old["messages"] == []
    _, new = await gw.api("GET", f"/api/v1/subjects/sms/{corrected}")
    assert new["status"] == "subscribed"
    assert [c["evidence"] for c in new["consent_history"]] == ["signed form"]
    assert [m["text"] for m in new["messages"]] == ["Welcome"]
    status, _ = await gw.api("PATCH", "/api/v1/subjects/sms/+447911000999",
                             {"address": "+447911000998"})
    assert status == 404
    _, audit = await gw.api("GET", "/api/v1/audit?action=subject.rectified")
    assert len(audit) == 1 and audit[0]["actor"] == "Jane Doe"


async def test_restriction_keeps_the_data_and_stops_every_send(sqlite_url: str) -> None:
    async with running_gateway(sqlite_url, dispatch=False) as gw:
        await gw.subscribe(NUMBER)
        await gw.subscribe(OTHER)
        queued = await _send(gw, NUMBER, "queued before the restriction")
        status, answer = await gw.api("PATCH", f"/api/v1/subjects/sms/{NUMBER}",
                                      {"restricted": True})
        assert (status, answer["restricted"]) == (200, True)
        status, refused = await gw.api("POST", "/api/v1/messages",
                                       {"channel": "sms", "to": NUMBER, "text": "hi"})
        assert (status, refused["code"]) == (403, "no_consent")
        status, dry = await gw.api("POST", "/api/v1/broadcasts",
                                   {"channel": "sms", "text": "all", "dry_run": True})
        assert dry["audience"]["eligible"] == 1
        gw.runs.append(asyncio.create_task(gw.gateway.dispatcher.run()))
        view = await _message_status(gw, queued, "blocked")
        assert view["reason"] == "no_consent"
        assert gw.twilio.sent_to(NUMBER) == []
        _, export = await gw.api("GET", f"/api/v1/subjects/sms/{NUMBER}")
        assert export["restricted"] is True and len(export["consent_history"]) == 1
        # A consent import does not lift a restriction the person asked for.
        await gw.api("POST", "/api/v1/consents/import", raw=(
            "channel,address,method,source,evidence\n"
            f"sms,{NUMBER},paper_form,stall,form 16\n"), headers=CSV)
        [sub] = await rows(gw.db, "subscriptions", address=NUMBER)
        assert sub.restricted
        status, answer = await gw.api("PATCH", f"/api/v1/subjects/sms/{NUMBER}",
                                      {"restricted": False})
        assert status == 200 and answer["restricted"] is False
        sent = await _send(gw, NUMBER, "after the restriction was lifted")
        await _message_status(gw, sent, "sent")


async def test_a_suppression_list_moves_with_the_campaign(gw: Harness, tmp_path: Path,
                                                          ) -> None:
    await gw.subscribe(NUMBER)
    await gw.subscribe(OTHER)
    status, report = await gw.api("POST", "/api/v1/suppressions/import", raw=(
        "channel,address,reason\n"
        "sms,07911 000001,unsubscribed on old platform\n"
        f"sms,{NUMBER},asked by phone\n"
        "sms,not a number,x\n"
        "fax,123,x\n"
        "email,Someone@Example.org,bounced\n"), headers=CSV)
    assert status == 200
    assert report["imported"] == 3
    assert [(r["line"], r["code"]) for r in report["rejected"]] == [
        (4, "invalid_address"), (5, "invalid_channel")]
    status, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{NUMBER}")
    assert sub["status"] == "opted_out"
    await gw.sms_in(OTHER, "STOPALL")
    await gw.subscribe("+447911222333")
    await gw.api("DELETE", "/api/v1/subjects/sms/+447911222333")
    _, audit = await gw.api("GET", "/api/v1/audit?action=opt_outs.imported")
    assert len(audit) == 1 and "sha256" in audit[0]["detail"]

    async with gw.session.get(gw.url + "/api/v1/suppressions",
                              headers={"Authorization": f"Bearer {JANE_AUDITOR}"}) as r:
        assert r.status == 200 and r.content_type == "text/csv"
        exported = await r.text()
    listed = list(csv.DictReader(io.StringIO(exported)))
    by_address = {row["address"]: row for row in listed}
    assert by_address["+447911000001"]["reason"] == "unsubscribed on old platform"
    assert by_address[NUMBER]["reason"] == "asked by phone"
    assert by_address["someone@example.org"]["reason"] == "bounced"
    assert by_address[OTHER]["reason"] == "stop_all"
    erased_hash = gw.gateway.ledger.hash("sms", "+447911222333")
    assert by_address[f"hmac-sha256:{erased_hash}"]["reason"] == "erased"
    assert "+447911222333" not in exported
    assert all(row["at"] for row in listed)
    # Nothing of another campaign.
    async with gw.session.get(gw.url + "/api/v1/suppressions",
                              headers={"Authorization": f"Bearer {BOB_TOKEN}"}) as r:
        bobs = list(csv.DictReader(io.StringIO(await r.text())))
    assert {row["address"] for row in bobs} <= {OTHER, f"hmac-sha256:{erased_hash}"}

    # The same list imported into a new gateway with the same secret blocks the same people.
    async with running_gateway(f"sqlite+aiosqlite:///{tmp_path / 'moved.db'}") as moved:
        status, report = await moved.api("POST", "/api/v1/suppressions/import",
                                         raw=exported, headers=CSV)
        assert status == 200 and report["rejected"] == []
        for address in ("+447911222333", NUMBER, "+447911000001"):
            status, refused = await moved.api("POST", "/api/v1/consents", {
                "channel": "sms", "address": address, "method": "paper_form",
                "source": "stall", "evidence": "form"})
            assert status == 409, address


async def test_the_auditor_reads_every_data_right_and_changes_nothing(gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    before = await counts(gw.db)
    subject = f"/api/v1/subjects/sms/{NUMBER}"
    for method, path, body, raw in (
        ("DELETE", subject, None, None),
        ("PATCH", subject, {"restricted": True}, None),
        ("PATCH", subject, {"address": OTHER}, None),
        ("POST", "/api/v1/suppressions/import", None, f"channel,address,reason\nsms,{NUMBER},x\n"),
        ("POST", "/api/v1/consents/import", None,
         f"channel,address,method,source,evidence\nsms,{OTHER},verbal,s,e\n"),
        ("POST", "/api/v1/consents", {"channel": "sms", "address": OTHER,
                                      "method": "verbal", "source": "s", "evidence": "e"},
         None),
    ):
        status, answer = await gw.api(method, path, body, raw=raw, token=JANE_AUDITOR)
        assert (status, answer["code"]) == (403, "forbidden"), (method, path)
    assert await counts(gw.db) == before
    for path in (subject, "/api/v1/suppressions", "/api/v1/report", "/api/v1/audit",
                 "/api/v1/replies", f"/api/v1/subscribers/sms/{NUMBER}"):
        status, _ = await gw.api("GET", path, token=JANE_AUDITOR)
        assert status == 200, path
    status, sub = await gw.api("GET", f"/api/v1/subscribers/sms/{NUMBER}")
    assert sub["status"] == "subscribed"


async def test_subject_requests_check_their_input(gw: Harness) -> None:
    for method, path, body, code in (
        ("GET", "/api/v1/subjects/fax/123", None, "invalid_channel"),
        ("GET", "/api/v1/subjects/sms/not-a-number", None, "invalid_address"),
        ("DELETE", "/api/v1/subjects/sms/12", None, "invalid_address"),
        ("PATCH", f"/api/v1/subjects/sms/{NUMBER}", {"restricted": "yes"},
         "invalid_restricted"),
        ("PATCH", f"/api/v1/subjects/sms/{NUMBER}", {"name": "x"}, "unknown_field"),
        ("PATCH", f"/api/v1/subjects/sms/{NUMBER}", {}, "invalid_body"),
        ("PATCH", f"/api/v1/subjects/sms/{NUMBER}", {"address": "nope"}, "invalid_address"),
    ):
        status, answer = await gw.api(method, path, body)
        assert (status, answer["code"]) == (422, code), (method, path, answer)
    status, answer = await gw.api("PATCH", f"/api/v1/subjects/sms/{NUMBER}",
                                  {"restricted": True})
    assert (status, answer["code"]) == (404, "subject_not_found")
    status, _ = await gw.api("GET", f"/api/v1/subjects/sms/{NUMBER}", token=None)
    assert status == 401
