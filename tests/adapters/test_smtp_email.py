"""The email adapter against a real SMTP server on loopback (aiosmtpd), with the real client
(aiosmtplib): what is sent, how SMTP answers map to send errors, connection reuse, AUTH, TLS
and DKIM; and inbound mail: unsubscribe by mail, bounces, replies, and the receiving server.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import dkim
import pytest

from consentgate.adapters.base import (
    ChannelAdapter,
    InboundEvent,
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
from consentgate.adapters.smtp_email import DkimKey, SmtpEmail, build_message, normalise_address
from consentgate.adapters.smtp_inbound import InboundMailServer, parse_inbound_mail
from consentgate.testing.fakes.smtp_server import ReceivedMail, SmtpSink

FROM = "Jane Doe <jane@example.org>"
DOMAIN = "mail.example.org"
UNSUBSCRIBE_URL = "https://campaign.example.org/u/" + "Tk" * 60
CAMPAIGN_HEADERS = {
    "List-Unsubscribe": f"<{UNSUBSCRIBE_URL}>, <mailto:unsubscribe+Tk123@{DOMAIN}>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    "List-Id": "Jane Doe for Ward 5 <ward5.example.org>",
}


def outbound(
    address: str = "voter@example.com", message_id: str = "msg-1", **overrides: object
) -> OutboundMessage:
    fields: dict[str, object] = {
        "message_id": message_id,
        "campaign": "ward5",
        "channel": "email",
        "address": address,
        "text": "Polling day is Thursday.\n\nUnsubscribe: " + UNSUBSCRIBE_URL,
        "subject": "Polling day",
        "headers": CAMPAIGN_HEADERS,
        "envelope_from": f"bounce+B{message_id}@{DOMAIN}",
    }
    fields.update(overrides)
    return OutboundMessage(**fields)  # type: ignore[arg-type]


def permit_for(message: OutboundMessage) -> Permit:
    return _issue_permit(message.campaign, message.channel, message.address,
                         message.message_id)


async def send(adapter: SmtpEmail, message: OutboundMessage) -> str | None:
    return (await adapter.send(message, permit_for(message))).provider_id


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as server:
        yield server


@pytest.fixture
async def make_adapter() -> AsyncIterator[Callable[..., SmtpEmail]]:
    adapters: list[SmtpEmail] = []

    def make(port: int, **options: object) -> SmtpEmail:
        settings: dict[str, object] = {"host": "127.0.0.1", "port": port, "starttls": False,
                                       "from_address": FROM, "timeout": 5.0}
        settings.update(options)
        adapter = SmtpEmail(**settings)  # type: ignore[arg-type]
        adapters.append(adapter)
        return adapter

    yield make
    for adapter in adapters:
        await adapter.close()


Deliver = Callable[..., Awaitable[ReceivedMail]]


@pytest.fixture
def deliver(sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]) -> Deliver:
    """Send one message through a new adapter (``options`` configure it) and return it as
    the relay received it."""

    async def one(message: OutboundMessage, **options: object) -> ReceivedMail:
        await send(make_adapter(sink.port, **options), message)
        [mail] = await sink.wait_for(1)
        return mail

    return one


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("no openssl binary to make keys with")
    return path


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, bytes]:
    """A fresh 2048-bit RSA key: (PEM private key, base64 DER public key for DNS)."""
    openssl = _openssl()
    private = subprocess.run([openssl, "genrsa", "2048"], check=True, capture_output=True).stdout
    public_pem = subprocess.run([openssl, "rsa", "-pubout"], input=private, check=True,
                                capture_output=True).stdout
    public = b"".join(line for line in public_pem.splitlines() if not line.startswith(b"-----"))
    return private, public


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost: (cert, key)."""
    openssl = _openssl()
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


# -- what is sent ----------------------------------------------------------------------------


