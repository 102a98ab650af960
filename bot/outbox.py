"""The durable outbox: every outbound message is a row before anything is sent.

A message moves ``queued`` -> (claimed: a lease on a queued row) -> ``sending`` (the gate
admitted it, the provider call is under way) -> ``sent`` / ``delivered`` / ``failed``, or
``blocked`` (the gate refused it at dispatch) or ``cancelled`` (opt-out, broadcast cancel).
A row left ``sending`` by a dead process is never sent again automatically: we cannot know
whether the provider took it, and a second copy is worse than a missing one. It becomes
``failed`` with reason ``interrupted`` (a later provider status callback can still correct
it to ``sent`` / ``delivered``).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Update,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.storage.models import broadcasts, messages

__all__ = [
    "ACTIVE_STATUSES",
    "Claimed",
    "MAX_ATTEMPTS",
    "MessageStatus",
    "backoff",
    "cancel_queued",
    "cancel_queued_for",
    "claim_sync",
    "enqueue",
    "mark_failed",
    "mark_retry",
    "mark_sent",
    "mark_sent_sync",
    "reap_interrupted",
    "release_leases",
]



class MessageStatus(StrEnum):
    """A message's ``status`` (see above). Stored as the plain value, which the members
    equal, so queries and stored rows read the same with or without the enum."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"


MAX_ATTEMPTS = 8
ACTIVE_STATUSES = (MessageStatus.QUEUED, MessageStatus.SENDING)


@dataclass(frozen=True)
class Claimed:
    id: int
    campaign: str
    channel: str
    address: str
    address_hash: str
    kind: str
    text: str
    subject: str | None
    broadcast_id: int | None
    attempts: int


async def enqueue(
    conn: AsyncConnection,
    *,
    campaign: str,
    channel: str,
    address: str,
    address_hash: str,
    text: str,
    kind: str = "campaign",
    created_by: str,
    not_before: float | None = None,
    subject: str | None = None,
) -> int:
    now = time.time()
    result = await conn.execute(
        messages.insert().values(
            campaign=campaign, channel=channel, address=address, address_hash=address_hash,
            kind=kind, text=text, subject=subject, status=MessageStatus.QUEUED, attempts=0,
            created_by=created_by, created_at=now, updated_at=now,
            not_before=now if not_before is None else not_before,
        ).returning(messages.c.id)
    )
    return int(result.scalar_one())


# The dispatcher's statements are built once, with parameters: every lane runs them many
# times a second, and building and keying a statement costs more than running it.

_DUE = (
    select(messages.c.id)
    .where(messages.c.campaign == bindparam("d_campaign"),
           messages.c.channel == bindparam("d_channel"),
           messages.c.status == MessageStatus.QUEUED,
           messages.c.not_before <= bindparam("d_now"),
           or_(messages.c.lease_expires.is_(None),
               messages.c.lease_expires < bindparam("d_now")))
    .order_by(messages.c.not_before, messages.c.id)
)
_ANY_DUE = _DUE.limit(1)


@functools.cache
def _claim_statement(dialect: str) -> Update:
    due = _DUE.limit(bindparam("d_limit", type_=Integer))
    if dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    return (
        update(messages)
        .where(messages.c.id.in_(due.scalar_subquery()))
        .values(lease_owner=bindparam("d_worker"), lease_expires=bindparam("d_expires"))
        .returning(messages.c.id, messages.c.campaign, messages.c.channel,
                   messages.c.address, messages.c.address_hash, messages.c.kind,
                   messages.c.text, messages.c.subject, messages.c.broadcast_id,
                   messages.c.attempts)
    )


async def has_due(conn: AsyncConnection, *, campaign: str, channel: str,
                  now: float | None = None) -> bool:
    """Whether a claim would find anything, asked in a read transaction: an idle lane
    polling with a write transaction would hold SQLite's write lock for nothing."""
    now = time.time() if now is None else now
    params = {"d_campaign": campaign, "d_channel": channel, "d_now": now}
    return (await conn.execute(_ANY_DUE, params)).first() is not None


