"""Outbound email over SMTP: the ``email`` channel adapter.

:class:`SmtpEmail` hands one message to one recipient per SMTP transaction, over a small pool
of reused connections (STARTTLS, implicit TLS and AUTH as configured), after checking the
gate's :class:`~adapters.base.Permit`. Messages are built by :func:`build_message` and may be
DKIM-signed; the signature always covers ``List-Unsubscribe`` and ``List-Unsubscribe-Post``,
without which mailbox providers ignore RFC 8058 one-click unsubscribe.

SMTP answers become the shared error types: a 5xx at ``RCPT`` is a hard bounce
(:class:`~adapters.base.RecipientRefused`, scope ``all``), any 4xx is retryable, a 5xx at
``MAIL`` or ``DATA`` is permanent.

A message is never sent twice by this adapter. A connection that breaks before the message
content went out is dropped and the transaction is tried once more on a fresh connection
(pooled connections go stale when the server closes them while idle). Once the content has
been written after ``DATA``, a lost connection or a timeout leaves the outcome unknown: the
server may already have queued the message, so it is not resent but reported as
:class:`~adapters.base.OutcomeUnknown` (``timeout`` or ``network``).
"""

from __future__ import annotations

import asyncio
import binascii
import email.charset
import email.message
import email.policy
import email.utils
import functools
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.mime.text import MIMEText
from typing import Any

import aiosmtplib
import dkim as dkimpy
from email_validator import EmailNotValidError, validate_email

from consentgate.adapters.base import (
    OutboundMessage,
    OutcomeUnknown,
    PermanentSendError,
    Permit,
    RecipientRefused,
    RetryableSendError,
    SendError,
    SendResult,
)

__all__ = [
    "DKIM_SIGNED_HEADERS",
    "DkimKey",
    "SmtpEmail",
    "build_message",
    "normalise_address",
]

#: Header fields the DKIM signature covers, each listed twice ("over-signed") so that a copy
#: added in transit, such as a second ``List-Unsubscribe``, breaks the signature instead of
#: riding on it. A field the message lacks is signed as absent, which has the same effect.
DKIM_SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
    "mime-version",
    "content-type",
)

#: Fields build_message sets itself; a caller-supplied header must not replace them.
_OWN_HEADERS = frozenset(
    {"from", "to", "subject", "date", "message-id", "mime-version", "content-type",
     "content-transfer-encoding", "dkim-signature"}
)

_MAX_LINE = 998  # RFC 5322 2.1.1, excluding CRLF
_BODY_LINE = 78  # longer body lines are sent quoted-printable or base64 (RFC 5322 2.1.1)

#: Every character str.splitlines() breaks at: any of them in a header value would end the
#: header (or look as if it did to some reader) and start a forged one.
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
#: RFC 5322 2.2: printable US-ASCII except the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")

# The modern policy, used only for the header values the fast path below does not take.
_MODERN = email.policy.EmailPolicy(linesep="\r\n", cte_type="7bit")
_MODERN_UTF8 = email.policy.EmailPolicy(linesep="\r\n", utf8=True)
_MODERN_LONG = _MODERN.clone(max_line_length=_MAX_LINE)


class _OutboundPolicy(email.policy.Compat32):
    """The legacy ``compat32`` policy, which stores header values as the strings given,
    with a header writer mail clients can read.

    Most of the cost of building a message with ``EmailMessage`` is its header registry
    parsing every value into objects, and a bulk message sets a dozen. Here a value that is
    ASCII and fits on one line of 998 characters (RFC 5322's hard limit) is written exactly as
    given; so is ``List-Unsubscribe: <https://.../u/TOKEN>``, which both compat32's
    folding at 78 and the modern policy's encoded words (``=?utf-8?q?=3Chttps...``) would
    make unusable to the clients that read it. Any other value, a subject with accents, an
    address with a non-ASCII display name, a value too long for one line, goes through the
    modern policy, which parses it by kind (address list, unstructured text) and encodes
    only what must be (RFC 2047 words, or raw UTF-8 under SMTPUTF8).
    """

    mangle_from_ = False  # compat32's default turns a body line "From ..." into ">From ..."
    #: internationalised addresses: headers in raw UTF-8 (the message goes with SMTPUTF8)
    utf8 = False

    def fold(self, name: str, value: Any) -> str:
        text = str(value)
        if text.isascii():
            if len(name) + 2 + len(text) <= _MAX_LINE:
                return f"{name}: {text}{self.linesep}"
            modern = _MODERN_LONG
        else:
            modern = _MODERN_UTF8 if self.utf8 else _MODERN
        if modern.linesep != self.linesep:
            modern = modern.clone(linesep=self.linesep)
        return str(modern.header_factory(name, text).fold(policy=modern))

    def fold_binary(self, name: str, value: Any) -> bytes:
        return self.fold(name, value).encode("utf-8" if self.utf8 else "ascii")


