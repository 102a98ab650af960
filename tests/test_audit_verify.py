"""The audit log as evidence: ``consentgate audit verify`` recomputes every chain and names
the first broken record (an edited row, a removed row, a removed tail); ``GET /api/v1/audit``
filters and pages; the compliance report says whether the chain holds."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from consentgate.bot import audit
from consentgate.testing.harness import JANE, JANE_AUDITOR, Harness
from tests.procs import run_cli, write_config

NUMBERS = [f"+4479110000{i:02d}" for i in range(1, 7)]


def _sql(db: Path, sql: str, *params: object) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, params)


async def _seed(folder: Path) -> None:
    """A campaign with a few audited changes, made through the command line."""
    db = folder / "cg.db"
    config = write_config(folder / "config.toml", db_path=db,
                          twilio_url="http://127.0.0.1:9", port=8080)
    consents = folder / "consents.csv"
    consents.write_text("channel,address,method,source,evidence\n" + "".join(
        f"sms,{n},paper_form,stall,form {i}\n" for i, n in enumerate(NUMBERS)))
    assert (await run_cli("import", str(consents), "--config", str(config)))[0] == 0
    opt_outs = folder / "opt-outs.csv"
    opt_outs.write_text(f"channel,address,reason\nsms,{NUMBERS[0]},old platform\n")
    assert (await run_cli("suppressions", "import", str(opt_outs), "--config", str(config)))[0] == 0
    assert (await run_cli("subject", "erase", "sms", NUMBERS[1], "--yes",
                       "--config", str(config)))[0] == 0


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded database, made once (four command-line runs) and copied for each test."""
    folder = tmp_path_factory.mktemp("seeded")
    asyncio.run(_seed(folder))
    return folder / "cg.db"


def _setup(tmp_path: Path, seeded: Path) -> tuple[Path, Path]:
    """A fresh copy of the seeded database, and a configuration for it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "cg.db"
    for suffix in ("", "-wal", "-shm"):
        source = seeded.with_name(seeded.name + suffix)
        if source.exists():
            shutil.copy(source, db.with_name(db.name + suffix))
    config = write_config(tmp_path / "config.toml", db_path=db,
                          twilio_url="http://127.0.0.1:9", port=8080)
    return db, config


async def test_an_intact_chain_verifies_and_a_tampered_row_is_named(tmp_path: Path,
                                                                   seeded: Path) -> None:
    db, config = _setup(tmp_path, seeded)
    status, out, err = await run_cli("audit", "verify", "--config", str(config))
    assert status == 0, err
    assert f"{JANE}: 4 records, chain intact" in out

    # Someone edits who did something, directly in the database.
    _sql(db, "UPDATE audit_events SET actor = 'Someone else' WHERE campaign = ? AND seq = 3",
         JANE)
    status, out, _ = await run_cli("audit", "verify", "--campaign", JANE, "--config", str(config))
    assert status == 1
    assert f"{JANE}: BROKEN at record 3: its content does not match its hash" in out

    # Even with the hash recomputed for the new content, the next link gives it away.
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT prev_hash, seq, at, actor, action, subject, detail "
                           "FROM audit_events WHERE campaign = ? AND seq = 3", (JANE,)).fetchone()
    _sql(db, "UPDATE audit_events SET hash = ? WHERE campaign = ? AND seq = 3",
         audit.record_hash(*row), JANE)
    status, out, _ = await run_cli("audit", "verify", "--config", str(config))
    assert status == 1 and "BROKEN at record 4: its link to the previous record" in out


async def test_a_removed_record_and_a_removed_tail_are_found(tmp_path: Path,
                                                             seeded: Path) -> None:
    db, config = _setup(tmp_path, seeded)
    _sql(db, "DELETE FROM audit_events WHERE campaign = ? AND seq = 4", JANE)
    status, out, _ = await run_cli("audit", "verify", "--config", str(config))
    assert status == 1 and "BROKEN at record 4: the last record(s) (4) are missing" in out

    db2, config2 = _setup(tmp_path / "second", seeded)
    _sql(db2, "DELETE FROM audit_events WHERE campaign = ? AND seq = 2", JANE)
    status, out, _ = await run_cli("audit", "verify", "--config", str(config2))
    assert status == 1
    assert "BROKEN at record 3: the record(s) before it (2) are missing" in out


async def test_the_report_shows_a_broken_chain(gw: Harness) -> None:
    await gw.subscribe(NUMBERS[0])
    _, report = await gw.api("GET", "/api/v1/report", token=JANE_AUDITOR)
    assert report["audit"]["intact"] is True
    async with gw.db.write() as conn:
        await conn.exec_driver_sql(
            "UPDATE audit_events SET detail = '{}' WHERE campaign = 'jane-2026' AND seq = 2")
    _, report = await gw.api("GET", "/api/v1/report", token=JANE_AUDITOR)
    assert (report["audit"]["intact"], report["audit"]["first_broken"]) == (False, 2)


async def test_the_audit_api_filters_and_pages(gw: Harness) -> None:
    for n in NUMBERS:
        await gw.subscribe(n)
    await gw.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": NUMBERS[2]})
    status, everything = await gw.api("GET", "/api/v1/audit", token=JANE_AUDITOR)
    assert status == 200
    assert [a["seq"] for a in everything] == list(range(1, len(everything) + 1))
    first = everything[0]
    assert set(first) >= {"at", "actor", "action", "subject", "hash"}
    # Each hash covers the previous one.
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(everything, everything[1:],
                                                           strict=False))
    _, page = await gw.api("GET", "/api/v1/audit?after=2&limit=3")
    assert [a["seq"] for a in page] == [3, 4, 5]
    _, consents = await gw.api("GET", "/api/v1/audit?action=consent.recorded")
    assert len(consents) == len(NUMBERS)
    subject = audit.subject_for("sms", gw.gateway.ledger.hash("sms", NUMBERS[2]))
    _, theirs = await gw.api("GET", f"/api/v1/audit?subject={subject.replace('#', '%23')}")
    assert [a["action"] for a in theirs] == ["consent.recorded", "opt_out.recorded"]
    _, mine = await gw.api("GET", "/api/v1/audit?actor=Jane%20Doe&limit=2")
    assert len(mine) == 2 and all(a["actor"] == "Jane Doe" for a in mine)
    status, problem = await gw.api("GET", "/api/v1/audit?limit=0")
    assert (status, problem["code"]) == (422, "invalid_query")
    assert json.loads(first["detail"]) is not None
