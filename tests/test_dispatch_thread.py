"""The dispatcher on an event loop of its own thread (``serve``'s arrangement), and a STOP's
answer held until a send to that person already on the wire has been answered.

With the dispatcher's provider calls off the web server's loop, a STOP's answer can overtake a
send the gate admitted just before the opt-out committed. The opt-out still wins (no permit
after the commit), and the answer now waits for that one call, so that once a STOP is
answered nothing more reaches the provider for that person.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from consentgate.storage.db import Precedence
from consentgate.testing.harness import running_gateway
from consentgate.testing.waiting import eventually
from tests.dbutil import rows

VOTER = "+447400100042"


async def test_serve_s_dispatcher_runs_on_a_thread_of_its_own_and_is_woken_from_the_web(
        db_url: str) -> None:
    """A message queued through the API (the web loop wakes the dispatcher across threads)
    is sent by a dispatcher whose loop runs in another thread; stopping it from the web
    loop releases it and its thread ends."""
    async with running_gateway(db_url, dispatch_thread=True) as gw:
        await gw.subscribe(VOTER)
        await gw.send_and_wait(VOTER, "Polling day is Thursday")
        loop = gw.gateway.dispatcher.loop
        assert loop is not None and loop is not asyncio.get_running_loop()
        threads = [t for t in threading.enumerate() if t.name == "consentgate-dispatcher"]
        assert len(threads) == 1
        assert [sms.to for sms in gw.twilio.messages] == [VOTER]
    assert not threads[0].is_alive()  # stopped with the harness, thread and all


@pytest.mark.parametrize("dispatch_thread", [False, True], ids=["one-loop", "own-thread"])
async def test_a_stop_is_answered_only_once_a_send_on_the_wire_to_that_person_is_answered(
        db_url: str, dispatch_thread: bool) -> None:
    """A message to the voter is on the wire (admitted, the provider slow to answer) when
    the voter's STOP arrives: the STOP commits at once, and is answered only after the
    provider has answered that send and its result is recorded."""
    async with running_gateway(db_url, twilio_latency=1.0,
                               dispatch_thread=dispatch_thread) as gw:
        await gw.subscribe(VOTER)
        status, body = await gw.api("POST", "/api/v1/messages",
                                    {"channel": "sms", "to": VOTER, "text": "Vote Thursday"})
        assert status == 202, body
        message_id = int(body["id"])

        async def on_the_wire() -> bool:
            _, view = await gw.api("GET", f"/api/v1/messages/{message_id}")
            return bool(view["status"] == "sending")

        await eventually(on_the_wire, what="the message on the wire")
        status, twiml = await gw.sms_in(VOTER, "STOP")
        answered = time.monotonic()
        assert status == 200 and "unsubscribed" in twiml
        _, view = await gw.api("GET", f"/api/v1/messages/{message_id}")
        assert view["status"] == "sent", view
        [sms] = gw.twilio.sent_to(VOTER)
        assert sms.received_at < answered
        [opted] = [e for e in await rows(gw.db, "consent_events", address=VOTER)
                   if e.event == "opted_out"]
        [m] = await rows(gw.db, "messages", address=VOTER)
        assert m.dispatched_at < opted.at  # admitted before the opt-out committed


class _LoopThread:
    """An event loop on a thread of its own with a :class:`Precedence` selector, as the
    dispatcher's is."""

    def __init__(self, precedence: Precedence) -> None:
        self.loop = asyncio.SelectorEventLoop(precedence.selector())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> _LoopThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _when_standing_aside(precedence: Precedence, loop: asyncio.AbstractEventLoop,
                               ) -> None:
    loop.call_soon_threadsafe(lambda: None)  # one more turn, then the loop polls again

    async def aside() -> bool:
        return precedence.standing_aside == 1

    await eventually(aside, what="the loop standing aside")


async def test_a_loop_with_the_precedence_selector_waits_while_a_person_s_change_is_applied(
        ) -> None:
    """Nothing runs on the other loop while a change is being applied (within the limit),
    and it goes on as soon as the change is done."""
    precedence = Precedence(limit=60.0)
    ran = threading.Event()
    with _LoopThread(precedence) as other:
        with precedence.applying():
            await _when_standing_aside(precedence, other.loop)
            other.loop.call_soon_threadsafe(ran.set)
            assert not await asyncio.to_thread(ran.wait, 0.3)  # held while applying
        assert await asyncio.to_thread(ran.wait, 10)
        assert precedence.standing_aside == 0


async def test_the_other_loop_stands_aside_at_most_the_limit_however_long_a_change_takes(
        ) -> None:
    """A change that takes long (or waits for a row the other loop has locked) cannot stop
    the other loop for more than the limit; overlapping changes count as one run."""
    precedence = Precedence(limit=0.2)
    ran = threading.Event()
    with _LoopThread(precedence) as other, precedence.applying():
        started = time.monotonic()
        with precedence.applying():  # a second, overlapping change
            await _when_standing_aside(precedence, other.loop)
            other.loop.call_soon_threadsafe(ran.set)
            assert await asyncio.to_thread(ran.wait, 10)  # went on while still applying
        assert time.monotonic() - started >= 0.2 - 0.01
        assert precedence.standing_aside == 0


async def test_an_opt_out_s_transaction_is_what_makes_the_dispatcher_stand_aside(
        db_url: str) -> None:
    """``write_now``, the opt-out's transaction, holds the precedence the gateway shares
    with ``serve``'s dispatcher thread for as long as it is open: the dispatcher's loop
    stands aside inside it, then sends as before once it has committed."""
    async with running_gateway(db_url, dispatch_thread=True) as gw:
        await gw.subscribe(VOTER)
        precedence = gw.gateway.db.precedence
        assert gw.gateway.dispatch_db.precedence is precedence  # shared with the thread
        loop = gw.gateway.dispatcher.loop
        assert loop is not None
        async with gw.gateway.db.write_now():
            await _when_standing_aside(precedence, loop)
        await gw.send_and_wait(VOTER, "Polling day is Thursday")
        assert [sms.to for sms in gw.twilio.messages] == [VOTER]
        assert precedence.standing_aside == 0
