"""The ``consentgate`` command: run the gateway, and the everyday tasks of a campaign team.

``serve`` and ``worker`` run the service. The other commands work on the same database
directly (a running ``serve`` picks up what they queue), and every change they make is
written to the audit log under the operator named with ``--as``.

Each command is declared once, where its handler is: its name, help, arguments and the
function that runs it (:func:`command`). The options several commands share (``--config``,
``--campaign``, ``--as``) are declared once below, and :func:`main` turns every refusal into
one line on standard error and the exit status the README documents: 1 for a refusal of the
gateway (a ``code: detail`` line, as the API would answer), 2 for a bad configuration or a
bad use of the command, 141 when standard output was closed early (``| head``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from consentgate.adapters.base import CHANNELS
from consentgate.bot.config import (
    CampaignSettings,
    ConfigError,
    ServerSettings,
    Settings,
    load_config,
)
from consentgate.bot.errors import GatewayError

if TYPE_CHECKING:
    from consentgate.bot.gateway import Gateway

__all__ = ["EXIT_CONFIG", "EXIT_STDOUT_CLOSED", "NOTHING_DISPATCHING", "main"]

EXIT_CONFIG = 2
#: Standard output was closed before we were done (``consentgate import x.csv | head``): the
#: status a shell reports for a command ended by SIGPIPE (128 + 13), as ``yes | head`` does.
EXIT_STDOUT_CLOSED = 141
#: Said once on standard error when a waiting ``broadcast`` sees no process sending it.
NOTHING_DISPATCHING = "nothing is dispatching: is `consentgate serve` or `worker` running?"
#: How long a waiting ``broadcast`` sees no progress before it looks for a dispatcher.
STALL_SECONDS = 5.0

T = TypeVar("T")
GatewayHandler = Callable[["Gateway", argparse.Namespace], Awaitable[int]]


class Refusal(Exception):
    """A use of the command we refuse: one line on standard error, exit ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _fail(message: str, status: int = 1) -> int:
    print(f"consentgate: {message}", file=sys.stderr)
    return status


# -- declaring commands ---------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argparse argument, declared once and added to every command that takes it."""

    flags: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    def but(self, **options: Any) -> Arg:
        """The same argument with some options changed (e.g. its help)."""
        return Arg(self.flags, {**self.options, **options})

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.options)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


CONFIG = arg("--config", "-c", default="config.example.toml",
             help="TOML configuration file (default: %(default)s)")
#: ``--config`` also accepted after an action; SUPPRESS keeps the command's value otherwise.
CONFIG_AFTER_ACTION = arg("--config", "-c", default=argparse.SUPPRESS,
                          help="TOML configuration file")
CAMPAIGN = arg("--campaign", help="campaign slug (default: the only one)")
AS = arg("--as", dest="as_", metavar="NAME", help="the operator this change is attributed to")
CHANNEL = arg("channel", choices=list(CHANNELS))


@dataclass(frozen=True)
class Command:
    """A command (``send``) or a command's action (``links create``), with what runs it."""

    name: str
    help: str
    arguments: tuple[Arg, ...]
    run: Callable[[argparse.Namespace], int]
    needs_config: bool = True


#: Every command, in the order ``--help`` lists them.
COMMANDS: list[Command] = []
#: The commands that have actions (``links create``, ``links list``, ...), with their help.
GROUPS = {
    "telegram": "the campaign's Telegram bot",
    "links": "join links and Telegram invite links",
    "subject": "one person's data in a campaign: their rights",
    "suppressions": "the campaign's opt-out and suppression list",
    "retention": "pseudonymise people out of contact for retention_days",
    "audit": "the hash-chained audit log",
}


def command(name: str, help_: str,
            *arguments: Arg) -> Callable[[GatewayHandler], GatewayHandler]:
    """Declare a command that works on the database: the handler gets a migrated
    :class:`Gateway` (closed again afterwards) and the parsed arguments."""
    def register(handler: GatewayHandler) -> GatewayHandler:
        def run(args: argparse.Namespace) -> int:
            settings = _settings(args)
            return asyncio.run(_with_gateway(settings, lambda gw: handler(gw, args)))
        COMMANDS.append(Command(name, help_, arguments, run))
        return handler
    return register


