"""A loopback SMTP server that records what it is sent, for tests and benchmarks.

:class:`SmtpSink` is aiosmtpd's real SMTP implementation, run on the caller's event loop by
:class:`adapters.smtp_inbound.SmtpListener`, with switches for the answers a real relay
gives: refused recipients (a hard bounce), temporary failures, AUTH, STARTTLS, a server
that closes an idle connection, and one that hangs up after taking a message::

    async with SmtpSink(refuse={"gone@example.com"}) as sink:
        adapter = SmtpEmail(host="127.0.0.1", port=sink.port, starttls=False, ...)
        ...
        [mail] = await sink.wait_for(1)
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import ssl
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from consentgate.adapters.smtp_inbound import SmtpListener
from consentgate.testing.fakes._served import Served

__all__ = ["ReceivedMail", "SmtpSink"]


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted transaction."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    #: the message as received (dot-unstuffed, CRLF line ends)
    content: bytes
    message: email.message.EmailMessage
    #: which connection carried it (1 for the first accepted, 2 for the next ...)
    connection: int
    #: the AUTH user name, when the client authenticated
    login: str | None


class SmtpSink(Served):
    """A recording SMTP server on loopback.

    - ``refuse``: recipients answered ``550 5.1.1 user unknown`` at RCPT.
    - ``tempfail``: recipients answered ``451 4.2.0 try later`` at RCPT.
    - ``username``/``password``: AUTH (PLAIN, LOGIN) is offered without TLS and required
      before MAIL (``530`` otherwise); wrong credentials get ``535``.
    - ``tls_context``: STARTTLS is offered; with ``require_starttls`` nothing else is
      allowed before it. ``implicit_tls``: the listener speaks TLS from the first byte.
    - ``close_idle_on_mail``: the next that many MAIL commands are answered ``421`` and the
      connection closed, as a relay does with a connection left idle too long.
    - ``hang_up_after_data``: the message is recorded, then the connection is closed
      without the final answer to DATA (the client cannot know it was taken).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        refuse: set[str] | None = None,
        tempfail: set[str] | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.refuse: set[str] = set(refuse or ())
        self.tempfail: set[str] = set(tempfail or ())
        self.username = username
        self.password = password
        self.close_idle_on_mail = 0
        self.hang_up_after_data = False
        self.received: list[ReceivedMail] = []
        self._changed = asyncio.Condition()
        self._connection_numbers: dict[int, int] = {}
        options: dict[str, Any] = {"hostname": "sink.test", "enable_SMTPUTF8": True}
        if username is not None:
            # Loopback only: AUTH in the clear is fine here, and checked in handle_MAIL
            # rather than with auth_required (which warns when TLS is not required).
            options.update(authenticator=self._authenticate, auth_require_tls=False)
        if tls_context is not None:
            options.update(tls_context=tls_context, require_starttls=require_starttls)
        self._listener = SmtpListener(self, host=host, port=port, server_ssl=implicit_tls,
                                      **options)
        self.port = port

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self._listener.connections

    async def start(self) -> int:
        self.port = await self._listener.start()
        return self.port

    async def stop(self) -> None:
        await self._listener.stop()

    # A bounded wait is the point of this helper, hence the timeout parameter.
    async def wait_for(
        self, count: int, timeout: float = 5.0  # noqa: ASYNC109
    ) -> list[ReceivedMail]:
        """Wait until at least ``count`` messages were accepted; returns them all."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.received) >= count), timeout
            )
        return list(self.received)

    # -- aiosmtpd hooks --

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        ):
            return AuthResult(success=True, auth_data=auth_data.login.decode())
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:
        if self.close_idle_on_mail > 0:
            self.close_idle_on_mail -= 1
            self._close_after_reply(server)
            return "421 4.4.2 sink.test idle too long, closing connection"
        if self.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 user unknown"
        if address in self.tempfail:
            return "451 4.2.0 try later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = BytesParser(policy=email.policy.default).parsebytes(content)
        number = self._connection_numbers.setdefault(id(session),
                                                     len(self._connection_numbers) + 1)
        self.received.append(ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=content,
            message=message,
            connection=number,
            login=session.auth_data if isinstance(session.auth_data, str) else None,
        ))
        async with self._changed:
            self._changed.notify_all()
        if self.hang_up_after_data:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
        return "250 OK"

    @staticmethod
    def _close_after_reply(server: SMTP) -> None:
        # The reply is written before the next loop iteration closes the transport.
        transport = server.transport
        if transport is not None:
            asyncio.get_running_loop().call_soon(transport.close)
