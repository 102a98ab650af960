"""The consent ledger: current statuses, their history, and the suppression list.

Every write here runs inside the caller's transaction, together with the audit record and
(for an opt-out) the cancellation of queued messages, so that each change commits whole or
not at all. The rules themselves live in :mod:`bot.consent`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.bot import audit, outbox, tags
from consentgate.bot.addresses import address_hash
from consentgate.bot.consent import (
    Evidence,
    Status,
    SubscriberState,
    check_new_consent,
    state_of,
)
from consentgate.bot.errors import Conflict, InvalidInput
from consentgate.storage.models import consent_events, links, subscriptions, suppressions
from consentgate.storage.sql import upsert

__all__ = ["ANOTHER_CAMPAIGN", "HistoryEntry", "Ledger", "suppressed_clause"]

#: How a campaign sees the author of a block recorded by another campaign of the gateway.
ANOTHER_CAMPAIGN = "another campaign"


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    event: str
    method: str | None
    source: str | None
    actor: str
    evidence: str | None = None
    consent_text_version: str | None = None
    link_id: str | None = None


def suppressed_clause(channel_col: Any, hash_col: Any, consented_col: Any) -> Any:
    """SQL truth of "a suppression outranks this subscription": one exists, recorded after the
    last consent. A consent the recipient gave after it (only they can) outranks it."""
    return exists().where(
        and_(
            suppressions.c.channel == channel_col,
            suppressions.c.address_hash == hash_col,
            or_(consented_col.is_(None), suppressions.c.at >= consented_col),
        )
    )


class Ledger:
    def __init__(self, secret_key: str, denied_sources: tuple[str, ...] = ()) -> None:
        self.secret_key = secret_key
        self.denied_sources = denied_sources

    def hash(self, channel: str, address: str) -> str:
        return address_hash(self.secret_key, channel, address)

    async def state(self, conn: AsyncConnection, campaign: str, channel: str,
                    address: str) -> SubscriberState:
        ahash = self.hash(channel, address)
        row = (
            await conn.execute(
                select(subscriptions.c.status, subscriptions.c.restricted,
                       subscriptions.c.consented_at)
                .where(subscriptions.c.campaign == campaign,
                       subscriptions.c.channel == channel,
                       subscriptions.c.address == address)
            )
        ).first()
        supp_at = (await conn.execute(select(suppressions.c.at).where(
            suppressions.c.channel == channel, suppressions.c.address_hash == ahash))).scalar()
        last_settled = None
        if row is not None and (row.status == Status.PENDING.value
                                or (row.restricted and row.status == Status.SUBSCRIBED.value)):
            last_settled = (await conn.execute(
                select(consent_events.c.event)
                .where(consent_events.c.campaign == campaign,
                       consent_events.c.channel == channel,
                       consent_events.c.address_hash == ahash,
                       consent_events.c.event != "pending")
                .order_by(consent_events.c.at.desc(), consent_events.c.id.desc())
                .limit(1))).scalar()
        return state_of(None if row is None else row.status,
                        row is not None and bool(row.restricted),
                        None if row is None else row.consented_at, supp_at, last_settled)

    async def objected_pending(self, conn: AsyncConnection, campaign: str, channel: str,
                               hashes: Sequence[str]) -> set[str]:
        """Of these address hashes, those whose last settled event (anything but a pending
        double opt-in) is an opt-out: their objection stands until they confirm."""
        rows = await conn.execute(
            select(consent_events.c.address_hash, consent_events.c.event)
            .where(consent_events.c.campaign == campaign, consent_events.c.channel == channel,
                   consent_events.c.address_hash.in_(list(hashes)),
                   consent_events.c.event != "pending")
            .order_by(consent_events.c.at, consent_events.c.id))
        last: dict[str, str] = {}
        for r in rows:
            last[r.address_hash] = r.event
        return {h for h, event in last.items() if event == "opted_out"}

    async def pending_link(self, conn: AsyncConnection, campaign: str, channel: str,
                           address: str) -> str | None:
        """The join link of the double opt-in this address has pending, if any."""
        row = (await conn.execute(
            select(consent_events.c.link_id)
            .where(consent_events.c.campaign == campaign, consent_events.c.channel == channel,
                   consent_events.c.address_hash == self.hash(channel, address),
                   consent_events.c.event == "pending")
            .order_by(consent_events.c.at.desc(), consent_events.c.id.desc()).limit(1))).first()
        return row.link_id if row is not None else None

    async def record_consent(
        self,
        conn: AsyncConnection,
        campaign: str,
        channel: str,
        address: str,
        ev: Evidence,
        *,
        by_recipient: bool,
        pending: bool = False,
        link_id: str | None = None,
        tag_names: Sequence[str] = (),
    ) -> Status:
        """Record a consent (or a pending double opt-in). Raises the contract's problems:
        ``missing_evidence`` / ``denied_source`` (422), ``opted_out`` / ``suppressed`` (409).

        A recorded consent gets ``tag_names`` and, when it came through a join link
        (``link_id``: a confirmed join page, SMS keyword or Telegram deep link), the link's
        tags; tags it already had stay. A pending double opt-in gets its link's tags only
        once it is confirmed."""
        state = await self.state(conn, campaign, channel, address)
        problem = check_new_consent(ev, state, self.denied_sources, by_recipient=by_recipient,
                                    channel=channel)
        if problem in ("opted_out", "suppressed"):
            raise Conflict(problem, "only the recipient can opt back in (START, a join page "
                                    "or Telegram /start)")
        if problem is not None:
            raise InvalidInput(problem, _PROBLEM_DETAIL[problem])
        if pending and state.status is Status.SUBSCRIBED and not state.suppressed:
            return Status.SUBSCRIBED  # re-joining changes nothing about a subscriber
        now = time.time()
        status = Status.PENDING if pending else Status.SUBSCRIBED
        await self._set_status(conn, campaign, channel, address, status, now)
        await self._event(conn, campaign, channel, address, now,
                          "pending" if pending else "subscribed", ev, link_id)
        if not pending:
            await self._tag(conn, campaign, channel, address, tag_names, link_id, now)
        await audit.append(conn, campaign, ev.actor, "consent.pending" if pending
                           else "consent.recorded",
                           audit.subject_for(channel, self.hash(channel, address)),
                           {"method": ev.method, "source": ev.source,
                            "consent_text_version": ev.consent_text_version}, at=now)
        return status

    async def record_opt_out(
        self,
        conn: AsyncConnection,
        campaign: str,
        channel: str,
        address: str,
        *,
        method: str,
        reason: str,
        actor: str,
        every_campaign: bool = False,
        suppression_reason: str | None = None,
    ) -> int:
        """Opt out of this campaign (or, ``every_campaign``, suppress on all) and cancel the
        queued messages it covers, in the caller's transaction. Returns how many messages
        were cancelled."""
        now = time.time()
        ahash = self.hash(channel, address)
        await self._set_status(conn, campaign, channel, address, Status.OPTED_OUT, now)
        await conn.execute(
            consent_events.insert().values(
                campaign=campaign, channel=channel, address=address, address_hash=ahash,
                at=now, event="opted_out", method=method, source=reason, actor=actor,
            )
        )
        if every_campaign:
            await self.suppress(conn, channel, address, suppression_reason or reason,
                                campaign=campaign, actor=actor, at=now)
            cancelled = await outbox.cancel_queued_for(conn, None, channel, ahash, "suppressed")
        else:
            cancelled = await outbox.cancel_queued_for(conn, campaign, channel, ahash,
                                                       "opted_out")
        await audit.append(conn, campaign, actor,
                           "suppression.recorded" if every_campaign else "opt_out.recorded",
                           audit.subject_for(channel, ahash),
                           {"method": method, "reason": reason, "cancelled": cancelled}, at=now)
        return cancelled

    async def suppress(self, conn: AsyncConnection, channel: str, address: str | None,
                       reason: str, *, campaign: str | None, actor: str,
                       at: float | None = None, ahash: str | None = None) -> None:
        """Put an address (or, erased, only its hash) on the every-campaign list. An
        existing entry is refreshed: the newest block is the one that counts."""
        now = time.time() if at is None else at
        ahash = ahash or self.hash(channel, address or "")
        await conn.execute(
            upsert(conn, suppressions, ("channel", "address_hash"),
                   dict(channel=channel, address_hash=ahash, address=address, reason=reason,
                        campaign=campaign, actor=actor, at=now),
                   dict(reason=reason, at=now, actor=actor))
        )

    async def history(self, conn: AsyncConnection, campaign: str, channel: str,
                      address: str) -> Sequence[HistoryEntry]:
        ahash = self.hash(channel, address)
        rows = await conn.execute(
            select(consent_events)
            .where(consent_events.c.campaign == campaign, consent_events.c.channel == channel,
                   consent_events.c.address_hash == ahash)
            .order_by(consent_events.c.at, consent_events.c.id)
        )
        out = [HistoryEntry(r.at, r.event, r.method, r.source, r.actor, r.evidence,
                            r.consent_text_version, r.link_id) for r in rows]
        supp = (await conn.execute(
            select(suppressions).where(suppressions.c.channel == channel,
                                       suppressions.c.address_hash == ahash))).first()
        if supp is not None:
            # The every-campaign list is shared so that it blocks everywhere; who recorded a
            # block in another campaign is that campaign's business, not this one's.
            actor = supp.actor if supp.campaign == campaign else ANOTHER_CAMPAIGN
            out.append(HistoryEntry(supp.at, "suppressed", None, supp.reason, actor))
            out.sort(key=lambda h: h.at)
        return out

    async def touch_contact(self, conn: AsyncConnection, campaign: str, channel: str,
                            address: str) -> None:
        await conn.execute(
            update(subscriptions)
            .where(subscriptions.c.campaign == campaign, subscriptions.c.channel == channel,
                   subscriptions.c.address == address)
            .values(last_contact_at=time.time())
        )

    async def _set_status(self, conn: AsyncConnection, campaign: str, channel: str,
                          address: str, status: Status, now: float) -> None:
        values: dict[str, Any] = dict(
            campaign=campaign, channel=channel, address=address,
            address_hash=self.hash(channel, address), status=status.value, restricted=False,
            updated_at=now, last_contact_at=now,
            consented_at=now if status is Status.SUBSCRIBED else None,
        )
        changes: dict[str, Any] = dict(status=status.value, updated_at=now, last_contact_at=now)
        if status is Status.SUBSCRIBED:
            changes["consented_at"] = now
        await conn.execute(upsert(conn, subscriptions, ("campaign", "channel", "address"),
                                  values, changes))

    async def _tag(self, conn: AsyncConnection, campaign: str, channel: str, address: str,
                   given: Sequence[str], link_id: str | None, now: float) -> None:
        wanted = set(given)
        if link_id is not None:
            raw = (await conn.execute(select(links.c.tags).where(
                links.c.id == link_id, links.c.campaign == campaign))).scalar()
            wanted.update(json.loads(raw) if raw else ())
        if not wanted:
            return
        sub_id = (await conn.execute(select(subscriptions.c.id).where(
            subscriptions.c.campaign == campaign, subscriptions.c.channel == channel,
            subscriptions.c.address == address))).scalar_one()
        await tags.add_tags(conn, [int(sub_id)], campaign, channel, sorted(wanted), now)

    async def _event(self, conn: AsyncConnection, campaign: str, channel: str, address: str,
                     now: float, event: str, ev: Evidence, link_id: str | None) -> None:
        await conn.execute(
            consent_events.insert().values(
                campaign=campaign, channel=channel, address=address,
                address_hash=self.hash(channel, address), at=now, event=event,
                method=ev.method, source=ev.source, evidence=ev.evidence,
                consent_text_version=ev.consent_text_version, actor=ev.actor, link_id=link_id,
            )
        )


_PROBLEM_DETAIL = {
    "missing_evidence": "a consent needs a non-empty source and evidence",
    "denied_source": "consent from this source is refused by the campaign's policy "
                     "(lists may not be harvested from other groups)",
    "invalid_method": "method must be one of web_form, paper_form, verbal, keyword, "
                      "telegram_start, import",
    "method_not_allowed_for_channel": "a Telegram user subscribes only themselves (/start "
                                      "and the yes button): the method must be "
                                      "telegram_start",
}

