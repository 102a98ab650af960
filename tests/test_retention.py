"""Retention: people out of contact for ``retention_days`` are replaced by artificial
identifiers, exactly those and nothing else; counts, consent records, opt-outs and
suppressions keep holding; ``serve`` runs it at start-up and daily; ``consentgate retention
run`` runs it now."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import update

from consentgate.bot.privacy import Privacy
from consentgate.storage import models
from consentgate.testing.harness import BOB_TOKEN, JANE, Harness
from tests.dbutil import rows
from tests.procs import Launcher, db_rows, eventually, free_port, run_cli, write_config

FRESH = "+447911000001"
STALE = "+447911000002"
STALE_OPTED_OUT = "+447911000003"
STALE_STOPALL = "+447911000004"
YEAR_AND_A_BIT = 400 * 86400.0


async def _age(gw: Harness, address: str, seconds: float) -> None:
    """Make everything about ``address`` ``seconds`` older, as if time had passed."""
    db = gw.db
    ahash = gw.gateway.ledger.hash("sms", address)
    async with db.write() as conn:
        s = models.subscriptions
        await conn.execute(update(s).where(s.c.address_hash == ahash).values(
            last_contact_at=s.c.last_contact_at - seconds,
            consented_at=s.c.consented_at - seconds, updated_at=s.c.updated_at - seconds))
        for table, col in ((models.consent_events, "at"), (models.inbound_messages, "at"),
                           (models.suppressions, "at"), (models.messages, "created_at")):
            await conn.execute(update(table).where(table.c.address_hash == ahash)
                               .values({col: table.c[col] - seconds}))


async def test_retention_pseudonymises_exactly_the_stale_ones(gw: Harness) -> None:
    for address in (FRESH, STALE, STALE_OPTED_OUT, STALE_STOPALL):
        await gw.subscribe(address)
    await gw.send_and_wait(FRESH, "Hello fresh")
    await gw.send_and_wait(STALE, "Hello stale")
    await gw.sms_in(STALE, "Good luck Jane")
    await gw.sms_in(STALE_OPTED_OUT, "STOP")
    await gw.sms_in(STALE_STOPALL, "STOPALL")
    for address in (STALE, STALE_OPTED_OUT, STALE_STOPALL):
        await _age(gw, address, YEAR_AND_A_BIT)
    privacy = Privacy(gw.db, gw.gateway.ledger, gw.gateway.settings)

    [jane, bob] = await privacy.run_retention()
    assert (jane.campaign, bob.campaign) == (JANE, "bob-2026")
    assert jane.subscriptions == 1 and bob.changed == 0

    subs = {r.address_hash: r for r in await rows(gw.db, "subscriptions", campaign=JANE)}
    stale = subs[gw.gateway.ledger.hash("sms", STALE)]
    assert stale.address.startswith("anon-") and len(stale.address) == 17
    assert stale.restricted and stale.status == "subscribed"
    assert subs[gw.gateway.ledger.hash("sms", FRESH)].address == FRESH
    # An opt-out keeps its address: it is the campaign's own do-not-contact list.
    opted = subs[gw.gateway.ledger.hash("sms", STALE_OPTED_OUT)]
    assert (opted.address, opted.status) == (STALE_OPTED_OUT, "opted_out")

    events = await rows(gw.db, "consent_events", campaign=JANE)
    kept = [e for e in events if e.address is not None]
    assert {e.address for e in kept} == {FRESH}
    assert all(e.evidence == "signed form" for e in kept)
    gone = [e for e in events if e.address is None]
    assert len(gone) == len(events) - len(kept) >= 5
    assert all(e.source is None and e.evidence is None and e.event for e in gone)
    messages = {m.address_hash: m for m in await rows(gw.db, "messages", campaign=JANE)}
    assert messages[gw.gateway.ledger.hash("sms", FRESH)].text == "Hello fresh"
    old = messages[gw.gateway.ledger.hash("sms", STALE)]
    assert (old.address, old.text, old.status) == (None, None, "sent")
    replies = await rows(gw.db, "inbound_messages", campaign=JANE)
    assert replies and all(r.from_address is None and r.text is None for r in replies)
    [supp] = await rows(gw.db, "suppressions")
    assert supp.address is None and supp.reason == "stop_all"

    # Nothing that protects people was lost with the addresses.
    for address, token, code in ((STALE_OPTED_OUT, None, "opted_out"),
                                 (STALE_STOPALL, BOB_TOKEN, "suppressed")):
        body = {"channel": "sms", "address": address, "method": "paper_form",
                "source": "stall", "evidence": "form 2"}
        status, refused = (await gw.api("POST", "/api/v1/consents", body) if token is None
                           else await gw.api("POST", "/api/v1/consents", body, token=token))
        assert (status, refused["code"]) == (409, code), address
    _, dry = await gw.api("POST", "/api/v1/broadcasts",
                          {"channel": "sms", "text": "x", "dry_run": True})
    assert dry["audience"]["eligible"] == 1
    _, report = await gw.api("GET", "/api/v1/report")
    assert report["messages"]["sms"]["sent"] == 2
    assert report["messages"]["sms"]["untraced"] == 0
    assert report["messages"]["sms"]["evidence_removed"] == 1
    _, audit = await gw.api("GET", "/api/v1/audit?action=retention.pseudonymised")
    [entry] = audit
    assert entry["actor"] == "retention" and json.loads(entry["detail"])["subscriptions"] == 1

    # A second run finds nothing left to do and writes no audit record.
    again = await privacy.run_retention()
    assert [r.changed for r in again] == [0, 0]
    _, audit = await gw.api("GET", "/api/v1/audit?action=retention.pseudonymised")
    assert len(audit) == 1


async def test_a_reply_counts_as_contact(gw: Harness) -> None:
    await gw.subscribe(STALE)
    await _age(gw, STALE, YEAR_AND_A_BIT)
    await gw.sms_in(STALE, "Still here, keep me posted")
    results = await Privacy(gw.db, gw.gateway.ledger, gw.gateway.settings).run_retention()
    assert all(r.changed == 0 for r in results)
    [sub] = await rows(gw.db, "subscriptions", campaign=JANE)
    assert sub.address == STALE and not sub.restricted


async def test_retention_honours_policy_retention_days(gw: Harness) -> None:
    await gw.subscribe(STALE)
    await _age(gw, STALE, 40 * 86400.0)
    privacy = Privacy(gw.db, gw.gateway.ledger, gw.gateway.settings)
    assert privacy.retention_days == 365
    assert all(r.changed == 0 for r in await privacy.run_retention())
    privacy.retention_days = 30
    assert (await privacy.run_retention())[0].subscriptions == 1


def _config(tmp_path: Path, port: int) -> Path:
    return write_config(tmp_path / "config.toml", db_path=tmp_path / "cg.db",
                        twilio_url="http://127.0.0.1:9", port=port,
                        extra_policy="retention_days = 30")


def _age_file(db: Path, address: str, seconds: float) -> None:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE subscriptions SET last_contact_at = last_contact_at - ? "
                     "WHERE address = ?", (seconds, address))


async def test_retention_run_command_and_the_daily_task_in_serve(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    db = tmp_path / "cg.db"
    consents = tmp_path / "consents.csv"
    consents.write_text("channel,address,method,source,evidence\n"
                        f"sms,{FRESH},paper_form,stall,form 1\n"
                        f"sms,{STALE},paper_form,stall,form 2\n"
                        "sms,+447911000005,paper_form,stall,form 3\n")
    status, out, err = await run_cli("import", str(consents), "--config", str(config))
    assert status == 0, err
    _age_file(db, STALE, 31 * 86400.0)
    status, out, err = await run_cli("retention", "run", "--config", str(config))
    assert status == 0, err
    result = json.loads(out)
    assert result["retention_days"] == 30
    assert result["pseudonymised"][JANE]["subscriptions"] == 1
    assert db_rows(db, "SELECT count(*) AS n FROM subscriptions WHERE address = ?",
                   (STALE,))[0]["n"] == 0

    # serve runs retention as it starts (and then daily).
    _age_file(db, "+447911000005", 31 * 86400.0)
    started = time.time()
    async with Launcher(tmp_path) as launch:
        proc = await launch.serve(config, port)

        async def pseudonymised() -> bool:
            return not db_rows(db, "SELECT 1 FROM subscriptions WHERE address = ?",
                               ("+447911000005",))
        await eventually(pseudonymised, timeout=20, what="retention at start-up")
        assert (await proc.stop())[0] == 0
    assert db_rows(db, "SELECT address FROM subscriptions WHERE address = ?",
                   (FRESH,))[0]["address"] == FRESH
    assert time.time() - started < 60


async def test_retention_removes_the_tags_of_those_it_pseudonymises(gw: Harness) -> None:
    for address in (FRESH, STALE):
        status, body = await gw.api("POST", "/api/v1/consents", {
            "channel": "sms", "address": address, "method": "paper_form",
            "source": "street stall", "evidence": "signed form", "tags": ["ward-north"]})
        assert status == 201, body
    await _age(gw, STALE, YEAR_AND_A_BIT)
    await Privacy(gw.db, gw.gateway.ledger, gw.gateway.settings).run_retention()
    fresh_id = (await rows(gw.db, "subscriptions", address=FRESH))[0].id
    assert [t.subscription_id for t in await rows(gw.db, "subscription_tags")] == [fresh_id]
    _, tags = await gw.api("GET", "/api/v1/tags")
    assert tags == [{"tag": "ward-north", "channel": "sms", "subscribed": 1}]
