"""STOP latency: how long a signed Twilio STOP webhook takes to be answered (the opt-out
and the cancelling of that person's queued messages committed) while a broadcast is going
out at full speed to the loopback Twilio fake, and with nothing else running as a baseline.

The STOPs are sent open-loop, evenly spaced (each at its own time, whether or not earlier ones
were answered), from the same process and event loop that runs the gateway and the fake.

    .venv/bin/python -m bench.stop_latency [--n 20000] [--stops 300] [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._common import (
    add_backend_option,
    bench_database,
    configure_quiet_logging,
    percentile,
    run_main,
    seed_subscribers,
    write_report,
)
from tests.fakes.twilio_api import new_sid
from tests.fakes.twilio_webhooks import inbound_sms_form, post_signed
from tests.harness import (
    JANE,
    JANE_AUTH,
    JANE_NUMBER,
    JANE_SID,
    PUBLIC_URL,
    Harness,
    running_gateway,
)

TEXT = "Polling day is Thursday 7 May. Find your polling station at https://example.org/where"
RATE = 100_000.0
PATH = f"/webhooks/twilio/{JANE}/sms"


async def stop(h: Harness, address: str) -> tuple[float, float, int]:
    """Send one STOP; returns (latency s, monotonic time answered, HTTP status)."""
    form = inbound_sms_form(address, JANE_NUMBER, "STOP", new_sid(), account_sid=JANE_SID)
    started = time.monotonic()
    async with await post_signed(h.session, h.url + PATH, form, JANE_AUTH,
                                 signature_url=PUBLIC_URL + PATH) as r:
        await r.read()
        answered = time.monotonic()
        return answered - started, answered, r.status


async def stops_evenly(h: Harness, addresses: list[str], spacing: float,
                       ) -> list[tuple[str, float, float, int]]:
    """One STOP per address, one every ``spacing`` seconds (open loop)."""
    t0 = time.monotonic()
    tasks = []
    for i, address in enumerate(addresses):
        delay = t0 + i * spacing - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(stop(h, address)))
    done = await asyncio.gather(*tasks)
    return [(a, lat, at, status) for a, (lat, at, status) in zip(addresses, done, strict=True)]


def summary(results: list[tuple[str, float, float, int]]) -> dict[str, Any]:
    lat = [r[1] * 1000 for r in results]
    return {"count": len(lat), "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else float("nan"),
            "non_200": sum(1 for r in results if r[3] != 200)}


async def run(args: argparse.Namespace) -> None:
    configure_quiet_logging("stop_latency")
    k = args.stops
    async with bench_database(args.backend) as url, running_gateway(url, rate=RATE) as h:
        addresses = await seed_subscribers(h.db, args.n)
        gw = h.gateway
        # warm the webhook path (imports, connections, statement caches)
        await stops_evenly(h, addresses[k:k + 20], 0.005)

        spacing = args.spacing_ms / 1000
        # baseline: nothing else running
        baseline = summary(await stops_evenly(h, addresses[:k], spacing))

        # under load: a broadcast to everyone else, going out at full speed
        targets = addresses[-k:]
        fake = h.twilio
        first = len(fake.messages)
        created = await gw.broadcasts.create(
            JANE, frozenset(gw.campaigns[JANE].channels()), "bench", "sms", TEXT)
        gw.dispatcher.wake(JANE, "sms")
        eligible = created["audience"]["eligible"]
        await fake.wait_for(first + 1, timeout=30)
        await asyncio.sleep(1.0)
        sent = len(fake.messages) - first
        span = time.monotonic() - fake.messages[first].received_at
        rate = sent / span
        loaded = await stops_evenly(h, targets, spacing)
        # Let the broadcast finish, then see which STOPs landed while it was still going.
        await fake.wait_for(first + eligible - k, timeout=args.timeout)
        await asyncio.sleep(0.5)
        last = fake.messages[-1].received_at
        during = [r for r in loaded if r[2] <= last]
        after_answer = sum(1 for a, _, at, _ in loaded for m in fake.sent_to(a)
                           if m.received_at > at)
        view = await gw.broadcasts.view(JANE, created["id"])
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
                                  "spacing_ms": args.spacing_ms, "rate_per_second": RATE},
                 rows, {"baseline": baseline, "broadcast": load, "counts": view["counts"]})


def main() -> int:
    parser = argparse.ArgumentParser(description="STOP webhook latency during a broadcast")
    parser.add_argument("--n", type=int, default=20_000, help="subscribed recipients")
    parser.add_argument("--stops", type=int, default=300, help="STOPs in each phase")
    parser.add_argument("--spacing-ms", type=float, default=50.0,
                        help="gap between STOPs (both phases); 300 x 50 ms fits well inside "
                             "a 20,000-message broadcast")
    parser.add_argument("--timeout", type=float, default=110.0,
                        help="give up on the broadcast after this many seconds")
    add_backend_option(parser)
    return run_main(run, parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
