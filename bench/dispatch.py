"""Dispatch throughput: how fast a broadcast leaves the gateway for the provider, against a
bare HTTP client posting the same requests to the same loopback Twilio fake.

The gateway figure is everything the dispatcher does per message (claim, pacing, the gate's
read and the move to ``sending``, composing, one Messages API call through the twilio client,
recording the answer, one JSON log line), measured at the fake from the first to the last
accepted message. The bare client posts the same form (same fields, Basic auth) with aiohttp
at the same concurrency, so the ratio is the share of raw HTTP throughput the gateway keeps.
The fake runs in the same process and event loop in both cases. The two alternate for
``--rounds`` rounds and the medians are reported, with the process CPU time per message.

    .venv/bin/python -m bench.dispatch [--n 5000] [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import resource
import statistics
import time
from typing import Any

import aiohttp

from bench._common import (
    add_backend_option,
    bench_database,
    configure_quiet_logging,
    numbers,
    run_main,
    seed_subscribers,
    write_report,
)
from bot.dispatch import Dispatcher
from tests.fakes.twilio_api import FakeTwilio
from tests.harness import (
    JANE,
    JANE_AUTH,
    JANE_NUMBER,
    JANE_SID,
    PUBLIC_URL,
    running_gateway,
)

TEXT = ("Polling day is Thursday 7 May. Find your polling station at "
        "https://example.org/where. Reply STOP to opt out")
RATE = 100_000.0


def dispatcher_in_flight_limit() -> int:
    """``Dispatcher(max_in_flight=...)``'s default: the most provider calls under way."""
    return int(inspect.signature(Dispatcher).parameters["max_in_flight"].default)


async def bare_client(fake: FakeTwilio, addresses: list[str], concurrency: int) -> dict[str, Any]:
    """POST one Messages API request per address, ``concurrency`` at a time, the way the
    twilio client does (form body, Basic auth, the same headers), over one session with
    aiohttp's default connection pool (as the adapter's session has)."""
    url = f"{fake.base_url}/2010-04-01/Accounts/{JANE_SID}/Messages.json"
    auth = "Basic " + base64.b64encode(f"{JANE_SID}:{JANE_AUTH}".encode()).decode()
    headers = {"Authorization": auth, "User-Agent": "bench", "Accept": "application/json",
               "Accept-Charset": "utf-8", "X-Twilio-Client": "python-bench"}
    callback = f"{PUBLIC_URL}/webhooks/twilio/{JANE}/status"
    first = len(fake.messages)
    queue = iter(enumerate(addresses))
    failures = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        for i, to in queue:
            form = {"To": to, "StatusCallback": f"{callback}?m={i}", "From": JANE_NUMBER,
                    "Body": TEXT}
            async with session.post(url, data=form, headers=headers) as r:
                await r.read()
                if r.status != 201:
                    failures += 1

    cpu = _cpu()
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    cpu = _cpu() - cpu
    got = fake.messages[first:]
    span = got[-1].received_at - got[0].received_at
    return {"n": len(got), "span": span, "rate": (len(got) - 1) / span, "wall": wall,
            "cpu_ms_per_msg": 1000 * cpu / len(got), "failures": failures}


