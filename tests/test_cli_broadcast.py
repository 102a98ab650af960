"""`consentgate broadcast` waits with a progress bar while `serve` sends; a broadcast that
pauses itself (too many failures) ends the wait with a clear line instead of waiting for
ever."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from consentgate.bot.broadcasts import PAUSE_AFTER_ATTEMPTS
from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.harness import JANE_AUTH, JANE_SID
from tests.procs import CONSENTGATE, Client, Launcher, free_port, numbers, write_config

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
