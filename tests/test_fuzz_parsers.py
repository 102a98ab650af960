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

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consentgate.adapters.smtp_inbound import parse_inbound_mail
from consentgate.adapters.telegram import parse_update
from consentgate.adapters.twilio_sms import parse_inbound_sms, parse_status_callback
from consentgate.bot.errors import InvalidInput
from consentgate.bot.imports import CONSENT_HEADER, OPT_OUT_HEADER, _rows
from consentgate.testing.harness import Harness

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