class _OutboundUtf8Policy(_OutboundPolicy):
    """For internationalised addresses only: the message goes with SMTPUTF8."""

    utf8 = True


# cte_type="7bit": bodies are quoted-printable or base64 when not plain ASCII, so no server
# needs 8BITMIME; under SMTPUTF8 (which implies 8BITMIME) a non-ASCII body may go as 8bit.
_POLICY = _OutboundPolicy(linesep="\r\n", cte_type="7bit")
_POLICY_UTF8 = _OutboundUtf8Policy(linesep="\r\n", cte_type="8bit")


def _utf8_charset(body_encoding: int | None) -> email.charset.Charset:
    charset = email.charset.Charset("utf-8")
    charset.body_encoding = body_encoding  # type: ignore[assignment]  # None: as is
    return charset


# The body's transfer encoding follows from the charset's body encoding (legacy API).
_AS_IS = _utf8_charset(None)  # 7bit; 8bit for non-ASCII under SMTPUTF8
_QUOTED_PRINTABLE = _utf8_charset(email.charset.QP)
_BASE64 = _utf8_charset(email.charset.BASE64)


def _body(text: str, *, eight_bit: bool) -> tuple[str, email.charset.Charset]:
    """The text with its line ends normalised, and the charset that encodes it the way
    ``EmailMessage.set_content`` would choose: as is when every line is short enough and
    ASCII (or 8-bit is allowed), otherwise quoted-printable or base64, whichever is shorter
    on the first ten lines."""
    lines = text.encode().splitlines()
    body = (b"\n".join(lines) + b"\n").decode()
    if max(map(len, lines), default=0) <= _BODY_LINE and (eight_bit or body.isascii()):
        return body, _AS_IS
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    if len(binascii.b2a_qp(sniff)) > len(binascii.b2a_base64(sniff)):
        # Text in canonical form has CRLF line ends (RFC 2046 4.1.1); base64 keeps what it
        # is given, where the generator writes a "\n" of the other encodings as CRLF.
        return body.replace("\n", "\r\n"), _BASE64
    return body, _QUOTED_PRINTABLE


def _text_part(text: str, subtype: str, policy: _OutboundPolicy) -> MIMEText:
    body, charset = _body(text, eight_bit=policy.utf8)
    part = MIMEText(body, subtype, charset, policy=policy)  # type: ignore[arg-type]
    del part["MIME-Version"]  # MIMEText puts one on every part; it belongs on the message
    return part


@dataclass(frozen=True)
class DkimKey:
    """A DKIM signing key: the selector and domain published in DNS
    (``{selector}._domainkey.{domain}``) and the PEM private key (PKCS#1 or PKCS#8 RSA)."""

    selector: str
    domain: str
    private_key: bytes


def normalise_address(raw: str) -> str:
    """Return the normalised form of an email address, lower-cased, for storage and
    comparison (addresses are compared case-insensitively).

    Raises :class:`ValueError` naming the problem when ``raw`` is not a valid address.
    Deliverability (DNS) is not checked.
    """
    try:
        validated = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {raw!r} ({exc})") from exc
    return validated.normalized.lower()


@functools.lru_cache(maxsize=64)
def _bare_address(value: str) -> str:
    """The addr-spec of ``value``, which may be ``Name <addr>`` or a bare address (cached:
    every message asks it of the same From address)."""
    _, addr = email.utils.parseaddr(value)
    if "@" not in addr:
        raise ValueError(f"not an email address: {value!r}")
    return addr


_NOT_IN_MSGID = re.compile(r"[^A-Za-z0-9_.-]")


def _msgid_tag(message_id: str) -> str | None:
    # Our own id inside the Message-ID eases tracing a delivery back to the outbox.
    return _NOT_IN_MSGID.sub("", message_id)[:64] or None


def _boundary(parts: list[MIMEText]) -> str:
    # "=_" cannot occur in quoted-printable or base64 text (RFC 2045 6.7); a part sent as
    # is is checked, instead of the generator compiling a regular expression per message.
    while True:
        boundary = f"=_{secrets.token_hex(16)}"
        if not any(boundary in str(part.get_payload()) for part in parts):
            return boundary


