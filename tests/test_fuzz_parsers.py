"""Every parser of outside input either reads it or refuses it with our own error.

Twilio's forms, Telegram's Update JSON, received mail and CSV imports come from the outside
world: whatever arrives, the parser returns a value or raises ``ValueError`` /
:class:`bot.errors.InvalidInput`, never anything else (an ``AttributeError`` deep in a parser
is a 500 at the edge). The HTTP layer is fuzzed the same way: random bodies to every API
``POST`` endpoint and webhook get a 4xx or 2xx answer, never a 5xx.
"""

from __future__ import annotations

import json
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consentgate.adapters.smtp_inbound import parse_inbound_mail
from consentgate.adapters.telegram import parse_update
from consentgate.adapters.twilio_sms import parse_inbound_sms, parse_status_callback
from consentgate.bot.errors import InvalidInput
from consentgate.bot.imports import CONSENT_HEADER, OPT_OUT_HEADER, _rows
from consentgate.bot.web.app import create_app
from consentgate.testing.fakes.telegram_api import FakeTelegram
from consentgate.testing.fakes.twilio_webhooks import inbound_sms_form, post_signed
from consentgate.testing.harness import (
    JANE,
    JANE_AUTH,
    JANE_NUMBER,
    JANE_SID,
    JANE_TOKEN,
    PUBLIC_URL,
    TELEGRAM_SECRET,
    Harness,
    running_gateway,
)

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

_twilio_keys = st.sampled_from(["From", "To", "Body", "MessageSid", "SmsSid", "OptOutType",
                                "NumMedia", "MessageStatus", "SmsStatus", "ErrorCode",
                                "AccountSid"]) | st.text(max_size=12)
_forms = st.dictionaries(_twilio_keys, st.text(max_size=40), max_size=8)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20,
)
_update_keys = st.sampled_from(["message", "callback_query", "my_chat_member",
                                "chat_join_request", "chat_member", "edited_message"])
# Update-shaped JSON: the real top-level keys with random (often nearly right) contents.
_message_like = st.fixed_dictionaries(
    {}, optional={"message_id": st.integers() | _json, "date": st.integers() | _json,
                  "chat": st.fixed_dictionaries({}, optional={
                      "id": st.integers() | _json, "type": st.sampled_from(
                          ["private", "group", "supergroup", "channel"]) | _json}),
                  "from": st.fixed_dictionaries({}, optional={
                      "id": st.integers() | _json, "is_bot": st.booleans() | _json,
                      "first_name": st.text(max_size=10) | _json}),
                  "text": st.text(max_size=30) | _json, "data": st.text(max_size=20),
                  "new_chat_member": _json, "old_chat_member": _json,
                  "user_chat_id": st.integers() | _json})
_updates = st.one_of(
    _json,
    st.builds(lambda uid, parts: {"update_id": uid, **parts},
              st.integers() | _json,
              st.dictionaries(_update_keys, _message_like | _json, max_size=2)),
)


@FUZZ
@given(_forms)
def test_twilio_inbound_form_is_read_or_refused(form: dict[str, str]) -> None:
    try:
        event = parse_inbound_sms(form)
    except ValueError:
        return
    assert event.channel == "sms" and event.address


@FUZZ
@given(_forms, st.none() | st.text(max_size=10))
def test_twilio_status_callback_is_read_or_refused(form: dict[str, str],
                                                   message_id: str | None) -> None:
    try:
        event = parse_status_callback(form, message_id)
    except ValueError:
        return
    assert event.kind == "status" and event.status


@FUZZ
@given(_updates)
@example({"update_id": 1, "message": {"message_id": 1, "date": 10**18,
                                      "chat": {"id": 5, "type": "private"}, "text": "STOP"}})
def test_telegram_update_is_read_or_refused(data: Any) -> None:
    try:
        events = parse_update(data)
    except ValueError:
        return
    assert isinstance(events, list)


_addresses = st.sampled_from(["unsubscribe+tok@mail.example.org", "bounce+tok@mail.example.org",
                              "reply+tok@mail.example.org", "hello@mail.example.org",
                              "x@elsewhere.example"]) | st.text(max_size=30)


