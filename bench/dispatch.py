"""Dispatch throughput: how fast a broadcast leaves the gateway for the provider, against a
bare HTTP client posting the same requests to the same loopback Twilio fake.

The gateway figure is everything the dispatcher does per message (claim, pacing, the gate's
read and the move to ``sending``, composing, one Messages API call through the twilio client,
recording the answer, one JSON log line), measured at the fake from the first to the last
accepted message. Two bare clients send the same messages at the same concurrency: aiohttp
posting the same form (same fields, Basic auth), the share of raw HTTP throughput the gateway
keeps; and the twilio library's own asynchronous client (``messages.create_async``, what the
adapter calls), the share the gateway keeps of what the provider's client alone can do.
The fake runs in the same process and event loop in every case. The two alternate for
``--rounds`` rounds and the medians are reported, with the process CPU time per message.

``--workers N[,N...]`` (PostgreSQL only) measures scale-out instead: ``consentgate serve`` and
N-1 ``consentgate worker`` processes, started and configured by :mod:`tests.procs` as for the
scale-out tests, on a fresh temporary database per run, and one broadcast created through the
HTTP API. The fake runs in this process; the rate is again taken at the fake, and every
recipient must have received exactly one message. Each round runs every N once (the order
reversed every other round) and medians are reported.

    .venv/bin/python -m bench.dispatch [--n 5000] [--backend sqlite|postgres]
    .venv/bin/python -m bench.dispatch --backend postgres --workers 1,2,3 [--n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client as TwilioClient

from bench._common import (
    Arrivals,
    add_backend_option,
    bench_database,
    configure_quiet_logging,
    numbers,
    run_main,
    seed_subscribers,
    write_report,
)
from consentgate.bot.dispatch import Dispatcher
from consentgate.bot.runtime import tune_garbage_collector, tune_thread_switching
from consentgate.storage.db import Database
from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.harness import (
    JANE,
    JANE_AUTH,
    JANE_NUMBER,
    JANE_SID,
    PUBLIC_URL,
    running_gateway,
)
from tests.procs import Client, GatewayProcess, Launcher, free_port, write_config

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
    return {**_arrived(fake, first, _cpu() - cpu), "wall": time.perf_counter() - started,
            "failures": failures}


async def bare_twilio(fake: FakeTwilio, addresses: list[str],
                      concurrency: int) -> dict[str, Any]:
    """The twilio library alone: ``messages.create_async`` for each address, ``concurrency``
    at a time, over its own aiohttp session, pointed at the fake by its domain's base URL."""
    http = AsyncTwilioHttpClient(pool_connections=False, timeout=60)
    http.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    client = TwilioClient(JANE_SID, JANE_AUTH, http_client=http)
    client.api.base_url = fake.base_url
    callback = f"{PUBLIC_URL}/webhooks/twilio/{JANE}/status"
    first = len(fake.messages)
    queue = iter(enumerate(addresses))

    async def worker() -> None:
        for i, to in queue:
            await client.messages.create_async(to=to, from_=JANE_NUMBER, body=TEXT,
                                               status_callback=f"{callback}?m={i}")

    cpu = _cpu()
    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await http.session.close()
    got = _arrived(fake, first, _cpu() - cpu)
    return {**got, "wall": time.perf_counter() - started, "failures": len(addresses) - got["n"]}


def _arrived(fake: FakeTwilio, first: int, cpu: float) -> dict[str, Any]:
    """What reached the fake since message ``first``: count, first-to-last span and rate,
    and ``cpu`` seconds spread over it."""
    got = fake.messages[first:]
    span = got[-1].received_at - got[0].received_at
    return {"n": len(got), "span": span, "rate": (len(got) - 1) / span,
            "cpu_ms_per_msg": 1000 * cpu / len(got)}


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
    return {**_arrived(fake, first, cpu), "queued": queued, "at_fake": at_fake,
            "recorded": recorded, "counts": view["counts"]}


