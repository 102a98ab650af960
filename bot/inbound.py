"""Applying what people and providers tell us: STOP, START, HELP, replies, delivery reports.

Each inbound event is applied in one transaction together with its de-duplication record,
so a provider's retry of the same event changes nothing, and a failure part-way leaves
nothing applied (the webhook answers 5xx and the provider tries again). The answer (TwiML)
is produced only after the transaction has committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.adapters.base import InboundEvent
from consentgate.bot.addresses import mask, normalise_address
from consentgate.bot.config import CampaignSettings
from consentgate.bot.consent import Evidence, Status
from consentgate.bot.errors import GatewayError
from consentgate.bot.keywords import Intent, classify
from consentgate.bot.ledger import Ledger
from consentgate.bot.metrics import Metrics
from consentgate.bot.outbox import MessageStatus
from consentgate.bot.versions import consent_text_version
from consentgate.storage.db import Database
from consentgate.storage.models import inbound_messages, links, messages, processed_events
from consentgate.storage.sql import insert_ignore

__all__ = ["InboundResult", "InboundService", "reply_texts"]

_log = structlog.get_logger("consentgate.inbound")

#: Twilio error codes that mean the number cannot receive texts at all.
_UNDELIVERABLE = {"30005", "30006", "21614"}


#: The longest an opt-out's answer waits for a send to the person already on the wire.
IN_FLIGHT_WAIT = 5.0
#: How often it looks whether that send has been answered (seconds).
IN_FLIGHT_POLL = 0.01

#: A step run inside :meth:`InboundService.apply_text`'s transaction: (conn, intent, reply).
AfterText = Callable[[AsyncConnection, str, str | None], Awaitable[None]]


@dataclass(frozen=True)
class InboundResult:
    duplicate: bool
    intent: str
    reply: str | None  # the confirmation / help text to answer with, if any


def reply_texts(settings: CampaignSettings) -> dict[str, str]:
    """The transactional answers: no campaign content, only what the person asked for."""
    return {
        Intent.OPT_OUT: f"You have been unsubscribed from {settings.name} and will get no "
                        "more messages. Reply START to resubscribe.",
        Intent.OPT_OUT_ALL: "You have been unsubscribed from every campaign on this number "
                            "and will get no more messages. Reply START to resubscribe.",
        Intent.OPT_IN: f"You are subscribed to updates from {settings.name}. "
                       + (f"Privacy notice: {settings.privacy_notice_url} "
                          if settings.privacy_notice_url else "")
                       + "Reply STOP to opt out, HELP for help.",
        Intent.HELP: help_text(settings),
    }


def help_text(settings: CampaignSettings) -> str:
    """The HELP / INFO answer: who is asking, who holds the data and where the privacy
    notice is (UK GDPR Article 13), and how to opt out."""
    parts = [f"{settings.name}. {settings.imprint}."]
    if settings.controller:
        parts.append(f"Your data: {settings.controller}.")
    if settings.privacy_notice_url:
        parts.append(f"Privacy: {settings.privacy_notice_url}")
    parts.append("Reply STOP to opt out.")
    return " ".join(parts)


class InboundService:
    def __init__(self, db: Database, ledger: Ledger, metrics: Metrics,
                 campaigns: dict[str, CampaignSettings]) -> None:
        self.db = db
        self.ledger = ledger
        self.metrics = metrics
        self.campaigns = campaigns

    async def _first_time(self, conn: AsyncConnection, campaign: str, channel: str,
                          event_id: str) -> bool:
        result = await conn.execute(insert_ignore(
            conn, processed_events, ("campaign", "channel", "event_id"),
            dict(campaign=campaign, channel=channel, event_id=event_id, at=time.time())))
        return bool(result.rowcount)

    async def apply_text(self, campaign: str, event: InboundEvent, *,
                         and_then: AfterText | None = None) -> InboundResult:
        """A text from a person (SMS, or a Telegram private message): classify and apply.
        ``and_then(conn, intent, reply)`` runs last in the same transaction (not for a
        duplicate), e.g. to queue the reply through the outbox so it commits with the change."""
        settings = self.campaigns[campaign]
        try:
            address = normalise_address(event.channel, event.address, settings.default_region)
        except GatewayError:
            address = event.address  # a short code or sender id: keep it as it came
        keyword: str | None
        argument: str | None
        c = classify(event.text)
        rule = c.rule
        if event.kind == "opt_out":
            intent, keyword, argument, provider_replied = Intent.OPT_OUT, "STOP", None, True
        elif event.kind == "opt_in":
            intent, keyword, argument, provider_replied = Intent.OPT_IN, "START", None, True
        elif event.kind == "help":
            intent, keyword, argument, provider_replied = Intent.HELP, "HELP", None, True
        else:
            intent, keyword, argument, provider_replied = c.intent, c.keyword, c.argument, False
        if provider_replied:
            rule = f"provider OptOutType {keyword}"
        text_lower = event.text.strip().lower()
        if event.channel == "telegram" and text_lower in ("/stop", "/unsubscribe"):
            intent, rule = Intent.OPT_OUT, "telegram command"
        log = _log.bind(campaign=campaign, channel=event.channel, intent=intent.value,
                        event_id=event.provider_event_id, sender=mask(address))
        reply: str | None = None
        in_flight: Any = None
        async with self.db.write_now() as conn:
            if not await self._first_time(conn, campaign, event.channel,
                                          event.provider_event_id):
                log.info("inbound.duplicate")
                return InboundResult(True, intent.value, None)
            ahash = self.ledger.hash(event.channel, address)
            flag = "possible_opt_out" if intent is Intent.POSSIBLE_OPT_OUT else None
            await conn.execute(inbound_messages.insert().values(
                campaign=campaign, channel=event.channel, from_address=address,
                address_hash=ahash, text=event.text, intent=intent.value, flag=flag,
                rule=rule[:120], provider_event_id=event.provider_event_id, at=time.time()))
            method = "advanced_opt_out" if provider_replied else "keyword"
            if intent in (Intent.OPT_OUT, Intent.OPT_OUT_ALL):
                await self.ledger.record_opt_out(
                    conn, campaign, event.channel, address, method=method,
                    reason=f"{keyword or 'STOP'} {event.channel}", actor="recipient",
                    every_campaign=intent is Intent.OPT_OUT_ALL,
                    suppression_reason="stop_all")
                self.metrics.opt_outs.labels(event.channel, method).inc()
                reply = reply_texts(settings)[intent]
                in_flight = await self._sending_to(
                    conn, None if intent is Intent.OPT_OUT_ALL else campaign, event.channel,
                    ahash)
            elif intent is Intent.OPT_IN and event.channel == "sms":
                link_id = await self._link_for_keyword(conn, settings, argument)
                state = await self.ledger.state(conn, campaign, event.channel, address)
                if link_id is None and state.status is Status.PENDING:
                    # YES confirming a join page's double opt-in: the join counts on its link.
                    link_id = await self.ledger.pending_link(conn, campaign, event.channel,
                                                             address)
                if state.status is Status.SUBSCRIBED and not state.suppressed:
                    link_id = None  # already subscribed: nothing new to attribute
                await self.ledger.record_consent(
                    conn, campaign, event.channel, address,
                    Evidence("keyword", f"sms keyword {keyword or ''}".strip()
                             + (f" {argument}" if argument else ""),
                             event.provider_event_id,
                             consent_text_version(settings.consent_text_for(event.channel)),
                             "recipient"),
                    by_recipient=True, link_id=link_id)
                if link_id is not None:
                    await conn.execute(update(links).where(links.c.id == link_id)
                                       .values(joins=links.c.joins + 1))
                reply = reply_texts(settings)[intent]
            elif intent is Intent.HELP:
                reply = reply_texts(settings)[intent]
            if intent not in (Intent.OPT_OUT, Intent.OPT_OUT_ALL, Intent.OPT_IN):
                # (an opt-out or opt-in already recorded the contact with its status)
                await self.ledger.touch_contact(conn, campaign, event.channel, address)
            if and_then is not None:
                await and_then(conn, intent.value, reply)
        if in_flight is not None:
            await self._until_answered(in_flight)
        self.metrics.inbound.labels(event.channel, intent.value).inc()
        log.info("inbound.applied", flagged=intent is Intent.POSSIBLE_OPT_OUT, rule=rule)
        return InboundResult(False, intent.value, None if provider_replied else reply)

    async def _sending_to(self, conn: AsyncConnection, campaign: str | None, channel: str,
                          address_hash: str) -> Select[tuple[int]] | None:
        """Whether a message to the person is on the wire now (admitted before this opt-out,
        its provider call not yet answered): the query that tells when none is, or None."""
        which = select(messages.c.id).where(
            messages.c.channel == channel, messages.c.address_hash == address_hash,
            messages.c.status == MessageStatus.SENDING).limit(1)
        if campaign is not None:
            which = which.where(messages.c.campaign == campaign)
        return which if (await conn.execute(which)).first() is not None else None

    async def _until_answered(self, sending: Select[tuple[int]]) -> None:
        """Wait (at most :data:`IN_FLIGHT_WAIT`) until the provider calls of ``sending``
        are answered and recorded, so that once the opt-out is answered no message reaches
        the provider any more. The call may be in another process (a PostgreSQL worker), so
        the outbox is asked, not the dispatcher; this is rare (the person's message was in
        the batch just admitted), and a row left ``sending`` by a crash does not hold the
        answer longer than the bound."""
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(IN_FLIGHT_POLL)
            async with self.db.read() as conn:
                if (await conn.execute(sending)).first() is None:
                    return
        _log.warning("inbound.opt_out_answered_while_sending")

    async def _link_for_keyword(self, conn: AsyncConnection, settings: CampaignSettings,
                                argument: str | None) -> str | None:
        if not argument:
            return None
        for keyword, link_id in settings.join_keywords:
            if keyword.upper() == argument.upper():
                row = (await conn.execute(select(links.c.id).where(
                    links.c.id == link_id, links.c.campaign == settings.slug))).first()
                return link_id if row is not None else None
        return None

    async def apply_status(self, campaign: str, event: InboundEvent) -> bool:
        """A delivery report for one of our messages. Returns False for a duplicate."""
        message_id = event.extra.get("message_id") if event.extra else None
        status = (event.status or "").lower()
        async with self.db.write() as conn:
            if not await self._first_time(conn, campaign, event.channel,
                                          event.provider_event_id):
                return False
            m = messages
            match = and_(m.c.campaign == campaign, m.c.channel == event.channel)
            if message_id and message_id.isdigit():
                match = and_(match, m.c.id == int(message_id))
            elif event.provider_message_id:
                match = and_(match, m.c.provider_id == event.provider_message_id)
            else:
                return True
            # Only forward: a late "sent" never hides a "delivered"; an interrupted send
            # that the provider did take is corrected here.
            movable = or_(m.c.status.in_((MessageStatus.SENDING, MessageStatus.SENT)),
                          and_(m.c.status == MessageStatus.FAILED, m.c.reason.in_(("interrupted",
                                                                         "timeout",
                                                                         "network"))))
            now = time.time()
            if status in ("sent", "delivered", "read"):
                new = (MessageStatus.DELIVERED if status in ("delivered", "read")
                       else MessageStatus.SENT)
                cond = (movable if new == MessageStatus.DELIVERED
                        else and_(movable, m.c.status != MessageStatus.SENT))
                await conn.execute(update(m).where(match, cond).values(
                    status=new, reason=None, provider_id=event.provider_message_id,
                    sent_at=now, updated_at=now, lease_owner=None, lease_expires=None))
            elif status in ("failed", "undelivered"):
                code = event.error_code or ""
                reason = f"twilio_{code}" if code else f"provider_{status}"
                row = (await conn.execute(select(m.c.id, m.c.address).where(match))).first()
                await conn.execute(update(m).where(match, movable).values(
                    status=MessageStatus.FAILED, reason=reason, updated_at=now,
                    provider_id=event.provider_message_id, lease_owner=None,
                    lease_expires=None))
                if row is not None and row.address is not None:
                    if code == "21610":
                        await self.ledger.record_opt_out(
                            conn, campaign, event.channel, row.address, method="provider",
                            reason="twilio_21610", actor="provider")
                        self.metrics.opt_outs.labels(event.channel, "provider").inc()
                    elif code in _UNDELIVERABLE:
                        await self.ledger.record_opt_out(
                            conn, campaign, event.channel, row.address, method="provider",
                            reason=reason, actor="provider", every_campaign=True,
                            suppression_reason="undeliverable")
        return True

    async def status_of(self, conn: AsyncConnection, campaign: str, channel: str,
                        address: str) -> Status:
        return (await self.ledger.state(conn, campaign, channel, address)).status
