"""`consentgate broadcast` waits with a progress bar while `serve` sends; a broadcast that
pauses itself (too many failures) ends the wait with a clear line instead of waiting for
ever; `--tag` / `--every-tag` / `--exclude-tag` segment it and `--at` schedules it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from consentgate.bot.broadcasts import PAUSE_AFTER_ATTEMPTS
from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.harness import JANE_AUTH, JANE_SID
from tests.procs import (
    CONSENTGATE,
    Client,
    Launcher,
    db_rows,
    free_port,
    numbers,
    write_config,
)

pytestmark = pytest.mark.slow


async def test_the_waiting_broadcast_command_stops_when_the_broadcast_pauses(
        tmp_path: Path) -> None:
    audience = numbers(PAUSE_AFTER_ATTEMPTS + 40)
    config = tmp_path / "consentgate.toml"
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        # every number refused as invalid: a stale list, the broadcast must pause itself
        fake.fail_next(400, count=len(audience), code=21211)
        write_config(config, db_path=tmp_path / "consentgate.db", twilio_url=fake.base_url,
                     port=port, rate=1000)
        client = Client(session, port)
        await launch.serve(config, port)
        await client.import_consents(audience)
        proc = await asyncio.create_subprocess_exec(
            CONSENTGATE, "broadcast", "sms", "Hustings tonight", "--as", "Jane Doe",
            "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 1, err.decode()
    assert "paused" in err.decode() and "/resume" in err.decode()
    assert '"eligible": ' in out.decode()


async def test_the_broadcast_command_segments_by_tag_and_schedules_with_at(
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "consentgate.toml", db_path=tmp_path / "consentgate.db",
                          twilio_url="http://127.0.0.1:9", port=free_port())
    people = numbers(4)
    csv = tmp_path / "people.csv"
    csv.write_text("channel,address,method,source,evidence,tags\n" + "".join(
        f"sms,{p},import,fair sheet,row {i},{tags}\n" for i, (p, tags) in enumerate(
            zip(people, ["volunteer;ward-north", "volunteer", "ward-north", ""], strict=True))),
        encoding="utf-8")

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            CONSENTGATE, *args, "--as", "Jane Doe", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await run("import", str(csv))
    assert code == 0 and '"imported": 4' in out, err
    code, out, err = await run("broadcast", "sms", "Canvass Saturday", "--dry-run",
                               "--tag", "volunteer", "--tag", "ward-north",
                               "--exclude-tag", "ward-north")
    assert code == 0, err
    assert json.loads(out)["audience"] == {"eligible": 1, "excluded": {}}
    code, out, err = await run("broadcast", "sms", "Polls open", "--every-tag", "volunteer",
                               "--every-tag", "ward-north", "--at", "2099-05-07T07:00:00+01:00")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["status"] == "scheduled" and answer["audience"]["eligible"] == 1
    assert answer["send_at"] == "2099-05-07T06:00:00+00:00"
    rows = db_rows(tmp_path / "consentgate.db", "SELECT status, send_at FROM broadcasts")
    assert [r["status"] for r in rows] == ["scheduled"]
    code, out, err = await run("broadcast", "sms", "x", "--tag", "Not A Tag")
    assert code == 1 and "invalid_tag" in err
