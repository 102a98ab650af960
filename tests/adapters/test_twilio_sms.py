"""The Twilio SMS adapter against the loopback fake: the real twilio client over real sockets."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from consentgate.adapters.base import (
    PERMIT_TTL_SECONDS,
    ChannelAdapter,
    OutboundMessage,
    OutcomeUnknown,
    PermanentSendError,
    Permit,
    PermitError,
    RecipientRefused,
    RetryableSendError,
    _issue_permit,
    _seal,
)
from consentgate.adapters.twilio_sms import (
    TwilioSms,
    parse_inbound_sms,
    parse_status_callback,
    signature_is_valid,
    twiml_reply,
)
from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.fakes.twilio_webhooks import inbound_sms_form, sign, status_callback_form

FROM = "+447700900000"
SERVICE = "MG" + "ab" * 16
TO = "+447700900123"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as running:
        yield running


def adapter_for(fake: FakeTwilio, **overrides: object) -> TwilioSms:
    options: dict[str, object] = {
        "account_sid": fake.account_sid, "auth_token": fake.auth_token,
        "from_number": FROM, "api_base_url": fake.base_url,
    }
    options.update(overrides)
    return TwilioSms(**options)  # type: ignore[arg-type]


@pytest.fixture
async def sms(fake: FakeTwilio) -> AsyncIterator[TwilioSms]:
    adapter = adapter_for(fake)
    yield adapter
    await adapter.close()


def message(address: str = TO, message_id: str = "msg-1",
            text: str = "Polls open 7am. Reply STOP to opt out") -> OutboundMessage:
    return OutboundMessage(message_id=message_id, campaign="jane-2026", channel="sms",
                           address=address, text=text)


def permit_for(msg: OutboundMessage) -> Permit:
    return _issue_permit(msg.campaign, msg.channel, msg.address, msg.message_id)


async def send(adapter: TwilioSms, msg: OutboundMessage | None = None) -> str | None:
    msg = msg or message()
    return (await adapter.send(msg, permit_for(msg))).provider_id


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- sending ------------------------------------------------------------------------------------


def test_adapter_satisfies_the_channel_adapter_protocol(fake: FakeTwilio) -> None:
    adapter: ChannelAdapter = adapter_for(fake, rate_per_second=1.0)
    assert adapter.channel == "sms"
    assert adapter.sender_key == f"twilio:{FROM}"
    assert adapter.rate_per_second == 1.0
    assert adapter_for(fake, from_number=None, messaging_service_sid=SERVICE).sender_key == (
        f"twilio:{SERVICE}")


async def test_the_dispatcher_is_told_how_many_connections_the_session_has(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    await send(sms)  # the session opens on the first send

    session = sms._http.session
    assert session is not None
    # No more sends at once than connections: one beyond them would wait, holding its permit.
    assert sms.max_concurrency == session.connector.limit  # type: ignore[union-attr]


def test_a_sender_is_required(fake: FakeTwilio) -> None:
    with pytest.raises(ValueError):
        adapter_for(fake, from_number=None)


async def test_send_posts_to_from_body_with_basic_auth_and_returns_the_sid(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    sid = await send(sms)

    [sent] = fake.messages
    assert sid == sent.sid
    assert sid is not None and sid.startswith("SM") and len(sid) == 34
    assert (sent.to, sent.from_, sent.body) == (TO, FROM, message().text)
    assert sent.messaging_service_sid is None and sent.status_callback is None
    [request] = fake.requests
    assert request.path == f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    credentials = base64.b64encode(f"{fake.account_sid}:{fake.auth_token}".encode()).decode()
    assert request.authorization == f"Basic {credentials}"


async def test_send_through_a_messaging_service(fake: FakeTwilio) -> None:
    adapter = adapter_for(fake, from_number=None, messaging_service_sid=SERVICE)
    try:
        sid = await send(adapter)
    finally:
        await adapter.close()

    [sent] = fake.messages
    assert sid == sent.sid
    assert sent.messaging_service_sid == SERVICE and sent.from_ is None
    assert "From" not in fake.requests[0].form


async def test_status_callback_url_carries_our_message_id(fake: FakeTwilio) -> None:
    adapter = adapter_for(
        fake, status_callback_url="https://gate.example.org/webhooks/twilio/jane-2026/status")
    try:
        await send(adapter, message(message_id="msg 42/é"))
    finally:
        await adapter.close()

    callback = fake.messages[0].status_callback
    assert callback is not None
    parts = urlsplit(callback)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https", "gate.example.org", "/webhooks/twilio/jane-2026/status")
    assert parse_qs(parts.query) == {"m": ["msg 42/é"]}


async def test_status_callback_url_keeps_an_existing_query(fake: FakeTwilio) -> None:
    adapter = adapter_for(fake, status_callback_url="https://gate.example.org/status?x=1")
    try:
        await send(adapter)
    finally:
        await adapter.close()

    callback = fake.messages[0].status_callback
    assert callback is not None
    assert parse_qs(urlsplit(callback).query) == {"x": ["1"], "m": ["msg-1"]}


async def test_api_base_url_wins_over_twilio_region_and_edge_in_the_environment(
    fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    adapter = adapter_for(fake)
    try:
        await send(adapter)
    finally:
        await adapter.close()
    assert len(fake.messages) == 1


async def test_sends_reuse_one_pooled_connection(fake: FakeTwilio, sms: TwilioSms) -> None:
    for n in range(3):
        await send(sms, message(message_id=f"msg-{n}"))

    assert len({request.peer for request in fake.requests}) == 1


async def test_concurrent_sends_overlap_and_each_gets_its_own_sid(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    fake.latency = 0.2
    numbers = [f"+4477009001{n:02d}" for n in range(10)]
    started = time.monotonic()

    sids = await asyncio.gather(*(send(sms, message(number, f"msg-{number}"))
                                  for number in numbers))

    assert time.monotonic() - started < 1.0  # ten 0.2 s requests, not one after another
    await fake.wait_for(10)
    assert {number: fake.sent_to(number)[0].sid for number in numbers} == dict(
        zip(numbers, sids, strict=True))


async def test_send_works_after_close_by_opening_a_new_session(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    await send(sms)
    await sms.close()
    await send(sms, message(message_id="msg-2"))
    assert len(fake.messages) == 2


PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHILD_SENDER = """
import asyncio, sys
from consentgate.adapters.base import OutboundMessage, _issue_permit
from consentgate.adapters.twilio_sms import TwilioSms