def _built_mail(headers: dict[str, str], body: str, subtype: str) -> bytes:
    msg = EmailMessage()
    raw: list[str] = []
    for name, value in headers.items():
        try:
            msg[name] = value
        except Exception:  # the email package will not build it (some values even crash
            # its header parser): a sender's software might, so write it raw instead
            raw.append(f"{name}: {value}")
    try:
        msg.set_content(body, subtype=subtype)
        data = msg.as_bytes()
    except (ValueError, TypeError, LookupError, UnicodeError):
        data = body.encode("utf-8", "surrogatepass")
    lines = "".join(f"{line}\r\n" for line in raw if "\n" not in line and "\r" not in line)
    return lines.encode("utf-8", "surrogatepass") + data


_mail_headers = st.dictionaries(
    st.sampled_from(["From", "To", "Subject", "Message-ID", "Content-Type", "Reply-To",
                     "Auto-Submitted", "Content-Transfer-Encoding", "In-Reply-To"]),
    st.text(max_size=40), max_size=6)


@FUZZ
@given(st.text(max_size=30), st.lists(_addresses, max_size=3), st.binary(max_size=600))
def test_received_mail_bytes_are_read_or_refused(mail_from: str, rcpt: list[str],
                                                 data: bytes) -> None:
    try:
        events = parse_inbound_mail(mail_from, rcpt, data, "mail.example.org")
    except ValueError:
        return
    assert all(e.channel == "email" for e in events)


@FUZZ
@given(st.text(max_size=30), st.lists(_addresses, min_size=1, max_size=3), _mail_headers,
       st.text(max_size=200), st.sampled_from(["plain", "html"]))
def test_built_mime_is_read_or_refused(mail_from: str, rcpt: list[str],
                                       headers: dict[str, str], body: str,
                                       subtype: str) -> None:
    data = _built_mail(headers, body, subtype)
    try:
        events = parse_inbound_mail(mail_from, rcpt, data, "mail.example.org")
    except ValueError:
        return
    assert all(e.channel == "email" for e in events)


_csv_text = st.lists(
    st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=12) | st.just('"'),
             max_size=6).map(lambda cells: ",".join(cells)),
    max_size=6,
).map(lambda lines: "\n".join(lines))


@FUZZ
@given(st.binary(max_size=300) | _csv_text.map(lambda t: t.encode("utf-8")),
       st.sampled_from([CONSENT_HEADER, OPT_OUT_HEADER]), st.booleans())
def test_csv_import_is_read_or_refused(data: bytes, header: list[str], with_header: bool) -> None:
    if with_header:
        data = ",".join(header).encode() + b"\n" + data
    try:
        digest, rows = _rows(data, header)
    except InvalidInput as exc:
        assert exc.code == "invalid_csv"
        return
    assert len(digest) == 64
    assert all(isinstance(line, int) and isinstance(row, dict) for line, row in rows)


# -- the HTTP edge ----------------------------------------------------------------------------

_API_POSTS = ["/api/v1/consents", "/api/v1/consents/import", "/api/v1/opt-outs",
              "/api/v1/messages", "/api/v1/broadcasts", "/api/v1/broadcasts/1/cancel",
              "/api/v1/suppressions/import", "/api/v1/links", "/api/v1/links/x/revoke"]
_WEBHOOKS = ["/webhooks/twilio/jane-2026/sms", "/webhooks/twilio/jane-2026/status",
             "/webhooks/telegram/jane-2026", "/u/not-a-token", "/join/nope"]

_field_values = _json | st.sampled_from(["sms", "email", "telegram", "+447911123456",
                                         "a@example.org", "paper_form", "import", ""])
_bodies = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["channel", "address", "method", "source", "evidence",
                                     "to", "text", "dry_run", "reason", "name",
                                     "telegram_chat_id", "expires_at", "member_limit"]),
                    _field_values, max_size=7).map(lambda v: json.dumps(v).encode()),
)
_content_types = st.sampled_from(["application/json", "text/csv", "text/plain",
                                  "application/x-www-form-urlencoded", ""])


async def test_random_bodies_to_every_post_endpoint_never_get_5xx(gw: Harness) -> None:
    # Hypothesis draws the requests (a sync test body cannot await); each one then goes to
    # the running gateway over a real socket.
    cases: list[tuple[str, bytes, str]] = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(_API_POSTS + _WEBHOOKS), _bodies, _content_types)
    def draw(path: str, body: bytes, content_type: str) -> None:
        cases.append((path, body, content_type))

    draw()
    for path in _API_POSTS + _WEBHOOKS:  # every endpoint at least once
        cases.append((path, b"{}", "application/json"))
    for path, body, content_type in cases:
        headers = {"Content-Type": content_type} if content_type else {}
        status, answer = await gw.api("POST", path, raw=body, headers=headers)
        assert status < 500, (path, body[:200], content_type, status, answer)