def _settings(args: argparse.Namespace) -> Settings:
    from consentgate.bot.logs import configure_logging

    settings = load_config(args.config)
    configure_logging()
    return settings


async def _with_gateway(settings: Settings,
                        work: Callable[[Gateway], Awaitable[int]]) -> int:
    from consentgate.bot.gateway import Gateway

    gateway = Gateway(settings)
    await gateway.db.migrate()
    await gateway.sync_campaigns()
    try:
        return await work(gateway)
    finally:
        await gateway.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="consentgate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    actions: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for c in COMMANDS:
        group, _, action = c.name.partition(" ")
        if action:
            if group not in actions:
                parent = sub.add_parser(group, help=GROUPS[group])
                CONFIG.add_to(parent)
                actions[group] = parent.add_subparsers(dest="action", required=True)
            parser = actions[group].add_parser(action, help=c.help)
            CONFIG_AFTER_ACTION.add_to(parser)
        else:
            parser = sub.add_parser(group, help=c.help)
            if c.needs_config:
                CONFIG.add_to(parser)
        for a in c.arguments:
            a.add_to(parser)
        parser.set_defaults(run=c.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as a traceback
        return status
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EXIT_CONFIG)
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except Refusal as exc:
        return _fail(exc.message, exc.status)
    except BrokenPipeError:
        # The reader went away (| head): say nothing, as any Unix tool. Python flushes
        # stdout again at exit, so point it at /dev/null first (Python's docs on SIGPIPE).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED


# -- helpers of the commands ----------------------------------------------------------------


def _campaign(settings: Settings, slug: str | None) -> CampaignSettings:
    if slug is None:
        if len(settings.campaigns) != 1:
            raise Refusal("several campaigns are configured: name one with --campaign", 2)
        return settings.campaigns[0]
    found = settings.campaign(slug)
    if found is None:
        raise Refusal(f"no campaign {slug!r} in the configuration", 2)
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
        raise Refusal("name the operator making this change with --as NAME", 2)
    for o in campaign.operators:
        if o.name == name:
            if change and o.role == "auditor":
                raise Refusal(f"{name} is an auditor and may not change anything", 2)
            return f"{o.name} (cli)"
    raise Refusal(f"{name!r} is not an operator of {campaign.slug}", 2)


async def _on_file(verb: str, path: str, work: Callable[[Path], T]) -> T:
    """A file operation off the event loop; an OSError is one line naming the file."""
    try:
        return await asyncio.to_thread(work, Path(path))
    except OSError as exc:
        raise Refusal(f"cannot {verb} {path}: {exc.strerror}") from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- the commands, in the order --help lists them --------------------------------------------


_SAYS_STOP = re.compile(r"\bSTOP\b", re.IGNORECASE)


def public_url_problem(server: ServerSettings) -> str | None:
    """Why ``public_url`` leads nowhere, when it names this machine (a loopback host) but not
    the port the server listens on, or HTTPS that the server does not speak; else None.
    Every join link, QR code, confirmation and unsubscribe link is built on it."""
    parts = urlsplit(server.public_url)
    host = (parts.hostname or "").lower()
    if host not in ("localhost", "::1") and not host.startswith("127."):
        return None  # another host: a proxy or a tunnel in front, which we cannot check
    if parts.scheme == "https":
        return (f"public_url {server.public_url} is HTTPS on this machine, but the server "
                f"speaks plain HTTP on port {server.port}: links and QR codes would lead "
                "nowhere")
    port = parts.port or 80
    if port != server.port:
        return (f"public_url {server.public_url} points at port {port} on this machine, but "
                f"the server listens on port {server.port}: links and QR codes would lead "
                "nowhere (set server.public_url to match)")
    return None


def consent_text_problems(settings: Settings) -> list[str]:
    """Email consent texts that speak of replying STOP (often the campaign's text, used for
    email when the email channel has none of its own): email readers unsubscribe."""
    found = []
    for index, c in enumerate(settings.campaigns):
        if c.email is not None and _SAYS_STOP.search(c.consent_text_for("email")):
            found.append(f"campaigns[{index}]: the consent text shown for email speaks of "
                         "replying STOP; set [campaigns.email] consent_text to words that "
                         "speak of unsubscribing")
    return found


