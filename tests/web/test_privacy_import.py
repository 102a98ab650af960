"""A large opt-out list from another platform: read in worker processes, written in chunks,
applied at once (anything queued for those people is cancelled), and audited with the
file's digest."""

from __future__ import annotations

import hashlib
import json
import time

from sqlalchemy import func, select

from consentgate.bot.imports import PARALLEL_FROM
from consentgate.storage import models
from consentgate.testing.harness import Harness, running_gateway

CSV = {"Content-Type": "text/csv"}
ROWS = 20_000


async def test_a_large_opt_out_list_is_applied_whole_and_at_once(sqlite_url: str) -> None:
    async with running_gateway(sqlite_url, dispatch=False) as gw:
        await _import(gw)


async def _import(gw: Harness) -> None:
    assert ROWS >= PARALLEL_FROM  # the worker-process path
    numbers = [f"+4479{i:08d}" for i in range(ROWS)]
    await gw.subscribe(numbers[-1])
    status, queued = await gw.api("POST", "/api/v1/messages",
                                  {"channel": "sms", "to": numbers[-1], "text": "queued"})
    assert status == 202
    lines = ["channel,address,reason"] + [f"sms,{n},moved from old platform" for n in numbers]
    lines[10] = "sms,not a number,x"
    body = ("\n".join(lines) + "\n").encode()
    started = time.monotonic()
    status, report = await gw.api("POST", "/api/v1/suppressions/import", raw=body,
                                  headers=CSV)
    elapsed = time.monotonic() - started
    assert status == 200
    assert report["imported"] == ROWS - 1
    assert [(r["line"], r["code"]) for r in report["rejected"]] == [(11, "invalid_address")]
    assert elapsed < 60
    async with gw.db.read() as conn:
        s = models.subscriptions
        opted = (await conn.execute(select(func.count()).select_from(s).where(
            s.c.campaign == "jane-2026", s.c.status == "opted_out"))).scalar_one()
    assert opted == ROWS - 1
    _, view = await gw.api("GET", f"/api/v1/messages/{queued['id']}")
    assert (view["status"], view["reason"]) == ("cancelled", "opted_out")
    status, refused = await gw.api("POST", "/api/v1/messages",
                                   {"channel": "sms", "to": numbers[-1], "text": "hi"})
    assert (status, refused["code"]) == (403, "opted_out")
    _, audit = await gw.api("GET", "/api/v1/audit?action=opt_outs.imported")
    [entry] = audit
    detail = json.loads(entry["detail"])
    assert detail["sha256"] == hashlib.sha256(body).hexdigest()
    assert (detail["imported"], detail["rejected"]) == (ROWS - 1, 1)
