"""Email dispatch rate: a broadcast leaving the gateway for an SMTP relay, against a bare
aiosmtplib sender delivering the same number of messages to the same relay.

The relay is aiosmtpd (:class:`consentgate.testing.fakes.smtp_server.SmtpSink`) on loopback, in
the same process and event loop in both cases. The gateway figure is everything the dispatcher
does per message (claim, pacing, the gate's read and the move to ``sending``, composing with a
per-recipient unsubscribe token, VERP address and mailto token, the text and HTML templates,
MIME building, one SMTP transaction over the adapter's pooled connections, recording the
answer, one JSON log line). The bare sender builds a multipart text + HTML message per
recipient, serialises it and hands the bytes to aiosmtplib's ``sendmail`` (its leanest path)
over the same number of connections, one transaction at a time on each, so the ratio is the
share of raw SMTP throughput the gateway keeps.

    .venv/bin/python -m bench.email_dispatch [--n 2000] [--connections 4] [--append FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import socket
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench._common import (
    add_backend_option,
    bench_database,
    configure_quiet_logging,
    machine,
    run_main,
    write_report,
)
from consentgate.bot.ledger import Ledger
from consentgate.bot.runtime import tune_garbage_collector
from consentgate.storage.db import Database
from consentgate.storage.models import subscriptions
from consentgate.testing.fakes.smtp_server import SmtpSink
from consentgate.testing.harness import JANE, SECRET, running_gateway, smtp_section

TEXT = ("Polling day is Thursday 7 May. Polls are open from 7am to 10pm.\n\n"
        "Find your polling station at https://example.org/where and bring photo ID.")
SUBJECT = "Polling day is Thursday"
FROM = "Jane Doe <jane@example.org>"
RATE = 100_000.0  # no pacing: the relay and the gateway are what is measured


class TimedSink(SmtpSink):
    """The sink, noting when each message was accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted_at: list[float] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        self.accepted_at.append(time.perf_counter())
        return answer


def addresses(n: int, start: int = 0) -> list[str]:
    return [f"voter{i:07d}@example.com" for i in range(start, start + n)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def seed_email_subscribers(db: Database, emails: list[str]) -> None:
    """Subscribed email addresses straight into ``subscriptions`` (set-based)."""
    ledger = Ledger(SECRET)
    now = time.time()
    rows = [dict(campaign=JANE, channel="email", address=a,
                 address_hash=ledger.hash("email", a), status="subscribed", restricted=False,
                 consented_at=now, updated_at=now, last_contact_at=now) for a in emails]
    async with db.write() as conn:
        await conn.execute(subscriptions.insert(), rows)


def _rate(stamps: list[float]) -> tuple[float, float]:
    span = stamps[-1] - stamps[0]
    return (len(stamps) - 1) / span if span > 0 else float("inf"), span


async def bare_sender(sink: TimedSink, emails: list[str], connections: int) -> dict[str, Any]:
    first = len(sink.accepted_at)
    queue = iter(emails)

    async def worker() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port,
                                   start_tls=False) as client:
            for to in queue:
                msg = EmailMessage()
                msg["From"] = FROM
                msg["To"] = to
                msg["Subject"] = SUBJECT
                msg.set_content(TEXT)
                msg.add_alternative("".join(f"<p>{p}</p>" for p in TEXT.split("\n\n")),
                                    subtype="html")
                await client.sendmail("jane@example.org", [to], msg.as_bytes())

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(connections)))
    wall = time.perf_counter() - started
    rate, span = _rate(sink.accepted_at[first:])
    n = len(sink.accepted_at) - first
    return {"n": n, "rate": rate, "span": span, "wall": wall,
            "cpu_ms": (time.process_time() - cpu) * 1000 / n}


async def gateway_broadcast(h: Any, sink: TimedSink, n: int, within: float) -> dict[str, Any]:
    first = len(sink.accepted_at)
    started, cpu = time.perf_counter(), time.process_time()
    created = await h.gateway.broadcasts.create(
        JANE, frozenset(h.gateway.campaigns[JANE].channels()), "bench", "email", TEXT,
        SUBJECT)
    h.gateway.dispatcher.wake(JANE, "email")
    queued = time.perf_counter() - started
    assert created["audience"]["eligible"] == n, created
    await sink.wait_for(first + n, timeout=within)
    at_relay = time.perf_counter() - started
    while True:  # until every answer is recorded (the recorder writes in batches)
        view = await h.gateway.broadcasts.view(JANE, created["id"])
        if view["status"] == "done":
            break
        await asyncio.sleep(0.05)
    recorded = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu) * 1000 / n
    rate, span = _rate(sink.accepted_at[first:])
    return {"n": len(sink.accepted_at) - first, "rate": rate, "span": span, "queued": queued,
            "at_relay": at_relay, "recorded": recorded, "counts": view["counts"],
            "cpu_ms": cpu_ms}


def email_section(sink: SmtpSink, connections: int) -> str:
    return smtp_section(sink.port, FROM, rate=RATE, max_connections=connections,
                        inbound_port=_free_port())