def claim_sync(
    conn: Connection, *, worker: str, campaign: str, channel: str, limit: int,
    lease_seconds: float, now: float | None = None,
) -> list[Claimed]:
    """Lease up to ``limit`` due messages of one campaign and channel, oldest first.
    A lease only reserves the row: the gate still decides, later, whether it is sent."""
    now = time.time() if now is None else now
    rows = conn.execute(_claim_statement(conn.dialect.name), {
        "d_campaign": campaign, "d_channel": channel, "d_now": now, "d_limit": limit,
        "d_worker": worker, "d_expires": now + lease_seconds}).all()
    texts = _broadcast_texts(conn, {r.broadcast_id for r in rows if r.text is None})
    claimed = [
        Claimed(r.id, r.campaign, r.channel, r.address, r.address_hash, r.kind,
                r.text if r.text is not None else texts[r.broadcast_id][0],
                r.subject if r.text is not None else texts[r.broadcast_id][1],
                r.broadcast_id, r.attempts)
        for r in rows
    ]
    claimed.sort(key=lambda c: c.id)
    return claimed


def _broadcast_texts(conn: Connection, ids: set[int]) -> dict[int, tuple[str, str | None]]:
    if not ids:
        return {}
    rows = conn.execute(
        select(broadcasts.c.id, broadcasts.c.text, broadcasts.c.subject)
        .where(broadcasts.c.id.in_(ids)))
    return {r.id: (r.text, r.subject) for r in rows}


async def cancel_queued(conn: AsyncConnection, which: ColumnElement[bool], reason: str, *,
                        replies: bool = False, now: float | None = None) -> int:
    """Cancel the queued messages ``which`` selects, with ``reason``, in the caller's
    transaction; return how many. Leased rows are cancelled too: the gate admits only rows
    still ``queued``. Replies to a person's own STOP/HELP are left alone unless ``replies``
    (their address is about to go). Every cancellation of queued work is this statement."""
    where = and_(which, messages.c.status == MessageStatus.QUEUED)
    if not replies:
        where = and_(where, messages.c.kind != "reply")
    result = await conn.execute(
        update(messages).where(where)
        .values(status=MessageStatus.CANCELLED, reason=reason,
                updated_at=time.time() if now is None else now,
                lease_owner=None, lease_expires=None)
    )
    return int(result.rowcount or 0)


async def cancel_queued_for(conn: AsyncConnection, campaign: str | None, channel: str,
                            address_hash: str, reason: str) -> int:
    """Cancel an address's queued campaign messages (of one campaign, or every campaign
    when ``campaign`` is None); replies to the person's own STOP/HELP are left alone."""
    which = and_(messages.c.channel == channel, messages.c.address_hash == address_hash)
    if campaign is not None:
        which = and_(which, messages.c.campaign == campaign)
    return await cancel_queued(conn, which, reason)


async def mark_sent(conn: AsyncConnection, sent: Iterable[tuple[int, str | None]]) -> None:
    """Record provider acceptance (see :func:`mark_sent_sync`)."""
    await conn.run_sync(mark_sent_sync, sent)


def mark_sent_sync(conn: Connection, sent: Iterable[tuple[int, str | None]]) -> None:
    """Record provider acceptance. A status callback may have got there first (it sets
    ``sent``/``delivered`` itself), so only rows still ``sending`` change."""
    now = time.time()
    rows = [{"m_id": message_id, "m_provider_id": provider_id, "m_now": now}
            for message_id, provider_id in sent]
    if rows:
        # One executemany for the whole batch: a statement per row costs more than the send.
        conn.execute(_MARK_SENT, rows)


_MARK_SENT = (
    update(messages)
    .where(messages.c.id == bindparam("m_id"), messages.c.status == MessageStatus.SENDING)
    .values(status=MessageStatus.SENT, provider_id=bindparam("m_provider_id"),
            sent_at=bindparam("m_now"), updated_at=bindparam("m_now"), lease_owner=None,
            lease_expires=None)
)


