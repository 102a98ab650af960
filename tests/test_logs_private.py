"""What reaches the logs: never an address, a link token, a bearer token or a message text.

A whole scenario (consent, send, STOP through a signed webhook, subject export, erasure,
failing requests, an unsubscribe, a join and its confirmation) runs on SQLite and on
PostgreSQL while every log line is captured through the gateway's own processor chain;
none may hold what the scenario used. The masking itself, the standard library's log
records and the database errors (``hide_parameters``) are checked apart.
"""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError, StatementError

from consentgate.bot.logs import RedactingFilter, processors, redact, redact_text
from consentgate.storage.db import Database
from consentgate.storage.models import processed_events
from consentgate.testing.harness import (
    BOB_TOKEN,
    JANE_AUDITOR,
    JANE_TOKEN,
    Harness,
    running_gateway,
)
from tests.dbutil import rows

PERSON = "+447911123456"
NATIONAL = "7911123456"
OTHER = "+447911123457"
EMAIL = "jane.supporter@example.org"
TEXT = "Polls open at 7am, St Mary's hall, bring your polling card"


async def _wait_sent(gw: Harness, message_id: int) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + 10
    while (await gw.api("GET", f"/api/v1/messages/{message_id}"))[1]["status"] != "sent":
        assert time.monotonic() < deadline, "the message was never sent"
        await asyncio.sleep(0.02)


async def _scenario(gw: Harness) -> list[str]:
    """Everything a campaign does with one person, and a few mistakes. Returns the link
    tokens it used."""
    await gw.subscribe(PERSON)
    await gw.subscribe(EMAIL, channel="email")
    code, sent = await gw.api("POST", "/api/v1/messages",
                              {"channel": "sms", "to": PERSON, "text": TEXT})
    assert code == 202, sent
    await _wait_sent(gw, sent["id"])
    code, _ = await gw.api("POST", "/api/v1/messages",
                           {"channel": "email", "to": EMAIL, "text": TEXT, "subject": TEXT})
    # failing requests: no token, a wrong token, the auditor changing something, unknown ids
    for token in (None, "wrong-token-0000"):
        code, _ = await gw.api("GET", f"/api/v1/subscribers/sms/{PERSON}", token=token)
        assert code == 401
    code, _ = await gw.api("DELETE", f"/api/v1/subjects/email/{EMAIL}", token=JANE_AUDITOR)
    assert code == 403
    code, _ = await gw.api("PATCH", f"/api/v1/subjects/sms/{OTHER}", {"restricted": True})
    assert code == 404
    code, _ = await gw.api("GET", "/api/v1/messages/999999")
    assert code == 404
    code, _ = await gw.api("GET", f"/api/v1/subscribers/sms/{PERSON}", token=BOB_TOKEN)
    assert code == 200  # another campaign: unknown to it
    code, _ = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": PERSON + "99", "method": "paper_form",
        "source": "stall", "evidence": "form"})
    assert code == 422
    # STOP through Twilio's signed webhook
    status, twiml = await gw.sms_in(PERSON, "STOP")
    assert status == 200 and "unsubscribed" in twiml
    # an unsubscribe link, fetched and pressed
    tokens = []
    url = gw.gateway.composer.unsubscribe_url("jane-2026", "email",
                                              gw.gateway.ledger.hash("email", EMAIL))
    tokens.append(url.rsplit("/", 1)[1])
    async with gw.session.get(f"{gw.url}/u/{tokens[0]}") as r:
        assert r.status == 200
    async with gw.session.post(f"{gw.url}/u/{tokens[0]}",
                               data={"List-Unsubscribe": "One-Click"}) as r:
        assert r.status == 200
    async with gw.session.get(f"{gw.url}/u/{tokens[0]}x") as r:
        assert r.status == 404
    # a join and its confirmation
    code, link = await gw.api("POST", "/api/v1/links", {"channel": "email", "name": "Poster"})
    assert code == 201, link
    joiner = "sam.joiner@example.net"
    async with gw.session.post(f"{gw.url}/join/{link['id']}",
                               data={"address": joiner, "consent": "yes", "website": ""}) as r:
        assert r.status == 200
    [confirm] = [m for m in await rows(gw.db, "messages", kind="confirm")]
    found = re.search(r"/confirm/([^\s/]+)", confirm.text)
    assert found is not None
    tokens.append(found.group(1))
    async with gw.session.get(f"{gw.url}/confirm/{tokens[1]}") as r:
        assert r.status == 200
    async with gw.session.post(f"{gw.url}/confirm/{tokens[1]}") as r:
        assert r.status < 500
    # access and erasure
    code, export = await gw.api("GET", f"/api/v1/subjects/sms/{PERSON}")
    assert code == 200 and export["address"] == PERSON
    code, erased = await gw.api("DELETE", f"/api/v1/subjects/sms/{PERSON}")
    assert code == 200, erased
    code, _ = await gw.api("DELETE", f"/api/v1/subjects/email/{joiner}")
    assert code == 200
    return tokens


