"""The gateway as its users run it: ``consentgate serve`` / ``worker`` in a child process,
configured by a TOML file, talking to the Twilio fake on loopback in the test process.

Each child runs in its own session, so ``kill_9`` takes the whole process group down at once
(as a crashed container or an OOM kill would), and :class:`Launcher` makes sure nothing it
started outlives the test. Every wait polls an observable condition against a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from consentgate.testing.fakes.twilio_webhooks import inbound_sms_form, post_signed
from consentgate.testing.harness import (
    JANE,
    JANE_AUTH,
    JANE_NUMBER,
    JANE_SID,
    JANE_TOKEN,
    PUBLIC_URL,
    SECRET,
    config_text,
)
from consentgate.testing.waiting import eventually

__all__ = [
    "CONSENTGATE",
    "Client",
    "GatewayProcess",
    "Launcher",
    "db_rows",
    "eventually",
    "free_port",
    "numbers",
    "run_cli",
    "write_config",
]

CONSENTGATE = str(Path(sys.executable).with_name("consentgate"))


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def numbers(count: int, start: int = 0) -> list[str]:
    """Distinct valid UK mobile numbers (+44 7400 1xxxxx)."""
    return [f"+4474001{i:05d}" for i in range(start, start + count)]


def write_config(path: Path, *, db_path: Path | None = None, storage_url: str | None = None,
                 twilio_url: str, port: int, rate: float = 200.0, extra_policy: str = "",
                 secret: str = SECRET, pool_size: int = 10,
                 lease_seconds: float | None = None) -> Path:
    """A complete config file for one campaign (Jane's, as in
        :mod:`consentgate.testing.harness`, SMS only) whose SMS goes to the Twilio fake at
    ``twilio_url``; its database is the SQLite file ``db_path`` or any ``storage_url``."""
    url = storage_url or f"sqlite+aiosqlite:///{db_path}"
    dispatch = ("" if lease_seconds is None
                else f"\n[dispatch]\nlease_seconds = {lease_seconds}\n")
    path.write_text(config_text(url, twilio_url, port=port, rate=rate, secret=secret,
                                pool_size=pool_size, extra_policy=extra_policy,
                                jane_email=None, auditor=False, bob=False, dispatch=dispatch),
                    encoding="utf-8")
    return path


async def run_cli(*args: str, stdin: bytes | None = None,
                  cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``consentgate *args`` to its end: its exit status, standard output and error."""
    proc = await asyncio.create_subprocess_exec(
        CONSENTGATE, *args, cwd=cwd, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin or b""), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def db_rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Read the gateway's SQLite file directly (what it recorded, not what it answers)."""
    with closing(sqlite3.connect(db_path, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params))


class GatewayProcess:
    """One run of ``consentgate <command> --config FILE`` in its own process group."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill_9(self) -> None:
        """SIGKILL the whole process group: no handler, no clean-up, no last write."""
        if self.running:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:  # noqa: ASYNC109 - a deadline is its point
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self, timeout: float = 10.0) -> tuple[int, float]:  # noqa: ASYNC109
        """SIGTERM and wait: (exit status, seconds it took)."""
        started = time.monotonic()
        self.terminate()
        rc = await self.wait(timeout)
        return rc, time.monotonic() - started

    async def crash(self) -> None:
        self.kill_9()
        await self.wait(10.0)


class Launcher:
    """Starts gateway processes for one test and kills whatever is still running at the end.

        async with Launcher(tmp_path) as launch:
            gw = await launch.serve(config, port)
    """

    def __init__(self, tmp_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.tmp_path = tmp_path
        self.env = dict(os.environ if env is None else env)
        self.started: list[GatewayProcess] = []
        self._logs = 0

    async def __aenter__(self) -> Launcher:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        for p in self.started:
            if p.running:
                p.kill_9()
                await p.wait(10.0)

    async def start(self, command: str, config: Path) -> GatewayProcess:
        # Named before the first await: processes started together get a log each.
        self._logs += 1
        log_path = self.tmp_path / f"{command}-{self._logs}.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                CONSENTGATE, command, "--config", str(config),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                env=self.env, start_new_session=True)
        p = GatewayProcess(proc, log_path)
        self.started.append(p)
        return p

    async def serve(self, config: Path, port: int,
                    timeout: float = 30.0) -> GatewayProcess:  # noqa: ASYNC109
        """Start ``serve`` and wait until ``/healthz`` answers 200."""
        p = await self.start("serve", config)
        url = f"http://127.0.0.1:{port}/healthz"

        async def healthy() -> bool:
            if not p.running:
                raise AssertionError(f"serve exited with {p.proc.returncode}:\n{p.log()}")
            try:
                async with aiohttp.ClientSession() as s, s.get(url) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(healthy, timeout=timeout, what="/healthz")
        return p

    async def worker(self, config: Path,
                     timeout: float = 30.0) -> GatewayProcess:  # noqa: ASYNC109
        """Start ``worker`` and wait until it says it has started."""
        p = await self.start("worker", config)

        async def started() -> bool:
            if not p.running:
                raise AssertionError(f"worker exited with {p.proc.returncode}:\n{p.log()}")
            return "consentgate.started" in p.log()

        await eventually(started, timeout=timeout, what="worker start-up")
        return p


class Client:
    """The operator API and Twilio's webhooks, against a gateway on ``port``."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.url = f"http://127.0.0.1:{port}"

    async def api(self, method: str, path: str, body: Any = None, *,
                  raw: bytes | str | None = None, content_type: str | None = None,
                  token: str = JANE_TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        data: Any = raw
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        elif content_type is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(method, self.url + path, data=data,
                                        headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def import_consents(self, addresses: list[str]) -> None:
        csv = "channel,address,method,source,evidence\n" + "".join(
            f"sms,{a},import,street stall,paper form {i}\n" for i, a in enumerate(addresses))
        status, body = await self.api("POST", "/api/v1/consents/import", raw=csv,
                                      content_type="text/csv")
        assert status == 200, body
        assert body["imported"] == len(addresses) and not body["rejected"], body

    async def broadcast(self, text: str) -> dict[str, Any]:
        status, body = await self.api("POST", "/api/v1/broadcasts",
                                      {"channel": "sms", "text": text})
        assert status == 202, body
        return dict(body)

    async def broadcast_view(self, broadcast_id: int) -> dict[str, Any]:
        status, body = await self.api("GET", f"/api/v1/broadcasts/{broadcast_id}")
        assert status == 200, body
        return dict(body)

    async def wait_done(self, broadcast_id: int, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        async def done() -> dict[str, Any] | None:
            view = await self.broadcast_view(broadcast_id)
            return view if view["status"] == "done" else None

        return dict(await eventually(done, timeout=timeout, interval=0.1,
                                     what=f"broadcast {broadcast_id} done"))

    async def subscriber(self, address: str) -> dict[str, Any]:
        status, body = await self.api("GET", f"/api/v1/subscribers/sms/{address}")
        assert status == 200, body
        return dict(body)

    async def sms_in(self, from_: str, text: str, sid: str) -> tuple[int, str]:
        """Twilio's inbound-SMS webhook, signed for the public URL."""
        form = inbound_sms_form(from_, JANE_NUMBER, text, sid, account_sid=JANE_SID)
        path = f"/webhooks/twilio/{JANE}/sms"
        async with await post_signed(self.session, self.url + path, form, JANE_AUTH,
                                     signature_url=PUBLIC_URL + path) as r:
            return r.status, await r.text()
