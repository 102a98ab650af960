"""The same service on PostgreSQL: consent, dispatch, STOP and broadcast through one code
path (skipped where no server answers at 127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import time

from tests.harness import running_gateway


async def test_consent_send_stop_and_broadcast_on_postgres(pg_url: str) -> None:
    async with running_gateway(pg_url) as gw:
        person = "+447911123456"
        await gw.subscribe(person)
        await gw.subscribe("+447911123457")
        status, sent = await gw.api("POST", "/api/v1/messages",
                                    {"channel": "sms", "to": person, "text": "hello"},
                                    headers={"Idempotency-Key": "a"})
        assert status == 202
        await gw.twilio.wait_for(1)
        status, twiml = await gw.sms_in(person, "STOP")
        assert status == 200 and "unsubscribed" in twiml
        status, b = await gw.api("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "x"})
        assert b["audience"] == {"eligible": 1, "excluded": {"opted_out": 1}}
        deadline = time.monotonic() + 10
        while (await gw.api("GET", f"/api/v1/broadcasts/{b['id']}"))[1]["status"] != "done":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert [s.to for s in gw.twilio.messages] == [person, "+447911123457"]
        _, again = await gw.api("POST", "/api/v1/messages",
                                {"channel": "sms", "to": person, "text": "hello"},
                                headers={"Idempotency-Key": "a"})
        assert again == sent
