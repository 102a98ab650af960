"""Start-up and shutdown of the real command (CONTRACT.md, "Install, run, test"): SIGTERM
finishes or releases in-flight sends and exits 0 within 10 s; a bad config stops start-up
with status 2 and one line naming the key; start-up migrates and never wipes a database.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.harness import JANE_AUTH, JANE_SID, JANE_TOKEN
from tests.procs import (
    CONSENTGATE,
    Client,
    Launcher,
    db_rows,
    eventually,
    free_port,
    numbers,
    write_config,
)

pytestmark = pytest.mark.slow


def _left_in_flight(db: Path) -> dict[str, int]:
    """What a stopped process left behind: rows mid-send, and queued rows still leased."""
    row = db_rows(db, "SELECT sum(status = 'sending') AS sending, "
                      "sum(status = 'queued' AND lease_owner IS NOT NULL) AS leased, "
                      "sum(status = 'failed') AS failed FROM messages")[0]
    return {k: int(row[k] or 0) for k in ("sending", "leased", "failed")}


def _assert_sent_once(db: Path, fake: FakeTwilio, broadcast_id: int,
                      audience: list[str]) -> None:
    received = Counter(sms.to for sms in fake.messages)
    twice = {to: n for to, n in received.items() if n > 1}
    assert not twice, f"numbers that got the broadcast more than once: {twice}"
    rows = db_rows(db, "SELECT address, status, reason FROM messages WHERE broadcast_id = ?",
                   (broadcast_id,))
    assert sorted(r["address"] for r in rows) == sorted(audience)
    for r in rows:
        assert r["status"] == "sent", dict(r)
        assert received[r["address"]] == 1, dict(r)


async def test_sigterm_exits_0_within_10s_and_releases_work(tmp_path: Path) -> None:
    audience = numbers(400)
    db = tmp_path / "consentgate.db"
    config = tmp_path / "consentgate.toml"
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        fake.latency = 0.05
        write_config(config, db_path=db, twilio_url=fake.base_url, port=port, rate=20)
        client = Client(session, port)
        gw = await launch.serve(config, port)
        await client.import_consents(audience)
        created = await client.broadcast("Hustings tonight at the community centre")
        broadcast_id = created["id"]
        await fake.wait_for(20, timeout=30)

        rc, took = await gw.stop(timeout=15)
        assert rc == 0, gw.log()
        assert took < 10, f"SIGTERM took {took:.1f} s"
        assert "consentgate.stopped" in gw.log()
        for line in gw.log().splitlines():
            assert isinstance(json.loads(line), dict), f"not a JSON log line: {line}"
        assert _left_in_flight(db) == {"sending": 0, "leased": 0, "failed": 0}
        before_restart = len(fake.messages)
        assert before_restart < len(audience)

        # Drain the rest at a faster pace: the point is what the restart resends, not speed.
        write_config(config, db_path=db, twilio_url=fake.base_url, port=port, rate=200)
        gw = await launch.serve(config, port)
        view = await client.wait_done(broadcast_id, timeout=30)
        assert view["counts"]["sent"] == len(audience), view
        rc, took = await gw.stop(timeout=15)
        assert rc == 0 and took < 10, gw.log()

    _assert_sent_once(db, fake, broadcast_id, audience)


async def test_sigterm_within_10s_while_provider_and_a_client_hang(tmp_path: Path) -> None:
    """The worst case: every provider call hangs, and an HTTP client is half-way through an
    upload. The server and the dispatcher drain within one budget, not one after the other."""
    audience = numbers(100)
    db = tmp_path / "consentgate.db"
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        fake.latency = 60.0
        config = write_config(tmp_path / "consentgate.toml", db_path=db,
                              twilio_url=fake.base_url, port=port, rate=20)
        client = Client(session, port)
        gw = await launch.serve(config, port)
        await client.import_consents(audience)
        await client.broadcast("Count night party, all welcome")

        async def on_the_wire() -> bool:
            return bool(db_rows(db, "SELECT 1 FROM messages WHERE status = 'sending' LIMIT 1"))

        await eventually(on_the_wire, what="a send under way")
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/v1/consents/import HTTP/1.1\r\nHost: gateway\r\n"
                     b"Authorization: Bearer " + JANE_TOKEN.encode() + b"\r\n"
                     b"Content-Type: text/csv\r\nContent-Length: 100000\r\n\r\n"
                     b"channel,address,method,source,evidence\n")
        await writer.drain()

        rc, took = await gw.stop(timeout=15)
        writer.close()
        assert rc == 0, gw.log()
        assert took < 10, f"SIGTERM took {took:.1f} s"
        left = _left_in_flight(db)
        assert left["leased"] == 0, left
        assert left["failed"] == 0, left
    assert fake.messages == []


async def test_worker_exits_0_on_sigterm_and_releases_work(tmp_path: Path) -> None:
    audience = numbers(200)
    db = tmp_path / "consentgate.db"
    config = tmp_path / "consentgate.toml"
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch, aiohttp.ClientSession() as session):
        fake.latency = 0.05
        write_config(config, db_path=db, twilio_url=fake.base_url, port=port, rate=20)
        client = Client(session, port)
        gw = await launch.serve(config, port)
        await client.import_consents(audience)
        created = await client.broadcast("Leaflets to collect from the office")
        broadcast_id = created["id"]
        await fake.wait_for(5, timeout=30)
        rc, _ = await gw.stop(timeout=15)
        assert rc == 0, gw.log()

        # The worker takes the queue over (only the dispatcher: no HTTP server) ...
        worker = await launch.worker(config)
        await fake.wait_for(len(fake.messages) + 20, timeout=30)
        rc, took = await worker.stop(timeout=15)
        assert rc == 0, worker.log()
        assert took < 10, f"SIGTERM took {took:.1f} s"
        assert "consentgate.stopped" in worker.log()
        assert _left_in_flight(db) == {"sending": 0, "leased": 0, "failed": 0}
        assert len(fake.messages) < len(audience)

        # ... and what it released is sent by the next process, once.
        write_config(config, db_path=db, twilio_url=fake.base_url, port=port, rate=200)
        gw = await launch.serve(config, port)
        await client.wait_done(broadcast_id, timeout=30)
        rc, _ = await gw.stop(timeout=15)
        assert rc == 0, gw.log()

    _assert_sent_once(db, fake, broadcast_id, audience)


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new, 1)
    return edit


_BAD_CONFIGS: dict[str, tuple[Callable[[str], str], tuple[str, ...]]] = {
    "unknown key": (_replace('[server]\n', '[server]\ncolour = "red"\n'),
                    ("server.colour",)),
    "missing env secret": (
        _replace('secret_key = "', 'secret_key = "${CG_TEST_UNSET_SECRET}"\n#'),
        ("security.secret_key", "CG_TEST_UNSET_SECRET")),
    "malformed TOML": (_replace("[storage]", "[storage"), ("config", "TOML")),
    "bad URL": (_replace('api_base_url = "', 'api_base_url = "not a url"\n#'),
                ("campaigns[0].sms.api_base_url",)),
    "bad public URL": (_replace('public_url = "', 'public_url = "ftp://example.org"\n#'),
                       ("server.public_url",)),
    "missing file": (lambda t: "", ("config", "does-not-exist.toml")),
}


@pytest.mark.parametrize("case", list(_BAD_CONFIGS))
def test_bad_config_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    edit, named = _BAD_CONFIGS[case]
    db = tmp_path / "consentgate.db"
    good = write_config(tmp_path / "good.toml", db_path=db, twilio_url="http://127.0.0.1:9",
                        port=free_port()).read_text(encoding="utf-8")
    if case == "missing file":
        config = tmp_path / "does-not-exist.toml"
    else:
        config = tmp_path / "bad.toml"
        config.write_text(edit(good), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CG_TEST_UNSET_SECRET"}
    for command in ("serve", "worker"):
        done = subprocess.run([CONSENTGATE, command, "--config", str(config)],
                              capture_output=True, text=True, env=env, timeout=30)
        assert done.returncode == 2, (done.returncode, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        for word in named:
            assert word in lines[0], lines[0]
        assert done.stdout == ""
    assert not db.exists(), "a bad config must not start anything, not even the database"


async def test_existing_database_is_never_wiped(tmp_path: Path) -> None:
    db = tmp_path / "consentgate.db"
    config = tmp_path / "consentgate.toml"
    port = free_port()
    address = numbers(1)[0]
    async with Launcher(tmp_path) as launch, aiohttp.ClientSession() as session:
        write_config(config, db_path=db, twilio_url="http://127.0.0.1:9", port=port)
        client = Client(session, port)
        gw = await launch.serve(config, port)
        status, body = await client.api("POST", "/api/v1/consents", {
            "channel": "sms", "address": address, "method": "paper_form",
            "source": "street stall", "evidence": "signed form 17"})
        assert status == 201, body
        status, audit_before = await client.api("GET", "/api/v1/audit")
        assert status == 200
        rc, _ = await gw.stop()
        assert rc == 0, gw.log()

        migrate = await launch.start("migrate", config)
        assert await migrate.wait(30) == 0, migrate.log()

        gw = await launch.serve(config, port)
        sub = await client.subscriber(address)
        assert sub["status"] == "subscribed" and sub["can_send"], sub
        assert [h["event"] for h in sub["history"]] == ["subscribed"], sub
        status, audit_after = await client.api("GET", "/api/v1/audit")
        assert status == 200
        assert audit_after[:len(audit_before)] == audit_before
        rc, _ = await gw.stop()
        assert rc == 0, gw.log()

    assert db_rows(db, "SELECT count(*) FROM consent_events")[0][0] == 1
