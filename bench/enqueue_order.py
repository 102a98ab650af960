"""A/B of the broadcast enqueue's two walks on SQLite, at the SQL level: the same
``INSERT ... SELECT`` into the outbox, 5,000 subscriptions per transaction, once in ranges of
subscription id (the walk a narrow segment still uses) and once in ranges of keyed hash (the
order of ``ix_messages_recipient``), each on a fresh copy of one seeded database, one after
the other so both see the same machine. Prints wall time, CPU time and bytes written.

    .venv/bin/python -m bench.enqueue_order [--n 100000] [--db SEEDED.db]
                                            [--segment ten-tags|none]

Without ``--db`` it first seeds ``--n`` subscribers with twenty tags, as ``bench.broadcast
--tags 20`` does; ``--db`` reuses a gateway's SQLite file seeded that way (it is copied,
never changed).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import exists, literal, select
from sqlalchemy.dialects import sqlite

from bench._common import seed_subscribers
from bench.broadcast import seed_tags
from consentgate.bot.broadcasts import _eligible
from consentgate.bot.tags import Segment, segment_members
from consentgate.storage.models import messages, subscription_tags, subscriptions
from consentgate.testing.harness import JANE, running_gateway

BATCH = 5000
COLUMNS = ["campaign", "channel", "address", "address_hash", "kind", "status", "broadcast_id",
           "attempts", "created_by", "created_at", "updated_at", "not_before"]


def _insert(source: Any, *where: Any) -> str:
    s = subscriptions
    chosen = select(s.c.campaign, s.c.channel, s.c.address, s.c.address_hash,
                    literal("campaign"), literal("queued"), literal(1), literal(0),
                    literal("bench"), literal(1.0), literal(1.0), literal(1.0)
                    ).select_from(source).where(*where)
    return str(messages.insert().from_select(COLUMNS, chosen).compile(
        dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))


def walk(path: Path, mode: str, segment: Segment) -> tuple[int, float, float, float]:
    """Queue the audience on ``path`` by ``mode`` (``id`` or ``hash``): (rows, wall s,
    CPU s, MB written)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    s = subscriptions
    upper = db.execute("SELECT max(id) FROM subscriptions").fetchone()[0]
    written = resource.getrusage(resource.RUSAGE_SELF).ru_oublock
    started, cpu, total = time.perf_counter(), time.process_time(), 0
    if mode == "id":
        for lo in range(0, upper, BATCH):
            members = segment_members(segment, JANE, "sms", lo, lo + BATCH)
            source = s if members is None else s.join(
                members, s.c.id == members.c.subscription_id)
            db.execute("BEGIN IMMEDIATE")
            total += db.execute(_insert(source, _eligible(JANE, "sms"), s.c.id > lo,
                                        s.c.id <= lo + BATCH, *_probes(segment, s.c.id))
                                ).rowcount
            db.execute("COMMIT")
    else:
        after = ""
        while True:
            row = db.execute("SELECT address_hash FROM subscriptions WHERE channel = 'sms' "
                             "AND address_hash > ? ORDER BY address_hash LIMIT 1 OFFSET ?",
                             (after, BATCH - 1)).fetchone()
            until = row[0] if row else db.execute(
                "SELECT max(address_hash) FROM subscriptions WHERE channel = 'sms'").fetchone()[0]
            db.execute("BEGIN IMMEDIATE")
            total += db.execute(_insert(
                s, s.c.channel == "sms", s.c.address_hash > after, s.c.address_hash <= until,
                _eligible(JANE, "sms"), s.c.id <= upper, *_probes(segment, s.c.id))
            ).rowcount
            db.execute("COMMIT")
            after = until
            if row is None:
                break
    db.close()
    out = (resource.getrusage(resource.RUSAGE_SELF).ru_oublock - written) * 512 / 1e6
    return total, time.perf_counter() - started, time.process_time() - cpu, out


def _probes(segment: Segment, sub_id: Any) -> list[Any]:
    """The segment as one probe of the tags' primary key per row, as queueing tested it
    when these figures were taken (it now tests the row's tag bits)."""
    t = subscription_tags

    def has(tags: tuple[str, ...]) -> Any:
        return exists().where(t.c.subscription_id == sub_id,
                              t.c.tag.between(min(tags), max(tags)), t.c.tag.in_(list(tags)))

    conds = [has(segment.tags_any)] if segment.tags_any else []
    conds.extend(has((tag,)) for tag in segment.tags_all)
    if segment.exclude_tags:
        conds.append(~has(segment.exclude_tags))
    return conds


async def _seed(path: Path, n: int) -> None:
    async with running_gateway(f"sqlite+aiosqlite:///{path}", dispatch=False) as h:
        await seed_subscribers(h.db, n)
        await seed_tags(h.db, n, 20)


def main() -> int:
    parser = argparse.ArgumentParser(description="enqueue in id order vs keyed-hash order")
    parser.add_argument("--db", type=Path, help="a seeded SQLite file (else one is seeded)")
    parser.add_argument("--n", type=int, default=100_000, help="subscribers to seed")
    parser.add_argument("--segment", choices=["ten-tags", "none"], default="ten-tags")
    args = parser.parse_args()
    segment = (Segment() if args.segment == "none"
               else Segment(tags_any=tuple(f"ward-0{i}" for i in range(10))))
    with tempfile.TemporaryDirectory(prefix="consentgate-bench-") as tmp:
        seeded = args.db
        if seeded is None:
            seeded = Path(tmp) / "seeded.db"
            asyncio.run(_seed(seeded, args.n))
        for mode in ("id", "hash"):
            copy = Path(tmp) / f"{mode}.db"
            shutil.copy(seeded, copy)
            rows, wall, cpu, mb = walk(copy, mode, segment)
            print(f"{mode:>4} ranges: {rows:,} rows  wall {wall:.1f} s  CPU {cpu:.1f} s  "
                  f"written {mb:,.0f} MB")
            copy.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