def build_message(
    message: OutboundMessage, from_address: str, *, message_id_domain: str
) -> email.message.Message:
    """Build the MIME message for ``message``, with the legacy (``compat32``) API, whose
    headers are plain strings: see :class:`_OutboundPolicy` for how they are written.

    ``text/plain`` alone, or ``multipart/alternative`` with the HTML when there is some.
    From, To, Subject (``(no subject)`` when empty), Date and a fresh Message-ID are set
    here; every header in ``message.headers`` (List-Unsubscribe, List-Unsubscribe-Post,
    List-Id ...) is added as given. Raises :class:`ValueError` for a header that would
    replace one of ours, a header name that is not one, or a value with a line break
    (header injection).
    """
    needs_utf8 = not (message.address.isascii() and _bare_address(from_address).isascii())
    policy = _POLICY_UTF8 if needs_utf8 else _POLICY
    headers = [
        ("From", from_address),
        ("To", message.address),
        ("Subject", message.subject or "(no subject)"),
        ("Date", email.utils.format_datetime(datetime.now(UTC))),
        ("Message-ID", email.utils.make_msgid(idstring=_msgid_tag(message.message_id),
                                              domain=message_id_domain)),
    ]
    for name, value in message.headers.items():
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"header {name!r} is set by build_message")
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"not a header name: {name!r}")
        headers.append((name, value))
    msg = email.message.Message(policy=policy)
    for name, value in headers:
        if _LINE_BREAK.search(value):
            raise ValueError(f"header {name!r} contains a line break")
        msg[name] = value
    if message.html:
        parts = [_text_part(message.text, "plain", policy),
                 _text_part(message.html, "html", policy)]
        msg["MIME-Version"] = "1.0"
        msg["Content-Type"] = f'multipart/alternative; boundary="{_boundary(parts)}"'
        for part in parts:
            msg.attach(part)
    else:
        msg.set_payload(*_body(message.text, eight_bit=needs_utf8))
    return msg


class _BeforeContent(Exception):
    """The transaction failed before the message content was written: safe to try again on
    a new connection."""

    def __init__(self, error: SendError) -> None:
        super().__init__(str(error))
        self.error = error


def _response_error(code: int, text: str, *, at_rcpt: bool = False) -> SendError:
    reason = f"smtp_{code}"
    if 400 <= code < 500:
        return RetryableSendError(reason, text)
    if at_rcpt and 500 <= code < 600:
        # The receiving side refuses this address: a hard bounce, suppressed everywhere.
        return RecipientRefused(reason, text, scope="all")
    return PermanentSendError(reason, text)


def _transport_error(exc: BaseException) -> SendError:
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts subclass it
        return RetryableSendError("timeout", str(exc))
    return RetryableSendError("network", str(exc))


