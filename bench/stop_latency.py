"""STOP latency: how long a signed Twilio STOP webhook takes to be answered (the opt-out
and the cancelling of that person's queued messages committed) while a broadcast is going
out at full speed to the loopback Twilio fake, and with nothing else running as a baseline.

The STOPs are sent open-loop, evenly spaced (each at its own time, whether or not earlier ones
were answered). By default the gateway, the fake and the STOP client share one process and
event loop; with ``--gateway-process`` the gateway is a real ``consentgate serve`` process and
only the fake and the client run here, as in production, where the provider is elsewhere;
with ``--client-process`` the STOPs are sent from a process of their own, so their timing
does not include the delays of the loop that runs the fake.

    .venv/bin/python -m bench.stop_latency [--n 50000] [--stops 300] [--backend sqlite|postgres]
                                           [--gateway-process] [--workers N] [--client-process]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import (
    add_backend_option,
    bench_database,
    configure_quiet_logging,
    percentile,
    run_main,
    seed_subscribers,
    write_report,
)
from consentgate.bot.runtime import tune_garbage_collector, tune_thread_switching
from consentgate.storage.db import Database
from consentgate.testing.fakes.twilio_api import FakeTwilio, new_sid
from consentgate.testing.fakes.twilio_webhooks import inbound_sms_form, post_signed
from consentgate.testing.harness import (
    JANE,
    JANE_AUTH,
    JANE_NUMBER,
    JANE_SID,
    PUBLIC_URL,
    running_gateway,
)
from tests.procs import Client, Launcher, free_port, write_config

TEXT = "Polling day is Thursday 7 May. Find your polling station at https://example.org/where"
RATE = 100_000.0
PATH = f"/webhooks/twilio/{JANE}/sms"


@dataclass
class Target:
    """A running gateway as the benchmark sees it: where to post, how to broadcast."""

    session: aiohttp.ClientSession
    url: str
    fake: Any  # FakeTwilio; None in the STOP client's own process
    addresses: list[str]
    client: Any  # Client; None in the STOP client's own process
    client_pool: ProcessPoolExecutor | None = None


async def stop(t: Target, address: str) -> tuple[float, float, int]:
    """Send one STOP; returns (latency s, monotonic time answered, HTTP status)."""
    form = inbound_sms_form(address, JANE_NUMBER, "STOP", new_sid(), account_sid=JANE_SID)
    started = time.monotonic()
    async with await post_signed(t.session, t.url + PATH, form, JANE_AUTH,
                                 signature_url=PUBLIC_URL + PATH) as r:
        await r.read()
        answered = time.monotonic()
        return answered - started, answered, r.status


async def stops_evenly(t: Target, addresses: list[str], spacing: float,
                       ) -> list[tuple[str, float, float, int]]:
    """One STOP per address, one every ``spacing`` seconds (open loop). With
    ``t.client_pool``, sent from a process of its own (see :func:`_stops_elsewhere`)."""
    if t.client_pool is not None:
        return await asyncio.get_running_loop().run_in_executor(
            t.client_pool, _stops_elsewhere, t.url, addresses, spacing)
    t0 = time.monotonic()
    tasks = []
    for i, address in enumerate(addresses):
        delay = t0 + i * spacing - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(stop(t, address)))
    done = await asyncio.gather(*tasks)
    return [(a, lat, at, status) for a, (lat, at, status) in zip(addresses, done, strict=True)]


def _stops_elsewhere(url: str, addresses: list[str], spacing: float,
                     ) -> list[tuple[str, float, float, int]]:
    """:func:`stops_evenly` in a process of its own, on its own event loop, so the time
    taken is not the benchmark's loop's delay (it also runs the fake, receiving well over
    a thousand messages a second). ``time.monotonic`` is the system's monotonic clock, so
    the answer times compare with the fake's receive times."""
    async def go() -> list[tuple[str, float, float, int]]:
        async with aiohttp.ClientSession() as session:
            t = Target(session, url, None, addresses, None)
            return await stops_evenly(t, addresses, spacing)
    return asyncio.run(go())


@contextlib.asynccontextmanager
async def in_process(backend: str, n: int, *, own_thread: bool = True,
                     ) -> AsyncIterator[Target]:
    async with bench_database(backend) as url, running_gateway(
            url, rate=RATE, dispatch_thread=own_thread) as h:
        addresses = await seed_subscribers(h.db, n)
        tune_garbage_collector()  # as serve does
        if own_thread:
            tune_thread_switching()
        port = int(h.url.rsplit(":", 1)[1])
        yield Target(h.session, h.url, h.twilio, addresses, Client(h.session, port))


@contextlib.asynccontextmanager
async def gateway_process(backend: str, n: int, *, workers: int = 0,
                          own_thread: bool = True) -> AsyncIterator[Target]:
    """``consentgate serve`` as its own process; with ``workers``, serve answers only
    (``[dispatch] in_serve = false``) and that many ``consentgate worker`` processes send."""
    async with bench_database(backend) as url:
        db = Database(url, pool_size=2)
        try:
            await db.migrate()
            addresses = await seed_subscribers(db, n)
        finally:
            await db.dispose()
        with tempfile.TemporaryDirectory(prefix="consentgate-bench-") as tmp:
            port = free_port()
            async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as fake,
                        Launcher(Path(tmp)) as launch, aiohttp.ClientSession() as session):
                config = write_config(Path(tmp) / "consentgate.toml", storage_url=url,
                                      twilio_url=fake.base_url, port=port, rate=RATE)
                with config.open("a", encoding="utf-8") as fh:
                    fh.write(f"\n[dispatch]\nin_serve = {str(workers == 0).lower()}\n"
                             f"own_thread = {str(own_thread).lower()}\n")
                await launch.serve(config, port, timeout=120)
                for _ in range(workers):
                    await launch.worker(config, timeout=120)
                client = Client(session, port)
                yield Target(session, client.url, fake, addresses, client)


