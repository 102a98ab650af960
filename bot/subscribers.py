"""Operator actions on one person's subscription: record their consent, record their
opt-out, and show where they stand. Each is one transaction of its own, so the HTTP API and
the CLI answer only after the change has committed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consentgate.bot.addresses import normalise_address
from consentgate.bot.config import CampaignSettings
from consentgate.bot.consent import Evidence, Status
from consentgate.bot.errors import InvalidInput
from consentgate.bot.gate import ConsentGate
from consentgate.bot.ledger import Ledger
from consentgate.bot.messages import iso
from consentgate.bot.metrics import Metrics
from consentgate.bot.tags import TagService, tag_names
from consentgate.bot.versions import consent_text_version
from consentgate.storage.db import Database

__all__ = ["SubscriberService"]

MAX_REASON = 500


class SubscriberService:
    def __init__(self, db: Database, ledger: Ledger, gate: ConsentGate,
                 metrics: Metrics, tags: TagService) -> None:
        self.db = db
        self.ledger = ledger
        self.gate = gate
        self.metrics = metrics
        self.tags = tags

    async def record_consent(self, campaign: CampaignSettings, actor: str, channel: str,
                             address: str, method: str, source: str,
                             evidence: str, tags: Sequence[str] | None = None
                             ) -> dict[str, Any]:
        """Consent an operator records for a person, with its evidence. Raises the
        contract's problems: ``channel_disabled``, ``invalid_address``, ``invalid_method``,
        ``missing_evidence``, ``denied_source`` (422), ``opted_out`` / ``suppressed`` (409)."""
        if channel not in campaign.channels():
            raise InvalidInput("channel_disabled", f"this campaign has no {channel} channel")
        canonical = normalise_address(channel, address, campaign.default_region)
        version = consent_text_version(campaign.consent_text_for(channel))
        ev = Evidence(method, source, evidence, version, actor)
        given_tags = tag_names(tags)
        async with self.db.write() as conn:
            status = await self.ledger.record_consent(conn, campaign.slug, channel, canonical,
                                                      ev, by_recipient=False,
                                                      tag_names=given_tags)
        return {"channel": channel, "address": canonical, "status": status.value}

    async def opt_out(self, campaign: CampaignSettings, actor: str, channel: str,
                      address: str, reason: str | None) -> dict[str, Any]:
        """An opt-out an operator records for a person: committed, with their queued
        messages cancelled, before this returns."""
        canonical = normalise_address(channel, address, campaign.default_region)
        reason = (reason or "").strip() or "operator request"
        if len(reason) > MAX_REASON:
            raise InvalidInput("invalid_reason", f"reason is longer than {MAX_REASON} "
                                                 "characters")
        async with self.db.write() as conn:
            cancelled = await self.ledger.record_opt_out(
                conn, campaign.slug, channel, canonical, method="operator", reason=reason,
                actor=actor)
        self.metrics.opt_outs.labels(channel, "operator").inc()
        return {"channel": channel, "address": canonical, "status": "opted_out",
                "cancelled": cancelled}

    async def view(self, campaign: CampaignSettings, channel: str,
                   address: str) -> dict[str, Any]:
        """Where a person stands: status, whether a message could go now (and why not),
        and the history that explains it."""
        canonical = normalise_address(channel, address, campaign.default_region)
        async with self.db.read() as conn:
            state = await self.ledger.state(conn, campaign.slug, channel, canonical)
            decision = await self.gate.decide_now(conn, campaign.slug, channel, canonical)
            history = await self.ledger.history(conn, campaign.slug, channel, canonical)
            tags = await self.tags.of(conn, campaign.slug, channel, canonical)
        status = Status.SUPPRESSED if state.suppressed else state.status
        return {
            "channel": channel, "address": canonical, "status": status.value,
            "can_send": decision.allowed,
            "reason": decision.reason.value if decision.reason else None,
            "history": [{"at": iso(h.at), "event": h.event, "method": h.method,
                         "source": h.source, "actor": h.actor} for h in history],
            "tags": tags,
        }

    async def change_tags(self, campaign: CampaignSettings, actor: str, channel: str,
                          address: str, add: Sequence[str] | None,
                          remove: Sequence[str] | None) -> dict[str, Any]:
        """Tags added to and removed from one person (audited); their tags now."""
        canonical = normalise_address(channel, address, campaign.default_region)
        tags = await self.tags.change(campaign.slug, actor, channel, canonical, add, remove)
        return {"channel": channel, "address": canonical, "tags": tags}