# -- hostile input on every route, on both backends -------------------------------------------
#
# NUL (PostgreSQL refuses it in text), lone surrogates (not encodable as UTF-8), 100,000
# nested brackets (a recursion limit), numbers beyond any column (10**400, 1e400, 400
# digits) and digits that are not ASCII (Arabic-Indic, fullwidth, superscript), in every path
# parameter, query, JSON field, CSV cell, form field and webhook of the gateway. Whatever the
# answer, it is not a 5xx, and a 4xx changes nothing.

_KINDS: dict[str, list[Any]] = {
    "nul": ["a\x00b", "\x00", "STOP\x00"],
    "surrogate": ["hi\ud800", "\udfff"],
    "non_ascii_digit": ["\u0663", "\uff11", "\u00b2\u00b3"],
    "huge_number": [10**400, -(10**400), 2**63, "9" * 400, "-" + "9" * 40, "x" * 5000],
    "deep_nesting": [],
}
_RAW: dict[str, list[bytes]] = {
    "nul": [b'"\\u0000"', b'{"channel": "sms\\u0000"}'],
    "surrogate": [b"\xed\xa0\x80", b'{"text": "\\ud800"}'],
    "non_ascii_digit": ["\u0663".encode()],
    "huge_number": [b"1e400", b'{"channel": 1e400}', b'{"dry_run": 1e999, "limit": -1e400}',
                    b"9" * 5000],
    "deep_nesting": [b"[" * 100_000, b'{"a":' * 50_000, b"[{" * 40_000],
}
_FIELDS = ["channel", "address", "method", "source", "evidence", "to", "text", "subject",
           "dry_run", "reason", "name", "telegram_chat_id", "expires_at", "member_limit",
           "restricted", "action", "note", "tags", "add_tags", "send_at"]
_GOOD = {"channel": "sms", "address": "+447911123456", "to": "+447911123456",
         "method": "paper_form", "source": "street stall", "evidence": "signed form",
         "text": "Polls open at 7am", "reason": "asked", "name": "Poster"}
_STRIDE = 3


def _quoted(value: str) -> str:
    from urllib.parse import quote

    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def _fill(canonical: str, value: str) -> str:
    import re

    return re.sub(r"\{[^}]+\}", lambda m: "jane-2026" if m.group(0) == "{campaign}"
                  else _quoted(value), canonical)


def _hostile_requests(routes: list[tuple[str, str]],
                      kind: str) -> list[tuple[str, str, bytes, str]]:
    """(method, path, body, content type): every route with every hostile value of
    ``kind`` in its path, its query, its JSON fields, CSV cells and form fields."""
    values = _KINDS[kind]
    texts = [str(v) for v in values]
    bodies = [json.dumps({**_GOOD, name: v}).encode() for v in values for name in _FIELDS]
    out: list[tuple[str, str, bytes, str]] = []
    for method, canonical in routes:
        for text in texts:
            query = "?" + "&".join(f"{k}={_quoted(text)}" for k in (
                "actor", "action", "subject", "after", "limit", "flagged", "unresolved", "m"))
            out.append((method, _fill(canonical, text) + query, json.dumps(_GOOD).encode(),
                        "application/json"))
        if method not in ("POST", "PATCH", "PUT", "DELETE"):
            continue
        path = _fill(canonical, "1")
        out.extend((method, path, raw, "application/json") for raw in _RAW[kind])
        out.extend((method, path, body, "application/json")
                   for body in bodies[len(out) % _STRIDE::_STRIDE])
        for cell in texts:
            csv_body = ("channel,address,method,source,evidence,reason\n"
                        f"sms,+447911123456,paper_form,{cell},{cell},{cell}\n"
                        f"{cell},{cell},{cell},x,y,z\n").encode("utf-8", "surrogatepass")
            out.append((method, path, csv_body, "text/csv"))
            form = (f"address={_quoted(cell)}&consent=yes&website=&"
                    f"List-Unsubscribe=One-Click&Body={_quoted(cell)}")
            out.append((method, path, form.encode(), "application/x-www-form-urlencoded"))
    return out


@pytest.fixture
def fuzz_backend(db_url: str) -> tuple[str, str]:
    return ("sqlite" if db_url.startswith("sqlite") else "postgresql"), db_url


