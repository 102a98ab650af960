"""The consent gate: the one place that decides, at dispatch time, whether a message may go,
and the only issuer of the permits without which no adapter sends.

The gate reads the subscription and suppression state and moves the admitted rows to
``sending`` in the same transaction, so an opt-out that commits before it is seen, and one
that commits after it finds the row already on its way (the single-provider-call window).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.adapters.base import Permit, _issue_permit
from consentgate.bot.consent import (
    Decision,
    Reason,
    Status,
    SubscriberState,
    Target,
    decide,
    next_send_time,
)
from consentgate.bot.ledger import Ledger, suppressed_clause
from consentgate.bot.outbox import Claimed, MessageStatus
from consentgate.storage.models import messages, subscriptions

__all__ = ["Admission", "CampaignRules", "ConsentGate"]


@dataclass(frozen=True)
class CampaignRules:
    """What the gate needs of a campaign's configuration."""

    channels_enabled: frozenset[str]
    own_chats: frozenset[str] = frozenset()


@dataclass
class Admission:
    permitted: list[tuple[Claimed, Permit]] = field(default_factory=list)
    refused: list[tuple[Claimed, Reason]] = field(default_factory=list)
    delayed: list[Claimed] = field(default_factory=list)


def is_group(channel: str, address: str) -> bool:
    """A Telegram group or channel has a negative chat id; a person's is positive."""
    return channel == "telegram" and address.startswith("-")


class ConsentGate:
    def __init__(
        self,
        ledger: Ledger,
        campaigns: Mapping[str, CampaignRules],
        *,
        quiet_hours: tuple[str, str] | None = None,
        timezone: str = "Europe/London",
    ) -> None:
        self.ledger = ledger
        self.campaigns = campaigns
        self.quiet_hours = quiet_hours
        self.timezone = timezone

    def _decide(self, campaign: str, channel: str, address: str, kind: str,
                state: SubscriberState) -> Decision:
        rules = self.campaigns.get(campaign)
        if rules is None or channel not in rules.channels_enabled:
            return Decision.refuse(Reason.CHANNEL_DISABLED)
        if kind == "reply":
            # The answer to a person's own STOP / HELP / START: the one thing an opted-out
            # address may still receive.
            return Decision.allow()
        if kind == "confirm":
            # A double opt-in request goes only to an address waiting to confirm.
            if state.status is Status.PENDING:
                return Decision.allow()
            return Decision.refuse(Reason.NO_CONSENT)
        target = Target(channel, address, group=is_group(channel, address))
        return decide(state, target, rules.channels_enabled, rules.own_chats)

    async def decide_now(self, conn: AsyncConnection, campaign: str, channel: str,
                         address: str, kind: str = "campaign") -> Decision:
        """The decision as it stands now (used to refuse a message up front). Dispatch
        decides again: this answer is never a permit."""
        state = await self.ledger.state(conn, campaign, channel, address)
        return self._decide(campaign, channel, address, kind, state)

    def decide_state(self, campaign: str, channel: str, address: str, state: SubscriberState,
                     kind: str = "campaign") -> Decision:
        """:meth:`decide_now` for a state the caller has already read."""
        return self._decide(campaign, channel, address, kind, state)

    async def admit(self, conn: AsyncConnection, worker: str, batch: Sequence[Claimed],
                    lease_seconds: float) -> Admission:
        """Decide every claimed message of ``batch`` now, in the caller's write transaction
        (see :meth:`admit_sync`)."""
        return await conn.run_sync(self.admit_sync, worker, batch, lease_seconds)

    def admit_sync(self, conn: Connection, worker: str, batch: Sequence[Claimed],
                   lease_seconds: float) -> Admission:
        """Decide every claimed message of ``batch`` now, in the caller's write transaction:
        admitted rows become ``sending`` and get a permit, refused rows become ``blocked``,
        rows held by quiet hours go back to the queue with a later ``not_before``.

        Synchronous, so that the dispatcher can run a whole admission in one go on SQLite
        (:meth:`storage.db.Database.write_sync`)."""
        out = Admission()
        if not batch:
            return out
        by_id = {c.id: c for c in batch}
        rows = conn.execute(_state_of(conn.dialect.name), {"ids": list(by_id)})
        now = time.time()
        # One clock reading for the batch: every campaign message in it is held or not alike.
        resume = next_send_time(datetime.fromtimestamp(now, UTC), self.quiet_hours,
                                self.timezone)
        allowed: list[int] = []
        for row in rows:
            claimed = by_id[row.id]
            if row.status != MessageStatus.QUEUED or row.lease_owner != worker:
                continue  # cancelled (opt-out, broadcast cancel) since it was claimed
            if claimed.kind == "campaign":
                if resume is not None:
                    conn.execute(_DELAY, {"m_id": row.id, "m_at": resume.timestamp()})
                    out.delayed.append(claimed)
                    continue
            status = Status(row.sub_status) if row.sub_status else Status.UNKNOWN
            if row.restricted and status is Status.SUBSCRIBED:
                status = Status.PENDING
            state = SubscriberState(status, bool(row.suppressed))
            decision = self._decide(claimed.campaign, claimed.channel, claimed.address,
                                    claimed.kind, state)
            if decision.allowed:
                allowed.append(row.id)
            else:
                assert decision.reason is not None
                out.refused.append((claimed, decision.reason))
        if allowed:
            conn.execute(_ADMIT, {"ids": allowed, "m_now": now, "m_expires": now + lease_seconds})
            for message_id in allowed:
                c = by_id[message_id]
                out.permitted.append(
                    (c, _issue_permit(c.campaign, c.channel, c.address, str(c.id))))
        for c, reason in out.refused:
            conn.execute(_BLOCK, {"m_id": c.id, "m_reason": reason.value, "m_now": now})
        return out


# The admission's statements, built once: building and keying a statement for the
# compiled-statement cache costs more per batch than running it.

@functools.cache
def _state_of(dialect: str) -> Select[Any]:
    """Each claimed message's row and its recipient's consent and suppression state."""
    m, s = messages, subscriptions
    query = (
        select(m.c.id, m.c.status, m.c.lease_owner, s.c.status.label("sub_status"),
               s.c.restricted, suppressed_clause(m.c.channel, m.c.address_hash,
                                                 s.c.consented_at).label("suppressed"))
        .select_from(m.outerjoin(s, and_(s.c.campaign == m.c.campaign,
                                         s.c.channel == m.c.channel,
                                         s.c.address == m.c.address)))
        .where(m.c.id.in_(bindparam("ids", expanding=True)))
        .order_by(m.c.id)
    )
    if dialect == "postgresql":
        # Lock the rows until this transaction ends: a lease that expired while they
        # waited may have been taken by another worker, whose claim commits between our
        # read and our update; the lock makes us read its lease_owner and leave them.
        query = query.with_for_update(of=m)
    return query


_ADMIT = (
    update(messages).where(messages.c.id.in_(bindparam("ids", expanding=True)))
    .values(status=MessageStatus.SENDING, attempts=messages.c.attempts + 1,
            updated_at=bindparam("m_now"), dispatched_at=bindparam("m_now"),
            lease_expires=bindparam("m_expires"))
)
_BLOCK = (
    update(messages).where(messages.c.id == bindparam("m_id"))
    .values(status=MessageStatus.BLOCKED, reason=bindparam("m_reason"),
            updated_at=bindparam("m_now"), lease_owner=None, lease_expires=None)
)
_DELAY = (
    update(messages).where(messages.c.id == bindparam("m_id"))
    .values(not_before=bindparam("m_at"), lease_owner=None, lease_expires=None)
)
