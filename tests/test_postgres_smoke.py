"""The same service on PostgreSQL: consent, dispatch, STOP and broadcast through one code
path (skipped where no server answers at 127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import time

from consentgate.testing.harness import running_gateway


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


async def test_a_large_consent_import_refreshes_the_planner_statistics(pg_url: str) -> None:
    """Right after a bulk load PostgreSQL's planner knows nothing of the new rows and looked
    people up at the gate through the audience index, slower with every row: the import
    refreshes the statistics, and the gate's lookup then goes by address."""
    from sqlalchemy import text

    from consentgate.bot.imports import ANALYZE_AFTER
    from tests.procs import numbers

    async with running_gateway(pg_url) as gw:
        csv = "channel,address,method,source,evidence\n" + "".join(
            f"sms,{a},import,street stall,form {i}\n"
            for i, a in enumerate(numbers(ANALYZE_AFTER)))
        status, body = await gw.api("POST", "/api/v1/consents/import", raw=csv,
                                    headers={"Content-Type": "text/csv"})
        assert status == 200 and body["imported"] == ANALYZE_AFTER, body
        async with gw.db.read() as conn:
            analysed = (await conn.execute(text(
                "SELECT last_analyze FROM pg_stat_user_tables "
                "WHERE relname = 'subscriptions'"))).scalar()
            plan = "\n".join(r[0] for r in await conn.execute(text(
                "EXPLAIN SELECT s.status FROM messages m LEFT JOIN subscriptions s "
                "ON s.campaign = m.campaign AND s.channel = m.channel "
                "AND s.address = m.address WHERE m.id IN (1, 2, 3)")))
    assert analysed is not None
    assert "uq_subscriptions_address" in plan, plan