async def _row_counts(gw: Harness) -> dict[str, int]:
    """Row counts of every table in one statement (a change-nothing check per request)."""
    from sqlalchemy import func, select

    from consentgate.storage.models import metadata

    names = sorted(metadata.tables)
    stmt = select(*[select(func.count()).select_from(metadata.tables[n]).scalar_subquery()
                    .label(n) for n in names])
    async with gw.db.read() as conn:
        row = (await conn.execute(stmt)).one()
    return dict(zip(names, map(int, row), strict=True))


async def _send_all(gw: Harness, requests: list[tuple[str, str, bytes, str]],
                    api: bool) -> list[str]:
    """Send each request; the failures: a 5xx, or a 4xx after which a table changed."""
    failures: list[str] = []
    held = await _row_counts(gw)
    for method, path, body, content_type in requests:
        if path.startswith("/api/") != api:
            continue
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {JANE_TOKEN}",
                   "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
        async with gw.session.request(method, gw.url + path, data=body,
                                      headers=headers) as r:
            answer, status = await r.text(), r.status
        now = await _row_counts(gw)
        if status >= 500:
            failures.append(f"{method} {path[:100]} {body[:100]!r} -> {status} {answer[:120]}")
        elif status >= 400 and now != held:
            changed = sorted(k for k in now if now[k] != held[k])
            failures.append(f"{method} {path[:100]} {body[:100]!r} -> {status} "
                            f"changed {changed}")
        held = now
    return failures


async def _signed_sms(gw: Harness, body: str, from_: str = "+447911123456") -> int:
    form = inbound_sms_form(from_, JANE_NUMBER, body, None, None, account_sid=JANE_SID)
    path = f"/webhooks/twilio/{JANE}/sms"
    async with await post_signed(gw.session, gw.url + path, form, JANE_AUTH,
                                 signature_url=PUBLIC_URL + path) as r:
        await r.read()
        return r.status


def _routes(gw: Harness) -> list[tuple[str, str]]:
    app = create_app(gw.gateway)
    routes = sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                     if r.resource is not None and r.method not in ("HEAD", "*")})
    assert len(routes) >= 30
    return routes


@pytest.mark.parametrize("kind", list(_KINDS))
async def test_hostile_input_to_webhooks_pages_and_imports_gets_no_5xx(
        fuzz_backend: tuple[str, str], kind: str) -> None:
    """Every route outside the JSON API (webhooks, unsubscribe, join and confirmation
    pages, health, metrics), and the signed webhooks past their signature check."""
    _, url = fuzz_backend
    async with FakeTelegram() as telegram, running_gateway(url, telegram=telegram) as gw:
        await gw.subscribe("+447911123456")
        failures = await _send_all(gw, _hostile_requests(_routes(gw), kind), api=False)
        for value in _KINDS[kind] + [v.decode("utf-8", "replace") for v in _RAW[kind]]:
            text = str(value)[:3000]
            if any("\ud800" <= c <= "\udfff" for c in text):
                continue  # a form cannot carry a lone surrogate (UTF-8 on the wire)
            for body in (text, "STOP " + text):
                status = await _signed_sms(gw, body)
                if status >= 500:
                    failures.append(f"signed SMS {body[:40]!r} -> {status}")
        updates: list[Any] = [{"update_id": 10**400, "message": {"text": "/stop"}}]
        for value in _KINDS[kind]:
            updates.append({"update_id": 77, "message": {
                "message_id": value if isinstance(value, int) else 1, "date": 1,
                "chat": {"id": 4242, "type": "private"},
                "from": {"id": value if isinstance(value, int) else 4242, "is_bot": False,
                         "first_name": str(value)[:50]},
                "text": "/stop" + str(value)[:100]}})
        for update in updates:
            async with gw.session.post(
                    f"{gw.url}/webhooks/telegram/{JANE}", data=json.dumps(update),
                    headers={"Content-Type": "application/json",
                             "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}) as r:
                if r.status >= 500:
                    failures.append(f"telegram {str(update)[:80]} -> {r.status}")
        assert not failures, "\n".join(failures[:30])


@pytest.mark.parametrize("kind", list(_KINDS))
async def test_hostile_input_to_every_api_route_gets_no_5xx_and_a_4xx_changes_nothing(
        fuzz_backend: tuple[str, str], kind: str) -> None:
    _backend, url = fuzz_backend
    async with running_gateway(url) as gw:
        await gw.subscribe("+447911123456")
        requests = _hostile_requests(_routes(gw), kind)
        failures = await _send_all(gw, requests, api=True)
        assert not failures, f"{len(failures)} of {len(requests)}:\n" + "\n".join(
            failures[:30])
