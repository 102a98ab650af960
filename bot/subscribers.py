"""Operator actions on one person's subscription: record their consent, record their
opt-out, and show where they stand. Each is one transaction of its own, so the HTTP API and
the CLI answer only after the change has committed.

:meth:`SubscriberService.record` is the console's whole picture of a person (state, the
gate's answer, history, their latest replies) in two queries: the ledger's own reads would
take eight small ones, which at a million subscribers is most of the page's time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import literal_column, null, select, union_all

from consentgate.bot.addresses import normalise_address
from consentgate.bot.config import CampaignSettings
from consentgate.bot.consent import Evidence, Status, state_of
from consentgate.bot.errors import InvalidInput
from consentgate.bot.gate import ConsentGate
from consentgate.bot.ledger import HistoryEntry, Ledger
from consentgate.bot.messages import iso
from consentgate.bot.metrics import Metrics
from consentgate.bot.tags import TagService, tag_names
from consentgate.bot.versions import consent_text_version
from consentgate.storage.db import Database
from consentgate.storage.models import consent_events, inbound_messages, subscriptions, suppressions

__all__ = ["PersonRecord", "SubscriberService"]

MAX_REASON = 500
_EVENT: Any = literal_column("'event'")  # which half of the history union a row is from
_REPLY: Any = literal_column("'reply'")


@dataclass(frozen=True)
class PersonRecord:
    """Everything the console shows about one address in one campaign and channel."""

    channel: str
    address: str
    status: str
    can_send: bool
    reason: str | None
    restricted: bool
    history: list[HistoryEntry]
    replies: list[dict[str, Any]]  # newest first: id, at, intent, text, flag, resolution


def last_settled(events: list[HistoryEntry]) -> str | None:
    """The last consent event that is not a pending double opt-in (``events`` oldest
    first), as :func:`bot.consent.state_of` needs it."""
    settled = [e.event for e in events if e.event != "pending"]
    return settled[-1] if settled else None


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
    async def record(self, campaign: str, channel: str, address: str, *,
                     replies: int = 50) -> PersonRecord:
        """Where a person stands, why, and what they wrote (``address`` already canonical).
        Two queries: the subscription and suppression rows; then the consent history and
        the latest ``replies`` in one union."""
        ahash = self.ledger.hash(channel, address)
        sub, supp, ce, im = subscriptions, suppressions, consent_events, inbound_messages

        def of_sub(col: Any) -> Any:
            return select(col).where(sub.c.campaign == campaign, sub.c.channel == channel,
                                     sub.c.address == address).scalar_subquery()

        def of_supp(col: Any) -> Any:
            return select(col).where(supp.c.channel == channel,
                                     supp.c.address_hash == ahash).scalar_subquery()

        heads = select(of_sub(sub.c.status).label("status"),
                       of_sub(sub.c.restricted).label("restricted"),
                       of_sub(sub.c.consented_at).label("consented_at"),
                       of_supp(supp.c.at).label("supp_at"),
                       of_supp(supp.c.reason).label("supp_reason"),
                       of_supp(supp.c.actor).label("supp_actor"))
        latest = (select(im.c.id, im.c.at, im.c.intent, im.c.text, im.c.flag, im.c.resolution)
                  .where(im.c.campaign == campaign, im.c.channel == channel,
                         im.c.address_hash == ahash)
                  .order_by(im.c.id.desc()).limit(replies).subquery())
        rows = union_all(
            select(_EVENT.label("kind"), ce.c.id, ce.c.at, ce.c.event.label("a"),
                   ce.c.method.label("b"), ce.c.source.label("c"), ce.c.actor.label("d"),
                   ce.c.evidence.label("e"), ce.c.consent_text_version.label("f"),
                   ce.c.link_id.label("g"))
            .where(ce.c.campaign == campaign, ce.c.channel == channel,
                   ce.c.address_hash == ahash),
            select(_REPLY, latest.c.id, latest.c.at, latest.c.intent, latest.c.text,
                   latest.c.flag, latest.c.resolution, null(), null(), null()))
        async with self.db.read() as conn:
            head = (await conn.execute(heads)).one()
            found = (await conn.execute(rows)).all()
        events = sorted((r for r in found if r.kind == "event"), key=lambda r: (r.at, r.id))
        history = [HistoryEntry(r.at, r.a, r.b, r.c, r.d, r.e, r.f, r.g) for r in events]
        state = state_of(head.status, bool(head.restricted), head.consented_at,
                         head.supp_at, last_settled(history))
        if head.supp_at is not None:
            history.append(HistoryEntry(head.supp_at, "suppressed", None, head.supp_reason,
                                        head.supp_actor))
            history.sort(key=lambda h: h.at)
        decision = self.gate.decide_state(campaign, channel, address, state)
        status = Status.SUPPRESSED if state.suppressed else state.status
        said = sorted((r for r in found if r.kind == "reply"), key=lambda r: -r.id)
        return PersonRecord(
            channel, address, status.value, decision.allowed,
            decision.reason.value if decision.reason else None, bool(head.restricted),
            history,
            [{"id": r.id, "at": r.at, "intent": r.a, "text": r.b, "flag": r.c,
              "resolution": r.d} for r in said])