async def test_campaign_email_carries_unsubscribe_headers_date_and_message_id(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)

    provider_id = await send(adapter, outbound())

    [mail] = await sink.wait_for(1)
    message = mail.message
    assert message["List-Unsubscribe"] == CAMPAIGN_HEADERS["List-Unsubscribe"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == CAMPAIGN_HEADERS["List-Id"]
    assert message["Message-ID"] == provider_id
    assert provider_id is not None and provider_id.endswith("@example.org>")
    assert message["Date"].datetime is not None
    assert message["From"] == FROM
    assert message["To"] == "voter@example.com"
    assert message["Subject"] == "Polling day"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().startswith("Polling day is Thursday.")


async def test_long_unsubscribe_link_is_not_mangled_into_encoded_words() -> None:
    # The stdlib's default folding turns a long URL into =?utf-8?q?...?=, which mail
    # clients do not decode in List-Unsubscribe.
    raw = build_message(outbound(), FROM, message_id_domain="example.org").as_bytes()

    assert f"List-Unsubscribe: <{UNSUBSCRIBE_URL}>".encode() in raw
    assert b"=?utf-8?" not in raw


async def test_html_makes_a_multipart_alternative_with_the_text_first(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)

    await send(adapter, outbound(html="<p>Polling day is <b>Thursday</b>.</p>",
                                 text="Polling day is Thursday. Café open."))

    [mail] = await sink.wait_for(1)
    assert mail.message.get_content_type() == "multipart/alternative"
    plain, html = mail.message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content().strip() == "Polling day is Thursday. Café open."
    assert html.get_content_type() == "text/html"
    assert "<b>Thursday</b>" in html.get_content()
    assert mail.content.isascii()  # no 8BITMIME needed anywhere
    assert mail.message["MIME-Version"] == "1.0"


async def test_envelope_sender_is_the_verp_bounce_address_or_else_the_from_address(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)

    await send(adapter, outbound(message_id="m1"))
    await send(adapter, outbound(message_id="m2", envelope_from=None))

    first, second = await sink.wait_for(2)
    assert first.mail_from == f"bounce+Bm1@{DOMAIN}"
    assert first.rcpt_tos == ("voter@example.com",)
    assert second.mail_from == "jane@example.org"


def test_a_header_cannot_replace_ours_or_smuggle_a_line_break() -> None:
    with pytest.raises(ValueError):
        build_message(outbound(headers={"From": "x@evil.example"}), FROM,
                      message_id_domain="example.org")
    with pytest.raises(ValueError):
        build_message(outbound(headers={"List-Id": "x\r\nBcc: all@example.com"}), FROM,
                      message_id_domain="example.org")


async def test_the_unsubscribe_header_goes_byte_for_byte_on_one_line(
    deliver: Deliver,
) -> None:
    # 180 characters with a ", " a folding writer would break at: mail clients read the
    # one-click URL from this line, and some do not unfold it.
    value = CAMPAIGN_HEADERS["List-Unsubscribe"]
    assert len(value) > 78 and ", " in value

    mail = await deliver(outbound())

    assert f"\r\nList-Unsubscribe: {value}\r\n".encode() in mail.content


async def test_every_line_ends_with_crlf_and_fits_the_998_character_limit(
    deliver: Deliver,
) -> None:
    long_word = "x" * 1500
    note = " ".join(["note"] * 400)

    mail = await deliver(outbound(text=f"{long_word}\nCafé", html=f"<p>{long_word}</p>",
                                  headers={**CAMPAIGN_HEADERS, "X-Campaign-Note": note}))

    lines = mail.content.split(b"\r\n")
    assert not any(b"\n" in line or b"\r" in line for line in lines)
    assert max(len(line) for line in lines) <= 998
    plain, html = mail.message.iter_parts()
    assert plain.get_content().splitlines() == [long_word, "Café"]
    assert html.get_content().splitlines() == [f"<p>{long_word}</p>"]
    assert mail.message["X-Campaign-Note"] == note


async def test_a_long_accented_subject_is_encoded_words_folded_at_78_and_reads_back(
    deliver: Deliver,
) -> None:
    subject = ("Élection : le scrutin a lieu jeudi, n'oubliez pas votre pièce d'identité "
               "et votre carte électorale, s'il vous plaît")

    mail = await deliver(outbound(subject=subject))

    assert mail.content.isascii()
    head = mail.content.split(b"\r\n\r\n", 1)[0].decode()
    subject_lines = re.search(r"^Subject: .*?(?=^\S)", head, re.MULTILINE | re.DOTALL)
    assert subject_lines is not None
    folded = subject_lines[0].split("\r\n")[:-1]
    assert len(folded) > 1 and all(len(line) <= 78 for line in folded)
    assert "=?utf-8?" in subject_lines[0]
    assert mail.message["Subject"] == subject


async def test_an_empty_subject_is_sent_as_no_subject(deliver: Deliver) -> None:
    mail = await deliver(outbound(subject=""))

    assert mail.message["Subject"] == "(no subject)"


async def test_a_non_ascii_sender_name_is_encoded_and_the_addresses_stay_readable(
    deliver: Deliver,
) -> None:
    sender = "José Pérez <jose@example.org>"
    reply_to = f"{sender}, reply+R1@mail.example.org"

    mail = await deliver(outbound(headers={**CAMPAIGN_HEADERS, "Reply-To": reply_to}),
                         from_address=sender)

    assert mail.content.isascii()
    assert mail.content.startswith(
        b"From: =?utf-8?q?Jos=C3=A9_P=C3=A9rez?= <jose@example.org>\r\n")
    [parsed] = mail.message["From"].addresses
    assert (parsed.display_name, parsed.addr_spec) == ("José Pérez", "jose@example.org")
    assert [a.addr_spec for a in mail.message["Reply-To"].addresses] == [
        "jose@example.org", "reply+R1@mail.example.org"]


async def test_a_body_in_another_script_is_base64_and_reads_back_line_for_line(
    deliver: Deliver,
) -> None:
    text = "Η ψηφοφορία είναι την Πέμπτη.\nΤα εκλογικά τμήματα ανοίγουν στις 7."

    mail = await deliver(outbound(text=text))

    assert mail.content.isascii()
    assert mail.message["Content-Transfer-Encoding"] == "base64"
    # canonical text: CRLF line ends inside the encoding too (RFC 2046 4.1.1)
    assert mail.message.get_content() == text.replace("\n", "\r\n") + "\r\n"


async def test_a_body_line_beginning_with_from_is_not_changed(deliver: Deliver) -> None:
    mail = await deliver(outbound(text="Thursday.\nFrom 7am the polls are open."))

    assert b"\r\nFrom 7am the polls are open.\r\n" in mail.content
    assert b">From" not in mail.content


@pytest.mark.parametrize("field", ["subject", "address", "header", "from"])
@pytest.mark.parametrize("brk", ["\r\n", "\n", "\r", "\u2028"])
def test_a_line_break_in_any_header_value_is_refused(field: str, brk: str) -> None:
    injected = f"x@example.com{brk}Bcc: all@example.com"
    message, sender = outbound(), FROM
    if field == "subject":
        message = outbound(subject=injected)
    elif field == "address":
        message = outbound(address=injected)
    elif field == "header":
        message = outbound(headers={**CAMPAIGN_HEADERS, "List-Id": injected})
    else:
        sender = f"Jane <jane@example.org>{brk}Bcc: all@example.com"

    with pytest.raises(ValueError, match="line break"):
        build_message(message, sender, message_id_domain="example.org")


@pytest.mark.parametrize("name", ["X-Note\r\nBcc", "X-Note: x", "X Note", "", "X-Nöte"])
def test_a_header_name_that_is_not_one_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a header name"):
        build_message(outbound(headers={name: "value"}), FROM,
                      message_id_domain="example.org")


async def test_a_message_with_a_line_break_in_a_header_never_reaches_the_relay(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)

    with pytest.raises(PermanentSendError) as refused:
        await send(adapter, outbound(subject="Polling day\r\nBcc: all@example.com"))

    assert refused.value.reason == "invalid_message"
    assert sink.connections == 0 and sink.received == []


async def test_sender_key_names_the_relay_account() -> None:
    assert SmtpEmail(host="smtp.example.org", from_address=FROM).sender_key == (
        "smtp:smtp.example.org:jane@example.org")
    assert SmtpEmail(host="smtp.example.org", from_address=FROM,
                     username="jane").sender_key == "smtp:smtp.example.org:jane"


async def test_the_dispatcher_is_told_one_send_per_connection() -> None:
    adapter: ChannelAdapter = SmtpEmail(host="smtp.example.org", from_address=FROM,
                                        max_connections=3)
    assert adapter.max_concurrency == 3


# -- the permit ------------------------------------------------------------------------------


async def test_a_forged_permit_sends_nothing(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)
    message = outbound()
    forged = Permit(message.campaign, message.channel, message.address, message.message_id,
                    time.monotonic(), "0" * 64)

    with pytest.raises(PermitError):
        await adapter.send(message, forged)

    assert sink.connections == 0 and sink.received == []


async def test_a_permit_for_another_message_sends_nothing(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)

    with pytest.raises(PermitError):
        await adapter.send(outbound(address="other@example.com"), permit_for(outbound()))

    assert sink.connections == 0 and sink.received == []


async def test_an_expired_permit_sends_nothing(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)
    message = outbound()
    issued_at = time.monotonic() - 60
    old = Permit(message.campaign, message.channel, message.address, message.message_id,
                 issued_at, _seal(message.campaign, message.channel, message.address,
                                  message.message_id, issued_at))

    with pytest.raises(PermitError, match="expired"):
        await adapter.send(message, old)

    assert sink.connections == 0 and sink.received == []


# -- SMTP answers ----------------------------------------------------------------------------


async def test_recipient_refused_at_rcpt_is_a_hard_bounce_for_every_campaign(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    sink.refuse.add("gone@example.com")
    adapter = make_adapter(sink.port)

    with pytest.raises(RecipientRefused) as refused:
        await send(adapter, outbound(address="gone@example.com"))
    await send(adapter, outbound(address="voter@example.com"))  # connection still usable

    assert refused.value.reason == "smtp_550"
    assert refused.value.scope == "all"
    [mail] = await sink.wait_for(1)
    assert mail.rcpt_tos == ("voter@example.com",)
    assert sink.connections == 1


async def test_temporary_refusal_is_retryable(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    sink.tempfail.add("busy@example.com")
    adapter = make_adapter(sink.port)

    with pytest.raises(RetryableSendError) as failed:
        await send(adapter, outbound(address="busy@example.com"))

    assert failed.value.reason == "smtp_451"
    assert sink.received == []


async def test_nothing_listening_is_retryable(make_adapter: Callable[..., SmtpEmail]) -> None:
    adapter = make_adapter(free_port())

    with pytest.raises(RetryableSendError) as failed:
        await send(adapter, outbound())

    assert failed.value.reason == "network"


async def test_a_server_that_never_greets_is_a_retryable_timeout(
    make_adapter: Callable[..., SmtpEmail],
) -> None:
    silent_clients: list[asyncio.StreamWriter] = []

    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_clients.append(writer)

    server = await asyncio.start_server(say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = make_adapter(port, timeout=0.3)
    try:
        with pytest.raises(RetryableSendError) as failed:
            await send(adapter, outbound())
    finally:
        for writer in silent_clients:
            writer.close()
        server.close()
        await server.wait_closed()

    assert failed.value.reason == "timeout"


async def test_a_hang_up_after_the_content_was_sent_is_never_resent(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    sink.hang_up_after_data = True
    adapter = make_adapter(sink.port)

    with pytest.raises(OutcomeUnknown) as failed:
        await send(adapter, outbound())

    assert failed.value.reason == "network"
    assert len(sink.received) == 1
    assert sink.connections == 1


# -- connections -----------------------------------------------------------------------------


async def test_sequential_sends_share_one_connection(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)

    for n in range(5):
        await send(adapter, outbound(message_id=f"m{n}"))

    mails = await sink.wait_for(5)
    assert sink.connections == 1
    assert {mail.connection for mail in mails} == {1}


async def test_concurrent_sends_open_at_most_max_connections(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port, max_connections=2)

    await asyncio.gather(*(send(adapter, outbound(message_id=f"m{n}")) for n in range(10)))

    assert len(await sink.wait_for(10)) == 10
    assert sink.connections <= 2


async def test_a_connection_the_server_closed_while_idle_is_replaced_once(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)
    await send(adapter, outbound(message_id="m1"))
    sink.close_idle_on_mail = 1

    await send(adapter, outbound(message_id="m2"))

    first, second = await sink.wait_for(2)
    assert sink.connections == 2
    assert second.message["Message-ID"] != first.message["Message-ID"]
    assert len(sink.received) == 2


async def test_auth_logs_in_with_the_configured_account(
    make_adapter: Callable[..., SmtpEmail],
) -> None:
    async with SmtpSink(username="jane", password="s3cret") as sink:
        adapter = make_adapter(sink.port, username="jane", password="s3cret")
        await send(adapter, outbound())
        [mail] = await sink.wait_for(1)
    assert mail.login == "jane"


async def test_wrong_password_is_retryable_and_sends_nothing(
    make_adapter: Callable[..., SmtpEmail],
) -> None:
    async with SmtpSink(username="jane", password="s3cret") as sink:
        adapter = make_adapter(sink.port, username="jane", password="wrong")
        with pytest.raises(RetryableSendError) as failed:
            await send(adapter, outbound())
        assert sink.received == []
    assert failed.value.reason == "smtp_auth"


async def test_starttls_upgrades_before_sending(
    certificate: tuple[Path, Path], make_adapter: Callable[..., SmtpEmail]
) -> None:
    async with SmtpSink(tls_context=server_tls(certificate), require_starttls=True) as sink:
        adapter = make_adapter(sink.port, starttls=True, validate_certs=False)
        await send(adapter, outbound())
        assert len(await sink.wait_for(1)) == 1


async def test_starttls_required_but_not_offered_sends_nothing_in_the_clear(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port, starttls=True)

    with pytest.raises(RetryableSendError):
        await send(adapter, outbound())

    assert sink.received == []


async def test_implicit_tls(
    certificate: tuple[Path, Path], make_adapter: Callable[..., SmtpEmail]
) -> None:
    async with SmtpSink(implicit_tls=server_tls(certificate)) as sink:
        adapter = make_adapter(sink.port, use_tls=True, validate_certs=False)
        await send(adapter, outbound())
        assert len(await sink.wait_for(1)) == 1


async def test_an_untrusted_certificate_is_refused_when_validating(
    certificate: tuple[Path, Path], make_adapter: Callable[..., SmtpEmail]
) -> None:
    async with SmtpSink(implicit_tls=server_tls(certificate)) as sink:
        adapter = make_adapter(sink.port, use_tls=True)
        with pytest.raises(RetryableSendError):
            await send(adapter, outbound())
        assert sink.received == []


# -- DKIM ------------------------------------------------------------------------------------


def dns_with(public_key: bytes) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        if name == b"cg2024._domainkey.example.org.":
            return b"v=DKIM1; k=rsa; p=" + public_key
        return None

    return lookup


async def test_dkim_signature_verifies_and_covers_one_click_unsubscribe(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail], rsa_key: tuple[bytes, bytes]
) -> None:
    private, public = rsa_key
    adapter = make_adapter(sink.port, dkim=DkimKey("cg2024", "example.org", private))

    await send(adapter, outbound())

    [mail] = await sink.wait_for(1)
    assert dkim.verify(mail.content, dnsfunc=dns_with(public))
    signature = " ".join(str(mail.message["DKIM-Signature"]).split())
    h_tag = re.search(r"\bh=([^;]+);", signature)
    assert h_tag is not None
    signed = {name.strip() for name in h_tag[1].split(":")}
    assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe",
            "list-unsubscribe-post", "list-id"} <= signed


async def test_dkim_verifies_over_encoded_headers_and_both_body_parts(
    deliver: Deliver, rsa_key: tuple[bytes, bytes]
) -> None:
    private, public = rsa_key
    subject = "Élection : le scrutin a lieu jeudi, n'oubliez pas votre pièce d'identité"

    mail = await deliver(outbound(subject=subject, text="Café ouvert.\n" + "x" * 200,
                                  html="<p>Café <b>ouvert</b>.</p>"),
                         from_address="José Pérez <jose@example.org>",
                         dkim=DkimKey("cg2024", "example.org", private))

    assert dkim.verify(mail.content, dnsfunc=dns_with(public))
    assert mail.message["Subject"] == subject
    tampered = mail.content.replace(b"ouvert", b"ferm\xc3\xa9")
    assert not dkim.verify(tampered, dnsfunc=dns_with(public))


async def test_dkim_verifies_a_message_to_an_internationalised_address(
    deliver: Deliver, rsa_key: tuple[bytes, bytes]
) -> None:
    private, public = rsa_key

    mail = await deliver(outbound(address="jösé@exämple.com", subject="Élection",
                                  text="Café ouvert."),
                         dkim=DkimKey("cg2024", "example.org", private))

    assert dkim.verify(mail.content, dnsfunc=dns_with(public))


async def test_dkim_fails_when_the_unsubscribe_post_header_is_altered(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail], rsa_key: tuple[bytes, bytes]
) -> None:
    private, public = rsa_key
    adapter = make_adapter(sink.port, dkim=DkimKey("cg2024", "example.org", private))

    await send(adapter, outbound())

    [mail] = await sink.wait_for(1)
    tampered = mail.content.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two")
    assert not dkim.verify(tampered, dnsfunc=dns_with(public))


# -- addresses -------------------------------------------------------------------------------


def test_normalise_address_lower_cases_and_trims() -> None:
    assert normalise_address("  Jane.Doe@Example.ORG ") == "jane.doe@example.org"


@pytest.mark.parametrize("raw", ["", "jane", "jane@", "@example.org", "jane@@example.org",
                                 "jane doe@example.org"])
def test_normalise_address_refuses_what_is_not_an_address(raw: str) -> None:
    with pytest.raises(ValueError, match="not a valid email address"):
        normalise_address(raw)


# -- inbound mail ----------------------------------------------------------------------------


def mail_bytes(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def test_mail_to_the_unsubscribe_address_is_an_unsubscribe() -> None:
    data = mail_bytes(
        "From: Voter <Voter@Example.com>\n"
        f"To: unsubscribe+Tk123@{DOMAIN}\n"
        "Subject: unsubscribe\n"
        "Message-ID: <abc@example.com>\n"
        "\n"
        "This message was automatically generated by Gmail.\n"
    )

    [event] = parse_inbound_mail("voter@example.com", [f"unsubscribe+Tk123@{DOMAIN}"], data,
                                 DOMAIN)

    assert event.kind == "unsubscribe"
    assert event.channel == "email"
    assert event.payload == "Tk123"
    assert event.address == "voter@example.com"
    assert event.provider_event_id == "<abc@example.com>"


def delivery_status_notification(status: str, action: str) -> bytes:
    """A DSN as Postfix writes it."""
    return mail_bytes(
        "Return-Path: <>\n"
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        f"To: bounce+Bm1@{DOMAIN}\n"
        "Auto-Submitted: auto-replied\n"
        "Message-Id: <20240501120000.ABC123@mx.example.com>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=delivery-status;\n"
        '\tboundary="B1.1714564800/mx.example.com"\n'
        "\n"
        "This is a MIME-encapsulated message.\n"
        "\n"
        "--B1.1714564800/mx.example.com\n"
        "Content-Description: Notification\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.\n"
        "\n"
        "--B1.1714564800/mx.example.com\n"
        "Content-Description: Delivery report\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; mx.example.com\n"
        "X-Postfix-Queue-ID: ABC123\n"
        "Arrival-Date: Wed,  1 May 2024 12:00:00 +0100 (BST)\n"
        "\n"
        "Final-Recipient: rfc822; voter@mailbox.example.com\n"
        "Original-Recipient: rfc822;Voter@Example.com\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        "Remote-MTA: dns; mailbox.example.com\n"
        f"Diagnostic-Code: smtp; 550 {status} <voter@mailbox.example.com>: Recipient\n"
        "    address rejected: User unknown in virtual mailbox table\n"
        "\n"
        "--B1.1714564800/mx.example.com\n"
        "Content-Description: Undelivered Message Headers\n"
        "Content-Type: text/rfc822-headers\n"
        "\n"
        "From: Jane Doe <jane@example.org>\n"
        "To: Voter@Example.com\n"
        "Subject: Polling day\n"
        "\n"
        "--B1.1714564800/mx.example.com--\n"
    )


def test_a_failed_delivery_report_is_a_hard_bounce_for_the_original_recipient() -> None:
    data = delivery_status_notification("5.1.1", "failed")

    [event] = parse_inbound_mail("", [f"bounce+Bm1@{DOMAIN}"], data, DOMAIN)

    assert event.kind == "bounce"
    assert event.status == "hard"
    assert event.error_code == "5.1.1"
    assert event.payload == "Bm1"
    assert event.address == "voter@example.com"
    assert event.provider_event_id == "<20240501120000.ABC123@mx.example.com>"
    assert "User unknown" in event.extra["diagnostic"]


def test_a_delayed_delivery_report_is_a_soft_bounce() -> None:
    data = delivery_status_notification("4.2.2", "delayed")

    [event] = parse_inbound_mail("", [f"bounce+Bm1@{DOMAIN}"], data, DOMAIN)

    assert (event.kind, event.status, event.error_code) == ("bounce", "soft", "4.2.2")


def test_a_success_report_is_no_bounce() -> None:
    data = delivery_status_notification("2.0.0", "delivered")

    assert parse_inbound_mail("", [f"bounce+Bm1@{DOMAIN}"], data, DOMAIN) == []


def test_an_auto_reply_to_the_bounce_address_is_no_bounce() -> None:
    data = mail_bytes(
        "From: Voter <voter@example.com>\n"
        f"To: bounce+Bm1@{DOMAIN}\n"
        "Subject: Out of office\n"
        "Auto-Submitted: auto-replied\n"
        "\n"
        "I am away until Monday.\n"
    )

    assert parse_inbound_mail("voter@example.com", [f"bounce+Bm1@{DOMAIN}"], data,
                              DOMAIN) == []


def test_a_reply_is_read_as_its_first_line_without_the_quoted_text() -> None:
    data = mail_bytes(
        "From: \"Voter\" <VOTER@example.com>\n"
        f"To: Jane Doe <reply+R77@{DOMAIN}>\n"
        "Subject: Re: Polling day\n"
        "Message-ID: <reply-1@example.com>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "\n"
        "STOP\n"
        "\n"
        "On Wed, 1 May 2024 at 12:00, Jane Doe <jane@example.org> wrote:\n"
        "> Polling day is Thursday. Caf=C3=A9 open.\n"
        "> Unsubscribe: https://campaign.example.org/u/x\n"
    )

    [event] = parse_inbound_mail("voter@example.com", [f"reply+R77@{DOMAIN}"], data, DOMAIN)

    assert event.kind == "message"
    assert event.text == "STOP"
    assert event.payload == "R77"
    assert event.address == "voter@example.com"
    assert event.provider_event_id == "<reply-1@example.com>"


def test_an_html_only_base64_reply_is_read_too() -> None:
    html = ("<div dir=\"ltr\">Please remove me</div><div class=\"gmail_quote\">"
            "<blockquote>Polling day is Thursday.</blockquote></div>")
    data = mail_bytes(
        "From: voter@example.com\n"
        f"To: reply+R77@{DOMAIN}\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/html; charset=utf-8\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        + base64.encodebytes(html.encode()).decode()
    )

    [event] = parse_inbound_mail("voter@example.com", [f"reply+R77@{DOMAIN}"], data, DOMAIN)

    assert event.text == "Please remove me"
    assert event.provider_event_id.startswith("sha256:")


def test_mail_to_other_local_addresses_is_a_message_and_other_domains_are_ignored() -> None:
    data = mail_bytes("From: voter@example.com\nSubject: hello\n\nWho are you?\n")

    [event] = parse_inbound_mail("voter@example.com",
                                 [f"info@{DOMAIN}", "someone@elsewhere.example"], data, DOMAIN)

    assert (event.kind, event.payload, event.text) == ("message", None, "Who are you?")


def test_one_mail_to_two_tokens_gives_two_events_with_distinct_ids() -> None:
    data = mail_bytes("From: voter@example.com\nMessage-ID: <two@example.com>\n\nstop\n")

    events = parse_inbound_mail(
        "voter@example.com", [f"unsubscribe+A@{DOMAIN}", f"unsubscribe+B@{DOMAIN}"], data,
        DOMAIN)

    assert [event.payload for event in events] == ["A", "B"]
    assert len({event.provider_event_id for event in events}) == 2


# -- the inbound server ----------------------------------------------------------------------


@pytest.fixture
async def inbound() -> AsyncIterator[tuple[InboundMailServer, int, list[InboundEvent],
                                           list[Callable[[], Awaitable[None]]]]]:
    received: list[InboundEvent] = []
    failures: list[Callable[[], Awaitable[None]]] = []

    async def on_events(events: list[InboundEvent]) -> None:
        if failures:
            await failures.pop()()
        received.extend(events)

    server = InboundMailServer("127.0.0.1", 0, DOMAIN, on_events)
    port = await server.start()
    yield server, port, received, failures
    await server.stop()


def unsubscribe_mail() -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "voter@example.com"
    mail["To"] = f"unsubscribe+Tk123@{DOMAIN}"
    mail["Message-ID"] = "<u1@example.com>"
    mail.set_content("unsubscribe")
    return mail


async def test_inbound_server_hands_an_unsubscribe_to_the_callback_before_accepting(
    inbound: tuple[InboundMailServer, int, list[InboundEvent], list[object]],
) -> None:
    _, port, received, _ = inbound

    await aiosmtplib.send(unsubscribe_mail(), hostname="127.0.0.1", port=port,
                          start_tls=False, timeout=5)

    [event] = received
    assert (event.kind, event.payload, event.address) == (
        "unsubscribe", "Tk123", "voter@example.com")


async def test_inbound_server_refuses_mail_for_other_domains(
    inbound: tuple[InboundMailServer, int, list[InboundEvent], list[object]],
) -> None:
    _, port, received, _ = inbound
    mail = unsubscribe_mail()
    mail.replace_header("To", "someone@elsewhere.example")

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(mail, hostname="127.0.0.1", port=port, start_tls=False,
                              timeout=5)

    [recipient] = refused.value.recipients
    assert recipient.code == 550 and "not a local address" in recipient.message
    assert received == []


async def test_inbound_server_answers_451_when_the_events_could_not_be_recorded(
    inbound: tuple[InboundMailServer, int, list[InboundEvent],
                   list[Callable[[], Awaitable[None]]]],
) -> None:
    _, port, received, failures = inbound

    async def database_down() -> None:
        raise ConnectionError("database is down")

    failures.append(database_down)
    with pytest.raises(aiosmtplib.SMTPDataError) as failed:
        await aiosmtplib.send(unsubscribe_mail(), hostname="127.0.0.1", port=port,
                              start_tls=False, timeout=5)
    assert failed.value.code == 451
    assert received == []

    # The sending server tries again later, and then it is recorded.
    await aiosmtplib.send(unsubscribe_mail(), hostname="127.0.0.1", port=port,
                          start_tls=False, timeout=5)
    assert [event.payload for event in received] == ["Tk123"]


async def test_an_internationalised_address_is_sent_with_smtputf8(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)

    await send(adapter, outbound(address="jösé@exämple.com"))

    [mail] = await sink.wait_for(1)
    assert mail.rcpt_tos == ("jösé@exämple.com",)
    assert mail.message["To"] == "jösé@exämple.com"
    assert "\r\nTo: jösé@exämple.com\r\n".encode() in mail.content


async def test_under_smtputf8_an_accented_subject_and_body_go_as_utf_8(
    deliver: Deliver,
) -> None:
    mail = await deliver(outbound(address="jösé@exämple.com", subject="Élection jeudi",
                                  text="Café ouvert."))

    assert "\r\nSubject: Élection jeudi\r\n".encode() in mail.content
    assert mail.message["Content-Transfer-Encoding"] == "8bit"
    assert mail.message.get_content().splitlines() == ["Café ouvert."]


async def test_close_releases_connections_and_a_later_send_reconnects(
    sink: SmtpSink, make_adapter: Callable[..., SmtpEmail]
) -> None:
    adapter = make_adapter(sink.port)
    await send(adapter, outbound(message_id="m1"))

    await adapter.close()
    await send(adapter, outbound(message_id="m2"))

    assert len(await sink.wait_for(2)) == 2
    assert sink.connections == 2
