"""What every benchmark shares: a throw-away database (SQLite file or a temporary
PostgreSQL database), fast set-based seeding of subscribers, production-like logging sent to a
file, the machine's description, and printing / saving the figures. :class:`Arrivals` counts
what the Twilio fake accepted per recipient without keeping the messages, for runs of
millions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from consentgate.bot.ledger import Ledger
from consentgate.storage.db import Database
from consentgate.storage.models import subscriptions
from consentgate.testing.fakes.twilio_api import SentSms
from consentgate.testing.harness import JANE, SECRET

__all__ = [
    "OUT",
    "Arrivals",
    "BackendUnavailable",
    "add_backend_option",
    "bench_database",
    "configure_quiet_logging",
    "machine",
    "numbers",
    "peak_rss_mb",
    "percentile",
    "phase_peak_rss_mb",
    "reset_peak_rss",
    "run_main",
    "seed_subscribers",
    "write_report",
]

OUT = Path(__file__).parent / "out"
PG_ADMIN = os.environ.get("CONSENTGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                        help="database the gateway runs on (postgres: a temporary database "
                             f"on {PG_ADMIN.rsplit('/', 1)[0]}, dropped afterwards)")


class BackendUnavailable(Exception):
    pass


@contextlib.asynccontextmanager
async def bench_database(backend: str) -> AsyncIterator[str]:
    """A database URL for one run: a fresh SQLite file in a temporary directory, or a
    temporary PostgreSQL database (dropped afterwards). Raises :class:`BackendUnavailable`
    when no PostgreSQL server answers."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="consentgate-bench-") as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        return
    import asyncpg

    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackendUnavailable(f"no PostgreSQL server answers at {PG_ADMIN}: {exc}") from None
    name = f"consentgate_bench_{uuid.uuid4().hex[:10]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN, timeout=3)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def run_main(coro_factory: Any, args: argparse.Namespace) -> int:
    """Run a benchmark's coroutine; a missing PostgreSQL server is a skip, not a failure."""
    try:
        asyncio.run(coro_factory(args))
    except BackendUnavailable as exc:
        print(f"skipped: {exc}")
        return 0
    return 0


def configure_quiet_logging(name: str, level: str = "INFO") -> Path:
    """Configure logging exactly as ``consentgate serve`` does (JSON lines, INFO: one line per
    message sent), but into ``bench/out/NAME.log`` so the terminal keeps only the figures.
    The cost of writing the log is part of what is measured."""
    import logging

    import structlog

    from consentgate.bot.logs import configure_logging

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.log"
    stream = open(path, "w", buffering=1 << 16)  # noqa: SIM115 - lives as long as the process
    configure_logging(level)
    # the same processors and level, written to the file instead of stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    return path


def numbers(n: int, start: int = 0) -> list[str]:
    """``n`` distinct UK mobile numbers in E.164."""
    return [f"+4474{i:08d}" for i in range(start, start + n)]


async def seed_subscribers(db: Database, n: int, *, campaign: str = JANE, channel: str = "sms",
                           chunk: int = 20_000) -> list[str]:
    """Put ``n`` subscribed addresses straight into ``subscriptions`` with set-based inserts
    (what an import would leave behind, without the per-row consent evidence the API keeps):
    fast enough for a million rows. Returns the addresses in id order."""
    ledger = Ledger(SECRET)
    now = time.time()
    addresses = numbers(n)
    for lo in range(0, n, chunk):
        rows = [dict(campaign=campaign, channel=channel, address=a,
                     address_hash=ledger.hash(channel, a), status="subscribed",
                     restricted=False, consented_at=now, updated_at=now, last_contact_at=now)
                for a in addresses[lo:lo + chunk]]
        async with db.write() as conn:
            await conn.execute(subscriptions.insert(), rows)
    async with db.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(subscriptions))).scalar()
    assert count is not None and count >= n
    await db.refresh_statistics("subscriptions")  # as a consent import does
    return addresses


class Arrivals:
    """Pass as ``FakeTwilio(on_accept=...)``: how many messages each of the ``n`` addresses of
    :func:`numbers` received (one byte each, saturating at 255), and when the first and the
    last accepted message arrived. Messages to any other address are counted in ``strays``."""

    def __init__(self, n: int) -> None:
        self.per_recipient = bytearray(n)
        self.count = 0
        self.strays = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def __call__(self, sms: SentSms) -> None:
        self.count += 1
        if self.first_at is None:
            self.first_at = sms.received_at
        self.last_at = sms.received_at
        i = int(sms.to[5:]) if sms.to.startswith("+4474") and sms.to[5:].isdigit() else -1
        if 0 <= i < len(self.per_recipient):
            self.per_recipient[i] = min(self.per_recipient[i] + 1, 255)
        else:
            self.strays += 1

    def rate(self) -> float:
        """Messages per second from the first to the last accepted one."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return float("nan")
        return (self.count - 1) / (self.last_at - self.first_at)

    def missing(self) -> int:
        """Recipients that received nothing."""
        return self.per_recipient.count(0)

    def more_than_once(self) -> int:
        """Recipients that received more than one message."""
        return len(self.per_recipient) - self.per_recipient.count(0) - self.per_recipient.count(1)

    def exactly_once(self) -> bool:
        return self.missing() == 0 and self.more_than_once() == 0 and self.strays == 0


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def peak_rss_mb() -> float:
    """The process's peak resident set size so far (``getrusage``; KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (``VmHWM``), so that
    :func:`phase_peak_rss_mb` reports the peak of one phase only. Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def phase_peak_rss_mb() -> float | None:
    """``VmHWM`` (peak RSS since the last :func:`reset_peak_rss`), in MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    import aiohttp
    import sqlalchemy

    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
            "platform": platform.platform(), "sqlalchemy": sqlalchemy.__version__,
            "aiohttp": aiohttp.__version__}


def write_report(name: str, params: dict[str, Any], rows: list[tuple[str, Any, str]],
                 extra: dict[str, Any] | None = None) -> Path:
    """Print ``rows`` (label, value, note) as a small table and save everything as JSON."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{name}  " + "  ".join(f"{k}={v}" for k, v in params.items()))
    print("-" * (width + 30))
    for label, value, note in rows:
        shown = f"{value:,.3f}" if isinstance(value, float) else (
            f"{value:,}" if isinstance(value, int) else str(value))
        print(f"{label:<{width}}  {shown:>14}  {note}")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    payload = {"benchmark": name, "params": params, "machine": machine(),
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "results": {label: value for label, value, _ in rows}, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"(saved {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path})")
    return path
