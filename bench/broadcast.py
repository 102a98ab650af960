"""Broadcast preparation at scale: the dry run (counting the audience by reason), ``create``
(the count again and the first 20,000 messages queued) and the queueing of the rest (one
INSERT ... SELECT per 5,000-hash range, each its own transaction; while a broadcast sends, the
scheduler does this batch by batch) over a large subscriber list, and the process's peak
memory while doing it. ``--dispatch`` then sends the whole broadcast to the loopback Twilio
fake (logging to ``bench/out/broadcast.log``), which takes minutes at 100,000.

``--tags 20`` measures segments instead: every subscriber gets two of 20 tags (``ward-0X``
by id mod 10, ``group-0X`` by id div 10 mod 10, so each tag is a tenth of the list and the
two are independent), then dry runs of a one-tag, a two-tag ``tags_all`` and a nine-tenths
segment, and segmented broadcasts to a tenth and to everyone (all ten ward tags).

    .venv/bin/python -m bench.broadcast [--n 100000] [--backend sqlite|postgres] [--dispatch]
                                        [--tags 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from sqlalchemy import BigInteger, Integer, String, cast, literal, select, update

from bench._common import (
    add_backend_option,
    bench_database,
    configure_quiet_logging,
    peak_rss_mb,
    phase_peak_rss_mb,
    reset_peak_rss,
    run_main,
    seed_subscribers,
    write_report,
)
from consentgate.bot.runtime import tune_garbage_collector
from consentgate.bot.tags import Segment
from consentgate.storage.db import Database
from consentgate.storage.models import campaign_tags, subscription_tags, subscriptions
from consentgate.testing.harness import JANE, running_gateway

TEXT = "Polling day is Thursday 7 May. Find your polling station at https://example.org/where"
RATE = 100_000.0


def _goal(value: float, limit: float) -> str:
    return f"goal < {limit:g} s " + ("(met)" if value < limit else "(NOT met)")


async def seed_tags(db: Database, n: int, tags: int, chunk: int = 100_000) -> None:
    """Two tags per subscriber out of ``tags`` (half ``ward-0X``, half ``group-0X``), set-based
    by id, as an import with a ``tags`` column would leave them."""
    half = tags // 2
    s = subscriptions
    now = time.time()
    for prefix, bucket in (("ward-0", s.c.id % half), ("group-0", (s.c.id // half) % half)):
        for lo in range(0, n, chunk):
            chosen = select(s.c.id, literal(prefix) + cast(bucket, String), s.c.campaign,
                            s.c.channel, literal(now)).where(s.c.id > lo, s.c.id <= lo + chunk)
            async with db.write(bulk=True) as conn:
                await conn.execute(subscription_tags.insert().from_select(
                    ["subscription_id", "tag", "campaign", "channel", "created_at"], chosen))
    # Their bits, as bot.tags gives them on first use: ward-0X bit X, group-0X bit half + X.
    async with db.write(bulk=True) as conn:
        campaign = (await conn.execute(select(s.c.campaign).limit(1))).scalar_one()
        await conn.execute(campaign_tags.insert(), [
            dict(campaign=campaign, tag=f"{prefix}{x}", bit=offset + x, created_at=now)
            for offset, prefix in ((0, "ward-0"), (half, "group-0")) for x in range(half)])
    one = literal(1, BigInteger)
    bits = (one.op("<<")(cast(s.c.id % half, Integer))).bitwise_or(
        one.op("<<")(cast(half + (s.c.id // half) % half, Integer)))
    for lo in range(0, n, chunk):
        async with db.write(bulk=True) as conn:
            await conn.execute(update(s).where(s.c.id > lo, s.c.id <= lo + chunk)
                               .values(tag_bits=bits))
    await db.refresh_statistics("subscription_tags")
    await db.refresh_statistics("subscriptions")


async def _segmented(gw: Any, n: int, tags: int) -> list[tuple[str, Any, str]]:
    channels = frozenset(gw.campaigns[JANE].channels())
    half = tags // 2
    wards = tuple(f"ward-0{i}" for i in range(half))
    rows: list[tuple[str, Any, str]] = []
    started = time.perf_counter()
    await seed_tags(gw.db, n, tags)
    rows.append(("seed tags s", time.perf_counter() - started,
                 f"{2 * n:,} rows, {tags} tags (no goal)"))
    dry_runs = [
        ("one tag (a tenth)", Segment(tags_any=("ward-03",)), n // half),
        ("tags_all of two (a hundredth)", Segment(tags_all=("group-05", "ward-03")),
         n // half // half),
        ("nine tenths (ten tags, one excluded)",
         Segment(tags_any=wards, exclude_tags=("group-00",)), n - n // half),
    ]
    for label, segment, expected in dry_runs:
        started, cpu = time.perf_counter(), time.process_time()
        dry = await gw.broadcasts.create(JANE, channels, "bench", "sms", TEXT, dry_run=True,
                                         segment=segment)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert abs(dry["audience"]["eligible"] - expected) <= half, (label, dry)
        rows.append((f"dry run, {label} s", took, _goal(took, 1.0)))
        rows.append(("  CPU s of the process", cpu, "all threads (the machine is shared)"))
    for label, segment, expected in [
            ("a tenth", Segment(tags_any=("ward-07",)), n // half),
            ("everyone by tags (ten tags)", Segment(tags_any=wards), n)]:
        reset_peak_rss()
        started, cpu = time.perf_counter(), time.process_time()
        created = await gw.broadcasts.create(JANE, channels, "bench", "sms", TEXT,
                                             segment=segment)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert abs(created["audience"]["eligible"] - expected) <= half, (label, created)
        goal = _goal(took, 10.0 * n / 1_000_000) if expected == n else "(no goal)"
        rows.append((f"create, {label}: {created['audience']['eligible']:,} s", took, goal))
        rows.append(("  CPU s of the process", cpu, "all threads (the machine is shared)"))
        # create queues the first batches; the rest are queued while it sends. Queueing
        # all of them here, with nothing sending, shows how far ahead of any send rate
        # that queueing runs.
        started, cpu = time.perf_counter(), time.process_time()
        queued, done = await gw.broadcasts.enqueue(created["id"])
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert done and abs(queued - expected) <= half, (label, queued)
        rows.append((f"  then queueing the rest, {label} s", took,
                     "(no goal: done while sending)"))
        rows.append(("  queued rows/s", queued / took, "the send rate it stays ahead of"))
        rows.append(("  CPU s of the process", cpu, "all threads (the machine is shared)"))
        peak = phase_peak_rss_mb()
        if peak is not None:
            rows.append(("  peak RSS MiB in that enqueue", peak, "VmHWM, reset per phase"))
    return rows


async def run(args: argparse.Namespace) -> None:
    configure_quiet_logging("broadcast")
    n = args.n
    channels = None
    async with bench_database(args.backend) as url, \
            running_gateway(url, rate=RATE, dispatch=False) as h:
        gw = h.gateway
        channels = frozenset(gw.campaigns[JANE].channels())
        started = time.perf_counter()
        await seed_subscribers(h.db, n)
        seeded = time.perf_counter() - started
        tune_garbage_collector()  # as serve does
        rss_before = peak_rss_mb()
        phased = reset_peak_rss()

        if args.tags:
            rows = await _segmented(gw, n, args.tags)
            rows.insert(0, ("seed subscribers s", seeded, f"{n:,} rows, bulk insert (no goal)"))
            rows.append(("peak RSS MiB, whole run", peak_rss_mb(), "getrusage ru_maxrss"))
            write_report("broadcast", {"backend": args.backend, "n": n, "tags": args.tags},
                         rows)
            return

        started = time.perf_counter()
        dry = await gw.broadcasts.create(JANE, channels, "bench", "sms", TEXT, dry_run=True)
        dry_s = time.perf_counter() - started
        assert dry["audience"]["eligible"] == n, dry
        dry_rss = phase_peak_rss_mb() if phased else None

        reset_peak_rss()
        started = time.perf_counter()
        created = await gw.broadcasts.create(JANE, channels, "bench", "sms", TEXT)
        create_s = time.perf_counter() - started
        assert created["audience"]["eligible"] == n, created
        # create() queued the first batches; the rest are queued while it sends (by the
        # scheduler): here all at once, with nothing sending.
        started = time.perf_counter()
        queued, done = await gw.broadcasts.enqueue(created["id"])
        rest_s = time.perf_counter() - started
        assert done and queued == n, queued
        enqueue_rss = phase_peak_rss_mb() if phased else None
        started = time.perf_counter()
        await gw.broadcasts.audience(JANE, "sms")
        count_s = time.perf_counter() - started

        peaks = [rss_before, peak_rss_mb()] + [x for x in (dry_rss, enqueue_rss) if x]
        rows = [
            ("seed subscribers s", seeded, f"{n:,} rows, bulk insert (no goal)"),
            ("dry run s", dry_s, _goal(dry_s, 1.0 * n / 100_000)),
            ("create (count + first batches) s", create_s,
             _goal(create_s, 3.0 * n / 100_000)),
            ("  audience count alone s", count_s, "measured again after the enqueue"),
            ("queueing the rest s", rest_s, "(no goal: done while sending)"),
            ("queued rows/s", n / (create_s + rest_s), "the send rate it stays ahead of"),
            ("peak RSS MiB, whole run", max(peaks), "getrusage ru_maxrss / VmHWM"),
            ("peak RSS MiB, after seeding", rss_before, "getrusage ru_maxrss"),
        ]
        if dry_rss is not None and enqueue_rss is not None:
            rows += [("peak RSS MiB in dry run", dry_rss, "VmHWM, reset per phase"),
                     ("peak RSS MiB in enqueue", enqueue_rss, "VmHWM, reset per phase")]

        if args.dispatch:
            reset_peak_rss()
            fake = h.twilio
            first = len(fake.messages)
            started = time.perf_counter()
            h.runs.append(asyncio.create_task(gw.dispatcher.run()))
            await fake.wait_for(first + n, timeout=args.timeout)
            sent_s = time.perf_counter() - started
            got = fake.messages[first:]
            span = got[-1].received_at - got[0].received_at
            rows += [("dispatch s", sent_s, f"{n:,} messages to the fake"),
                     ("dispatch msgs/s", (len(got) - 1) / span, "first..last at the fake")]
            if phased:
                rows.append(("peak RSS MiB in dispatch", phase_peak_rss_mb(),
                             "VmHWM, reset per phase"))
    write_report("broadcast", {"backend": args.backend, "n": n, "dispatch": args.dispatch},
                 rows)


def main() -> int:
    parser = argparse.ArgumentParser(description="broadcast dry run and enqueue at scale")
    parser.add_argument("--n", type=int, default=100_000, help="subscribers (e.g. 1000000)")
    parser.add_argument("--dispatch", action="store_true",
                        help="also send the whole broadcast to the loopback Twilio fake")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="with --dispatch: give up after this many seconds")
    parser.add_argument("--tags", type=int, default=0,
                        help="measure segments over this many tags (even, at most 20)")
    add_backend_option(parser)
    return run_main(run, parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