class _Lines(logging.Handler):
    """The standard library's log lines, as the configured handler would write them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_no_log_line_holds_an_address_a_token_or_a_text(db_url: str) -> None:
    stdlib = _Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(stdlib)
    root.setLevel(logging.INFO)
    # An in-process command run by an earlier test (configure_logging) quietens these.
    libraries = {name: logging.getLogger(name).level for name in ("twilio", "alembic")}
    for name in libraries:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        with structlog.testing.capture_logs(processors=processors()) as entries:
            async with running_gateway(db_url) as gw:
                tokens = await _scenario(gw)
    finally:
        root.removeHandler(stdlib)
        root.setLevel(level)
        for name, was in libraries.items():
            logging.getLogger(name).setLevel(was)
    lines = [json.dumps(e, default=str, ensure_ascii=False) for e in entries]
    lines += stdlib.lines
    assert stdlib.lines  # the libraries did log (twilio's client, alembic ...)
    forbidden = [PERSON, NATIONAL, OTHER, "07911123456", EMAIL, "jane.supporter", "sam.joiner",
                 TEXT, "St Mary", JANE_TOKEN, JANE_AUDITOR, BOB_TOKEN, "wrong-token-0000",
                 *tokens]
    leaks = [(word, line) for line in lines for word in forbidden if word in line]
    assert leaks == []
    # The scenario was logged (so the check above had something to look at): requests
    # refused with their masked path, the STOP, the erasure.
    events = {e.get("event") for e in entries}
    assert {"request.refused", "inbound.applied", "subject.erased"} <= events, events
    paths = {e.get("path") for e in entries if e.get("event") == "request.refused"}
    assert "/api/v1/subscribers/sms/+44***56" in paths, paths
    assert any(e.get("path") == "/u/***" for e in entries), "no /u/ request logged"


# -- the masking ----------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "masked"), [
    ("/api/v1/subjects/sms/+447911123456", "/api/v1/subjects/sms/+44***56"),
    ("/api/v1/subscribers/email/jane@example.org", "/api/v1/subscribers/email/j***@example.org"),
    ("/api/v1/subjects/telegram/123456789", "/api/v1/subjects/telegram/123***89"),
    ("/api/v1/subjects/sms/07911 123456", "/api/v1/subjects/sms/079***56"),
    ("/u/eyJjIjoiamFuZSJ9.abc-DEF", "/u/***"),
    ("/confirm/eyJjIjoiamFuZSJ9.abc", "/confirm/***"),
    ("see https://gateway.example.org/u/abc.def in the footer",
     "see https://gateway.example.org/u/*** in the footer"),
    ("Authorization: Bearer jane-organiser-token-0001", "Authorization: Bearer ***"),
    ("POST https://api.telegram.org/bot123456:AAH-x_y/sendMessage",
     "POST https://api.telegram.org/bot***/sendMessage"),
    ("to +44 7911 123456 or %2B447911123456", "to +44***56 or +44***56"),
    ("bounce+tok123@mail.example.org", "b***@mail.example.org"),
    ("/api/v1/messages/12345678", "/api/v1/messages/12345678"),
    ("2026-12-01T21:19:09.123456Z", "2026-12-01T21:19:09.123456Z"),
    ("sms#1234567890abcdef", "sms#1234567890abcdef"),
    ("+44***56 and j***@example.org", "+44***56 and j***@example.org"),
])
def test_redact_text_masks_addresses_and_tokens_and_keeps_the_rest(raw: str,
                                                                   masked: str) -> None:
    assert redact_text(raw) == masked
    assert redact_text(masked) == masked  # masking twice changes nothing


def test_redact_shows_texts_as_their_length_and_never_a_secret() -> None:
    line = redact(None, "info", {
        "event": "x", "text": TEXT, "body": "hi", "token": "abc", "auth_token": "def",
        "user": 4242, "chat_id": "-1001234567890", "count": 1234567,
        "detail": {"to": PERSON, "items": [EMAIL]}})
    assert line == {"event": "x", "text": f"<{len(TEXT)} chars>", "body": "<2 chars>",
                    "token": "***", "auth_token": "***", "user": "***",
                    "chat_id": "-10***90", "count": 1234567,
                    "detail": {"to": "+44***56", "items": ["j***@example.org"]}}


_digits = st.text("0123456789", min_size=9, max_size=9)
_glue = st.sampled_from([" ", "/", ": ", "=", "(", ")", ", ", "\n", "'", '"', "?to=", "#"])


@settings(max_examples=300, deadline=None)
@given(_digits, _glue, _glue, st.text(max_size=20), st.booleans())
def test_no_uk_mobile_number_survives_whatever_surrounds_it(
        digits: str, before: str, after: str, noise: str, plus: bool) -> None:
    national = "7" + digits
    number = ("+44" if plus else "0") + national
    line = redact_text(noise + before + number + after + noise)
    assert national not in line


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z][a-z0-9._+-]{0,15}", fullmatch=True),
       st.sampled_from(["example.org", "mail.example.co.uk", "x-y.example"]), _glue, _glue)
def test_no_email_address_survives_whatever_surrounds_it(local: str, domain: str,
                                                        before: str, after: str) -> None:
    address = f"{local}@{domain}"
    line = redact_text(f"user{before}{address}{after}end")
    assert address not in line
    assert f"{local}@" not in line or len(local) == 1


def test_standard_library_records_are_masked_with_their_traceback() -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request to %s", ("/u/secret.token",), None)
    try:
        raise ValueError(f"bad number {PERSON}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "secret.token" not in text and PERSON not in text
    assert "/u/***" in text and "+44***56" in text


# -- the database's errors --------------------------------------------------------------------

async def test_a_failed_statement_does_not_show_its_parameters(db_url: str) -> None:
    """A traceback in the log carries the error's text: it names the SQL, never the values
    bound to it (people's numbers and texts)."""
    db = Database(db_url)
    try:
        await db.migrate()
        row = {"campaign": "jane-2026", "channel": "sms", "event_id": f"{PERSON} {TEXT}",
               "at": 1.0}
        async with db.write() as conn:
            await conn.execute(insert(processed_events).values(**row))
        with pytest.raises(DBAPIError) as duplicate:
            async with db.write() as conn:
                await conn.execute(insert(processed_events).values(**row))
        failures: list[BaseException] = [duplicate.value]
        if not db.is_sqlite:  # PostgreSQL refuses NUL in text
            with pytest.raises(StatementError) as nul:
                async with db.write() as conn:
                    await conn.execute(insert(processed_events).values(
                        **{**row, "event_id": f"{PERSON}\x00{TEXT}"}))
            failures.append(nul.value)
        for exc in failures:
            text = f"{exc} {exc!r}"
            assert "processed_events" in text  # the statement is still named
            assert PERSON not in text and TEXT not in text, text
    finally:
        await db.dispose()


def test_a_record_whose_arguments_do_not_fit_its_format_is_still_masked() -> None:
    record = logging.LogRecord("some.library", logging.WARNING, __file__, 1,
                               "sent %s to %s", (PERSON,), None)
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert PERSON not in text and "+44***56" in text