def backoff(attempts: int, retry_after: float | None = None, base: float = 1.0) -> float:
    """Seconds before the next try: the provider's word if it gave one, else exponential
    with jitter (about 1 s, 2 s, 4 s ... capped at 5 minutes, times ``base``)."""
    if retry_after is not None and retry_after > 0:
        return retry_after + random.uniform(0, 0.25)
    cap = min(300.0, float(2 ** max(0, attempts - 1))) * base
    return random.uniform(cap / 2, cap)


async def mark_retry(conn: AsyncConnection, message_id: int, attempts: int, reason: str,
                     retry_after: float | None, base: float = 1.0) -> MessageStatus:
    """Put a message back in the queue after a transient failure, or fail it for good once
    it has had :data:`MAX_ATTEMPTS`. Returns the new status."""
    now = time.time()
    if attempts >= MAX_ATTEMPTS:
        await mark_failed(conn, message_id, reason, f"gave up after {attempts} attempts")
        return MessageStatus.FAILED
    await conn.execute(
        update(messages)
        .where(messages.c.id == message_id, messages.c.status == MessageStatus.SENDING)
        .values(status=MessageStatus.QUEUED, not_before=now + backoff(attempts, retry_after, base),
                last_error=reason, updated_at=now, lease_owner=None, lease_expires=None)
    )
    return MessageStatus.QUEUED


async def mark_failed(conn: AsyncConnection, message_id: int, reason: str,
                      detail: str = "") -> None:
    await conn.execute(
        update(messages)
        .where(messages.c.id == message_id, messages.c.status == MessageStatus.SENDING)
        .values(status=MessageStatus.FAILED, reason=reason, last_error=detail or reason,
                updated_at=time.time(), lease_owner=None, lease_expires=None)
    )


async def reap_interrupted(conn: AsyncConnection, *, everything: bool = False,
                           now: float | None = None) -> int:
    """Fail the rows left ``sending`` by a process that died mid-call (lease expired, or
    every such row when this is the only process, as on SQLite at start-up)."""
    now = time.time() if now is None else now
    cond = messages.c.status == MessageStatus.SENDING
    if not everything:
        cond = and_(cond, messages.c.lease_expires < now)
    result = await conn.execute(
        update(messages).where(cond)
        .values(status=MessageStatus.FAILED, reason="interrupted",
                last_error="the process stopped during the provider call; not resent",
                updated_at=now, lease_owner=None, lease_expires=None)
    )
    return int(result.rowcount or 0)


async def release_leases(conn: AsyncConnection, worker: str | None = None,
                         ids: Sequence[int] | None = None) -> int:
    """Return leased but unsent rows to the queue (graceful shutdown, or start-up of the
    only process)."""
    cond = and_(messages.c.status == MessageStatus.QUEUED, messages.c.lease_owner.is_not(None))
    if worker is not None:
        cond = and_(cond, messages.c.lease_owner == worker)
    if ids is not None:
        cond = and_(cond, messages.c.id.in_(list(ids)))
    result = await conn.execute(
        update(messages).where(cond).values(lease_owner=None, lease_expires=None))
    return int(result.rowcount or 0)


async def counts_by_status(conn: AsyncConnection, broadcast_id: int,
                           dispatched_since: float | None = None) -> dict[str, int]:
    """The broadcast's messages by status; with ``dispatched_since``, only those the gate
    admitted (last) at or after that time."""
    stmt = (select(messages.c.status, func.count())
            .where(messages.c.broadcast_id == broadcast_id)
            .group_by(messages.c.status))
    if dispatched_since is not None:
        stmt = stmt.where(messages.c.dispatched_at >= dispatched_since)
    rows = await conn.execute(stmt)
    return {status: int(n) for status, n in rows}