async def run(args: argparse.Namespace) -> None:
    configure_quiet_logging("dispatch")
    in_flight = dispatcher_in_flight_limit()
    concurrency = args.concurrency or in_flight
    rounds: list[dict[str, Any]] = []
    async with bench_database(args.backend) as url, \
            running_gateway(url, rate=RATE, dispatch_thread=args.own_thread) as h:
        addresses = await seed_subscribers(h.db, args.n)
        tune_garbage_collector()  # as serve does; the bare clients share the process
        if args.own_thread:
            tune_thread_switching()
        # warm both paths (connections, imports, caches) on a few messages
        await bare_client(h.twilio, numbers(200, 9_000_000), concurrency)
        await bare_twilio(h.twilio, numbers(200, 9_100_000), concurrency)
        for _ in range(args.rounds):
            # alternate, so that a change in the machine's load hits every side alike
            bare = await bare_client(h.twilio, addresses, concurrency)
            sdk = await bare_twilio(h.twilio, addresses, concurrency)
            gw = await gateway_broadcast(h, args.n, deadline=args.timeout)
            rounds.append({"bare": bare, "sdk": sdk, "gateway": gw,
                           "ratio": gw["rate"] / bare["rate"],
                           "ratio_sdk": gw["rate"] / sdk["rate"]})

    def med(side: str, key: str) -> float:
        return float(statistics.median(r[side][key] for r in rounds))

    ratio = statistics.median(r["ratio"] for r in rounds)
    ratio_sdk = statistics.median(r["ratio_sdk"] for r in rounds)
    cpu_ratio = med("bare", "cpu_ms_per_msg") / med("gateway", "cpu_ms_per_msg")
    last = rounds[-1]["gateway"]
    rows = [
        ("bare client msgs/s", med("bare", "rate"), f"{concurrency} concurrent POSTs, aiohttp"),
        ("bare twilio client msgs/s", med("sdk", "rate"),
         f"{concurrency} concurrent messages.create_async"),
        ("gateway msgs/s", med("gateway", "rate"), "first..last accepted at the fake"),
        ("ratio gateway/bare", ratio, "goal >= 0.5 " + ("(met)" if ratio >= 0.5 else "(NOT met)")),
        ("ratios per round", " ".join(f"{r['ratio']:.2f}" for r in rounds), ""),
        ("ratio gateway/twilio client", ratio_sdk,
         "goal >= 0.5 " + ("(met)" if ratio_sdk >= 0.5 else "(NOT met)")),
        ("ratios per round", " ".join(f"{r['ratio_sdk']:.2f}" for r in rounds), ""),
        ("bare CPU ms/msg", med("bare", "cpu_ms_per_msg"), "process CPU, all threads"),
        ("twilio client CPU ms/msg", med("sdk", "cpu_ms_per_msg"), ""),
        ("gateway CPU ms/msg", med("gateway", "cpu_ms_per_msg"), "incl. enqueue"),
        ("CPU ratio bare/gateway", cpu_ratio, "the ratio if CPU were the only limit"),
        ("broadcast enqueue s", med("gateway", "queued"), f"{args.n} recipients, create()"),
        ("create -> last at fake s", med("gateway", "at_fake"), ""),
        ("create -> all recorded s", med("gateway", "recorded"),
         f"last round: {last['counts']['sent']} sent"),
        ("bare client failures", sum(r["bare"]["failures"] + r["sdk"]["failures"]
                                     for r in rounds), ""),
    ]
    write_report("dispatch", {"backend": args.backend, "n": args.n, "rounds": args.rounds,
                              "dispatcher_max_in_flight": in_flight,
                              "bare_concurrency": concurrency, "rate_per_second": RATE,
                              "own_thread": args.own_thread},
                 rows, {"rounds": rounds})


LEASE_SECONDS = 60.0
POOL_SIZE = 5


def _machine_busy(before: Any, after: Any) -> float:
    """The share of the machine's CPU time (all cores, everyone's work) that was not idle."""
    spent = sum(after) - sum(before)
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    return 1.0 - idle / spent if spent > 0 else float("nan")


