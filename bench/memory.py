"""Peak memory of the gateway process through a whole broadcast, end to end: ``consentgate
serve`` in a child process on a SQLite file seeded with ``--n`` subscribed recipients, the
broadcast created through ``POST /api/v1/broadcasts`` and sent in full to the Twilio fake,
which runs in this process and keeps no per-message data (only a one-byte count per
recipient, to check that everyone got exactly one message).

The serve process's ``VmRSS`` and ``VmHWM`` (the kernel's peak, which sees between samples)
are read from ``/proc/PID/status`` every ``--interval`` seconds; the figures are the peak over
the process's whole life and the RSS at a few moments: after start-up, after the enqueue, and
when 25, 50, 75 and 100 % of the messages had reached the fake. Progress is printed every 30 s,
so a run that is stopped early still shows its curve. Seeding is not part of any figure.

    .venv/bin/python -m bench.memory [--n 20000] [--timeout 2400]
    .venv/bin/python -m bench.memory --n 1000000    # 20 to 30 minutes on two cores
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import Arrivals, peak_rss_mb, seed_subscribers, write_report
from consentgate.storage.db import Database
from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.harness import JANE_AUTH, JANE_SID
from tests.procs import Client, Launcher, free_port, write_config

TEXT = "Polling day is Thursday 7 May. Find your polling station at https://example.org/where"
RATE = 100_000.0
GOAL_MB = 300.0
PROGRESS_EVERY = 30.0
SHARES = (25, 50, 75, 100)


@dataclass(frozen=True)
class Sample:
    """One reading of the serve process's memory."""

    #: seconds since the serve process answered its health check
    t: float
    #: messages the fake had accepted
    sent: int
    rss_mib: float
    #: ``VmHWM``: the process's peak RSS so far
    peak_mib: float
    loadavg_1min: float


def _status_kib(pid: int) -> dict[str, int] | None:
    """``VmRSS`` and ``VmHWM`` of process ``pid`` in KiB, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return {key: int(rest.split()[0]) for key, _, rest in
                    (line.partition(":") for line in fh) if key in ("VmRSS", "VmHWM")}
    except (OSError, ValueError):
        return None


class RssSampler:
    """Reads a process's memory every ``interval`` seconds and keeps the named moments."""

    def __init__(self, pid: int, arrivals: Arrivals, n: int, interval: float) -> None:
        self.pid = pid
        self.arrivals = arrivals
        self.n = n
        self.interval = interval
        self.started = time.monotonic()
        self.samples: list[Sample] = []
        self.marks: dict[str, Sample] = {}

    def sample(self) -> Sample | None:
        status = _status_kib(self.pid)
        if not status or "VmRSS" not in status:
            return None
        s = Sample(t=time.monotonic() - self.started, sent=self.arrivals.count,
                   rss_mib=status["VmRSS"] / 1024, peak_mib=status.get("VmHWM", 0) / 1024,
                   loadavg_1min=os.getloadavg()[0])
        self.samples.append(s)
        for share in SHARES:
            label = f"{share}% sent"
            if label not in self.marks and s.sent >= self.n * share / 100:
                self.marks[label] = s
        return s

    def mark(self, label: str) -> None:
        s = self.sample()
        if s is not None:
            self.marks[label] = s

    @property
    def peak_mib(self) -> float:
        return max((s.peak_mib for s in self.samples), default=float("nan"))

    async def run(self) -> None:
        """Sample until cancelled, printing a progress line every 30 s."""
        next_print = time.monotonic() + PROGRESS_EVERY
        while True:
            s = self.sample()
            if s is not None and time.monotonic() >= next_print:
                next_print += PROGRESS_EVERY
                print(f"t={s.t:6.0f} s  sent {s.sent:>9,} ({100 * s.sent / self.n:5.1f} %)  "
                      f"RSS {s.rss_mib:6.1f} MiB  peak {s.peak_mib:6.1f} MiB  "
                      f"load {s.loadavg_1min:.1f}", flush=True)
            await asyncio.sleep(self.interval)