def _cpu() -> float:
    """CPU seconds this process has used (every thread: the event loop and SQLite's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def gateway_broadcast(h: Any, n: int, deadline: float) -> dict[str, Any]:
    fake = h.twilio
    first = len(fake.messages)
    cpu = _cpu()
    started = time.perf_counter()
    created = await h.gateway.broadcasts.create(
        JANE, frozenset(h.gateway.campaigns[JANE].channels()), "bench", "sms", TEXT)
    h.gateway.dispatcher.wake(JANE, "sms")
    queued = time.perf_counter() - started
    assert created["audience"]["eligible"] == n, created
    await fake.wait_for(first + n, timeout=deadline)
    at_fake = time.perf_counter() - started
    cpu = _cpu() - cpu
    # until every answer is recorded (the recorder writes in batches after the sends)
    while True:
        view = await h.gateway.broadcasts.view(JANE, created["id"])
        if view["status"] == "done":
            break
        await asyncio.sleep(0.05)
    recorded = time.perf_counter() - started
    got = fake.messages[first:]
    span = got[-1].received_at - got[0].received_at
    return {"n": len(got), "span": span, "rate": (len(got) - 1) / span, "queued": queued,
            "cpu_ms_per_msg": 1000 * cpu / len(got), "at_fake": at_fake, "recorded": recorded,
            "counts": view["counts"]}


async def run(args: argparse.Namespace) -> None:
    configure_quiet_logging("dispatch")
    in_flight = dispatcher_in_flight_limit()
    concurrency = args.concurrency or in_flight
    rounds: list[dict[str, Any]] = []
    async with bench_database(args.backend) as url, \
            running_gateway(url, rate=RATE) as h:
        addresses = await seed_subscribers(h.db, args.n)
        # warm both paths (connections, imports, caches) on a few messages
        await bare_client(h.twilio, numbers(200, 9_000_000), concurrency)
        for _ in range(args.rounds):
            # alternate, so that a change in the machine's load hits both sides alike
            bare = await bare_client(h.twilio, addresses, concurrency)
            gw = await gateway_broadcast(h, args.n, deadline=args.timeout)
            rounds.append({"bare": bare, "gateway": gw, "ratio": gw["rate"] / bare["rate"]})

    def med(side: str, key: str) -> float:
        return float(statistics.median(r[side][key] for r in rounds))

    ratio = statistics.median(r["ratio"] for r in rounds)
    cpu_ratio = med("bare", "cpu_ms_per_msg") / med("gateway", "cpu_ms_per_msg")
    last = rounds[-1]["gateway"]
    rows = [
        ("bare client msgs/s", med("bare", "rate"), f"{concurrency} concurrent POSTs, aiohttp"),
        ("gateway msgs/s", med("gateway", "rate"), "first..last accepted at the fake"),
        ("ratio gateway/bare", ratio, "goal >= 0.5 " + ("(met)" if ratio >= 0.5 else "(NOT met)")),
        ("ratios per round", " ".join(f"{r['ratio']:.2f}" for r in rounds), ""),
        ("bare CPU ms/msg", med("bare", "cpu_ms_per_msg"), "process CPU, all threads"),
        ("gateway CPU ms/msg", med("gateway", "cpu_ms_per_msg"), "incl. enqueue"),
        ("CPU ratio bare/gateway", cpu_ratio, "the ratio if CPU were the only limit"),
        ("broadcast enqueue s", med("gateway", "queued"), f"{args.n} recipients, create()"),
        ("create -> last at fake s", med("gateway", "at_fake"), ""),
        ("create -> all recorded s", med("gateway", "recorded"),
         f"last round: {last['counts']['sent']} sent"),
        ("bare client failures", sum(r["bare"]["failures"] for r in rounds), ""),
    ]
    write_report("dispatch", {"backend": args.backend, "n": args.n, "rounds": args.rounds,
                              "dispatcher_max_in_flight": in_flight,
                              "bare_concurrency": concurrency, "rate_per_second": RATE},
                 rows, {"rounds": rounds})


def main() -> int:
    parser = argparse.ArgumentParser(description="gateway vs bare-client throughput")
    parser.add_argument("--n", type=int, default=5000, help="subscribed recipients")
    parser.add_argument("--rounds", type=int, default=3,
                        help="bare client then gateway, this many times (medians reported)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="bare client's concurrent requests (default: the dispatcher's "
                             "in-flight limit)")
    parser.add_argument("--timeout", type=float, default=100.0,
                        help="give up on the broadcast after this many seconds")
    add_backend_option(parser)
    return run_main(run, parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
