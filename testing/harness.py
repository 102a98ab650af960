"""A whole gateway on loopback for tests and benchmarks: the real HTTP server on a real
port, the real dispatcher, a real SQLite file (or PostgreSQL), and the Twilio fake.

Webhooks are signed for ``PUBLIC_URL`` (as if behind a proxy) and sent to the local port,
which is exactly what the signature check must cope with in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from consentgate.bot.broadcasts import PAUSE_AFTER_ATTEMPTS
from consentgate.bot.config import Settings, parse_config
from consentgate.bot.gateway import Gateway
from consentgate.bot.web.app import create_app
from consentgate.testing.fakes.telegram_api import FakeTelegram
from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.fakes.twilio_webhooks import inbound_sms_form, post_signed
from consentgate.testing.waiting import eventually

PUBLIC_URL = "https://gateway.example.org"
SECRET = "test-secret-key-0123456789-abcdefghijkl"
JANE = "jane-2026"
BOB = "bob-2026"
JANE_TOKEN = "jane-organiser-token-0001"
JANE_AUDITOR = "jane-auditor-token-0002"
BOB_TOKEN = "bob-organiser-token-0003"
JANE_SID = "AC" + "1" * 32
BOB_SID = "AC" + "2" * 32
JANE_AUTH = "jane-twilio-auth-token"
BOB_AUTH = "bob-twilio-auth-token"
JANE_NUMBER = "+447400123456"
TELEGRAM_SECRET = "jane-telegram-webhook-secret_0123"
JANE_GROUP = -1001234567890
BOB_NUMBER = "+447400654321"


def config_text(db_url: str, twilio_url: str, *, port: int = 8080, rate: float = 200.0,
                secret: str = SECRET, pool_size: int | None = None, extra_policy: str = "",
                jane_extra: str = "", jane_email: str | None = 'provider = "log"',
                telegram_section: str = "", auditor: bool = True, bob: bool = True,
                dispatch: str = "") -> str:
    """The test campaigns' configuration file: Jane's campaign (SMS to the Twilio fake at
    ``twilio_url``; email as ``jane_email`` says, none if None; Telegram if given), and,
    with ``bob``, Bob's. One text for the in-process harness and for real processes."""
    operators = [f'{{ name = "Jane Doe", token = "{JANE_TOKEN}", role = "organiser" }}']
    if auditor:
        operators.append(
            f'{{ name = "Returning Officer", token = "{JANE_AUDITOR}", role = "auditor" }}')
    joined = ",\n  ".join(operators)
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{PUBLIC_URL}"

[storage]
url = "{db_url}"
{"" if pool_size is None else f"pool_size = {pool_size}"}

[security]
secret_key = "{secret}"

[policy]
denied_sources = ["union mailing list", "society group chat"]
{extra_policy}

[[campaigns]]
slug = "{JANE}"
name = "Jane Doe for President"
imprint = "Promoted by Jane Doe, 1 Example Road, London"
consent_text = "Yes, send me updates about Jane's campaign. Reply STOP at any time."
privacy_notice_url = "https://jane.example.org/privacy"
controller = "Jane Doe campaign, 1 Example Road, London, privacy@jane.example.org"
operators = [
  {joined},
]
{jane_extra}

[campaigns.sms]
provider = "twilio"
account_sid = "{JANE_SID}"
auth_token = "{JANE_AUTH}"
from_number = "{JANE_NUMBER}"
api_base_url = "{twilio_url}"
rate_per_second = {rate}
"""
    if jane_email is not None:
        text += f"""
[campaigns.email]
{jane_email}
"""
    text += telegram_section
    if bob:
        text += f"""
[[campaigns]]
slug = "{BOB}"
name = "Bob Roe for Treasurer"
imprint = "Promoted by Bob Roe, 2 Example Road, Leeds"
consent_text = "Yes, send me Bob's campaign news."
privacy_notice_url = "https://bob.example.org/privacy"
controller = "Bob Roe campaign, 2 Example Road, Leeds, data@bob.example.org"
operators = [ {{ name = "Bob Roe", token = "{BOB_TOKEN}", role = "organiser" }} ]

[campaigns.sms]
provider = "twilio"
account_sid = "{BOB_SID}"
auth_token = "{BOB_AUTH}"
from_number = "{BOB_NUMBER}"
api_base_url = "{twilio_url}"
rate_per_second = {rate}
"""
    return text + dispatch


def settings_for(db_url: str, twilio_url: str, *, rate: float = 200.0,
                 extra_policy: str = "", jane_extra: str = "",
                 telegram: FakeTelegram | None = None, telegram_extra: str = "",
                 jane_email: str = 'provider = "log"', extra_config: str = "") -> Settings:
    """``jane_email``: the body of Jane's ``[campaigns.email]`` (an SMTP sink, an inbound
    listener ...); the log provider unless told. ``extra_config``: TOML added at the end
    (a ``[dispatch]`` table, more campaigns)."""
    telegram_section = "" if telegram is None else f"""