def _postgres_cpu() -> float:
    """CPU seconds used so far by the PostgreSQL server's processes on this machine (every
    database's: whatever else uses the server counts too)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] == "postgres" and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


async def scale_out_run(url: str, processes: int, n: int, *, latency: float,
                        timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    """One broadcast to ``n`` recipients sent by ``serve`` plus ``processes - 1`` workers."""
    arrivals = Arrivals(n)
    with tempfile.TemporaryDirectory(prefix="consentgate-bench-") as tmp:
        tmp_path = Path(tmp)
        port = free_port()
        async with (FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH, latency=latency,
                               keep_history=False, on_accept=arrivals) as fake,
                    Launcher(tmp_path) as launch,
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
                    as session):
            # the configuration of the scale-out tests (tests/test_scale_out.py)
            config = write_config(tmp_path / "consentgate.toml", storage_url=url,
                                  twilio_url=fake.base_url, port=port, rate=RATE,
                                  pool_size=POOL_SIZE, lease_seconds=LEASE_SECONDS)
            # All start together, as in the scale-out tests: migrations under the advisory lock.
            procs = await asyncio.gather(launch.serve(config, port),
                                         *(launch.worker(config) for _ in range(processes - 1)))
            db = Database(url, pool_size=2)
            try:
                await seed_subscribers(db, n)
            finally:
                await db.dispose()
            try:
                return await _broadcast_to_all(procs, Client(session, port), fake, arrivals,
                                               n, timeout)
            except BaseException:
                for p in procs:
                    print(f"--- the end of {p.log_path.name}:\n{p.log()[-3000:]}")
                raise


async def _broadcast_to_all(procs: list[GatewayProcess], client: Client, fake: FakeTwilio,
                            arrivals: Arrivals, n: int,
                            timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    """Create the broadcast, wait until every message was accepted and recorded, stop the
    processes, and collect the figures."""
    handles = [psutil.Process(p.pid) for p in procs]
    cpu = [sum(h.cpu_times()[:2]) for h in handles]
    machine_cpu = psutil.cpu_times()
    driver_cpu, pg_cpu = _cpu(), _postgres_cpu()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    created = await client.broadcast(TEXT)
    queued = time.perf_counter() - started
    assert created["audience"]["eligible"] == n, created
    await fake.wait_for(n, timeout=timeout)
    at_fake = time.perf_counter() - started
    view = await client.wait_done(created["id"], timeout=timeout)
    recorded = time.perf_counter() - started
    cpu = [sum(h.cpu_times()[:2]) - c for h, c in zip(handles, cpu, strict=True)]
    busy = _machine_busy(machine_cpu, psutil.cpu_times())
    driver_cpu, pg_cpu = _cpu() - driver_cpu, _postgres_cpu() - pg_cpu
    load = max(load, os.getloadavg()[0])
    for p in procs:
        rc, took = await p.stop()
        assert rc == 0, f"{p.log_path.name} exited with {rc} after {took:.1f} s"
    return {"processes": len(procs), "rate": arrivals.rate(), "accepted": arrivals.count,
            "missing": arrivals.missing(), "more_than_once": arrivals.more_than_once(),
            "strays": arrivals.strays, "exactly_once": arrivals.exactly_once(),
            "sent_by_process": [p.log().count('"message.sent"') for p in procs],
            "cpu_s_by_process": cpu,
            "gateway_cpu_ms_per_msg": 1000 * sum(cpu) / max(arrivals.count, 1),
            "fake_cpu_ms_per_msg": 1000 * driver_cpu / max(arrivals.count, 1),
            "postgres_cpu_ms_per_msg": 1000 * pg_cpu / max(arrivals.count, 1),
            "machine_cpu_busy": busy, "loadavg_1min": load, "queued": queued,
            "at_fake": at_fake, "recorded": recorded, "counts": view["counts"]}


async def run_workers(args: argparse.Namespace) -> None:
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        # alternate the order, so that a drift in the machine's load is spread over every N
        for processes in (args.workers if r % 2 == 0 else args.workers[::-1]):
            async with bench_database(args.backend) as url:
                run_ = await scale_out_run(url, processes, args.n, latency=args.latency,
                                           timeout=args.timeout)
            runs.append({"round": r + 1, **run_})
            print(f"round {r + 1}, {processes} process(es): {run_['rate']:,.0f} msgs/s, "
                  f"exactly once: {run_['exactly_once']}, load {run_['loadavg_1min']:.1f}",
                  flush=True)

    def of(processes: int, key: str) -> list[Any]:
        return [x[key] for x in runs if x["processes"] == processes]

    base = statistics.median(of(args.workers[0], "rate"))
    rows: list[tuple[str, Any, str]] = []
    for processes in args.workers:
        rate = statistics.median(of(processes, "rate"))
        workers = processes - 1
        who = "serve" + (f" + {workers} worker{'s' * (workers > 1)}" if workers else "")
        rows.append((f"{processes} process(es) msgs/s", rate,
                     f"{who}; rounds: " + ", ".join(f"{x:,.0f}" for x in of(processes, "rate"))))
    for processes in args.workers[1:]:
        rows.append((f"{processes} vs {args.workers[0]} speed-up",
                     statistics.median(of(processes, "rate")) / base, ""))
    for processes in args.workers:
        shares = of(processes, "sent_by_process")[-1]
        rows += [
            (f"{processes}: gateway CPU ms/msg", statistics.median(
                of(processes, "gateway_cpu_ms_per_msg")), "all gateway processes, median"),
            (f"{processes}: fake CPU ms/msg", statistics.median(
                of(processes, "fake_cpu_ms_per_msg")), "this process (the Twilio fake), median"),
            (f"{processes}: PostgreSQL CPU ms/msg", statistics.median(
                of(processes, "postgres_cpu_ms_per_msg")), "the server's processes, median"),
            (f"{processes}: machine CPU busy", statistics.median(of(processes, "machine_cpu_busy")),
             "share of both cores not idle (everyone's work), median"),
            (f"{processes}: sent by each process", "/".join(str(x) for x in shares),
             "last round, from the processes' logs"),
        ]
    broken = [x for x in runs if not x["exactly_once"]]
    rows += [
        ("every recipient exactly once", "yes" if not broken else "NO",
         f"{len(runs)} runs, counted at the fake" + "".join(
             f"; round {x['round']} N={x['processes']}: {x['missing']} missing, "
             f"{x['more_than_once']} more than once, {x['strays']} strays" for x in broken)),
        ("load average (1 min), max seen", max(x["loadavg_1min"] for x in runs),
         "at the start and end of each run"),
    ]
    write_report("dispatch_workers",
                 {"backend": args.backend, "n": args.n, "rounds": args.rounds,
                  "workers": args.workers, "rate_per_second": RATE,
                  "twilio_latency": args.latency, "lease_seconds": LEASE_SECONDS,
                  "pool_size": POOL_SIZE},
                 rows, {"runs": runs})


def _process_counts(value: str) -> list[int]:
    try:
        counts = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected dispatching process counts such as 3 or 1,2,3, not {value!r}")
    return counts


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
    parser.add_argument("--workers", type=_process_counts, default=None, metavar="N[,N...]",
                        help="scale-out instead: serve + N-1 worker processes on one "
                             "PostgreSQL database, for each N (needs --backend postgres)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="with --workers: the fake's answer latency in seconds")
    parser.add_argument("--own-thread", action="store_true",
                        help="the dispatcher on an event loop in a thread of its own, as "
                             "serve runs it (the fake and the bare clients stay on this "
                             "process's main loop)")
    add_backend_option(parser)
    args = parser.parse_args()
    if args.workers is None:
        return run_main(run, args)
    if args.backend != "postgres":
        parser.error("--workers needs --backend postgres: SQLite serves one dispatching "
                     "process by design (a second one refuses to start), so there is "
                     "nothing to scale out")
    return run_main(run_workers, args)


if __name__ == "__main__":
    raise SystemExit(main())
