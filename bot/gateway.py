"""The running gateway: every service built once from the settings, in one place.

The web layer, the CLI and the tests all get their services from here, so there is one
obvious way the pieces are put together.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import IO

from sqlalchemy import select

from consentgate.adapters.base import CHANNELS, ChannelAdapter
from consentgate.adapters.log import LogChannel
from consentgate.bot.audit import AuditLog
from consentgate.bot.broadcasts import PAUSE_AFTER_ATTEMPTS, BroadcastScheduler, BroadcastService
from consentgate.bot.compose import Composer
from consentgate.bot.config import CampaignSettings, Settings
from consentgate.bot.dispatch import Dispatcher, DispatchThread
from consentgate.bot.gate import CampaignRules, ConsentGate
from consentgate.bot.inbound import InboundService
from consentgate.bot.join import JoinService
from consentgate.bot.ledger import Ledger
from consentgate.bot.links import LinkService
from consentgate.bot.messages import MessageService
from consentgate.bot.metrics import Metrics
from consentgate.bot.overview import Overview
from consentgate.bot.pgpacer import SharedPacer
from consentgate.bot.privacy import Privacy
from consentgate.bot.replies import ReplyService
from consentgate.bot.sessions import SessionService
from consentgate.bot.subscribers import SubscriberService
from consentgate.bot.tags import TagService
from consentgate.bot.telegram import TelegramService, telegram_bots
from consentgate.bot.tokens import Tokens
from consentgate.bot.unsubscribe import MailTokens, UnsubscribeService
from consentgate.bot.versions import consent_text_version
from consentgate.storage.db import Database
from consentgate.storage.models import campaigns as campaigns_table
from consentgate.storage.models import consent_texts
from consentgate.storage.sql import insert_ignore, upsert

__all__ = ["Gateway", "build_adapter"]


def build_adapter(settings: Settings, campaign: CampaignSettings,
                  channel: str) -> ChannelAdapter:
    """The provider adapter a campaign's channel is configured with."""
    public_url = settings.server.public_url
    if channel == "sms" and campaign.sms is not None:
        sms = campaign.sms
        if sms.provider == "twilio":
            from consentgate.adapters.twilio_sms import TwilioSms

            assert sms.account_sid and sms.auth_token
            return TwilioSms(
                account_sid=sms.account_sid, auth_token=sms.auth_token,
                from_number=sms.from_number, messaging_service_sid=sms.messaging_service_sid,
                api_base_url=sms.api_base_url, rate_per_second=sms.rate_per_second,
                status_callback_url=f"{public_url}/webhooks/twilio/{campaign.slug}/status")
        return LogChannel("sms", rate_per_second=sms.rate_per_second, sender=campaign.slug)
    if channel == "email" and campaign.email is not None:
        email = campaign.email
        if email.provider == "smtp":
            from consentgate.adapters.smtp_email import DkimKey, SmtpEmail

            dkim = None
            if email.dkim_selector and email.dkim_domain and email.dkim_private_key_file:
                with open(email.dkim_private_key_file, "rb") as fh:
                    dkim = DkimKey(email.dkim_selector, email.dkim_domain, fh.read())
            assert email.host
            return SmtpEmail(
                host=email.host, port=email.port, starttls=email.starttls,
                use_tls=email.use_tls, username=email.username, password=email.password,
                from_address=email.from_address, rate_per_second=email.rate_per_second,
                max_connections=email.max_connections, dkim=dkim)
        return LogChannel("email", rate_per_second=email.rate_per_second, sender=campaign.slug)
    if channel == "telegram" and campaign.telegram is not None:
        tg = campaign.telegram
        if tg.provider == "telegram":
            from consentgate.adapters.telegram import TelegramChannel

            assert tg.bot_token
            return TelegramChannel(bot_token=tg.bot_token, api_base_url=tg.api_base_url,
                                   rate_per_second=tg.rate_per_second)
        return LogChannel("telegram", rate_per_second=tg.rate_per_second,
                          sender=campaign.slug)
    raise ValueError(f"campaign {campaign.slug} has no {channel} channel")


