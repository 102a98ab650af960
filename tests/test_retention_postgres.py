"""Data rights and retention on PostgreSQL: the same statements as on SQLite (skipped where
no server answers at 127.0.0.1:5432)."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import update

from consentgate.bot.privacy import Privacy
from consentgate.storage import models
from consentgate.testing.harness import JANE, running_gateway
from tests.dbutil import rows
from tests.procs import eventually

pytestmark = pytest.mark.postgres

PERSON, STALE, OTHER = "+447911123456", "+447911123457", "+447911123458"
CSV = {"Content-Type": "text/csv"}


async def test_rights_and_retention_on_postgres(pg_url: str) -> None:
    async with running_gateway(pg_url) as gw:
        for n in (PERSON, STALE, OTHER):
            await gw.subscribe(n)
        status, report = await gw.api("POST", "/api/v1/consents/import", raw=(
            "channel,address,method,source,evidence\n"
            "sms,07911 000001,paper_form,stall,form 1\n"), headers=CSV)
        assert (status, report["imported"]) == (200, 1)
        status, report = await gw.api("POST", "/api/v1/suppressions/import", raw=(
            "channel,address,reason\nsms,07911 000001,old platform\n"), headers=CSV)
        assert (status, report["imported"]) == (200, 1)
        status, sent = await gw.api("POST", "/api/v1/messages",
                                    {"channel": "sms", "to": PERSON, "text": "hello"},
                                    headers={"Idempotency-Key": "k1"})
        assert status == 202

        async def delivered() -> bool:
            _, view = await gw.api("GET", f"/api/v1/messages/{sent['id']}")
            return bool(view["status"] == "sent")
        await eventually(delivered, what="message sent")
        await gw.sms_in(PERSON, "hello back")

        status, export = await gw.api("GET", f"/api/v1/subjects/sms/{PERSON}")
        assert status == 200 and [m["text"] for m in export["messages"]] == ["hello"]
        status, moved = await gw.api("PATCH", f"/api/v1/subjects/sms/{OTHER}",
                                     {"address": "+447911123459"})
        assert status == 200 and moved["changed"] is True

        status, erased = await gw.api("DELETE", f"/api/v1/subjects/sms/{PERSON}")
        assert status == 200 and erased["removed"]["idempotency_keys"] == 1
        async with gw.db.read() as conn:
            for table in models.metadata.tables.values():
                for row in (await conn.execute(table.select())).all():
                    assert PERSON not in repr(tuple(row)), table.name
        status, refused = await gw.api("POST", "/api/v1/consents", {
            "channel": "sms", "address": PERSON, "method": "verbal", "source": "s",
            "evidence": "e"})
        assert (status, refused["code"]) == (409, "suppressed")

        async with gw.db.write() as conn:
            s = models.subscriptions
            await conn.execute(update(s).where(s.c.address == STALE)
                               .values(last_contact_at=s.c.last_contact_at - 400 * 86400))
        [jane, _] = await Privacy(gw.db, gw.gateway.ledger,
                                  gw.gateway.settings).run_retention()
        assert jane.subscriptions == 1
        subs = await rows(gw.db, "subscriptions", campaign=JANE)
        assert sorted(s.address[:5] for s in subs) == ["+4479", "+4479", "anon-"]

        async with gw.session.get(gw.url + "/api/v1/suppressions", headers={
                "Authorization": "Bearer jane-organiser-token-0001"}) as r:
            listed = list(csv.DictReader(io.StringIO(await r.text())))
        assert [row["reason"] for row in listed] == ["old platform", "erased"]
        assert listed[1]["address"].startswith("hmac-sha256:")
        _, report = await gw.api("GET", "/api/v1/report")
        assert report["messages"]["sms"]["untraced"] == 0
        assert report["audit"]["intact"] is True