async def main() -> None:
    base_url, account_sid, auth_token = sys.argv[1:4]
    sms = TwilioSms(account_sid=account_sid, auth_token=auth_token,
                    from_number="+447700900000", api_base_url=base_url)
    msg = OutboundMessage("child-1", "jane-2026", "sms", "+447700900321", "from the child")
    await sms.send(msg, _issue_permit(msg.campaign, msg.channel, msg.address, msg.message_id))
    await sms.close()

asyncio.run(main())
"""


async def test_the_fake_serves_a_client_in_another_process(fake: FakeTwilio) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD_SENDER, fake.base_url, fake.account_sid, fake.auth_token,
        cwd=PROJECT_ROOT)

    [sent] = await fake.wait_for(1, timeout=30)
    assert await child.wait() == 0
    assert (sent.to, sent.body) == ("+447700900321", "from the child")


async def test_the_fake_answers_a_request_without_sender_as_twilio_does(
    fake: FakeTwilio
) -> None:
    auth = base64.b64encode(f"{fake.account_sid}:{fake.auth_token}".encode()).decode()
    async with aiohttp.ClientSession() as session, session.post(
        f"{fake.base_url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json",
        data={"To": TO, "Body": "hi"}, headers={"Authorization": f"Basic {auth}"},
    ) as response:
        assert response.status == 400
        assert await response.json() == {
            "code": 21603, "message": "The 'From' phone number is required.",
            "more_info": "https://www.twilio.com/docs/errors/21603", "status": 400}
    assert fake.messages == [] and [r.status for r in fake.requests] == [400]


# -- the permit ----------------------------------------------------------------------------------


async def test_a_forged_permit_is_refused_and_nothing_is_sent(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    msg = message()
    forged = Permit(msg.campaign, msg.channel, msg.address, msg.message_id,
                    time.monotonic(), seal="0" * 64)

    with pytest.raises(PermitError, match="not issued"):
        await sms.send(msg, forged)
    assert fake.requests == [] and fake.messages == []


async def test_a_permit_for_another_message_is_refused_and_nothing_is_sent(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    other = permit_for(message(address="+447700900999", message_id="msg-2"))

    with pytest.raises(PermitError, match="different message"):
        await sms.send(message(), other)
    assert fake.requests == [] and fake.messages == []


async def test_an_expired_permit_is_refused_and_nothing_is_sent(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    msg = message()
    issued_at = time.monotonic() - PERMIT_TTL_SECONDS - 1
    expired = Permit(msg.campaign, msg.channel, msg.address, msg.message_id, issued_at,
                     _seal(msg.campaign, msg.channel, msg.address, msg.message_id, issued_at))

    with pytest.raises(PermitError, match="expired"):
        await sms.send(msg, expired)
    assert fake.requests == [] and fake.messages == []


async def test_a_permit_with_its_text_changed_still_guards_the_address(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    msg = message()
    tampered = dataclasses.replace(permit_for(msg), address="+447700900999")

    with pytest.raises(PermitError):
        await sms.send(dataclasses.replace(msg, address="+447700900999"), tampered)
    assert fake.requests == []


# -- errors ------------------------------------------------------------------------------------


async def test_unsubscribed_recipient_21610_is_refused_for_the_campaign(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    fake.unsubscribed.add(TO)

    with pytest.raises(RecipientRefused) as caught:
        await send(sms)
    assert caught.value.reason == "twilio_21610"
    assert caught.value.scope == "campaign"
    assert fake.messages == []


async def test_429_with_retry_after_is_retryable_after_that_delay(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    fake.fail_next(429, retry_after=7)

    with pytest.raises(RetryableSendError) as caught:
        await send(sms)
    assert caught.value.reason == "twilio_http_429"
    assert caught.value.retry_after == 7.0


async def test_retry_after_belongs_to_the_failed_request_only(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    fake.fail_next(429, retry_after=7)
    with pytest.raises(RetryableSendError):
        await send(sms)
    fake.fail_next(503)

    with pytest.raises(RetryableSendError) as caught:
        await send(sms)
    assert caught.value.reason == "twilio_http_503"
    assert caught.value.retry_after is None


async def test_500_is_retryable_and_makes_exactly_one_request(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    fake.fail_next(500, count=5)

    with pytest.raises(RetryableSendError) as caught:
        await send(sms)
    assert caught.value.reason == "twilio_http_500"
    assert caught.value.retry_after is None
    assert len(fake.requests) == 1


async def test_invalid_number_21211_is_permanent(fake: FakeTwilio, sms: TwilioSms) -> None:
    fake.invalid.add(TO)

    with pytest.raises(PermanentSendError) as caught:
        await send(sms)
    assert caught.value.reason == "twilio_21211"
    assert not isinstance(caught.value, RecipientRefused)


async def test_a_4xx_without_a_twilio_code_is_permanent_by_http_status(
    fake: FakeTwilio, sms: TwilioSms
) -> None:
    fake.fail_next(404, code=404)  # what twilio reports when the body carries no code

    with pytest.raises(PermanentSendError) as caught:
        await send(sms)
    assert caught.value.reason == "twilio_http_404"


async def test_wrong_credentials_are_permanent(fake: FakeTwilio) -> None:
    adapter = adapter_for(fake, auth_token="wrong")
    try:
        with pytest.raises(PermanentSendError) as caught:
            await send(adapter)
    finally:
        await adapter.close()
    assert caught.value.reason == "twilio_20003"
    assert fake.requests[0].status == 401 and fake.messages == []


async def test_connection_refused_is_retryable() -> None:
    adapter = TwilioSms(account_sid="AC" + "0" * 32, auth_token="token", from_number=FROM,
                        api_base_url=f"http://127.0.0.1:{closed_port()}")
    try:
        with pytest.raises(RetryableSendError) as caught:
            await send(adapter)
    finally:
        await adapter.close()
    assert caught.value.reason == "network"


async def test_a_slow_provider_times_out_as_outcome_unknown_never_retried(
    fake: FakeTwilio,
) -> None:
    # The request reached Twilio; it may have been taken. A retry could be a second text.
    fake.latency = 2.0
    adapter = adapter_for(fake, timeout=0.2)
    started = time.monotonic()
    try:
        with pytest.raises(OutcomeUnknown) as caught:
            await send(adapter)
    finally:
        await adapter.close()
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 1.5


# -- webhooks ----------------------------------------------------------------------------------

VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
VECTOR_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_signature_of_twilios_own_test_vector_is_valid() -> None:
    assert signature_is_valid("12345", VECTOR_URL, VECTOR_PARAMS, VECTOR_SIGNATURE)
    assert sign("12345", VECTOR_URL, VECTOR_PARAMS) == VECTOR_SIGNATURE


def test_signature_is_checked_with_and_without_the_default_port() -> None:
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert signature_is_valid("12345", with_port, VECTOR_PARAMS, VECTOR_SIGNATURE)


def test_a_tampered_param_fails_the_signature() -> None:
    tampered = {**VECTOR_PARAMS, "Digits": "1235"}
    assert not signature_is_valid("12345", VECTOR_URL, tampered, VECTOR_SIGNATURE)


def test_another_url_or_token_fails_the_signature() -> None:
    assert not signature_is_valid("12345", "https://mycompany.com/other.php?foo=1&bar=2",
                                  VECTOR_PARAMS, VECTOR_SIGNATURE)
    assert not signature_is_valid("54321", VECTOR_URL, VECTOR_PARAMS, VECTOR_SIGNATURE)


def test_a_missing_signature_fails() -> None:
    assert not signature_is_valid("12345", VECTOR_URL, VECTOR_PARAMS, None)
    assert not signature_is_valid("12345", VECTOR_URL, VECTOR_PARAMS, "")


def test_an_inbound_sms_is_a_message_from_the_sender() -> None:
    form = inbound_sms_form(TO, FROM, "Who is the candidate?", sid="SM" + "1" * 32)

    event = parse_inbound_sms(form)

    assert (event.kind, event.channel, event.address) == ("message", "sms", TO)
    assert event.provider_event_id == "SM" + "1" * 32
    assert event.text == "Who is the candidate?"
    assert event.extra == {"To": FROM, "NumMedia": "0"}


@pytest.mark.parametrize(("opt_out_type", "kind"),
                         [("STOP", "opt_out"), ("START", "opt_in"), ("HELP", "help")])
def test_twilio_advanced_opt_out_types_are_classified(opt_out_type: str, kind: str) -> None:
    form = inbound_sms_form(TO, FROM, "Stop. Thank you", opt_out_type=opt_out_type)
    assert parse_inbound_sms(form).kind == kind


def test_an_inbound_sms_falls_back_to_sms_sid() -> None:
    form = {"From": TO, "To": FROM, "Body": "hi", "SmsSid": "SM" + "2" * 32}
    event = parse_inbound_sms(form)
    assert event.provider_event_id == "SM" + "2" * 32
    assert event.extra == {"To": FROM}


@pytest.mark.parametrize("missing", ["From", "MessageSid"])
def test_an_inbound_sms_without_sender_or_sid_is_refused(missing: str) -> None:
    form = inbound_sms_form(TO, FROM, "hi")
    del form[missing]
    form.pop("SmsSid")
    with pytest.raises(ValueError):
        parse_inbound_sms(form)


def test_a_status_callback_names_our_message_and_its_status() -> None:
    sid = "SM" + "3" * 32
    form = status_callback_form(sid, "undelivered", TO, FROM, error_code="21610")

    event = parse_status_callback(form, "msg-1")

    assert (event.kind, event.channel, event.address) == ("status", "sms", TO)
    assert event.provider_message_id == sid
    assert event.provider_event_id == f"{sid}:undelivered"
    assert (event.status, event.error_code) == ("undelivered", "21610")
    assert event.extra == {"message_id": "msg-1"}


def test_a_status_callback_without_error_or_message_id() -> None:
    event = parse_status_callback(status_callback_form("SM" + "4" * 32, "delivered", TO, FROM),
                                  None)
    assert event.error_code is None and event.extra == {}


def test_a_status_callback_without_sid_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_status_callback({"MessageStatus": "sent", "To": TO}, None)


def test_twiml_reply_with_one_message_or_none() -> None:
    assert twiml_reply("You're unsubscribed. <Jane> & co").endswith(
        "<Response><Message>You're unsubscribed. &lt;Jane&gt; &amp; co</Message></Response>")
    assert twiml_reply(None).endswith("<Response />")
    assert twiml_reply("").endswith("<Response />")
