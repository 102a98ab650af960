"""The dispatcher against a relay slower than the sender's rate: a whole gateway on loopback
with the real SMTP adapter and a real SMTP server (aiosmtpd) that holds each message at DATA
until the test lets it through.

The sender's budget never says wait (a rate far above what the relay accepts), so the only
thing between the gate and the relay is the adapter's connection pool: no more messages may
be admitted than it has connections, or a permitted message would wait for one, beyond the
reach of an opt-out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from consentgate.bot.dispatch import Dispatcher
from consentgate.bot.gateway import Gateway
from consentgate.testing.fakes.smtp_server import SmtpSink
from consentgate.testing.harness import JANE, Harness, running_gateway, smtp_section

VOTER = "voter@example.com"
CONNECTIONS = 2


class SlowRelay(SmtpSink):
    """A relay that takes each message only when the test says so: a message waits at DATA
    (its content received, no answer yet) until its event is set. ``answered`` counts the
    messages it has taken."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: asyncio.Queue[tuple[str, asyncio.Event]] = asyncio.Queue()
        self.answered = 0
        self._held: list[asyncio.Event] = []
        self._open = False

    async def next_arrival(self) -> tuple[str, asyncio.Event]:
        """The recipient of the next message to reach DATA, and the event that lets it in."""
        return await asyncio.wait_for(self.arrivals.get(), 10)

    def open(self) -> None:
        """Take every held message, and every later one at once."""
        self._open = True
        for go in self._held:
            go.set()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        go = asyncio.Event()
        if self._open:
            go.set()
        self._held.append(go)
        await self.arrivals.put((envelope.rcpt_tos[0], go))
        await go.wait()
        answer = await super().handle_DATA(server, session, envelope)
        self.answered += 1
        return answer


class Unpaced:
    """A sender budget that never makes anyone wait."""

    async def take(self, wanted: int) -> int:
        return wanted

    def give_back(self, n: int) -> None:
        return None


@contextlib.asynccontextmanager
async def slow_relay_gateway(db_url: str, relay: SlowRelay) -> AsyncIterator[Harness]:
    section = smtp_section(relay.port, "Jane Doe <jane@example.org>",
                           max_connections=CONNECTIONS)
    async with running_gateway(db_url, jane_email=section, dispatch=False) as h:
        yield h


@contextlib.asynccontextmanager
async def dispatching(gw: Gateway, relay: SlowRelay,
                      max_in_flight: int = 256) -> AsyncIterator[None]:
    """Run a dispatcher on the gateway's parts, paced by :class:`Unpaced`; on leaving, stop
    it and wait until every send under way is recorded."""
    dispatcher = Dispatcher(gw.db, gw.gate, gw.ledger, gw.composer, gw.adapters, gw.metrics,
                            max_in_flight=max_in_flight, pacer_factory=lambda a: Unpaced())
    run = asyncio.create_task(dispatcher.run())
    try:
        yield
    finally:
        relay.open()  # on a failure, nothing is left waiting at the relay
        dispatcher.stop()
        await run


async def queue_email(h: Harness, to: str) -> int:
    status, body = await h.api("POST", "/api/v1/messages", {
        "channel": "email", "to": to, "text": "Polling day is Thursday.",
        "subject": "Polling day"})
    assert status == 202, body
    return int(body["id"])


async def status_of(h: Harness, message_id: int) -> Any:
    status, body = await h.api("GET", f"/api/v1/messages/{message_id}")
    assert status == 200, body
    return body["status"]


async def one_click_unsubscribe(h: Harness, address: str) -> None:
    gw = h.gateway
    url = gw.composer.unsubscribe_url(JANE, "email", gw.ledger.hash("email", address))
    async with h.session.post(h.url + urlsplit(url).path, data="List-Unsubscribe=One-Click",
                              headers={"Content-Type": "application/x-www-form-urlencoded"},
                              allow_redirects=False) as r:
        assert r.status == 200, await r.text()


@pytest.mark.parametrize("max_in_flight", [256, 1])
async def test_no_more_messages_are_admitted_than_the_relay_has_connections(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, max_in_flight: int
) -> None:
    recipients = [f"person{n:02d}@example.com" for n in range(12)]
    async with SlowRelay() as relay, slow_relay_gateway(sqlite_url, relay) as h:
        await h.import_consents(recipients, "email")
        ids = [await queue_email(h, to) for to in recipients]
        # At each gate decision: permits issued whose message the relay has not yet taken.
        outstanding: list[int] = []
        permitted = 0
        admit = h.gateway.gate.admit_sync  # every admission, in whichever thread it runs

        def counting_admit(*args: Any, **kwargs: Any) -> Any:
            nonlocal permitted
            admission = admit(*args, **kwargs)
            permitted += len(admission.permitted)
            outstanding.append(permitted - relay.answered)
            return admission

        monkeypatch.setattr(h.gateway.gate, "admit_sync", counting_admit)

        async with dispatching(h.gateway, relay, max_in_flight=max_in_flight):
            for _ in recipients:
                _, go = await relay.next_arrival()
                go.set()

        statuses = [await status_of(h, i) for i in ids]

    assert max(outstanding) == min(CONNECTIONS, max_in_flight)
    assert statuses == ["sent"] * len(recipients)
    assert sorted(r for mail in relay.received for r in mail.rcpt_tos) == recipients


async def test_an_unsubscribe_while_earlier_mail_is_on_the_wire_stops_the_later_mail(
    sqlite_url: str,
) -> None:
    others = [f"person{n}@example.com" for n in range(6)]
    async with SlowRelay() as relay, slow_relay_gateway(sqlite_url, relay) as h:
        await h.import_consents([*others, VOTER], "email")
        earlier = [await queue_email(h, to) for to in others]
        later = await queue_email(h, VOTER)  # queued behind the others

        async with dispatching(h.gateway, relay):
            on_the_wire = [await relay.next_arrival() for _ in range(CONNECTIONS)]
            await one_click_unsubscribe(h, VOTER)  # committed while both are held
            for _, go in on_the_wire:
                go.set()
            for _ in range(len(others) - CONNECTIONS):
                to, go = await relay.next_arrival()
                assert to != VOTER, "a message permitted before the unsubscribe was sent"
                go.set()

        assert await status_of(h, later) == "cancelled"
        assert [await status_of(h, i) for i in earlier] == ["sent"] * len(others)

    delivered = [r for mail in relay.received for r in mail.rcpt_tos]
    assert VOTER not in delivered
    assert sorted(delivered) == sorted(others)