async def _serve(settings: Settings, with_web: bool) -> int:
    import structlog
    from aiohttp import web

    from consentgate.bot.gateway import Gateway
    from consentgate.bot.runtime import tune_garbage_collector, tune_thread_switching
    from consentgate.bot.web.app import create_app
    from consentgate.storage.db import DatabaseBusy

    log = structlog.get_logger("consentgate")
    dispatching = settings.dispatch.in_serve or not with_web
    if not dispatching and settings.storage.url.startswith("sqlite"):
        return _fail("[dispatch] in_serve = false needs PostgreSQL: on SQLite `serve` is the "
                     "only process, so nothing else would send", 2)
    # A ConfigError here is a conflict only the whole file shows.
    gateway = Gateway(settings, dispatch_thread=(
        with_web and dispatching and settings.dispatch.own_thread))
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
    if gateway.dispatch_thread:
        tune_thread_switching()
    log.info("consentgate.started", web=with_web, host=settings.server.host,
             port=settings.server.port, campaigns=[c.slug for c in settings.campaigns],
             worker=gateway.dispatcher.worker_id if dispatching else None,
             dispatch_thread=gateway.dispatch_thread)
    problem = public_url_problem(settings.server) if with_web else None
    if problem is not None:
        log.warning("consentgate.public_url_unreachable", detail=problem)
    for text_problem in consent_text_problems(settings):
        log.warning("consentgate.email_consent_text", detail=text_problem)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dispatch_runner = gateway.dispatching()
    dispatcher = asyncio.create_task(
        dispatch_runner.run() if dispatching else stop.wait(), name="dispatch")
    retention: asyncio.Task[None] | None = None
    if with_web:
        gateway.telegram.start_polling()  # campaigns with [campaigns.telegram] polling = true
        from consentgate.bot.privacy import run_daily_retention  # at start-up, then daily

        retention = asyncio.create_task(run_daily_retention(gateway.privacy, stop))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({dispatcher, stopped}, return_when=asyncio.FIRST_COMPLETED)
    log.info("consentgate.stopping")
    # Stop taking work first, then let in-flight sends finish and release the rest, all in
    # one budget: the dispatcher drains while the listeners close (exit 0 within 10 s).
    deadline = loop.time() + 9.0
    dispatch_runner.stop()
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


def _process(with_web: bool) -> Callable[[argparse.Namespace], int]:
    return lambda args: asyncio.run(_serve(_settings(args), with_web))


COMMANDS.append(Command("serve", "run the HTTP server and the dispatcher", (), _process(True)))
COMMANDS.append(Command("worker", "run only the dispatcher (scale-out on PostgreSQL)", (),
                        _process(False)))


@command("migrate", "create or upgrade the database schema, then exit")
async def _migrate(gw: Gateway, args: argparse.Namespace) -> int:
    return 0  # opening the gateway migrated it


@command("send", "queue one message (the gate decides again at dispatch)",
         CAMPAIGN, AS, CHANNEL, arg("to"), arg("text"), arg("--subject"),
         arg("--key", help="Idempotency-Key: the same key never sends twice"))
async def _send(gw: Gateway, args: argparse.Namespace) -> int:
    campaign = _campaign(gw.settings, args.campaign)
    answer = await gw.messages.send(campaign, _actor(campaign, args.as_), args.channel,
                                    args.to, args.text, args.subject, args.key)
    _print_json(answer.body)
    return 0 if answer.status == 202 else 1


