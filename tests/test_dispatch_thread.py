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
