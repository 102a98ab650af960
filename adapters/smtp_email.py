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
import email.message
import email.policy
import email.utils
import re
from dataclasses import dataclass
from datetime import UTC, datetime
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


class _OutboundPolicy(email.policy.EmailPolicy):
    """``email.policy.SMTP`` with one change to header folding.

    The standard policy folds any header with a word longer than 78 characters by turning it
    into RFC 2047 encoded words, so ``List-Unsubscribe: <https://.../u/TOKEN>`` becomes
    ``=?utf-8?q?=3Chttps=3A//...?=``, which mail clients do not decode in that field and so
    cannot unsubscribe with. An all-ASCII value is folded only at whitespace and only past
    998 characters (the hard limit); non-ASCII values (a subject with accents) are encoded
    and folded as usual.
    """

    def fold(self, name: str, value: str) -> str:
        if str(value).isascii() and self.max_line_length != _MAX_LINE:
            return str(self.clone(max_line_length=_MAX_LINE).fold(name, value))
        return str(super().fold(name, value))

    def fold_binary(self, name: str, value: str) -> bytes:
        if str(value).isascii() and self.max_line_length != _MAX_LINE:
            return bytes(self.clone(max_line_length=_MAX_LINE).fold_binary(name, value))
        return super().fold_binary(name, value)


# cte_type="7bit": bodies are quoted-printable or base64 when not plain ASCII, so no server
# needs 8BITMIME. utf8=True only for internationalised addresses (sent with SMTPUTF8).
_POLICY = _OutboundPolicy(linesep="\r\n", cte_type="7bit")
_POLICY_UTF8 = _OutboundPolicy(linesep="\r\n", utf8=True)


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


def _bare_address(value: str) -> str:
    """The addr-spec of ``value``, which may be ``Name <addr>`` or a bare address."""
    _, addr = email.utils.parseaddr(value)
    if "@" not in addr:
        raise ValueError(f"not an email address: {value!r}")
    return addr


def _msgid_tag(message_id: str) -> str | None:
    # Our own id inside the Message-ID eases tracing a delivery back to the outbox.
    return re.sub(r"[^A-Za-z0-9_.-]", "", message_id)[:64] or None


def build_message(
    message: OutboundMessage, from_address: str, *, message_id_domain: str
) -> email.message.EmailMessage:
    """Build the MIME message for ``message``.

    ``text/plain`` alone, or ``multipart/alternative`` with the HTML when there is some.
    From, To, Subject (``(no subject)`` when empty), Date and a fresh Message-ID are set
    here; every header in ``message.headers`` (List-Unsubscribe, List-Unsubscribe-Post,
    List-Id ...) is added as given. Raises :class:`ValueError` for a header that would
    replace one of ours or that contains a line break.
    """
    needs_utf8 = not (message.address.isascii() and _bare_address(from_address).isascii())
    msg = email.message.EmailMessage(policy=_POLICY_UTF8 if needs_utf8 else _POLICY)
    msg["From"] = from_address
    msg["To"] = message.address
    msg["Subject"] = message.subject or "(no subject)"
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    msg["Message-ID"] = email.utils.make_msgid(
        idstring=_msgid_tag(message.message_id), domain=message_id_domain
    )
    for name, value in message.headers.items():
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"header {name!r} is set by build_message")
        msg[name] = value  # the header registry refuses CR/LF (header injection)
    msg.set_content(message.text)
    if message.html:
        msg.add_alternative(message.html, subtype="html")
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