class Gateway:
    def __init__(self, settings: Settings, *, worker_id: str | None = None,
                 adapters: Mapping[tuple[str, str], ChannelAdapter] | None = None,
                 lease_seconds: float | None = None,
                 pause_after_attempts: int = PAUSE_AFTER_ATTEMPTS,
                 dispatch_thread: bool = False) -> None:
        """``pause_after_attempts``: how many messages of a broadcast must have reached the
        provider before its failure rate can pause it (see :mod:`bot.broadcasts`).
        ``dispatch_thread``: the dispatcher will run on a loop of its own
        (:meth:`dispatching`), so it gets a database engine of its own and, unless
        ``adapters`` are given, adapters of its own."""
        self.settings = settings
        self.campaigns: dict[str, CampaignSettings] = {c.slug: c for c in settings.campaigns}
        self.db = Database(settings.storage.url, pool_size=settings.storage.pool_size)
        self.metrics = Metrics()
        self.tokens = Tokens(settings.security.secret_key)
        self.ledger = Ledger(settings.security.secret_key, settings.policy.denied_sources)
        self.rules = {
            c.slug: CampaignRules(
                frozenset(c.channels()),
                frozenset(str(x) for x in (c.telegram.own_chats if c.telegram else ())))
            for c in settings.campaigns
        }
        self.gate = ConsentGate(self.ledger, self.rules,
                                quiet_hours=settings.policy.quiet_hours,
                                timezone=settings.policy.timezone)
        self.mail_tokens = MailTokens(settings.security.secret_key, self.campaigns)
        self.composer = Composer(self.campaigns, settings.server.public_url, self.tokens,
                                 self.mail_tokens)
        def build_all() -> dict[tuple[str, str], ChannelAdapter]:
            return {(c.slug, ch): build_adapter(settings, c, ch)
                    for c in settings.campaigns for ch in c.channels()}

        self.adapters = build_all() if adapters is None else dict(adapters)
        self.dispatch_thread = dispatch_thread
        #: The dispatcher's database and adapters: the web's own, unless it runs on a loop
        #: of its own (connections and sessions belong to the loop that opened them).
        self.dispatch_db = self.db.for_another_loop() if dispatch_thread else self.db
        self.dispatch_adapters = (build_all() if dispatch_thread and adapters is None
                                  else self.adapters)
        dispatch_db = self.dispatch_db
        # On PostgreSQL several processes share each sender: its budget lives in the database.
        pacer_factory = None if self.db.is_sqlite else (
            lambda a: SharedPacer(dispatch_db, a.sender_key, a.rate_per_second))
        self.dispatcher = Dispatcher(self.dispatch_db, self.gate, self.ledger, self.composer,
                                     self.dispatch_adapters, self.metrics, worker_id=worker_id,
                                     lease_seconds=(settings.dispatch.lease_seconds
                                                    if lease_seconds is None else lease_seconds),
                                     max_in_flight=settings.dispatch.max_in_flight,
                                     pacer_factory=pacer_factory,
                                     pause_after_attempts=pause_after_attempts)
        self.inbound = InboundService(self.db, self.ledger, self.metrics, self.campaigns)
        self.replies = ReplyService(self.db, self.ledger, self.metrics, self.campaigns)
        self.messages = MessageService(self.db, self.gate, self.ledger)
        self.broadcasts = BroadcastService(self.db, pause_after_attempts=pause_after_attempts)
        self.tags = TagService(self.db, self.ledger)
        self.scheduler = BroadcastScheduler(self.broadcasts, started=self.dispatcher.wake)
        self.dispatcher.scheduler = self.scheduler
        self._lock: IO[bytes] | None = None
        self.unsubscribe = UnsubscribeService(self.db, self.ledger, self.metrics,
                                              self.campaigns, self.tokens, self.mail_tokens,
                                              pause_after_attempts=pause_after_attempts)
        #: inbound SMTP listeners ([campaigns.email.inbound]); `serve` starts them
        self.mail_listeners = self.unsubscribe.listeners()
        bots = telegram_bots(self.adapters)
        self.links = LinkService(self.db, self.campaigns, settings.server.public_url, bots)
        self.telegram = TelegramService(self.db, self.ledger, self.metrics, self.inbound,
                                        self.links, self.campaigns, bots,
                                        public_url=settings.server.public_url,
                                        wake=self.dispatcher.wake)
        self.subscribers = SubscriberService(self.db, self.ledger, self.gate, self.metrics,
                                             self.tags)
        self.privacy = Privacy(self.db, self.ledger, settings)
        self.joins = JoinService(self.db, self.ledger, self.links, self.tokens, self.campaigns,
                                 settings.server.public_url, wake=self.dispatcher.wake)
        self.audit_log = AuditLog(self.db)
        #: the organiser console's sessions and its home page's figures
        self.sessions = SessionService(self.db)
        self.overview = Overview(self.db)

    async def start(self) -> None:
        """Migrate, sync campaigns, recover from a previous crash."""
        from consentgate.bot import outbox

        if self.db.is_sqlite:
            self._lock = self.db.claim_single_process()
        await self.db.migrate()
        await self.sync_campaigns()
        if self.db.is_sqlite:
            # SQLite is one process (the lock above): whatever a previous process left
            # mid-flight is orphaned.
            async with self.db.write() as conn:
                await outbox.reap_interrupted(conn, everything=True)
                await outbox.release_leases(conn)
        await self.broadcasts.resume_unfinished()

    async def sync_campaigns(self) -> None:
        now = time.time()
        async with self.db.write() as conn:
            for c in self.settings.campaigns:
                version = consent_text_version(c.consent_text)
                row = (await conn.execute(select(campaigns_table.c.consent_text_version)
                                          .where(campaigns_table.c.slug == c.slug))).first()
                values = dict(slug=c.slug, name=c.name, imprint=c.imprint,
                              consent_text=c.consent_text, consent_text_version=version,
                              updated_at=now)
                await conn.execute(upsert(conn, campaigns_table, ("slug",), values,
                                          {k: v for k, v in values.items() if k != "slug"}))
                # Every wording a person may be shown (a channel's own consent_text too), so
                # each version in the evidence can be read back.
                for text in dict.fromkeys(c.consent_text_for(ch) for ch in CHANNELS):
                    await conn.execute(insert_ignore(
                        conn, consent_texts, ("campaign", "version"),
                        dict(campaign=c.slug, version=consent_text_version(text), text=text,
                             first_used_at=now)))
                if row is None or row.consent_text_version != version:
                    from consentgate.bot import audit

                    await audit.append(conn, c.slug, "config", "campaign.synced",
                                       f"campaign#{c.slug}",
                                       {"name": c.name, "consent_text_version": version})

    def dispatching(self) -> Dispatcher | DispatchThread:
        """What runs the dispatcher: ``await x.run()``, ``x.stop()``."""
        if not self.dispatch_thread:
            return self.dispatcher
        return DispatchThread(self.dispatcher, self._close_dispatch)

    async def _close_dispatch(self) -> None:
        await _close_adapters(self.dispatch_adapters.values())
        await self.dispatch_db.dispose()

    async def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        await _close_adapters(self.adapters.values())
        if self.dispatch_db is not self.db:
            # Done on the dispatcher's loop if it ran to its end (a second time does
            # nothing); if it did not, its connections belong to that loop: best effort.
            with contextlib.suppress(Exception):
                await self._close_dispatch()
        await self.db.dispose()


async def _close_adapters(adapters: Iterable[ChannelAdapter]) -> None:
    for adapter in adapters:
        try:
            await adapter.close()
        except Exception:  # closing is best effort; the process is ending
            pass
