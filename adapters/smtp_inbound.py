"""Inbound email: what people and mail servers send back to the campaign's mail domain.

Three kinds of local address are understood (``TOKEN`` is the opaque token the outbound side
put in the address; it is passed on untouched, as ``payload``):

- ``unsubscribe+TOKEN@domain``: the ``mailto:`` form of ``List-Unsubscribe``. Any mail to it
  is an ``unsubscribe`` event, whatever it says.
- ``bounce+TOKEN@domain``: the VERP envelope sender of outbound mail. Only a delivery status
  notification (RFC 3464: a ``message/delivery-status`` part, normally inside
  ``multipart/report; report-type=delivery-status``) becomes an event: ``bounce`` with status
  ``hard`` (5.x.x) or ``soft`` (4.x.x). Anything else sent there, such as an out-of-office
  reply or a challenge from a spam filter, yields no event: it says nothing about delivery,
  and reading it as a bounce would suppress a person who never bounced. Plain-text bounces
  from very old mail servers are not recognised either, for the same reason.
- ``reply+TOKEN@domain`` and any other address at the domain: a ``message`` from the person,
  whose ``text`` is the first line they wrote (quoted text and signatures left out).

:func:`parse_inbound_mail` does the reading; :class:`InboundMailServer` receives the mail over
SMTP on the running event loop and hands the events to an async callback, answering the
sending server only after that callback succeeded (a 4xx otherwise, so the sender retries
and no unsubscribe is lost). :class:`SmtpListener` runs any aiosmtpd handler the same way;
the test sink uses it too.
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import email.utils
import hashlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from consentgate.adapters.base import InboundEvent

__all__ = [
    "MAX_MESSAGE_SIZE",
    "InboundMailServer",
    "SmtpListener",
    "parse_inbound_mail",
]

log = logging.getLogger(__name__)

#: The largest message the inbound server accepts (advertised as SIZE, enforced at DATA).
MAX_MESSAGE_SIZE = 10 * 1024 * 1024

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# Lines that start the quoted part of a reply: "On Mon, 1 Jan 2024, Jane wrote:",
# Outlook's "-----Original Message-----", and the signature separator "-- ".
_QUOTE_START = re.compile(
    r"^(on\b.*\bwrote:?|-{2,}\s*original message\s*-{2,}|--\s*|_{5,})$", re.IGNORECASE
)


# -- parsing ---------------------------------------------------------------------------------


def parse_inbound_mail(
    mail_from: str, rcpt_tos: Sequence[str], data: bytes, domain: str
) -> list[InboundEvent]:
    """Read one received mail into events, one per recipient at ``domain`` (recipients
    elsewhere are ignored). See the module docstring for what each address means.

    ``provider_event_id`` is the Message-ID, or ``sha256:<hex of data>`` when there is none;
    when one mail yields several events, each id also names its recipient (``<id> to
    <rcpt>``), so that applying events once per id never drops one of them.
    """
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    message_id = _header(msg, "Message-ID").strip()
    if not message_id:
        message_id = "sha256:" + hashlib.sha256(data).hexdigest()

    drafts: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for rcpt in rcpt_tos:
        local, at, rcpt_domain = rcpt.rpartition("@")
        if not at or rcpt_domain.lower() != domain.lower() or rcpt.lower() in seen:
            continue
        seen.add(rcpt.lower())
        prefix, plus, token = local.partition("+")
        prefix = prefix.lower() if plus and token else ""
        if prefix == "unsubscribe":
            drafts.append((rcpt, {"kind": "unsubscribe", "payload": token,
                                  "address": _sender_address(msg, mail_from)}))
        elif prefix == "bounce":
            for fields in _delivery_failures(msg):
                drafts.append((rcpt, {"kind": "bounce", "payload": token, **fields}))
        else:
            drafts.append((rcpt, {"kind": "message",
                                  "payload": token if prefix == "reply" else None,
                                  "address": _sender_address(msg, mail_from),
                                  "text": _first_line(msg),
                                  "extra": _message_extra(msg, mail_from)}))

    events = []
    for index, (rcpt, fields) in enumerate(drafts):
        event_id = message_id if len(drafts) == 1 else f"{message_id} to {rcpt.lower()}"
        if len(drafts) > 1 and any(r == rcpt for r, _ in drafts[:index]):
            event_id += f" #{index}"  # several failed recipients in one DSN
        events.append(InboundEvent(channel="email", provider_event_id=event_id, **fields))
    return events


def _header(msg: email.message.Message, name: str) -> str:
    """A header's value as text, or its raw text when the email package cannot parse it
    (some malformed address headers make its parser raise IndexError)."""
    try:
        return str(msg.get(name, ""))
    except Exception:
        return next((str(v) for k, v in msg.raw_items() if k.lower() == name.lower()), "")


def _sender_address(msg: email.message.Message, mail_from: str) -> str:
    _, addr = email.utils.parseaddr(_header(msg, "From"))
    if "@" not in addr:
        addr = mail_from.strip("<>")
    return addr.lower()


def _message_extra(msg: email.message.Message, mail_from: str) -> dict[str, str]:
    # Lets the caller recognise automatic mail (RFC 3834), which must never be answered.
    extra: dict[str, str] = {}
    auto = _header(msg, "Auto-Submitted").strip().lower()
    if auto and auto != "no":
        extra["auto_submitted"] = auto
    elif not mail_from.strip("<>"):
        extra["auto_submitted"] = "null-sender"
    subject = _header(msg, "Subject").strip()
    if subject:
        extra["subject"] = subject[:200]
    return extra


def _delivery_failures(msg: email.message.Message) -> list[dict[str, Any]]:
    """The failed or delayed recipients of a DSN; empty when ``msg`` is not one."""
    failures: list[dict[str, Any]] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            if not isinstance(block, email.message.Message):
                continue
            status = str(block.get("Status", "")).strip()
            action = str(block.get("Action", "")).strip().lower()
            match = _STATUS.search(status)
            if match:
                code, severity = match.group(0), {"5": "hard", "4": "soft"}.get(match[1])
            else:  # Status is required by RFC 3464, but fall back on Action
                code, severity = None, {"failed": "hard", "delayed": "soft"}.get(action)
            if severity is None:  # delivered, relayed, expanded, or the per-message block
                continue
            failures.append({
                "status": severity,
                "error_code": code,
                "address": _dsn_recipient(block),
                "extra": _dsn_extra(block),
            })
    return failures


def _dsn_recipient(block: email.message.Message) -> str:
    # Original-Recipient is the address as we submitted it (before any forwarding), so it
    # is the one our records know; Final-Recipient is where delivery was last tried.
    for name in ("Original-Recipient", "Final-Recipient"):
        value = str(block.get(name, ""))
        _, semicolon, address = value.partition(";")
        address = address.strip().strip("<>").strip() if semicolon else ""
        if "@" in address:
            return address.lower()
    return ""


def _dsn_extra(block: email.message.Message) -> dict[str, str]:
    diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
    return {"diagnostic": diagnostic[:500]} if diagnostic else {}


def _first_line(msg: email.message.EmailMessage) -> str:
    """The first line the sender wrote: quoted lines (``>``) are skipped, and reading stops
    where the quoted message or the signature begins. The subject stands in for an empty
    body."""
    for line in _body_text(msg).splitlines():
        line = line.strip().lstrip("\ufeff\u200b").strip()
        if not line or line.startswith(">"):
            continue
        if _QUOTE_START.match(line):
            break
        return line
    return _header(msg, "Subject").strip()


def _body_text(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, KeyError):  # unknown charset or mangled encoding
        raw = part.get_payload(decode=True)
        content = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    if not isinstance(content, str):
        return ""
    if part.get_content_subtype() == "html":
        return _html_text(content)
    return content


class _HtmlText(HTMLParser):
    """Just enough HTML-to-text for reading the first line of a reply: block elements start
    new lines; quoted replies (``blockquote``) and non-content elements are dropped."""

    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                         "table", "ul", "ol", "hr"})
    _SKIPPED = frozenset({"blockquote", "style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIPPED:
            self._skip_depth += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def _html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


# -- serving ---------------------------------------------------------------------------------


class _TrackedSMTP(SMTP):
    """aiosmtpd's protocol, reporting its connection to the listener so that stopping the
    listener can close it and wait for its session task."""

    def __init__(self, listener: SmtpListener, handler: object, **options: Any) -> None:
        self._tracking_listener = listener
        super().__init__(handler, **options)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # called again after STARTTLS: tracking is a set
        self._tracking_listener._opened(self, self._handler_coroutine)

    def connection_lost(self, error: Exception | None) -> None:
        self._tracking_listener._lost(self)
        super().connection_lost(error)


class SmtpListener:
    """Serve aiosmtpd's SMTP protocol with ``handler`` on the running event loop.

    aiosmtpd's ``Controller`` runs its own loop in a thread; here the handler's hooks run on
    the caller's loop, so they can await the application's coroutines directly.
    ``smtp_options`` go to :class:`aiosmtpd.smtp.SMTP` (``data_size_limit``, ``tls_context``,
    ``authenticator`` ...); ``server_ssl`` makes it an implicit-TLS listener.
    """

    def __init__(
        self,
        handler: object,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hostname: str | None = None,
        server_ssl: ssl.SSLContext | None = None,
        **smtp_options: Any,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        # Given explicitly: aiosmtpd would otherwise call socket.getfqdn() per connection.
        self._options: dict[str, Any] = {"hostname": hostname or host, **smtp_options}
        self._server_ssl = server_ssl
        self._server: asyncio.Server | None = None
        self._protocols: set[_TrackedSMTP] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: connections accepted since start
        self.connections = 0

    async def start(self) -> int:
        """Start listening; returns the bound port (useful with ``port=0``)."""
        if self._server is not None:
            return self.port
        loop = asyncio.get_running_loop()

        def factory() -> _TrackedSMTP:
            self.connections += 1
            return _TrackedSMTP(self, self.handler, loop=loop, **self._options)

        self._server = await loop.create_server(
            factory, host=self.host, port=self.port, ssl=self._server_ssl
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening, close open connections and wait for their sessions to end."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def _opened(self, protocol: _TrackedSMTP, task: asyncio.Task[None] | None) -> None:
        self._protocols.add(protocol)
        if task is not None and task not in self._tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _lost(self, protocol: _TrackedSMTP) -> None:
        self._protocols.discard(protocol)


class _InboundHandler:
    """aiosmtpd hooks for :class:`InboundMailServer`."""

    def __init__(
        self, domain: str, on_events: Callable[[list[InboundEvent]], Awaitable[None]]
    ) -> None:
        self.domain = domain
        self.on_events = on_events

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.rpartition("@")[2].lower() != self.domain.lower():
            return "550 5.1.1 not a local address"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        try:
            events = parse_inbound_mail(envelope.mail_from or "", envelope.rcpt_tos, data,
                                        self.domain)
        except Exception:
            # Retrying would fail the same way; a 5xx makes the sender tell its user.
            log.exception("inbound mail could not be read")
            return "554 5.6.0 message could not be read"
        if not events:
            return "250 OK"
        try:
            await self.on_events(events)
        except Exception:
            log.exception("inbound mail events were not recorded")
            return "451 4.3.0 try again later"
        return "250 OK"


class InboundMailServer:
    """Receive mail for ``domain`` over SMTP and pass its events to ``on_events``.

    Recipients at other domains are refused at ``RCPT`` (``550 5.1.1``), so this is never an
    open relay. A mail is acknowledged with ``250`` only once ``on_events`` has returned; if
    it raises, the answer is ``451`` and the sending server tries again later. A mail that
    yields no events (say, an auto-reply to a bounce address) is accepted and dropped,
    without calling ``on_events``. Messages over :data:`MAX_MESSAGE_SIZE` are refused.
    """

    def __init__(
        self,
        host: str,
        port: int,
        domain: str,
        on_events: Callable[[list[InboundEvent]], Awaitable[None]],
    ) -> None:
        self.domain = domain
        self._listener = SmtpListener(
            _InboundHandler(domain, on_events),
            host=host,
            port=port,
            hostname=domain,
            data_size_limit=MAX_MESSAGE_SIZE,
            enable_SMTPUTF8=True,
        )

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        return await self._listener.start()

    async def stop(self) -> None:
        """Stop listening and close open sessions (a mail not yet acknowledged is retried
        by its sender)."""
        await self._listener.stop()
