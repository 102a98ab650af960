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

from consentgate.bot.config import CampaignSettings, ConfigError, Settings, load_config

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

    from consentgate.bot.gateway import Gateway
    from consentgate.bot.runtime import tune_garbage_collector
    from consentgate.bot.web.app import create_app
    from consentgate.storage.db import DatabaseBusy

    log = structlog.get_logger("consentgate")
    try:
        gateway = Gateway(settings)
    except ConfigError as exc:  # a conflict only the whole configuration shows
        return _fail(f"configuration error: {exc}", EXIT_CONFIG)
    try:
        await gateway.start()
    except DatabaseBusy as exc:
        await gateway.close()
        return _fail(str(exc), 2)
    runner: web.AppRunner | None = None
    if with_web:
        runner = web.AppRunner(create_app(gateway), access_log=None, shutdown_timeout=3.0)
        await runner.setup()
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            await gateway.close()
            return _fail(f"cannot listen on {settings.server.host}:{settings.server.port}: "
                         f"{exc.strerror or exc}", 1)
        if gateway.mail_listeners is not None:  # inbound mail: unsubscribes, replies, bounces
            await gateway.mail_listeners.start()
    tune_garbage_collector()
    log.info("consentgate.started", web=with_web, host=settings.server.host,
             port=settings.server.port, campaigns=[c.slug for c in settings.campaigns],
             worker=gateway.dispatcher.worker_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dispatcher = asyncio.create_task(gateway.dispatcher.run())
    retention: asyncio.Task[None] | None = None
    if with_web:
        gateway.telegram.start_polling()  # campaigns with [campaigns.telegram] polling = true
        from consentgate.bot.privacy import Privacy, run_daily_retention  # at start-up, then daily

        retention = asyncio.create_task(run_daily_retention(
            Privacy(gateway.db, gateway.ledger, settings), stop))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({dispatcher, stopped}, return_when=asyncio.FIRST_COMPLETED)
    log.info("consentgate.stopping")
    # Stop taking work first, then let in-flight sends finish and release the rest, all in
    # one budget: the dispatcher drains while the listeners close (exit 0 within 10 s).
    deadline = loop.time() + 9.0
    gateway.dispatcher.stop()
    if retention is not None:
        retention.cancel()  # a run in progress rolls back; the next start runs it again
    if runner is not None:
        if gateway.mail_listeners is not None:
            await gateway.mail_listeners.stop()  # unanswered mail is retried by its sender
        await runner.cleanup()
    await gateway.telegram.stop_polling()
    try:
        await asyncio.wait_for(dispatcher, timeout=max(0.1, deadline - loop.time()))
    except TimeoutError:
        log.warning("consentgate.stop_timeout")
    await gateway.close()
    log.info("consentgate.stopped")
    return 0


async def _with_gateway(settings: Settings,
                        work: Callable[[Any], Awaitable[int]]) -> int:
    from consentgate.bot.gateway import Gateway

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
    from consentgate.bot.errors import GatewayError

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

    from consentgate.bot.errors import GatewayError
    from consentgate.bot.tags import segment_of

    campaign = _campaign(gw.settings, args.campaign)
    actor = _actor(campaign, args.as_, change=not args.dry_run)
    try:
        segment = segment_of(args.tag, args.every_tag, args.exclude_tag)
        result = await gw.broadcasts.create(campaign.slug, gw.rules[campaign.slug]
                                            .channels_enabled, actor, args.channel,
                                            args.text, args.subject, args.dry_run,
                                            segment=segment, send_at=args.at)
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    _print_json(result)
    if (args.dry_run or not args.wait or result["status"] == "scheduled"
            or not result["audience"]["eligible"]):
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
            if view["status"] in ("done", "cancelled", "paused"):
                break
            await asyncio.sleep(0.5)
    if view["status"] == "paused":
        # Held for a person to look at: waiting on would never end.
        return _fail(f"broadcast {result['id']} paused: {view['paused']['detail']}; resume "
                     f"it with POST /api/v1/broadcasts/{result['id']}/resume or cancel it")
    return 0


async def _import(gw: Any, args: argparse.Namespace) -> int:
    from consentgate.bot.errors import GatewayError
    from consentgate.bot.imports import import_consents

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

    from consentgate.bot.addresses import normalise_address
    from consentgate.bot.errors import GatewayError
    from consentgate.bot.messages import iso

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


async def _telegram(gw: Any, args: argparse.Namespace) -> int:
    from consentgate.adapters.base import SendError
    from consentgate.bot.errors import GatewayError

    campaign = _campaign(gw.settings, args.campaign)
    try:
        if args.action == "set-webhook":
            url = await gw.telegram.set_webhook(campaign.slug, args.url)
            print(f"Telegram now sends {campaign.slug}'s updates to {url}")
        else:
            await gw.telegram.delete_webhook(campaign.slug)
            print(f"webhook of {campaign.slug} removed (pending updates are kept)")
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except SendError as exc:
        return _fail(f"Telegram refused: {exc}")
    return 0


async def _links(gw: Any, args: argparse.Namespace) -> int:
    from consentgate.bot.errors import GatewayError
    from consentgate.bot.links import qr_png, qr_svg
    from consentgate.bot.web.links_api import link_view

    campaign = _campaign(gw.settings, args.campaign)
    try:
        if args.action == "list":
            _print_json([link_view(gw.links, link) for link in await gw.links.list(campaign.slug)])
            return 0
        actor = _actor(campaign, args.as_)
        if args.action == "revoke":
            link = await gw.links.revoke(campaign.slug, actor, args.id)
        else:
            link = await gw.links.create(
                campaign.slug, actor, channel=args.channel, name=args.name,
                telegram_chat_id=args.telegram_chat_id, expires_at=args.expires_at,
                member_limit=args.member_limit)
            if args.qr and args.qr.lower().endswith(".png"):
                await asyncio.to_thread(Path(args.qr).write_bytes, qr_png(link.url))
            elif args.qr:
                await asyncio.to_thread(Path(args.qr).write_text, qr_svg(link.url, scale=10))
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except OSError as exc:
        return _fail(f"cannot write {args.qr}: {exc.strerror}")
    _print_json(link_view(gw.links, link))
    return 0


async def _subject(gw: Any, args: argparse.Namespace) -> int:
    from consentgate.bot.errors import GatewayError
    from consentgate.bot.privacy import Privacy

    campaign = _campaign(gw.settings, args.campaign)
    privacy = Privacy(gw.db, gw.ledger, gw.settings)
    try:
        address = privacy.address(campaign, args.channel, args.address)
        if args.action == "export":
            data = await privacy.export(campaign, args.channel, address,
                                        _actor(campaign, args.as_, change=False))
            if args.output:
                text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
                await asyncio.to_thread(Path(args.output).write_text, text, "utf-8")
                print(f"wrote everything held about this address to {args.output}")
                return 0
            _print_json(data)
            return 0
        actor = _actor(campaign, args.as_)
        if args.action == "erase":
            if not args.yes:
                return _fail("erasure cannot be undone: add --yes to erase "
                             f"{args.channel} {address} from {campaign.slug}", 2)
            result = await privacy.erase(campaign, args.channel, address, actor)
        elif args.action == "rectify":
            corrected = privacy.address(campaign, args.channel, args.corrected)
            result = await privacy.rectify(campaign, args.channel, address, corrected, actor)
        else:
            result = await privacy.restrict(campaign, args.channel, address, not args.lift,
                                            actor)
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc.strerror}")
    _print_json(result)
    return 0