@command("broadcast", "message every subscribed address of the campaign on a channel",
         CAMPAIGN, AS, CHANNEL, arg("text"), arg("--subject"),
         arg("--dry-run", action="store_true", help="count the audience, queue nothing"),
         arg("--no-wait", dest="wait", action="store_false",
             help="queue and return without the progress bar"),
         arg("--tag", action="append", default=[], metavar="TAG",
             help="only subscribers with this tag; repeated: with any of them"),
         arg("--every-tag", action="append", default=[], metavar="TAG",
             help="only subscribers with this tag; repeated: with all of them"),
         arg("--exclude-tag", action="append", default=[], metavar="TAG",
             help="leave out subscribers with this tag (repeatable)"),
         arg("--at", metavar="WHEN",
             help="schedule for this ISO 8601 time with offset, e.g. "
                  "2026-05-07T07:00:00+01:00 (a running serve or worker sends it)"),
         arg("--hint-after", type=float, default=STALL_SECONDS, metavar="SECONDS",
             help="while waiting, say so if nothing has moved for this long and no "
                  f"process is sending (default {STALL_SECONDS:g})"))
async def _broadcast(gw: Gateway, args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from consentgate.bot.outbox import MessageStatus
    from consentgate.bot.tags import segment_of

    campaign = _campaign(gw.settings, args.campaign)
    actor = _actor(campaign, args.as_, change=not args.dry_run)
    segment = segment_of(args.tag, args.every_tag, args.exclude_tag)
    result = await gw.broadcasts.create(campaign.slug, gw.rules[campaign.slug]
                                        .channels_enabled, actor, args.channel,
                                        args.text, args.subject, args.dry_run,
                                        segment=segment, send_at=args.at)
    _print_json(result)
    if (args.dry_run or not args.wait or result["status"] == "scheduled"
            or not result["audience"]["eligible"]):
        return 0
    total = result["audience"]["eligible"]
    seen: dict[str, int] = {}
    still_since = time.monotonic()
    hinted = False
    with Progress(TextColumn("[bold]broadcast {task.fields[id]}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[detail]}")) as bar:
        task = bar.add_task("send", total=total, id=result["id"], detail="")
        while True:
            view = await gw.broadcasts.view(campaign.slug, result["id"])
            c = view["counts"]
            done = total - c[MessageStatus.QUEUED] - c[MessageStatus.SENDING]
            bar.update(task, completed=done, detail=" ".join(
                f"{k}={v}" for k, v in c.items() if v))
            if view["status"] in ("done", "cancelled", "paused"):
                break
            if c != seen:
                seen, still_since = c, time.monotonic()
            elif not hinted and time.monotonic() - still_since >= args.hint_after:
                # No progress for a while: say so if no process is there to send it (the
                # wait goes on; a `serve` started now picks the broadcast up).
                hinted = await gw.broadcasts.nothing_dispatching(result["id"])
                if hinted:
                    print(f"consentgate: {NOTHING_DISPATCHING}", file=sys.stderr)
                still_since = time.monotonic()
            await asyncio.sleep(0.5)
    if view["status"] == "paused":
        # Held for a person to look at: waiting on would never end.
        raise Refusal(f"broadcast {result['id']} paused: {view['paused']['detail']}; resume "
                      f"it with POST /api/v1/broadcasts/{result['id']}/resume or cancel it")
    return 0


async def _import(gw: Gateway, args: argparse.Namespace) -> int:
    """``import`` (consents) and ``suppressions import`` (opt-outs): a CSV file in, the
    import's report (taken and refused rows) out."""
    from consentgate.bot.imports import import_consents, import_opt_outs

    consents = args.command == "import"
    campaign = _campaign(gw.settings, args.campaign)
    data = await _on_file("read" if consents else "use", args.file, Path.read_bytes)
    report = await (import_consents if consents else import_opt_outs)(
        gw.db, gw.ledger, campaign, _actor(campaign, args.as_), data)
    _print_json(report.as_dict())
    return 0


command("import", "import consents from CSV (channel,address,method,source,evidence)",
        CAMPAIGN, AS, arg("file"))(_import)


@command("explain", "why we can or cannot message this address, with its history",
         CAMPAIGN, CHANNEL, arg("address"))
async def _explain(gw: Gateway, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from consentgate.bot.addresses import normalise_address
    from consentgate.bot.messages import iso

    campaign = _campaign(gw.settings, args.campaign)
    address = normalise_address(args.channel, args.address, campaign.default_region)
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


async def _telegram(gw: Gateway, args: argparse.Namespace) -> int:
    from consentgate.adapters.base import SendError

    campaign = _campaign(gw.settings, args.campaign)
    try:
        if args.action == "set-webhook":
            url = await gw.telegram.set_webhook(campaign.slug, args.url)
            print(f"Telegram now sends {campaign.slug}'s updates to {url}")
        else:
            await gw.telegram.delete_webhook(campaign.slug)
            print(f"webhook of {campaign.slug} removed (pending updates are kept)")
    except SendError as exc:
        raise Refusal(f"Telegram refused: {exc}") from None
    return 0


command("telegram set-webhook",
        "have Telegram send updates to {public_url}/webhooks/telegram/{campaign}, with the "
        "secret token",
        CAMPAIGN, arg("--url", help="another webhook URL (default: built on public_url)"),
        )(_telegram)
command("telegram delete-webhook", "stop webhook delivery (polling mode does this itself)",
        CAMPAIGN)(_telegram)


@command("links create",
         "create a link; with --telegram-chat-id a Telegram invite link that asks to join",
         CAMPAIGN, AS, CHANNEL,
         arg("name", help="what the link is for, e.g. 'Leeds hustings poster'"),
         arg("--telegram-chat-id", type=int,
             help="one of the campaign's own_chats (a negative id)"),
         arg("--expires-at", help="ISO 8601 date-time, e.g. 2026-05-07T22:00:00+01:00"),
         arg("--member-limit", type=int,
             help="join page links only (Telegram refuses it on join-request links)"),
         arg("--qr", metavar="FILE",
             help="also write the link's QR code (PNG if FILE ends .png, else SVG)"))
async def _links_create(gw: Gateway, args: argparse.Namespace) -> int:
    from consentgate.bot.links import link_view, qr_png, qr_svg

    campaign = _campaign(gw.settings, args.campaign)
    link = await gw.links.create(
        campaign.slug, _actor(campaign, args.as_), channel=args.channel, name=args.name,
        telegram_chat_id=args.telegram_chat_id, expires_at=args.expires_at,
        member_limit=args.member_limit)
    url = link.url
    if args.qr and args.qr.lower().endswith(".png"):
        await _on_file("write", args.qr, lambda p: p.write_bytes(qr_png(url)))
    elif args.qr:
        await _on_file("write", args.qr, lambda p: p.write_text(qr_svg(url, scale=10)))
    _print_json(link_view(gw.links, link))
    return 0


@command("links list", "the campaign's links and how many joined through each", CAMPAIGN)
async def _links_list(gw: Gateway, args: argparse.Namespace) -> int:
    from consentgate.bot.links import link_view

    campaign = _campaign(gw.settings, args.campaign)
    _print_json([link_view(gw.links, link) for link in await gw.links.list(campaign.slug)])
    return 0


@command("links revoke", "stop a link: nobody joins through it any more",
         CAMPAIGN, AS, arg("id"))
async def _links_revoke(gw: Gateway, args: argparse.Namespace) -> int:
    from consentgate.bot.links import link_view

    campaign = _campaign(gw.settings, args.campaign)
    link = await gw.links.revoke(campaign.slug, _actor(campaign, args.as_), args.id)
    _print_json(link_view(gw.links, link))
    return 0


async def _subject(gw: Gateway, args: argparse.Namespace) -> int:
    campaign = _campaign(gw.settings, args.campaign)
    privacy = gw.privacy
    address = privacy.address(campaign, args.channel, args.address)
    if args.action == "export":
        data = await privacy.export(campaign, args.channel, address,
                                    _actor(campaign, args.as_, change=False))
        if args.output:
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            await _on_file("write", args.output, lambda p: p.write_text(text, "utf-8"))
            print(f"wrote everything held about this address to {args.output}")
            return 0
        _print_json(data)
        return 0
    actor = _actor(campaign, args.as_)
    if args.action == "erase":
        if not args.yes:
            raise Refusal("erasure cannot be undone: add --yes to erase "
                          f"{args.channel} {address} from {campaign.slug}", 2)
        result = await privacy.erase(campaign, args.channel, address, actor)
    elif args.action == "rectify":
        corrected = privacy.address(campaign, args.channel, args.corrected)
        result = await privacy.rectify(campaign, args.channel, address, corrected, actor)
    else:
        result = await privacy.restrict(campaign, args.channel, address, not args.lift, actor)
    _print_json(result)
    return 0


_PERSON = (CAMPAIGN, AS, CHANNEL, arg("address"))
command("subject export", "everything held about an address, as JSON (access)", *_PERSON,
        arg("--output", "-o", metavar="FILE", help="write the JSON to FILE"))(_subject)
command("subject erase", "erase an address: only its keyed hash stays, suppressed", *_PERSON,
        arg("--yes", action="store_true", help="yes, erase (cannot be undone)"))(_subject)
command("subject rectify", "move an address's records to the corrected address", *_PERSON,
        arg("corrected", help="the correct address"))(_subject)
command("subject restrict", "keep the data but send nothing (--lift to undo)", *_PERSON,
        arg("--lift", action="store_true", help="lift the restriction"))(_subject)


command("suppressions import", "opt-outs from another platform (CSV: channel,address,reason)",
        CAMPAIGN, AS, arg("file"))(_import)


@command("suppressions export", "this campaign's opt-outs and suppressions as CSV",
         CAMPAIGN, arg("--output", "-o", metavar="FILE", help="write to FILE, not stdout"))
async def _suppressions_export(gw: Gateway, args: argparse.Namespace) -> int:
    campaign = _campaign(gw.settings, args.campaign)
    text = await gw.privacy.suppressions_csv(campaign.slug)
    if args.output:
        await _on_file("use", args.output, lambda p: p.write_text(text, "utf-8"))
    else:
        sys.stdout.write(text)
    return 0


@command("retention run", "run it now (serve also runs it daily)")
async def _retention(gw: Gateway, args: argparse.Namespace) -> int:
    results = await gw.privacy.run_retention()
    _print_json({"retention_days": gw.settings.policy.retention_days,
                 "pseudonymised": {r.campaign: r.as_dict() for r in results}})
    return 0


@command("audit verify",
         "recompute every campaign's chain; exit 1 naming the first broken record",
         CAMPAIGN.but(help="only this campaign"))
async def _audit(gw: Gateway, args: argparse.Namespace) -> int:
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


@command("report", "compliance report: consent behind every message, opt-outs, rights",
         arg("slug", nargs="?", metavar="CAMPAIGN", help="campaign slug"),
         CAMPAIGN.but(help=argparse.SUPPRESS),
         arg("--json", action="store_true", help="the report as JSON"))
async def _report(gw: Gateway, args: argparse.Namespace) -> int:
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


def _hash_password(args: argparse.Namespace) -> int:
    """Read a password from standard input (without echo at a terminal) and print its
    argon2id hash, for an operator's ``password_hash`` in the configuration."""
    import getpass

    from argon2 import PasswordHasher

    try:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                raise Refusal("the two passwords differ; nothing printed", 2)
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    except EOFError:
        password = ""
    if not password:
        raise Refusal("no password on standard input", 2)
    print(PasswordHasher().hash(password))
    return 0


COMMANDS.append(Command(
    "hash-password", "print an argon2id hash of a password read from standard input, for "
    "an operator's password_hash (needs no configuration)", (), _hash_password,
    needs_config=False))


def _classify(args: argparse.Namespace) -> int:
    """How a reply would be read: its intent and the rule that fired."""
    from consentgate.bot.keywords import classify

    reading = classify(" ".join(args.text))
    if args.json:
        _print_json({"intent": reading.intent.value, "keyword": reading.keyword,
                     "argument": reading.argument, "rule": reading.rule})
    else:
        print(f"intent: {reading.intent.value}")
        print(f"rule:   {reading.rule}")
        if reading.keyword:
            print(f"matched: {reading.keyword}")
    return 0


COMMANDS.append(Command(
    "classify", "how a reply would be read (intent and the rule that fired); needs no "
    "configuration",
    (arg("text", nargs="+", help="the reply's text"),
     arg("--json", action="store_true", help="the reading as JSON")),
    _classify, needs_config=False))


if __name__ == "__main__":
    raise SystemExit(main())
