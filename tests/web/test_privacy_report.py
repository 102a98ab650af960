"""The compliance report (GET /api/v1/report, ``consentgate report``): every message sent
traced to the consent that allowed it, opt-outs by method and how fast a STOP took effect,
and the data-rights requests served."""

from __future__ import annotations

import json
import time
from pathlib import Path

from consentgate.storage import models
from consentgate.testing.harness import BOB_TOKEN, JANE, JANE_AUDITOR, Harness
from tests.procs import run_cli, write_config

A, B, C, D = "+447911000011", "+447911000012", "+447911000013", "+447911000014"
CSV = {"Content-Type": "text/csv"}


async def test_the_report_traces_every_message_and_counts_opt_outs_and_rights(
        gw: Harness) -> None:
    for n in (A, B, C, D):
        await gw.subscribe(n)
    await gw.send_and_wait(A, "one")
    await gw.send_and_wait(B, "two")
    await gw.send_and_wait(C, "three")
    await gw.sms_in(A, "STOP")
    await gw.sms_in(B, "Stop texting me please")
    await gw.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": C})
    await gw.api("POST", "/api/v1/suppressions/import",
                 raw="channel,address,reason\nsms,+447911000015,old list\n", headers=CSV)
    await gw.api("GET", f"/api/v1/subjects/sms/{D}")
    await gw.api("PATCH", f"/api/v1/subjects/sms/{D}", {"restricted": True})
    await gw.api("DELETE", f"/api/v1/subjects/sms/{C}")
    await gw.subscribe(A, token=BOB_TOKEN)  # Bob's figures are Bob's

    status, report = await gw.api("GET", "/api/v1/report", token=JANE_AUDITOR)
    assert status == 200
    assert report["campaign"] == JANE
    sms = report["messages"]["sms"]
    assert (sms["sent"], sms["traced_to_consent"], sms["untraced"]) == (3, 3, 0)
    assert sms["evidence_removed"] == 1  # C was erased; the consent record remains
    assert report["untraced_total"] == 0
    assert report["opt_outs"]["by_method"] == {"import": 1, "keyword": 2, "operator": 1}
    median = report["opt_outs"]["median_seconds_stop_to_opt_out"]
    assert median is not None and 0 <= median < 5
    rights = report["rights_requests"]
    assert (rights["access"], rights["erasure"], rights["restriction"],
            rights["rectification"], rights["objection"]) == (1, 1, 1, 0, 4)
    assert report["audit"]["intact"] is True

    # A message that went out with no consent behind it (as a bug or a by-passed gate
    # would leave it) is counted, never hidden.
    async with gw.db.write() as conn:
        now = time.time()
        await conn.execute(models.messages.insert().values(
            campaign=JANE, channel="sms", address="+447911000099",
            address_hash=gw.gateway.ledger.hash("sms", "+447911000099"), kind="campaign",
            text="unconsented", status="sent", attempts=1, created_at=now, not_before=now,
            dispatched_at=now, sent_at=now))
    _, report = await gw.api("GET", "/api/v1/report")
    assert report["messages"]["sms"]["untraced"] == 1 and report["untraced_total"] == 1


async def test_a_message_sent_before_its_consent_is_untraced(gw: Harness) -> None:
    await gw.subscribe(A)
    async with gw.db.write() as conn:
        await conn.execute(models.messages.insert().values(
            campaign=JANE, channel="sms", address=A,
            address_hash=gw.gateway.ledger.hash("sms", A), kind="campaign", text="early",
            status="delivered", attempts=1, created_at=1.0, not_before=1.0,
            dispatched_at=1.0, sent_at=1.0))
    _, report = await gw.api("GET", "/api/v1/report")
    assert report["messages"]["sms"]["untraced"] == 1


async def test_report_subject_and_suppressions_commands(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "config.toml", db_path=tmp_path / "cg.db",
                              twilio_url="http://127.0.0.1:9", port=8080))
    consents = tmp_path / "consents.csv"
    consents.write_text("channel,address,method,source,evidence\n"
                        f"sms,{A},paper_form,Market St stall,form 12\n"
                        f"sms,{B},web_form,website,ip 192.0.2.1\n")
    assert (await run_cli("import", str(consents), "--config", config))[0] == 0

    status, out, err = await run_cli("report", JANE, "--config", config)
    assert status == 0, err
    assert "Messages" in out and "Data-rights requests" in out and "chain intact" in out
    status, out, _ = await run_cli("report", "--json", "--config", config)
    assert status == 0 and json.loads(out)["untraced_total"] == 0

    export = tmp_path / "subject.json"
    status, out, err = await run_cli("subject", "export", "sms", "07911 000011", "-o",
                                  str(export), "--config", config)
    assert status == 0, err
    data = json.loads(export.read_text())
    assert data["consent_history"][0]["evidence"] == "form 12"

    status, out, err = await run_cli("subject", "erase", "sms", A, "--config", config)
    assert status == 2 and "--yes" in err
    status, out, err = await run_cli("subject", "erase", "sms", A, "--yes", "--config", config)
    assert status == 0, err
    assert json.loads(out)["erased"] is True
    status, out, err = await run_cli("subject", "restrict", "sms", B, "--config", config)
    assert status == 0 and json.loads(out)["restricted"] is True
    status, out, err = await run_cli("subject", "rectify", "sms", B, "+447911000016",
                                  "--config", config)
    assert status == 0 and json.loads(out)["address"] == "+447911000016"

    opt_outs = tmp_path / "opt-outs.csv"
    opt_outs.write_text("channel,address,reason\nsms,07911 000017,moved platform\n")
    status, out, err = await run_cli("suppressions", "import", str(opt_outs), "--config", config)
    assert status == 0 and json.loads(out)["imported"] == 1
    status, out, err = await run_cli("suppressions", "export", "--config", config)
    assert status == 0, err
    assert out.splitlines()[0] == "channel,address,reason,at"
    assert "+447911000017,moved platform" in out and A not in out
    assert "hmac-sha256:" in out

    status, out, _ = await run_cli("report", "--json", "--config", config)
    rights = json.loads(out)["rights_requests"]
    assert (rights["access"], rights["erasure"], rights["restriction"],
            rights["rectification"]) == (1, 1, 1, 1)