def markdown_section(args: argparse.Namespace, bare: dict[str, Any], gw: dict[str, Any],
                     ratios: list[float], load: float) -> str:
    m = machine()
    shown = ", ".join(f"{r:.2f}" for r in ratios)
    return f"""## Email

`python -m bench.email_dispatch --n {args.n} --connections {args.connections} \
--rounds {args.rounds}` ({args.backend}; {m['nproc']} CPU {m['cpu'] or 'unknown'}, Python \
{m['python']}; load average {load:.1f} while it ran).
A broadcast to {args.n} subscribed addresses through the whole gateway, against a bare
aiosmtplib sender delivering as many messages, both to aiosmtpd on loopback in the same
process and event loop, over {args.connections} SMTP connections; the two alternate, once per
round, and the table shows the median round. Rates are first to last message accepted by the
relay.

| | messages/s | note |
| --- | ---: | --- |
| bare aiosmtplib sender | {bare['rate']:,.0f} | message built per recipient, `sendmail` |
| gateway broadcast | {gw['rate']:,.0f} | gate, per-recipient tokens, templates, recording |
| ratio gateway / bare | {gw['rate'] / bare['rate']:.2f} | per round: {shown} |
| CPU per message, bare | {bare['cpu_ms']:.2f} ms | the whole process, the relay included |
| CPU per message, gateway | {gw['cpu_ms']:.2f} ms | `create` to every result recorded |

Queueing the broadcast took {gw['queued']:.2f} s; from `create` to the last message at the
relay {gw['at_relay']:.2f} s, to every result recorded {gw['recorded']:.2f} s. Both sides
spend much of their time in Python's `email` package (the relay parsing each message, the
bare sender building its own with `EmailMessage`), which is why the absolute rates are
modest. The gateway builds its larger message (per-recipient unsubscribe headers, the HTML
part) with the legacy `email` API, which does not parse the headers it is given, and spends
the difference on the consent work (gate, recording, composing, the log line): see the
profile in docs/benchmarks.md. A relay account's own limit is usually lower than either
rate, and the gateway paces sends to `rate_per_second`.
"""


def append_section(path: Path, section: str) -> None:
    """Put the Email section in ``path``, replacing an earlier one, leaving the rest."""
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(r"^## Email\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    path.write_text(text)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]


def _middle(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def run(args: argparse.Namespace) -> None:
    configure_quiet_logging("email_dispatch")
    # The relay's own session log (a dozen lines per message) is not the gateway's cost.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    sink = TimedSink()
    bares: list[dict[str, Any]] = []
    gws: list[dict[str, Any]] = []
    async with sink, bench_database(args.backend) as url, \
            running_gateway(url, jane_email=email_section(sink, args.connections)) as h:
        emails = addresses(args.n)
        await seed_email_subscribers(h.db, emails)
        tune_garbage_collector()  # as serve does; the bare sender shares the process
        await bare_sender(sink, addresses(200, 9_000_000), args.connections)  # warm up
        for _ in range(args.rounds):
            bares.append(await bare_sender(sink, emails, args.connections))
            gws.append(await gateway_broadcast(h, sink, args.n, within=args.timeout))
    load = os.getloadavg()[0]
    bare, gw = _median(bares), _median(gws)
    ratios = [g["rate"] / b["rate"] for b, g in zip(bares, gws, strict=True)]
    rows = [
        ("bare aiosmtplib msgs/s", bare["rate"], f"{args.connections} connections, median"),
        ("gateway msgs/s", gw["rate"], "first..last accepted at the relay, median"),
        ("ratio gateway/bare", gw["rate"] / bare["rate"],
         "rounds: " + ", ".join(f"{r:.2f}" for r in ratios)),
        ("bare CPU ms/msg", _middle([b["cpu_ms"] for b in bares]),
         "the process, relay included, median"),
        ("gateway CPU ms/msg", _middle([g["cpu_ms"] for g in gws]),
         "create to all recorded, relay included, median"),
        ("broadcast enqueue s", gw["queued"], f"{args.n} recipients, create()"),
        ("create -> last at relay s", gw["at_relay"], ""),
        ("create -> all recorded s", gw["recorded"], f"{gw['counts']['sent']} sent"),
        ("load average", load, "other work on the machine skews both sides"),
    ]
    write_report("email_dispatch", {"backend": args.backend, "n": args.n,
                                    "connections": args.connections, "rounds": args.rounds,
                                    "rate_per_second": RATE},
                 rows, {"bare": bares, "gateway": gws})
    if args.append:
        append_section(Path(args.append), markdown_section(args, bare, gw, ratios, load))
        print(f"(Email section written to {args.append})")


def main() -> int:
    parser = argparse.ArgumentParser(description="gateway vs bare aiosmtplib email rate")
    parser.add_argument("--n", type=int, default=2000, help="subscribed recipients")
    parser.add_argument("--connections", type=int, default=4,
                        help="SMTP connections (the adapter's max_connections)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="bare and gateway runs, alternating; the median is reported")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up on the broadcast after this many seconds")
    parser.add_argument("--append", metavar="FILE",
                        help="also write the figures as the Email section of FILE "
                             "(e.g. docs/benchmarks.md)")
    add_backend_option(parser)
    return run_main(run, parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
