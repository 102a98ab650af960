"""The ``consentgate`` command as an operator uses it: refusals are one line on standard error
with the documented exit status, ``hash-password`` prints a hash the console can check, a
reader that goes away early (``| head``) ends the command quietly, and a broadcast waiting for
a dispatcher that is not there says so, and keeps waiting."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from consentgate.bot.cli import EXIT_STDOUT_CLOSED, NOTHING_DISPATCHING
from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.harness import JANE_AUTH, JANE_SID
from tests.procs import (
    CONSENTGATE,
    Launcher,
    db_rows,
    free_port,
    numbers,
    run_cli,
    write_config,
)


def _config(tmp_path: Path, twilio_url: str = "http://127.0.0.1:9",
            port: int | None = None, storage_url: str | None = None,
            rate: float = 1000) -> Path:
    return write_config(tmp_path / "config.toml", db_path=tmp_path / "cg.db",
                        storage_url=storage_url, twilio_url=twilio_url,
                        port=port or free_port(), rate=rate)


@pytest.fixture
def storage_url(db_url: str) -> str:
    """Each database the gateway runs on: how a dispatcher is seen differs (SQLite's
    single-process lock, PostgreSQL's leases)."""
    return db_url


def _consents(tmp_path: Path, addresses: list[str]) -> Path:
    path = tmp_path / "consents.csv"
    path.write_text("channel,address,method,source,evidence\n" + "".join(
        f"sms,{a},paper_form,market stall,form {i}\n" for i, a in enumerate(addresses)))
    return path


async def test_hash_password_prints_an_argon2id_hash_of_the_password_on_stdin(
        tmp_path: Path) -> None:
    # No configuration anywhere near: hashing a password needs none.
    status, out, err = await run_cli("hash-password", stdin=b"correct horse battery\n",
                                     cwd=tmp_path)
    assert status == 0, err
    hashed = out.strip()
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in out + err
    assert PasswordHasher().verify(hashed, "correct horse battery")
    with pytest.raises(Exception, match="does not match"):
        PasswordHasher().verify(hashed, "correct horse battery\n")


async def test_hash_password_refuses_an_empty_password(tmp_path: Path) -> None:
    status, out, err = await run_cli("hash-password", stdin=b"\n", cwd=tmp_path)
    assert (status, out) == (2, "")
    assert err == "consentgate: no password on standard input\n"


async def test_refusals_are_one_line_with_the_documented_status(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    status, out, err = await run_cli("send", "sms", "not a number", "hello", "--config", config)
    assert (status, out) == (1, "")
    assert err.startswith("consentgate: invalid_address: ") and err.count("\n") == 1
    status, _, err = await run_cli("send", "sms", "07911123456", "hello",
                                   "--campaign", "nobody", "--config", config)
    assert status == 2
    assert err == "consentgate: no campaign 'nobody' in the configuration\n"
    status, _, err = await run_cli("import", str(tmp_path / "missing.csv"),
                                   "--config", config)
    assert status == 1
    missing = tmp_path / "missing.csv"
    assert err == f"consentgate: cannot read {missing}: No such file or directory\n"
    (tmp_path / "bad.toml").write_text("[server]\nport = 'eighty'\n")
    status, _, err = await run_cli("explain", "sms", "07911123456",
                                   "--config", str(tmp_path / "bad.toml"))
    assert status == 2
    assert err.startswith("consentgate: configuration error: ") and err.count("\n") == 1


async def test_serve_refuses_to_leave_dispatching_to_workers_on_sqlite(tmp_path: Path) -> None:
    """On SQLite ``serve`` is the only process (no worker may join it), so a ``serve``
    that does not dispatch would leave every message queued for ever."""
    config = _config(tmp_path)
    with config.open("a", encoding="utf-8") as fh:
        fh.write("\n[dispatch]\nin_serve = false\n")
    status, out, err = await run_cli("serve", "--config", str(config))
    assert (status, out) == (2, "")
    assert err.startswith("consentgate: [dispatch] in_serve = false needs PostgreSQL")


async def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    config = _config(tmp_path)
    audience = numbers(300)
    consents = _consents(tmp_path, audience)
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already had enough
    try:
        proc = await asyncio.create_subprocess_exec(
            CONSENTGATE, "import", str(consents), "--config", str(config),
            stdout=write_end, stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == EXIT_STDOUT_CLOSED, err.decode()
    assert "Traceback" not in err.decode() and "BrokenPipe" not in err.decode()
    # Only the report was lost: the import itself is done.
    subscribed = db_rows(tmp_path / "cg.db", "SELECT count(*) AS n FROM subscriptions "
                                             "WHERE status = 'subscribed'")
    assert subscribed[0]["n"] == len(audience)


def test_a_closed_pipe_under_a_shell_pipeline_leaves_no_traceback(tmp_path: Path) -> None:
    """The same, the way people meet it: the report piped into ``head -n 1``."""
    config = _config(tmp_path)
    consents = _consents(tmp_path, numbers(2000))
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         f'"{CONSENTGATE}" import "{consents}" --config "{config}" | head -n 1'],
        capture_output=True, timeout=120, check=False)
    assert done.stdout == b"{\n"
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    assert done.returncode in (0, EXIT_STDOUT_CLOSED)


@pytest.mark.slow
async def test_a_waiting_broadcast_says_when_nothing_is_dispatching_and_keeps_waiting(
        tmp_path: Path, storage_url: str) -> None:
    audience = numbers(5)
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch):
        config = _config(tmp_path, fake.base_url, port, storage_url)
        status, _, err = await run_cli("import", str(_consents(tmp_path, audience)),
                                       "--config", str(config))
        assert status == 0, err
        proc = await asyncio.create_subprocess_exec(
            CONSENTGATE, "broadcast", "sms", "Hustings tonight", "--config", str(config),
            "--hint-after", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        stderr = proc.stderr
        try:
            line = await asyncio.wait_for(stderr.readline(), 60)
            assert line.decode() == f"consentgate: {NOTHING_DISPATCHING}\n"
            assert proc.returncode is None  # still waiting
            assert fake.messages == []
            # A dispatcher arrives: the same command sees the broadcast through.
            await launch.serve(config, port)
            out, rest = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, rest.decode()
    assert NOTHING_DISPATCHING not in rest.decode()  # said once
    assert '"eligible": 5' in out.decode()
    assert sorted(m.to for m in fake.messages) == audience


@pytest.mark.slow
async def test_a_waiting_broadcast_stays_quiet_while_serve_is_dispatching(
        tmp_path: Path, storage_url: str) -> None:
    """``serve`` is up but the sender is slow (one message every 2 s): the queued messages
    are due and see no progress for longer than the look-out period (1 s here), and still
    the wait must not cry wolf. Two messages are enough: the second waits 2 s, longer than
    the look-out period, while it is due."""
    audience = numbers(2)
    port = free_port()
    async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                Launcher(tmp_path) as launch):
        config = _config(tmp_path, fake.base_url, port, storage_url, rate=0.5)
        status, _, err = await run_cli("import", str(_consents(tmp_path, audience)),
                                       "--config", str(config))
        assert status == 0, err
        await launch.serve(config, port)
        status, out, err = await run_cli("broadcast", "sms", "Hustings tonight",
                                         "--hint-after", "1", "--config", str(config))
    assert status == 0, err
    assert NOTHING_DISPATCHING not in err
    assert sorted(m.to for m in fake.messages) == audience


def test_the_readme_lists_every_command_and_only_real_ones() -> None:
    """The README's command table is checked against the commands the CLI declares, so
    neither can drift from the other."""
    from consentgate.bot.cli import COMMANDS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## The command line", 1)[1].split("\n\n", 2)[1]
    listed = {row.split()[2].rstrip("`") for row in table.splitlines()
              if row.startswith("| `consentgate")}
    declared = {c.name.split(" ")[0] for c in COMMANDS}
    assert listed == declared