async def _suppressions(gw: Any, args: argparse.Namespace) -> int:
    from consentgate.bot.errors import GatewayError
    from consentgate.bot.imports import import_opt_outs
    from consentgate.bot.privacy import Privacy

    campaign = _campaign(gw.settings, args.campaign)
    try:
        if args.action == "export":
            text = await Privacy(gw.db, gw.ledger, gw.settings).suppressions_csv(campaign.slug)
            if args.output:
                await asyncio.to_thread(Path(args.output).write_text, text, "utf-8")
            else:
                sys.stdout.write(text)
            return 0
        data = await asyncio.to_thread(Path(args.file).read_bytes)
        report = await import_opt_outs(gw.db, gw.ledger, campaign,
                                       _actor(campaign, args.as_), data)
    except OSError as exc:
        return _fail(f"cannot use {exc.filename}: {exc.strerror}")
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    _print_json(report.as_dict())
    return 0


async def _retention(gw: Any, args: argparse.Namespace) -> int:
    from consentgate.bot.privacy import Privacy

    results = await Privacy(gw.db, gw.ledger, gw.settings).run_retention()
    _print_json({"retention_days": gw.settings.policy.retention_days,
                 "pseudonymised": {r.campaign: r.as_dict() for r in results}})
    return 0


async def _audit(gw: Any, args: argparse.Namespace) -> int:
    from consentgate.bot import audit

    slugs = ([_campaign(gw.settings, args.campaign).slug] if args.campaign
             else [c.slug for c in gw.settings.campaigns])
    broken = 0
    async with gw.db.read() as conn:
        for slug in slugs:
            v = await audit.verify(conn, slug)
            if v.ok:
                print(f"{slug}: {v.records} records, chain intact, head matches")
            else:
                broken += 1
                print(f"{slug}: BROKEN at record {v.first_broken}: {v.problem} "
                      f"({v.records} records verified before it)")
    return 1 if broken else 0


