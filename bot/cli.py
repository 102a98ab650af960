"""The ``consentgate`` command: run the gateway, and the everyday tasks of a campaign team.

``serve`` and ``worker`` run the service. The other commands work on the same database
directly (a running ``serve`` picks up what they queue), and every change they make is
written to the audit log under the operator named with ``--as``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bot.config import CampaignSettings, ConfigError, Settings, load_config

__all__ = ["main"]

EXIT_CONFIG = 2


def _fail(message: str, status: int = 1) -> int:
    print(f"consentgate: {message}", file=sys.stderr)
    return status


def _campaign(settings: Settings, slug: str | None) -> CampaignSettings:
    if slug is None:
        if len(settings.campaigns) != 1:
            raise SystemExit(_fail("several campaigns are configured: name one with "
                                   "--campaign", 2))
        return settings.campaigns[0]
    found = settings.campaign(slug)
    if found is None:
        raise SystemExit(_fail(f"no campaign {slug!r} in the configuration", 2))
    return found


def _actor(campaign: CampaignSettings, name: str | None, change: bool = True) -> str:
    """The operator a CLI change is attributed to: named with --as, or the campaign's only
    organiser."""
    writers = [o for o in campaign.operators if o.role != "auditor"]
    if name is None:
        if not change:
            return "cli"
        if len(writers) == 1:
            return f"{writers[0].name} (cli)"
        raise SystemExit(_fail("name the operator making this change with --as NAME", 2))
    for o in campaign.operators:
        if o.name == name:
            if change and o.role == "auditor":
                raise SystemExit(_fail(f"{name} is an auditor and may not change anything", 2))
            return f"{o.name} (cli)"
    raise SystemExit(_fail(f"{name!r} is not an operator of {campaign.slug}", 2))


async def _serve(settings: Settings, with_web: bool) -> int:
    import structlog
    from aiohttp import web

    from bot.gateway import Gateway
    from bot.web.app import create_app

    log = structlog.get_logger("consentgate")
    gateway = Gateway(settings)
    await gateway.start()
    runner: web.AppRunner | None = None
    if with_web:
        runner = web.AppRunner(create_app(gateway), access_log=None, shutdown_timeout=3.0)
        await runner.setup()
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
    log.info("consentgate.started", web=with_web, host=settings.server.host,
             port=settings.server.port, campaigns=[c.slug for c in settings.campaigns],
             worker=gateway.dispatcher.worker_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dispatcher = asyncio.create_task(gateway.dispatcher.run())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({dispatcher, stopped}, return_when=asyncio.FIRST_COMPLETED)
    log.info("consentgate.stopping")
    # Stop taking work first, then let in-flight sends finish and release the rest.
    if runner is not None:
        await runner.cleanup()
    gateway.dispatcher.stop()
    try:
        await asyncio.wait_for(dispatcher, timeout=9.0)
    except TimeoutError:
        log.warning("consentgate.stop_timeout")
    await gateway.close()
    log.info("consentgate.stopped")
    return 0


async def _with_gateway(settings: Settings,
                        work: Callable[[Any], Awaitable[int]]) -> int:
    from bot.gateway import Gateway

    gateway = Gateway(settings)
    await gateway.db.migrate()
    await gateway.sync_campaigns()
    try:
        return await work(gateway)
    finally:
        await gateway.close()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


async def _send(gw: Any, args: argparse.Namespace) -> int:
    from bot.errors import GatewayError

    campaign = _campaign(gw.settings, args.campaign)
    try:
        answer = await gw.messages.send(campaign, _actor(campaign, args.as_), args.channel,
                                        args.to, args.text, args.subject, args.key)
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    _print_json(answer.body)
    return 0 if answer.status == 202 else 1


async def _broadcast(gw: Any, args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bot.errors import GatewayError

    campaign = _campaign(gw.settings, args.campaign)
    actor = _actor(campaign, args.as_, change=not args.dry_run)
    try:
        result = await gw.broadcasts.create(campaign.slug, gw.rules[campaign.slug]
                                            .channels_enabled, actor, args.channel,
                                            args.text, args.subject, args.dry_run)
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    _print_json(result)
    if args.dry_run or not args.wait or not result["audience"]["eligible"]:
        return 0
    total = result["audience"]["eligible"]
    with Progress(TextColumn("[bold]broadcast {task.fields[id]}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[detail]}")) as bar:
        task = bar.add_task("send", total=total, id=result["id"], detail="")
        while True:
            view = await gw.broadcasts.view(campaign.slug, result["id"])
            c = view["counts"]
            done = total - c["queued"] - c["sending"]
            bar.update(task, completed=done, detail=" ".join(
                f"{k}={v}" for k, v in c.items() if v))
            if view["status"] in ("done", "cancelled"):
                break
            await asyncio.sleep(0.5)
    return 0


async def _import(gw: Any, args: argparse.Namespace) -> int:
    from bot.errors import GatewayError
    from bot.imports import import_consents

    campaign = _campaign(gw.settings, args.campaign)
    try:
        data = await asyncio.to_thread(Path(args.file).read_bytes)
        report = await import_consents(gw.db, gw.ledger, campaign,
                                       _actor(campaign, args.as_), data)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    _print_json(report.as_dict())
    return 0


async def _explain(gw: Any, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bot.addresses import normalise_address
    from bot.errors import GatewayError
    from bot.messages import iso

    campaign = _campaign(gw.settings, args.campaign)
    try:
        address = normalise_address(args.channel, args.address, campaign.default_region)
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    async with gw.db.read() as conn:
        state = await gw.ledger.state(conn, campaign.slug, args.channel, address)
        decision = await gw.gate.decide_now(conn, campaign.slug, args.channel, address)
        history = await gw.ledger.history(conn, campaign.slug, args.channel, address)
    console = Console()
    verdict = ("[green]can be messaged[/green]" if decision.allowed else
               f"[red]cannot be messaged[/red]: {decision.reason.value if decision.reason else ''}")
    console.print(f"{args.channel} {address} in {campaign.slug}: status "
                  f"[bold]{'suppressed' if state.suppressed else state.status.value}[/bold], "
                  f"{verdict}")
    table = Table("when", "event", "method", "source", "by")
    for h in history:
        table.add_row(iso(h.at) or "", h.event, h.method or "", h.source or "", h.actor)
    console.print(table if history else "no history: this address has never been recorded")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="consentgate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--config", "-c", default="config.example.toml",
                       help="TOML configuration file (default: %(default)s)")
        return c

    cmd("serve", "run the HTTP server and the dispatcher")
    cmd("worker", "run only the dispatcher (scale-out on PostgreSQL)")
    cmd("migrate", "create or upgrade the database schema, then exit")

    def campaign_args(c: argparse.ArgumentParser) -> None:
        c.add_argument("--campaign", help="campaign slug (default: the only one)")
        c.add_argument("--as", dest="as_", metavar="NAME",
                       help="the operator this change is attributed to")

    s = cmd("send", "queue one message (the gate decides again at dispatch)")
    campaign_args(s)
    s.add_argument("channel", choices=["sms", "email", "telegram"])
    s.add_argument("to")
    s.add_argument("text")
    s.add_argument("--subject")
    s.add_argument("--key", help="Idempotency-Key: the same key never sends twice")

    b = cmd("broadcast", "message every subscribed address of the campaign on a channel")
    campaign_args(b)
    b.add_argument("channel", choices=["sms", "email", "telegram"])
    b.add_argument("text")
    b.add_argument("--subject")
    b.add_argument("--dry-run", action="store_true", help="count the audience, queue nothing")
    b.add_argument("--no-wait", dest="wait", action="store_false",
                   help="queue and return without the progress bar")

    i = cmd("import", "import consents from CSV (channel,address,method,source,evidence)")
    campaign_args(i)
    i.add_argument("file")

    e = cmd("explain", "why we can or cannot message this address, with its history")
    e.add_argument("--campaign", help="campaign slug (default: the only one)")
    e.add_argument("channel", choices=["sms", "email", "telegram"])
    e.add_argument("address")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"consentgate: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from bot.logs import configure_logging

    configure_logging()
    handlers: dict[str, Callable[[Any, argparse.Namespace], Awaitable[int]]] = {
        "send": _send, "broadcast": _broadcast, "import": _import, "explain": _explain,
    }
    if args.command in ("serve", "worker"):
        return asyncio.run(_serve(settings, with_web=args.command == "serve"))
    if args.command == "migrate":
        return asyncio.run(_with_gateway(settings, _noop))
    handler = handlers[args.command]
    return asyncio.run(_with_gateway(settings, lambda gw: handler(gw, args)))


async def _noop(_gw: Any) -> int:
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