async def run(args: argparse.Namespace) -> None:
    n = args.n
    arrivals = Arrivals(n)
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="consentgate-bench-") as tmp:
        tmp_path = Path(tmp)
        db_path = tmp_path / "bench.db"
        started = time.perf_counter()
        db = Database(f"sqlite+aiosqlite:///{db_path}")
        try:
            await db.migrate()
            await seed_subscribers(db, n)
        finally:
            await db.dispose()
        seeded = time.perf_counter() - started
        print(f"seeded {n:,} subscribers in {seeded:.0f} s", flush=True)

        port = free_port()
        async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH,
                               keep_history=False, on_accept=arrivals) as fake,
                    Launcher(tmp_path) as launch,
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session):
            config = write_config(tmp_path / "consentgate.toml", db_path=db_path,
                                  twilio_url=fake.base_url, port=port, rate=RATE)
            started = time.perf_counter()
            serve = await launch.serve(config, port, timeout=300)
            start_s = time.perf_counter() - started
            sampler = RssSampler(serve.pid, arrivals, n, args.interval)
            sampler.mark("after start")
            sampling = asyncio.create_task(sampler.run())
            client = Client(session, port)

            started = time.perf_counter()
            created = await client.broadcast(TEXT)
            create_s = time.perf_counter() - started
            sampler.mark("after enqueue")
            assert created["audience"]["eligible"] == n, created
            print(f"created broadcast {created['id']} in {create_s:.0f} s "
                  f"({arrivals.count:,} already sent)", flush=True)

            complete = True
            try:
                await fake.wait_for(n, timeout=max(1.0, args.timeout - create_s))
            except TimeoutError:
                complete = False
            at_fake_s = time.perf_counter() - started
            recorded_s = None
            if complete:
                await client.wait_done(created["id"], timeout=600)
                recorded_s = time.perf_counter() - started
                sampler.mark("all recorded")
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            if complete:
                rc, _ = await serve.stop(timeout=30)
                assert rc == 0, f"serve exited with {rc}"
            # otherwise the launcher kills it on the way out

    peak = sampler.peak_mib
    busy = [s.loadavg_1min for s in sampler.samples]
    goal_mib = GOAL_MB * 1e6 / 2**20
    rows: list[tuple[str, Any, str]] = [
        ("run complete", "yes" if complete else "NO",
         f"{arrivals.count:,} of {n:,} messages reached the fake"
         + ("" if complete else f" within {args.timeout:g} s")),
        ("peak RSS MiB (VmHWM)", peak,
         f"serve process, whole life; goal < {GOAL_MB:g} MB = {goal_mib:.0f} MiB "
         + ("(met)" if peak < goal_mib else "(NOT met)")),
    ]
    for label, s in sampler.marks.items():
        rows.append((f"RSS MiB {label}", s.rss_mib,
                     f"t={s.t:.0f} s, {s.sent:,} sent, peak so far {s.peak_mib:.1f} MiB"))
    rows += [
        ("dispatch msgs/s", arrivals.rate(), "first..last accepted at the fake"),
        ("seed subscribers s", seeded, "bulk insert, before serve starts (no goal)"),
        ("serve start-up s", start_s, "to /healthz 200"),
        ("create (HTTP, count+enqueue) s", create_s, "POST /api/v1/broadcasts"),
        ("create -> last at fake s", at_fake_s, ""),
        ("create -> all recorded s", recorded_s if recorded_s is not None else "-", ""),
        ("every recipient exactly once", "yes" if arrivals.exactly_once() else "NO",
         f"{arrivals.missing():,} missing, {arrivals.more_than_once():,} more than once, "
         f"{arrivals.strays:,} to other numbers"),
        ("load average (1 min) mean / max",
         f"{sum(busy) / max(len(busy), 1):.1f} / {max(busy, default=float('nan')):.1f}",
         f"sampled with the RSS; at start {load_at_start[0]:.1f}"),
        ("driver peak RSS MiB", peak_rss_mb(), "this process (seeding, the fake), not measured"),
    ]
    write_report("memory", {"backend": "sqlite", "n": n, "interval_s": args.interval,
                            "rate_per_second": RATE, "timeout_s": args.timeout},
                 rows, {"complete": complete,
                        "marks": {k: asdict(v) for k, v in sampler.marks.items()},
                        "samples": [asdict(s) for s in sampler.samples]})


def main() -> int:
    parser = argparse.ArgumentParser(description="peak RSS of serve through a whole broadcast")
    parser.add_argument("--n", type=int, default=20_000, help="subscribers (e.g. 1000000)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between readings of /proc/PID/status")
    parser.add_argument("--timeout", type=float, default=2400.0,
                        help="stop waiting for the last message this many seconds after the "
                             "broadcast is created, and report what was measured")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