async def _report(gw: Any, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from consentgate.bot.report import compliance_report

    campaign = _campaign(gw.settings, args.slug or args.campaign)
    data = await compliance_report(gw.db, campaign.slug)
    if args.json:
        _print_json(data)
        return 0
    console = Console()
    console.print(f"[bold]{campaign.name}[/bold] ({campaign.slug}), {data['generated_at']}")
    sent = Table("channel", "sent", "traced to consent", "untraced", "evidence removed",
                 "own-chat posts", "replies", "blocked", title="Messages")
    for channel, c in data["messages"].items():
        sent.add_row(channel, str(c["sent"]), str(c["traced_to_consent"]),
                     ("[red]" if c["untraced"] else "[green]") + str(c["untraced"]),
                     str(c["evidence_removed"]), str(c["posts_to_own_chats"]),
                     str(c["replies_and_confirmations"]), str(c["blocked_at_dispatch"]))
    console.print(sent)
    outs = Table("method", "opt-outs", title="Opt-outs")
    for method, n in data["opt_outs"]["by_method"].items():
        outs.add_row(method, str(n))
    console.print(outs)
    median = data["opt_outs"]["median_seconds_stop_to_opt_out"]
    console.print("median time from STOP to opt-out: "
                  + ("no STOP replies yet" if median is None else f"{median} s"))
    rights = Table("request", "served", title="Data-rights requests")
    for name, n in data["rights_requests"].items():
        rights.add_row(name, str(n))
    console.print(rights)
    a = data["audit"]
    console.print(f"audit log: {a['records']} records, " + (
        "[green]chain intact[/green]" if a["intact"]
        else f"[red]broken at record {a['first_broken']}: {a['problem']}[/red]"))
    return 1 if data["untraced_total"] or not a["intact"] else 0


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
    b.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="only subscribers with this tag; repeated: with any of them")
    b.add_argument("--every-tag", action="append", default=[], metavar="TAG",
                   help="only subscribers with this tag; repeated: with all of them")
    b.add_argument("--exclude-tag", action="append", default=[], metavar="TAG",
                   help="leave out subscribers with this tag (repeatable)")
    b.add_argument("--at", metavar="WHEN",
                   help="schedule for this ISO 8601 time with offset, e.g. "
                        "2026-05-07T07:00:00+01:00 (a running serve or worker sends it)")

    i = cmd("import", "import consents from CSV (channel,address,method,source,evidence)")
    campaign_args(i)
    i.add_argument("file")

    e = cmd("explain", "why we can or cannot message this address, with its history")
    e.add_argument("--campaign", help="campaign slug (default: the only one)")
    e.add_argument("channel", choices=["sms", "email", "telegram"])
    e.add_argument("address")

    def action(parent: argparse.ArgumentParser, dest: str) -> Callable[..., Any]:
        actions = parent.add_subparsers(dest=dest, required=True)

        def add(name: str, help_: str) -> argparse.ArgumentParser:
            a = actions.add_parser(name, help=help_)
            # Also accepted after the action; SUPPRESS keeps the parent's value otherwise.
            a.add_argument("--config", "-c", default=argparse.SUPPRESS,
                           help="TOML configuration file")
            return a
        return add

    tg = action(cmd("telegram", "the campaign's Telegram bot"), "action")
    w = tg("set-webhook", "have Telegram send updates to {public_url}/webhooks/telegram/"
                          "{campaign}, with the secret token")
    w.add_argument("--campaign", help="campaign slug (default: the only one)")
    w.add_argument("--url", help="another webhook URL (default: built on public_url)")
    w = tg("delete-webhook", "stop webhook delivery (polling mode does this itself)")
    w.add_argument("--campaign", help="campaign slug (default: the only one)")

    lk = action(cmd("links", "join links and Telegram invite links"), "action")
    c = lk("create", "create a link; with --telegram-chat-id a Telegram invite link that "
                     "asks to join")
    campaign_args(c)
    c.add_argument("channel", choices=["sms", "email", "telegram"])
    c.add_argument("name", help="what the link is for, e.g. 'Leeds hustings poster'")
    c.add_argument("--telegram-chat-id", type=int,
                   help="one of the campaign's own_chats (a negative id)")
    c.add_argument("--expires-at", help="ISO 8601 date-time, e.g. 2026-05-07T22:00:00+01:00")
    c.add_argument("--member-limit", type=int,
                   help="join page links only (Telegram refuses it on join-request links)")
    c.add_argument("--qr", metavar="FILE",
                   help="also write the link's QR code (PNG if FILE ends .png, else SVG)")
    c = lk("list", "the campaign's links and how many joined through each")
    c.add_argument("--campaign", help="campaign slug (default: the only one)")
    c = lk("revoke", "stop a link: nobody joins through it any more")
    campaign_args(c)
    c.add_argument("id")
    sj = action(cmd("subject", "one person's data in a campaign: their rights"), "action")
    for name, help_ in (("export", "everything held about an address, as JSON (access)"),
                        ("erase", "erase an address: only its keyed hash stays, suppressed"),
                        ("rectify", "move an address's records to the corrected address"),
                        ("restrict", "keep the data but send nothing (--lift to undo)")):
        c = sj(name, help_)
        campaign_args(c)
        c.add_argument("channel", choices=["sms", "email", "telegram"])
        c.add_argument("address")
        if name == "export":
            c.add_argument("--output", "-o", metavar="FILE", help="write the JSON to FILE")
        elif name == "erase":
            c.add_argument("--yes", action="store_true", help="yes, erase (cannot be undone)")
        elif name == "rectify":
            c.add_argument("corrected", help="the correct address")
        else:
            c.add_argument("--lift", action="store_true", help="lift the restriction")

    sp = action(cmd("suppressions", "the campaign's opt-out and suppression list"), "action")
    c = sp("import", "opt-outs from another platform (CSV: channel,address,reason)")
    campaign_args(c)
    c.add_argument("file")
    c = sp("export", "this campaign's opt-outs and suppressions as CSV")
    c.add_argument("--campaign", help="campaign slug (default: the only one)")
    c.add_argument("--output", "-o", metavar="FILE", help="write to FILE, not stdout")

    rt = action(cmd("retention", "pseudonymise people out of contact for retention_days"),
                "action")
    rt("run", "run it now (serve also runs it daily)")

    au = action(cmd("audit", "the hash-chained audit log"), "action")
    c = au("verify", "recompute every campaign's chain; exit 1 naming the first broken record")
    c.add_argument("--campaign", help="only this campaign")

    r = cmd("report", "compliance report: consent behind every message, opt-outs, rights")
    r.add_argument("slug", nargs="?", metavar="CAMPAIGN", help="campaign slug")
    r.add_argument("--campaign", help=argparse.SUPPRESS)
    r.add_argument("--json", action="store_true", help="the report as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"consentgate: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from consentgate.bot.logs import configure_logging

    configure_logging()
    handlers: dict[str, Callable[[Any, argparse.Namespace], Awaitable[int]]] = {
        "send": _send, "broadcast": _broadcast, "import": _import, "explain": _explain,
        "telegram": _telegram, "links": _links,
        "subject": _subject, "suppressions": _suppressions, "retention": _retention,
        "audit": _audit, "report": _report,
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