[campaigns.telegram]
provider = "telegram"
bot_token = "{telegram.token}"
api_base_url = "{telegram.base_url}"
webhook_secret = "{TELEGRAM_SECRET}"
own_chats = [{JANE_GROUP}]
bot_username = "jane_campaign_bot"
{telegram_extra}
"""
    return parse_config(config_text(db_url, twilio_url, rate=rate, extra_policy=extra_policy,
                                    jane_extra=jane_extra, jane_email=jane_email,
                                    telegram_section=telegram_section, dispatch=extra_config),
                        environ={})


@dataclass
class Harness:
    gateway: Gateway
    url: str
    twilio: FakeTwilio
    session: aiohttp.ClientSession
    runs: list[asyncio.Task[None]] = field(default_factory=list)
    telegram: FakeTelegram | None = None
    #: the running web application (its services, e.g. the join page's limits)
    app: web.Application | None = None

    @property
    def db(self) -> Any:
        return self.gateway.db

    async def api(self, method: str, path: str, body: Any = None, *,
                  token: str | None = JANE_TOKEN, headers: dict[str, str] | None = None,
                  raw: bytes | str | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data: Any = raw
        if body is not None:
            data = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.url + path, data=data, headers=h) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def subscribe(self, address: str, channel: str = "sms", token: str = JANE_TOKEN,
                        source: str = "street stall") -> None:
        # On Telegram only the person's own /start counts (an operator may record it).
        method = "telegram_start" if channel == "telegram" else "paper_form"
        status, body = await self.api("POST", "/api/v1/consents", {
            "channel": channel, "address": address, "method": method,
            "source": source, "evidence": "signed form"}, token=token)
        assert status == 201, body

    async def import_consents(self, addresses: list[str], channel: str = "sms") -> None:
        """Record consent for every address with one CSV import (in that order); all of
        them must be taken."""
        rows = "".join(f"{channel},{a},paper_form,street stall,signed form {i}\n"
                       for i, a in enumerate(addresses))
        status, body = await self.api("POST", "/api/v1/consents/import",
                                      raw="channel,address,method,source,evidence\n" + rows,
                                      headers={"Content-Type": "text/csv"})
        assert status == 200 and body == {"imported": len(addresses), "rejected": []}, body

    async def send_and_wait(self, to: str, text: str, channel: str = "sms") -> int:
        """Queue one message through the API and wait until it is ``sent``; its id."""
        status, body = await self.api("POST", "/api/v1/messages",
                                      {"channel": channel, "to": to, "text": text})
        assert status == 202, body
        message_id = int(body["id"])

        async def sent() -> bool:
            _, view = await self.api("GET", f"/api/v1/messages/{message_id}")
            return bool(view["status"] == "sent")
        await eventually(sent, what=f"message {message_id} sent")
        return message_id

    async def sms_in(self, from_: str, body: str, *, campaign: str = JANE,
                     auth_token: str = JANE_AUTH, to: str = JANE_NUMBER,
                     sid: str | None = None, opt_out_type: str | None = None,
                     account_sid: str = JANE_SID) -> tuple[int, str]:
        form = inbound_sms_form(from_, to, body, sid, opt_out_type, account_sid=account_sid)
        path = f"/webhooks/twilio/{campaign}/sms"
        async with await post_signed(self.session, self.url + path, form, auth_token,
                                     signature_url=PUBLIC_URL + path) as r:
            return r.status, await r.text()


def smtp_section(port: int, from_address: str, *, rate: float | None = None,
                 max_connections: int | None = None, inbound_port: int | None = None,
                 inbound_domain: str = "reply.example.org") -> str:
    """A campaign's ``[campaigns.email]`` table (for ``running_gateway(jane_email=...)``):
    plain SMTP to a relay on loopback, optionally with an inbound listener."""
    section = f"""provider = "smtp"
host = "127.0.0.1"
port = {port}
starttls = false
from_address = "{from_address}"
"""
    if rate is not None:
        section += f"rate_per_second = {rate}\n"
    if max_connections is not None:
        section += f"max_connections = {max_connections}\n"
    if inbound_port is not None:
        section += f"""
[campaigns.email.inbound]
host = "127.0.0.1"
port = {inbound_port}
domain = "{inbound_domain}"
"""
    return section


@contextlib.asynccontextmanager
async def running_gateway(db_url: str, *, rate: float = 200.0, twilio_latency: float = 0.0,
                          dispatch: bool = True, telegram: FakeTelegram | None = None,
                          pause_after_attempts: int = PAUSE_AFTER_ATTEMPTS,
                          password_hashes: Mapping[str, str] | None = None,
                          dispatch_thread: bool = False,
                          **kwargs: Any) -> AsyncIterator[Harness]:
    """The whole gateway on loopback (see :class:`Harness`). ``password_hashes``: an
    argon2id ``password_hash`` per operator name, so those operators can sign in to the
    console. ``dispatch_thread``: the dispatcher on a loop of its own thread, as ``serve``
    runs it."""
    async with FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH,
                          credentials={BOB_SID: BOB_AUTH}) as twilio:
        twilio.latency = twilio_latency
        settings = settings_for(db_url, twilio.base_url, rate=rate, telegram=telegram,
                                **kwargs)
        if password_hashes:
            settings = settings.model_copy(update={"campaigns": tuple(
                c.model_copy(update={"operators": tuple(
                    op.model_copy(update={"password_hash": password_hashes.get(op.name)})
                    for op in c.operators)})
                for c in settings.campaigns)})
        gateway = Gateway(settings, lease_seconds=30.0,
                          pause_after_attempts=pause_after_attempts,
                          dispatch_thread=dispatch_thread)
        await gateway.start()
        if gateway.mail_listeners is not None:
            await gateway.mail_listeners.start()
        runner = web.AppRunner(create_app(gateway), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        session = aiohttp.ClientSession()
        h = Harness(gateway, f"http://127.0.0.1:{port}", twilio, session, telegram=telegram,
                    app=runner.app)
        if dispatch:
            h.runs.append(asyncio.create_task(gateway.dispatching().run()))
        try:
            yield h
        finally:
            gateway.dispatcher.stop()
            for t in h.runs:
                await t
            await session.close()
            if gateway.mail_listeners is not None:
                await gateway.mail_listeners.stop()
            await runner.cleanup()
            await gateway.close()