def summary(results: list[tuple[str, float, float, int]]) -> dict[str, Any]:
    lat = [r[1] * 1000 for r in results]
    return {"count": len(lat), "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else float("nan"),
            "non_200": sum(1 for r in results if r[3] != 200)}


async def run(args: argparse.Namespace) -> None:
    configure_quiet_logging("stop_latency")
    k = args.stops
    running = (in_process(args.backend, args.n, own_thread=args.own_thread)
               if not (args.gateway_process or args.workers) else
               gateway_process(args.backend, args.n, workers=args.workers,
                               own_thread=args.own_thread))
    async with contextlib.AsyncExitStack() as stack:
        t = await stack.enter_async_context(running)
        if args.client_process:
            t.client_pool = stack.enter_context(ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")))
        addresses, fake = t.addresses, t.fake
        # warm the webhook path (imports, connections, statement caches)
        await stops_evenly(t, addresses[k:k + 20], 0.005)

        spacing = args.spacing_ms / 1000
        # baseline: nothing else running
        baseline = summary(await stops_evenly(t, addresses[:k], spacing))

        # under load: a broadcast to everyone else, going out at full speed
        targets = addresses[-k:]
        first = len(fake.messages)
        created = await t.client.broadcast(TEXT)
        eligible = created["audience"]["eligible"]
        await fake.wait_for(first + 1, timeout=30)
        await asyncio.sleep(1.0)
        sent = len(fake.messages) - first
        span = time.monotonic() - fake.messages[first].received_at
        rate = sent / span
        loaded = await stops_evenly(t, targets, spacing)
        # Let the broadcast finish, then see which STOPs landed while it was still going.
        await fake.wait_for(first + eligible - k, timeout=args.timeout)
        await asyncio.sleep(0.5)
        last = fake.messages[-1].received_at
        during = [r for r in loaded if r[2] <= last]
        after_answer = sum(1 for a, _, at, _ in loaded for m in fake.sent_to(a)
                           if m.received_at > at)
        view = await t.client.broadcast_view(created["id"])
    load = summary(during)
    goal = load["p99_ms"] < 50
    rows = [
        ("baseline p50 ms", baseline["p50_ms"],
         f"{baseline['count']} STOPs, no broadcast, every {args.spacing_ms:g} ms"),
        ("baseline p95 ms", baseline["p95_ms"], ""),
        ("baseline p99 ms", baseline["p99_ms"], ""),
        ("baseline max ms", baseline["max_ms"], ""),
        ("broadcast p50 ms", load["p50_ms"],
         f"{load['count']} of {k} STOPs landed during the broadcast"),
        ("broadcast p95 ms", load["p95_ms"], ""),
        ("broadcast p99 ms", load["p99_ms"], "goal < 50 ms " + ("(met)" if goal else "(NOT met)")),
        ("broadcast max ms", load["max_ms"], ""),
        ("broadcast msgs/s (first 1 s)", rate, f"{eligible:,} recipients"),
        ("STOPs answered non-200", baseline["non_200"] + load["non_200"], ""),
        ("sends after a STOP was answered", after_answer,
         "permits issued before the opt-out committed (at most one call each)"),
        ("messages cancelled by STOPs", view["counts"]["cancelled"], f"of {k} STOP'd recipients"),
    ]
    write_report("stop_latency", {"backend": args.backend, "n": args.n, "stops": k,
                                  "spacing_ms": args.spacing_ms, "rate_per_second": RATE,
                                  "gateway_process": args.gateway_process or bool(args.workers),
                                  "workers": args.workers, "own_thread": args.own_thread,
                                  "client_process": args.client_process},
                 rows, {"baseline": baseline, "broadcast": load, "counts": view["counts"]})


def main() -> int:
    parser = argparse.ArgumentParser(description="STOP webhook latency during a broadcast")
    parser.add_argument("--n", type=int, default=50_000,
                        help="subscribed recipients (enough that every STOP lands while the "
                             "broadcast is still going at 2,000 msgs/s)")
    parser.add_argument("--stops", type=int, default=300, help="STOPs in each phase")
    parser.add_argument("--spacing-ms", type=float, default=50.0,
                        help="gap between STOPs (both phases); 300 x 50 ms fits well inside "
                             "a 50,000-message broadcast")
    parser.add_argument("--timeout", type=float, default=110.0,
                        help="give up on the broadcast after this many seconds")
    parser.add_argument("--gateway-process", action="store_true",
                        help="run the gateway as a consentgate serve process, apart from the "
                             "fake and the client")
    parser.add_argument("--workers", type=int, default=0,
                        help="run serve with [dispatch] in_serve = false beside this many "
                             "consentgate worker processes, which send (PostgreSQL; implies "
                             "--gateway-process)")
    parser.add_argument("--no-own-thread", dest="own_thread", action="store_false",
                        help="the dispatcher on the web server's event loop ([dispatch] "
                             "own_thread = false), as before it had a thread of its own")
    parser.add_argument("--client-process", action="store_true",
                        help="send the STOPs from a process of their own instead of the "
                             "benchmark's event loop, which also runs the fake")
    add_backend_option(parser)
    return run_main(run, parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
