"""A campaign's Telegram bot: what its updates mean, whether they come by webhook or polling.

- ``/start`` (with or without a deep-link payload naming a join link) is answered with the
  campaign's name, imprint and consent text and two buttons. ``/start`` alone never
  subscribes; only the "yes" button does (method ``telegram_start``, with the update id, user
  id, link and consent text version as evidence).
- ``/stop``, ``STOP`` and every other text the keyword classifier reads as an opt-out are
  applied by :meth:`bot.inbound.InboundService.apply_text`: recorded, queued messages
  cancelled, one confirmation queued in the same transaction.
- The person blocking the bot (``my_chat_member`` -> ``kicked`` in their private chat) is a
  suppression; no confirmation can reach them. (A 403 "blocked" on a send is the
  dispatcher's to record.)
- A join request through one of the campaign's live invite links is approved and counted
  on that link. Nothing here adds anyone to a chat: people ask, the bot lets them in.

Every message the bot answers with (the consent prompt, confirmations) is a ``reply`` row in
the outbox, decided by the gate and sent by the dispatcher like any other message. The only
Bot API calls made from here are the ones that are not messages: approving a join request,
answering a button press, and the webhook / polling calls.

Each update is applied once per ``update_id``; one that fails part-way changes nothing and
is retried (the webhook answers 5xx and Telegram delivers it again; polling tries again
before moving on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.adapters.base import (
    InboundEvent,
    PermanentSendError,
    RetryableSendError,
    SendError,
)
from consentgate.adapters.telegram import ALLOWED_UPDATES, TelegramChannel, parse_update
from consentgate.bot import audit, outbox
from consentgate.bot.addresses import mask
from consentgate.bot.config import CampaignSettings
from consentgate.bot.consent import Evidence, Status
from consentgate.bot.errors import InvalidInput, NotFound
from consentgate.bot.inbound import InboundService, reply_texts
from consentgate.bot.keywords import Intent
from consentgate.bot.ledger import Ledger
from consentgate.bot.links import Link, LinkService, ProviderUnavailable
from consentgate.bot.metrics import Metrics
from consentgate.bot.versions import consent_text_version
from consentgate.storage.db import Database
from consentgate.storage.models import consent_texts, processed_events
from consentgate.storage.sql import insert_ignore

__all__ = [
    "CONSENT_PROMPT_SUBJECT",
    "TelegramService",
    "consent_buttons",
    "consent_prompt_text",
    "telegram_bots",
]

_log = structlog.get_logger("consentgate.telegram")

#: Marks an outbox reply as the consent prompt (``subject`` is unused for Telegram): the
#: composer turns it into the two inline buttons. Only ``reply`` rows made here carry it.
CONSENT_PROMPT_SUBJECT = "telegram-consent-prompt:"

YES_LABEL = "Yes, send me updates"
NO_LABEL = "No, thanks"

#: Long-poll time of one getUpdates call, in seconds.
POLL_TIMEOUT = 25
#: How often polling tries one update before it gives up on it and moves on.
POLL_HANDLE_ATTEMPTS = 8


def telegram_bots(adapters: Mapping[tuple[str, str], object]) -> dict[str, TelegramChannel]:
    """The campaigns whose Telegram channel is a real bot (not the ``log`` provider)."""
    return {campaign: adapter for (campaign, channel), adapter in adapters.items()
            if channel == "telegram" and isinstance(adapter, TelegramChannel)}


def consent_prompt_text(settings: CampaignSettings) -> str:
    """What a person sees before they choose: who is asking, the imprint, the exact words."""
    about = ""
    if settings.controller:
        about += f"\nYour data is held by {settings.controller}."
    if settings.privacy_notice_url:
        about += f"\nPrivacy notice: {settings.privacy_notice_url}"
    return (f"{settings.name}\n{settings.imprint}\n\n{settings.consent_text_for('telegram')}\n"
            f"{about}\n\nWould you like updates here? Nothing is sent unless you press "
            f"\"{YES_LABEL}\". You can send /stop at any time.")


def _prompt_subject(link_id: str | None, version: str) -> str:
    return f"{CONSENT_PROMPT_SUBJECT}{link_id or ''}:{version}"


def consent_buttons(kind: str, subject: str | None) -> tuple[tuple[str, str], ...]:
    """The inline keyboard of a queued Telegram message: the yes / no buttons for the
    consent prompt, none for anything else. The callback data names the link and the
    consent text version shown, so the answer is evidence of exactly what was agreed to."""
    if kind != "reply" or not subject or not subject.startswith(CONSENT_PROMPT_SUBJECT):
        return ()
    tail = subject[len(CONSENT_PROMPT_SUBJECT):]  # "<link id or empty>:<version>"
    return ((YES_LABEL, f"consent:yes:{tail}"), (NO_LABEL, f"consent:no:{tail}"))


def _subscribed_text(settings: CampaignSettings) -> str:
    privacy = (f" Privacy notice: {settings.privacy_notice_url}"
               if settings.privacy_notice_url else "")
    return (f"Thank you: you are subscribed to updates from {settings.name}.{privacy} "
            "Send /stop at any time to opt out.")


class TelegramService:
    """Applies a campaign bot's updates; runs the polling loop where configured."""

    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        metrics: Metrics,
        inbound: InboundService,
        links: LinkService,
        campaigns: Mapping[str, CampaignSettings],
        bots: Mapping[str, TelegramChannel],
        *,
        public_url: str,
        wake: Callable[[str, str], None],
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.metrics = metrics
        self.inbound = inbound
        self.links = links
        self.campaigns = campaigns
        self.bots = bots
        self.public_url = public_url.rstrip("/")
        self._wake = wake
        self._pollers: list[asyncio.Task[None]] = []

    def bot(self, campaign: str) -> TelegramChannel:
        bot = self.bots.get(campaign)
        if bot is None:
            raise NotFound("channel_disabled",
                           "this campaign has no Telegram bot (provider \"telegram\")")
        return bot

    # -- updates ----------------------------------------------------------------------------

    async def handle_update(self, campaign: str, data: Mapping[str, Any]) -> None:
        """Apply one Update (a webhook body or an item of getUpdates). Returns once what it
        changed has committed; raises to have the update delivered again."""
        structlog.contextvars.bind_contextvars(campaign=campaign,
                                               update_id=data.get("update_id"))
        try:
            events = parse_update(data)
        except ValueError as exc:
            # Authenticated, so it is Telegram's; refusing it would only have it redelivered
            # for ever. Keep going and say so.
            _log.warning("telegram.update_unreadable", error=str(exc))
            return
        for event in events:
            handler = {
                "start": self._on_start,
                "message": self._on_message,
                "consent_yes": self._on_consent_yes,
                "consent_no": self._on_consent_no,
                "blocked": self._on_blocked,
                "unblocked": self._on_unblocked,
                "join_request": self._on_join_request,
            }.get(event.kind, self._on_other_callback)
            await handler(campaign, event)

    async def _first_time(self, conn: AsyncConnection, campaign: str,
                          event: InboundEvent) -> bool:
        result = await conn.execute(insert_ignore(
            conn, processed_events, ("campaign", "channel", "event_id"),
            dict(campaign=campaign, channel="telegram", event_id=event.provider_event_id,
                 at=time.time())))
        return bool(result.rowcount)

    async def _seen(self, campaign: str, event: InboundEvent) -> bool:
        async with self.db.read() as conn:
            row = (await conn.execute(select(processed_events.c.at).where(
                processed_events.c.campaign == campaign,
                processed_events.c.channel == "telegram",
                processed_events.c.event_id == event.provider_event_id))).first()
        return row is not None

    async def _queue_reply(self, conn: AsyncConnection, campaign: str, address: str,
                           text: str, subject: str | None = None) -> int:
        return await outbox.enqueue(
            conn, campaign=campaign, channel="telegram", address=address,
            address_hash=self.ledger.hash("telegram", address), text=text, kind="reply",
            created_by="telegram bot", subject=subject)

    async def _queue_prompt(self, conn: AsyncConnection, settings: CampaignSettings,
                            address: str, link_id: str | None) -> int:
        version = consent_text_version(settings.consent_text_for("telegram"))
        return await self._queue_reply(conn, settings.slug, address,
                                       consent_prompt_text(settings),
                                       _prompt_subject(link_id, version))

    async def _live_start_link(self, conn: AsyncConnection, campaign: str,
                               link_id: str | None) -> Link | None:
        """The join link a /start payload or a button names, if it is one of this
        campaign's live Telegram links (anything else names nothing)."""
        if not link_id:
            return None
        link = await self.links.find(conn, campaign, link_id)
        if link is None or link.channel != "telegram" or link.is_invite or not link.is_live():
            return None
        return link

    async def _on_start(self, campaign: str, event: InboundEvent) -> None:
        settings = self.campaigns[campaign]
        async with self.db.write() as conn:
            if not await self._first_time(conn, campaign, event):
                return
            link = await self._live_start_link(conn, campaign, event.payload)
            await self._queue_prompt(conn, settings, event.address,
                                     link.id if link is not None else None)
            await self.ledger.touch_contact(conn, campaign, "telegram", event.address)
        self.metrics.inbound.labels("telegram", "start").inc()
        _log.info("telegram.start", user=mask(event.address),
                  link=link.id if link is not None else None)
        self._wake(campaign, "telegram")

    async def _on_message(self, campaign: str, event: InboundEvent) -> None:
        settings = self.campaigns[campaign]
        queued = False

        async def reply_in_transaction(conn: AsyncConnection, intent: str,
                                       reply: str | None) -> None:
            nonlocal queued
            if intent == Intent.OPT_IN:
                # "START", "YES" typed as text: offer the buttons; only pressing yes counts.
                await self._queue_prompt(conn, settings, event.address, None)
                queued = True
            elif reply is not None:
                await self._queue_reply(conn, campaign, event.address, reply)
                queued = True

        await self.inbound.apply_text(campaign, event, and_then=reply_in_transaction)
        if queued:
            self._wake(campaign, "telegram")

    def _button_payload(self, event: InboundEvent) -> tuple[str | None, str | None]:
        """(link id, consent text version) from a consent button's callback data."""
        if not event.payload:
            return None, None
        link_id, _, version = event.payload.partition(":")
        return link_id or None, version or None

    async def _shown_version(self, conn: AsyncConnection, settings: CampaignSettings,
                             version: str | None) -> str:
        """The consent text version the prompt showed: the one the button names if this
        campaign ever used it, else the current one."""
        if version:
            row = (await conn.execute(select(consent_texts.c.version).where(
                consent_texts.c.campaign == settings.slug,
                consent_texts.c.version == version))).first()
            if row is not None:
                return version
        return consent_text_version(settings.consent_text_for("telegram"))

    def _in_private_chat(self, event: InboundEvent) -> bool:
        # Our prompts are sent only in the person's private chat with the bot.
        return event.chat_id is not None and event.chat_id == event.address

    async def _on_consent_yes(self, campaign: str, event: InboundEvent) -> None:
        settings = self.campaigns[campaign]
        if not self._in_private_chat(event):
            await self._answer_button(campaign, event, None)
            return
        link_name = None
        async with self.db.write() as conn:
            if not await self._first_time(conn, campaign, event):
                return
            link_ref, version_ref = self._button_payload(event)
            link = await self._live_start_link(conn, campaign, link_ref)
            state = await self.ledger.state(conn, campaign, "telegram", event.address)
            already = state.status is Status.SUBSCRIBED and not state.suppressed
            if not already:
                version = await self._shown_version(conn, settings, version_ref)
                evidence = json.dumps({
                    "update_id": int(event.provider_event_id),
                    "user_id": int(event.address),
                    "link": link.id if link is not None else None,
                    "consent_text_version": version,
                    "button": "yes",
                }, sort_keys=True)
                source = "telegram bot /start"
                if link is not None:
                    source += f" via link {link.id} ({link.name})"
                    link_name = link.name
                await self.ledger.record_consent(
                    conn, campaign, "telegram", event.address,
                    Evidence("telegram_start", source, evidence, version, "recipient"),
                    by_recipient=True, link_id=link.id if link is not None else None)
                if link is not None:
                    await self.links.count_join(conn, link.id)
            await self._queue_reply(conn, campaign, event.address, _subscribed_text(settings))
        self.metrics.inbound.labels("telegram", Intent.OPT_IN.value).inc()
        _log.info("telegram.subscribed", user=mask(event.address), already=already,
                  link=link_name)
        self._wake(campaign, "telegram")
        await self._answer_button(campaign, event, "Subscribed")

    async def _on_consent_no(self, campaign: str, event: InboundEvent) -> None:
        settings = self.campaigns[campaign]
        if not self._in_private_chat(event):
            await self._answer_button(campaign, event, None)
            return
        opted_out = False
        async with self.db.write() as conn:
            if not await self._first_time(conn, campaign, event):
                return
            state = await self.ledger.state(conn, campaign, "telegram", event.address)
            if state.status is Status.SUBSCRIBED:
                # "No" under an old prompt from someone subscribed: they do not want it.
                await self.ledger.record_opt_out(
                    conn, campaign, "telegram", event.address, method="telegram_button",
                    reason="telegram consent button: no", actor="recipient")
                await self._queue_reply(conn, campaign, event.address,
                                        reply_texts(settings)[Intent.OPT_OUT])
                opted_out = True
        if opted_out:
            self.metrics.opt_outs.labels("telegram", "telegram_button").inc()
            self._wake(campaign, "telegram")
        self.metrics.inbound.labels("telegram", "consent_no").inc()
        await self._answer_button(campaign, event, "OK: you will not get updates")

    async def _on_other_callback(self, campaign: str, event: InboundEvent) -> None:
        if event.kind == "callback":
            await self._answer_button(campaign, event, None)

    async def _answer_button(self, campaign: str, event: InboundEvent,
                             text: str | None) -> None:
        """Stop the pressed button's spinner. Best effort: the change has committed."""
        query_id = event.extra.get("callback_query_id")
        if not query_id:
            return
        try:
            await self.bot(campaign).answer_callback_query(query_id, text)
        except (SendError, NotFound) as exc:
            _log.info("telegram.callback_answer_failed", error=str(exc))

    async def _on_blocked(self, campaign: str, event: InboundEvent) -> None:
        async with self.db.write() as conn:
            if not await self._first_time(conn, campaign, event):
                return
            await self.ledger.record_opt_out(
                conn, campaign, "telegram", event.address, method="telegram_block",
                reason="telegram_blocked", actor="recipient", every_campaign=True,
                suppression_reason="telegram_blocked")
        self.metrics.opt_outs.labels("telegram", "telegram_block").inc()
        self.metrics.inbound.labels("telegram", "blocked").inc()
        _log.info("telegram.blocked", user=mask(event.address))

    async def _on_unblocked(self, campaign: str, event: InboundEvent) -> None:
        # Unblocking is not consent: the person is welcome to /start again.
        async with self.db.write() as conn:
            await self._first_time(conn, campaign, event)
        _log.info("telegram.unblocked", user=mask(event.address))

    async def _on_join_request(self, campaign: str, event: InboundEvent) -> None:
        settings = self.campaigns[campaign]
        if event.chat_id is None or await self._seen(campaign, event):
            return
        async with self.db.read() as conn:
            link = await self.links.find_invite(conn, campaign, event.chat_id,
                                                event.extra.get("invite_link", ""))
        own = settings.telegram is not None and int(event.chat_id) in settings.telegram.own_chats
        log = _log.bind(user=mask(event.address), chat=event.chat_id,
                        link=link.id if link is not None else None)
        if link is None or not link.is_live() or not own:
            # Not through a live campaign link: left for the chat's admins to decide.
            log.info("telegram.join_request_left", live=link is not None and link.is_live())
            async with self.db.write() as conn:
                await self._first_time(conn, campaign, event)
            return
        try:
            await self.bot(campaign).approve_join_request(int(event.chat_id),
                                                          int(event.address))
        except RetryableSendError as exc:
            raise ProviderUnavailable("telegram_unavailable",
                                      f"approving the join request failed: {exc.reason}"
                                      ) from None
        except PermanentSendError as exc:
            # Withdrawn, or already handled (by an admin, or by an earlier delivery).
            log.info("telegram.join_request_gone", reason=exc.reason)
            async with self.db.write() as conn:
                await self._first_time(conn, campaign, event)
            return
        async with self.db.write() as conn:
            if not await self._first_time(conn, campaign, event):
                return
            await self.links.count_join(conn, link.id)
            await audit.append(conn, campaign, "recipient", "link.join_approved",
                               audit.subject_for("telegram",
                                                 self.ledger.hash("telegram", event.address)),
                               {"link": link.id, "chat": event.chat_id})
        self.metrics.inbound.labels("telegram", "join_request").inc()
        log.info("telegram.join_approved")

    # -- webhook and polling ----------------------------------------------------------------

    def webhook_url(self, campaign: str) -> str:
        return f"{self.public_url}/webhooks/telegram/{campaign}"

    async def set_webhook(self, campaign: str, url: str | None = None) -> str:
        """Have Telegram deliver this campaign's updates to our webhook, with the secret
        header and every update type the gateway handles. Returns the URL."""
        settings = self.campaigns[campaign]
        assert settings.telegram is not None
        secret = settings.telegram.webhook_secret
        if not secret:
            raise InvalidInput("missing_webhook_secret",
                               "set campaigns.telegram.webhook_secret to use a webhook")
        url = url or self.webhook_url(campaign)
        await self.bot(campaign).set_webhook(url, secret, ALLOWED_UPDATES)
        _log.info("telegram.webhook_set", campaign=campaign, url=url)
        return url

    async def delete_webhook(self, campaign: str) -> None:
        await self.bot(campaign).delete_webhook()

    def polling_campaigns(self) -> list[str]:
        return [slug for slug, c in self.campaigns.items()
                if c.telegram is not None and c.telegram.polling and slug in self.bots]

    def start_polling(self, timeout: int = POLL_TIMEOUT) -> list[asyncio.Task[None]]:
        """Start a polling loop for every campaign configured with ``polling = true``."""
        for slug in self.polling_campaigns():
            task = asyncio.create_task(self.poll(slug, timeout=timeout),
                                       name=f"telegram-poll-{slug}")
            self._pollers.append(task)
        return list(self._pollers)

    async def stop_polling(self) -> None:
        """Stop the polling loops. An update being applied is rolled back and fetched
        again next time (its offset was not confirmed)."""
        pollers, self._pollers = self._pollers, []
        for task in pollers:
            task.cancel()
        for task in pollers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def poll(self, campaign: str, *, timeout: int = POLL_TIMEOUT) -> None:  # noqa: ASYNC109
        """getUpdates for ever (until cancelled): the same handling as the webhook. Removes
        any webhook first, since Telegram serves one or the other. An update's offset is
        confirmed only after it was applied."""
        bot = self.bot(campaign)
        log = _log.bind(campaign=campaign)
        attempt = 0
        while True:
            try:
                await bot.delete_webhook()
                break
            except SendError as exc:
                attempt += 1
                log.warning("telegram.poll_setup_failed", reason=exc.reason)
                await asyncio.sleep(outbox.backoff(attempt, getattr(exc, "retry_after", None)))
        log.info("telegram.polling")
        offset: int | None = None
        failures = 0
        while True:
            try:
                updates = await bot.get_updates(offset, timeout)
            except SendError as exc:
                failures += 1
                log.warning("telegram.poll_failed", reason=exc.reason, attempts=failures)
                await asyncio.sleep(outbox.backoff(min(failures, 6),
                                                   getattr(exc, "retry_after", None)))
                continue
            failures = 0
            for update in updates:
                await self._apply_polled(campaign, update)
                offset = int(update["update_id"]) + 1

    async def _apply_polled(self, campaign: str, update: Mapping[str, Any]) -> None:
        for attempt in range(1, POLL_HANDLE_ATTEMPTS + 1):
            try:
                structlog.contextvars.clear_contextvars()
                await self.handle_update(campaign, update)
                return
            except Exception as exc:
                if attempt == POLL_HANDLE_ATTEMPTS:
                    _log.error("telegram.update_dropped", campaign=campaign,
                               update_id=update.get("update_id"), error=repr(exc))
                    return
                _log.warning("telegram.update_retry", campaign=campaign,
                             update_id=update.get("update_id"), error=repr(exc),
                             attempts=attempt)
                await asyncio.sleep(outbox.backoff(attempt))