class SmtpEmail:
    """The ``email`` channel over an SMTP relay (satisfies
    :class:`adapters.base.ChannelAdapter`).

    ``use_tls`` is implicit TLS (port 465) and takes precedence over ``starttls``; with
    ``starttls`` the upgrade is required, never skipped when the server does not offer it.
    At most ``max_connections`` connections are open at once; idle ones are reused.
    """

    channel = "email"

    def __init__(
        self,
        *,
        host: str,
        port: int = 587,
        starttls: bool = True,
        use_tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        from_address: str,
        rate_per_second: float = 20.0,
        max_connections: int = 4,
        dkim: DkimKey | None = None,
        timeout: float = 30.0,
        validate_certs: bool = True,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.host = host
        self.port = port
        self.from_address = from_address
        self._envelope_default = _bare_address(from_address)
        self._msgid_domain = self._envelope_default.rpartition("@")[2]
        self.sender_key = f"smtp:{host}:{username or self._envelope_default}"
        self.rate_per_second = rate_per_second
        self.max_connections = max_connections
        self._dkim = dkim
        self._client_options: dict[str, Any] = {
            "hostname": host,
            "port": port,
            "username": username,
            "password": password,
            "use_tls": use_tls,
            "start_tls": False if use_tls else starttls,
            "validate_certs": validate_certs,
            "timeout": timeout,
        }
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(max_connections)
        # close() starts a new generation: connections of an older one still in use are
        # closed when their send ends instead of going back to the pool.
        self._generation = 0
        self._generation_of: dict[aiosmtplib.SMTP, int] = {}

    @property
    def max_concurrency(self) -> int:
        """One send per connection: the dispatcher hands this adapter no more than
        ``max_connections`` messages at once, so a send never waits for a connection."""
        return self.max_connections

    async def send(self, message: OutboundMessage, permit: Permit) -> SendResult:
        """Take a connection slot, check ``permit``, then deliver ``message`` to
        ``message.address`` in one SMTP transaction. Returns the Message-ID as
        ``provider_id``."""
        # The slot comes first so that the permit is checked when this message can go on
        # the wire at once. The dispatcher's cap (max_concurrency) means it is free for
        # messages the dispatcher sends; any other caller that waits here is still held to
        # the permit's age when the wait ends.
        async with self._slots:
            permit.check(message)
            try:
                msg = build_message(message, self.from_address,
                                    message_id_domain=self._msgid_domain)
                content = msg.as_bytes()
            except ValueError as exc:
                raise PermanentSendError("invalid_message", str(exc)) from exc
            if self._dkim is not None:
                content = self._sign(content)
            sender = message.envelope_from or self._envelope_default
            await self._deliver(sender, message.address, content)
        return SendResult(provider_id=str(msg["Message-ID"]))

    async def close(self) -> None:
        """Say QUIT on the idle connections; connections in use close when their send ends.
        A later send opens a new connection."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for client in idle:
            self._generation_of.pop(client, None)
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    def _sign(self, content: bytes) -> bytes:
        assert self._dkim is not None
        headers = [name.encode() for name in DKIM_SIGNED_HEADERS for _ in range(2)]
        signature = dkimpy.sign(
            content,
            self._dkim.selector.encode(),
            self._dkim.domain.encode(),
            self._dkim.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
            linesep=b"\r\n",
        )
        return bytes(signature) + content

    async def _deliver(self, sender: str, recipient: str, content: bytes) -> None:
        client, reused = await self._checkout()
        try:
            await self._attempt(client, sender, recipient, content)
        except _BeforeContent as failure:
            if not reused:
                raise failure.error from failure.__cause__
        else:
            return
        # A pooled connection had gone stale (typically closed by the server while idle)
        # before the content was sent: one more try on a fresh connection.
        client, _ = await self._checkout(fresh=True)
        try:
            await self._attempt(client, sender, recipient, content)
        except _BeforeContent as failure:
            raise failure.error from failure.__cause__

    async def _attempt(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, content: bytes
    ) -> None:
        """One transaction on ``client``, which goes back to the pool afterwards if it is
        still usable."""
        try:
            await self._transaction(client, sender, recipient, content)
        except SendError:
            self._checkin(client)  # a refusal leaves the connection reset and usable
            raise
        except BaseException:  # _BeforeContent, cancellation, a bug: drop the connection
            self._discard(client)
            raise
        self._checkin(client)

    async def _checkout(self, *, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        while self._idle and not fresh:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
            self._discard(client)  # the server hung up while it was idle
        return await self._connect(), False

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected and self._generation_of.get(client) == self._generation:
            self._idle.append(client)
        else:
            self._discard(client)

    def _discard(self, client: aiosmtplib.SMTP) -> None:
        self._generation_of.pop(client, None)
        client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(**self._client_options)
        try:
            await self._open(client)
        except BaseException:
            client.close()
            raise
        self._generation_of[client] = self._generation
        return client

    @staticmethod
    async def _open(client: aiosmtplib.SMTP) -> None:
        try:
            await client.connect()
            # Learn the extensions now (SIZE, SMTPUTF8): without STARTTLS or AUTH the
            # client would only say EHLO lazily, at MAIL, after the options were chosen.
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise RetryableSendError("smtp_auth", f"{exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, EHLO or STARTTLS refused: the relay's problem, not this message's.
            raise RetryableSendError(f"smtp_{exc.code}", exc.message) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Refused, unreachable, timed out, TLS failure, STARTTLS or AUTH not offered.
            raise _transport_error(exc) from exc

    async def _transaction(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, content: bytes
    ) -> None:
        utf8 = not (sender.isascii() and recipient.isascii())
        encoding = "utf-8" if utf8 else "ascii"
        options: list[str] = []
        if utf8:
            if not client.supports_extension("smtputf8"):
                raise PermanentSendError("smtputf8_unsupported",
                                         "the relay cannot take internationalised addresses")
            options.append("SMTPUTF8")
        if client.supports_extension("size"):
            options.append(f"SIZE={len(content)}")
        try:
            await client.mail(sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:  # closing the channel: typical of an idle pooled connection
                raise _BeforeContent(_response_error(exc.code, exc.message)) from exc
            await self._reset(client)
            raise _response_error(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _BeforeContent(_transport_error(exc)) from exc
        try:
            await client.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                raise _BeforeContent(_response_error(exc.code, exc.message)) from exc
            await self._reset(client)
            raise _response_error(exc.code, exc.message, at_rcpt=True) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _BeforeContent(_transport_error(exc)) from exc
        try:
            await client.data(content)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(client)
            raise _response_error(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            # The content may have reached the server: never send it again.
            raise OutcomeUnknown(_transport_error(exc).reason, str(exc)) from exc

    @staticmethod
    async def _reset(client: aiosmtplib.SMTP) -> None:
        """Clear a refused transaction so the connection can be reused; one that cannot be
        reset is closed (and so not reused)."""
        if not client.is_connected:  # aiosmtplib closes it itself after a 421
            return
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
