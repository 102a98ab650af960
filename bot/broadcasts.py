"""Broadcasts: who is in the audience, queueing them in batches, progress, pause, resume,
cancel, and broadcasts scheduled for later.

The audience is a channel's subscribers, or a segment of them by tags (:mod:`bot.tags`). It
is resolved by set-based SQL (two statements count it by reason; one INSERT ... SELECT per
batch queues it), never by a Python loop over people, and the count and the enqueue share
one condition, so a dry run counts exactly whom the same request would reach. Each batch is
its own short transaction so a STOP never waits long behind a broadcast, and the broadcast
row keeps a cursor, so a crash during queueing resumes where it stopped.

A broadcast does not write its whole audience to the outbox before it starts: ``create``
queues the first :attr:`BroadcastService.ahead` messages and returns, and the process that
sends (its :class:`BroadcastScheduler`) queues the next batches while fewer than that are
waiting. Starting a broadcast to a million people therefore takes the time of counting them,
the outbox holds what is about to go rather than the whole list, and each batch meets the
gate's rules as they are when it is queued (and the gate decides again at sending).

A broadcast with ``send_at`` waits in the database (status ``scheduled``) until then:
:class:`BroadcastScheduler` starts it when it is due, in whichever process runs a dispatcher,
also after a restart, late if the gateway was down at the time (``started_at`` shows it).
Its audience is resolved when it starts, and the gate decides each message when it is sent,
so a person who opted out while it waited gets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import String, and_, func, literal, or_, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.bot import audit, outbox
from consentgate.bot.errors import Conflict, Forbidden, InvalidInput, NotFound
from consentgate.bot.ledger import suppressed_clause
from consentgate.bot.messages import check_text, iso
from consentgate.bot.outbox import MessageStatus
from consentgate.bot.tags import Segment, segment_conditions, segment_members
from consentgate.storage.db import Database
from consentgate.storage.models import broadcasts, messages, subscriptions, suppressions
from consentgate.storage.sql import driving_join

__all__ = [
    "BroadcastScheduler",
    "BroadcastService",
    "MESSAGE_STATUSES",
    "parse_send_at",
    "pause_if_failing",
]

_log = structlog.get_logger("consentgate.broadcasts")
EVERYONE = Segment()

MESSAGE_STATUSES = tuple(MessageStatus)
BATCH = 5000
#: How many of a broadcast's messages are kept queued ahead of sending: a few seconds of
#: sending at full speed, so the dispatcher never waits for the next batch.
AHEAD = 4 * BATCH
#: How often the scheduler looks whether a broadcast still being queued needs its next
#: batches (it is also woken when a broadcast is created here).
FEED_INTERVAL = 0.25

#: A broadcast pauses itself when more than PAUSE_FAILURE_RATE of its messages that reached
#: the provider have failed (hard bounces above all), counted once PAUSE_AFTER_ATTEMPTS did.
#: A list that bounces like that is stale or was not collected with consent, and mailbox
#: providers block senders for it: a person should look before anything more goes.
#: Once an operator has looked and resumed it, only messages the gate admitted since the
#: resume count (``broadcasts.resumed_at``): the old failures do not pause it again at once,
#: but a fresh PAUSE_AFTER_ATTEMPTS that fail as badly do.
PAUSE_AFTER_ATTEMPTS = 200
PAUSE_FAILURE_RATE = 0.05
#: ``not_before`` of the queued messages of a paused broadcast: held until it is resumed
#: (then due at once) or cancelled.
HELD_UNTIL = 253402300799.0  # 9999-12-31T23:59:59Z
#: A ``send_at`` this far in the past is refused as a likely mistake (a wrong year or day
#: would otherwise send at once); closer than that, the broadcast goes now.
SEND_AT_GRACE = 60.0
#: A scheduled broadcast that started more than this after its ``send_at`` shows as late.
LATE_AFTER = 60.0


def parse_send_at(value: object, now: float) -> float | None:
    """``send_at`` as given: an ISO 8601 date-time with its UTC offset (``Z`` or ``+01:00``:
    "7 am" means nothing without one), as UNIX seconds; None when absent or due within
    :data:`SEND_AT_GRACE` (send now). Raises ``invalid_send_at`` (422)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("invalid_send_at", "send_at must be an ISO 8601 date-time with an "
                                              "offset, e.g. 2026-05-07T07:00:00+01:00")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(
            "z", "+00:00"))
    except ValueError:
        raise InvalidInput("invalid_send_at", "send_at must be an ISO 8601 date-time with an "
                                              "offset, e.g. 2026-05-07T07:00:00+01:00") from None
    if parsed.tzinfo is None:
        raise InvalidInput("invalid_send_at", "send_at needs a UTC offset (Z or +01:00): "
                                              "the time of day alone is ambiguous")
    at = parsed.astimezone(UTC).timestamp()
    if at < now - SEND_AT_GRACE:
        raise InvalidInput("invalid_send_at", "send_at is in the past")
    return at if at > now else None


def _segment(row: Any) -> Segment:
    if not row.segment:
        return Segment()
    raw = json.loads(row.segment)
    return Segment(tuple(raw.get("tags_any", ())), tuple(raw.get("tags_all", ())),
                   tuple(raw.get("exclude_tags", ())))


def _failure_figures(counts: dict[str, int]) -> tuple[int, int]:
    failed = counts.get(MessageStatus.FAILED, 0)
    return failed, (counts.get(MessageStatus.SENT, 0) + counts.get(MessageStatus.DELIVERED, 0)
                    + failed)


async def pause_if_failing(conn: AsyncConnection, broadcast_id: int,
                           after_attempts: int = PAUSE_AFTER_ATTEMPTS) -> bool:
    """Pause the broadcast if its failures broke the rule above (in the caller's
    transaction): its queued messages are held, including those a dispatcher has claimed
    but not yet taken to the gate. Returns True if it was paused now. On a paused broadcast
    it holds again what a retry has put back in the queue since."""
    # Locked (PostgreSQL): a resume committing meanwhile must not see the messages it just
    # released held again by the branch below.
    b = (await conn.execute(
        select(broadcasts.c.campaign, broadcasts.c.status, broadcasts.c.resumed_at)
        .where(broadcasts.c.id == broadcast_id).with_for_update())).first()
    if b is not None and b.status == "paused":
        await conn.execute(
            update(messages).where(messages.c.broadcast_id == broadcast_id,
                                   messages.c.status == MessageStatus.QUEUED,
                                   messages.c.not_before < HELD_UNTIL)
            .values(not_before=HELD_UNTIL, lease_owner=None, lease_expires=None))
        return False
    if b is None or b.status not in ("enqueuing", "queued"):
        return False
    failed, attempted = _failure_figures(await outbox.counts_by_status(
        conn, broadcast_id, dispatched_since=b.resumed_at))
    if attempted < after_attempts or failed <= PAUSE_FAILURE_RATE * attempted:
        return False
    now = time.time()
    await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                       .values(status="paused"))
    held = await conn.execute(
        update(messages).where(messages.c.broadcast_id == broadcast_id,
                               messages.c.status == MessageStatus.QUEUED)
        .values(not_before=HELD_UNTIL, lease_owner=None, lease_expires=None, updated_at=now))
    await audit.append(conn, b.campaign, "gateway", "broadcast.paused",
                       f"broadcast#{broadcast_id}",
                       {"failed": failed, "attempted": attempted,
                        "held": int(held.rowcount or 0)}, at=now)
    return True


def _reason(status: str, restricted: bool, suppressed: bool) -> str:
    """Why a subscription is or is not in a broadcast's audience: ``eligible`` exactly when
    :func:`_eligible` holds; a suppression outranking it says ``suppressed`` whatever its
    status."""
    if suppressed or status == "suppressed":
        return "suppressed"
    if status == "opted_out":
        return "opted_out"
    return "eligible" if status == "subscribed" and not restricted else "no_consent"


def _eligible(campaign: str, channel: str) -> Any:
    s = subscriptions
    return and_(s.c.campaign == campaign, s.c.channel == channel,
                s.c.status == "subscribed", s.c.restricted.is_(False),
                ~suppressed_clause(s.c.channel, s.c.address_hash, s.c.consented_at))


async def _hash_boundary(conn: AsyncConnection, channel: str, after: str,
                         batch: int) -> tuple[str, bool]:
    """The keyed hash ``batch`` subscriptions (of any campaign) after ``after`` on this
    channel, in ``ix_subscriptions_hash`` order, and whether that is the last range. The
    last range ends at the highest hash rather than being open: with no upper bound the
    planner may read the whole audience index instead of the hash range."""
    s = subscriptions
    found = (await conn.execute(
        select(s.c.address_hash).where(s.c.channel == channel, s.c.address_hash > after)
        .order_by(s.c.address_hash).offset(batch - 1).limit(1))).scalar()
    if found is not None:
        return str(found), False
    highest = (await conn.execute(select(func.max(s.c.address_hash)).where(
        s.c.channel == channel))).scalar()
    return (str(highest) if highest is not None and highest > after else after), True


def _summary(b: Any, found: dict[str, int], judged: dict[str, int],
             pause_after_attempts: int) -> dict[str, Any]:
    """A broadcast as the API shows it: its row, and its messages counted by status
    (``judged``: those the failure rule looks at)."""
    counts = {k: found.get(k, 0) for k in MESSAGE_STATUSES}
    # Not queued yet (queueing goes on while it sends): counted from the audience it started
    # with, as queued, or as cancelled once it is.
    unqueued = (max(0, int(b.audience) - int(b.eligible))
                if b.audience is not None and b.cursor < b.upper else 0)
    counts[MessageStatus.CANCELLED if b.status == "cancelled"
           else MessageStatus.QUEUED] += unqueued
    paused: dict[str, Any] = {}
    if b.status in ("cancelled", "scheduled"):
        status = b.status
    elif b.status == "paused":
        status = "paused"
        failed, attempted = _failure_figures(judged)
        since = " since it was resumed" if b.resumed_at is not None else ""
        paused = {"paused": {
            "reason": "too_many_failures", "failed": failed, "attempted": attempted,
            "detail": f"{failed} of {attempted} messages{since} failed, over "
                      f"{PAUSE_FAILURE_RATE:.0%} after at least {pause_after_attempts}; "
                      "the rest are held until the broadcast is resumed or cancelled"}}
    elif (b.status == "enqueuing"
          or counts[MessageStatus.QUEUED] + counts[MessageStatus.SENDING] > 0):
        progressed = sum(counts.values()) - counts[MessageStatus.QUEUED]
        status = "sending" if progressed else "queued"
    else:
        status = "done"
    late = (b.send_at is not None and b.started_at is not None
            and b.started_at - b.send_at > LATE_AFTER)
    return {"id": b.id, "channel": b.channel, "status": status, "counts": counts,
            "eligible": int(b.eligible) + unqueued, "excluded": json.loads(b.excluded),
            "segment": _segment(b).as_dict(),
            "send_at": iso(b.send_at), "started_at": iso(b.started_at),
            "late": late,
            "late_seconds": (round(b.started_at - b.send_at, 1) if late else None),
            "created_at": iso(b.created_at), "created_by": b.created_by,
            "resumed_at": iso(b.resumed_at), **paused}


class BroadcastService:
    def __init__(self, db: Database, batch: int = BATCH, *,
                 pause_after_attempts: int = PAUSE_AFTER_ATTEMPTS,
                 ahead: int | None = None) -> None:
        self.db = db
        self.pause_after_attempts = pause_after_attempts
        #: About how many subscriptions one enqueue transaction reads.
        self.batch = batch
        #: How many messages of a broadcast being queued are kept waiting to be sent.
        self.ahead = 4 * batch if ahead is None else ahead

    async def audience(self, campaign: str, channel: str,
                       segment: Segment = EVERYONE) -> dict[str, Any]:
        """``{eligible, excluded: {reason: count}}`` of the channel's subscribers in
        ``segment``: whom a broadcast would queue now, and why the others would not get it.

        Two counts, both by status: everyone in the segment, read from the audience index
        alone (status and tag bits are in it), and those of them a suppression outranks,
        found from the suppression list (short) rather than by probing it once per person."""
        s, p = subscriptions, suppressions
        counts: dict[str, int] = {}
        async with self.db.read() as conn:
            conds = await segment_conditions(conn, segment, campaign)
            if conn.dialect.name == "postgresql":
                # One pass over up to the whole list, run once: compiling it (JIT) cost
                # PostgreSQL more than a second.
                await conn.exec_driver_sql("SET LOCAL jit = off")
            everyone = (
                select(literal(False).label("outranked"), s.c.status, s.c.restricted,
                       func.count().label("n"))
                .where(s.c.campaign == campaign, s.c.channel == channel, *conds)
                .group_by(s.c.status, s.c.restricted))
            outranked = (
                select(literal(True), s.c.status, s.c.restricted, func.count())
                .select_from(driving_join(p, s, and_(s.c.channel == p.c.channel,
                                                     s.c.address_hash == p.c.address_hash)))
                .where(p.c.channel == channel, s.c.campaign == campaign, *conds,
                       or_(s.c.consented_at.is_(None), p.c.at >= s.c.consented_at))
                .group_by(s.c.status, s.c.restricted))
            # One statement, so both counts see the same moment (on PostgreSQL each
            # statement of a read sees what had committed when it began).
            found: dict[tuple[str, bool], int] = {}
            for is_outranked, status, restricted, n in await conn.execute(
                    union_all(everyone, outranked)):
                if is_outranked:
                    counts["suppressed"] = counts.get("suppressed", 0) + int(n)
                    n = -n
                key = (str(status), bool(restricted))
                found[key] = found.get(key, 0) + int(n)
        for (status, restricted), n in found.items():
            if n > 0:
                reason = _reason(status, restricted, False)
                counts[reason] = counts.get(reason, 0) + n
        eligible = counts.pop("eligible", 0)
        return {"eligible": eligible, "excluded": counts}

    async def create(self, campaign: str, channels_enabled: frozenset[str], actor: str,
                     channel: str, text: str, subject: str | None = None,
                     dry_run: bool = False, *, segment: Segment = EVERYONE,
                     send_at: str | None = None) -> dict[str, Any]:
        """Queue a broadcast now, or (``send_at`` in the future) schedule it; a dry run
        counts the same audience and queues nothing."""
        if channel not in channels_enabled:
            raise Forbidden("channel_disabled", f"this campaign has no {channel} channel")
        check_text(text, subject)
        now = time.time()
        due = parse_send_at(send_at, now)
        audience = await self.audience(campaign, channel, segment)
        if dry_run:
            return {"id": None, "status": "dry_run", "audience": audience,
                    "segment": segment.as_dict(), "send_at": iso(due)}
        stored_segment = None if segment.everyone else json.dumps(segment.as_dict())
        walk = None if due is not None else await self._walk(campaign, channel, segment,
                                                             audience)
        async with self.db.write() as conn:
            upper = (await conn.execute(select(func.max(subscriptions.c.id)))).scalar() or 0
            broadcast_id = int((await conn.execute(broadcasts.insert().values(
                campaign=campaign, channel=channel, text=text, subject=subject,
                status="enqueuing" if due is None else "scheduled", cursor=0,
                upper=upper if due is None else 0, eligible=0,
                audience=audience["eligible"] if due is None else None,
                excluded=json.dumps(audience["excluded"]), created_by=actor,
                created_at=now, segment=stored_segment, send_at=due, hash_cursor=walk,
                started_at=now if due is None else None).returning(broadcasts.c.id))
            ).scalar_one())
            await audit.append(conn, campaign, actor,
                               "broadcast.created" if due is None else "broadcast.scheduled",
                               f"broadcast#{broadcast_id}",
                               {"channel": channel, "audience": audience,
                                "segment": segment.as_dict(), "send_at": iso(due)}, at=now)
        if due is not None:
            # Counted now only as an estimate: who is reached is decided when it starts.
            return {"id": broadcast_id, "status": "scheduled", "audience": audience,
                    "segment": segment.as_dict(), "send_at": iso(due)}
        queued, done = await self.enqueue(broadcast_id, until=self.ahead)
        if done:  # all queued already: the exact figure, after opt-outs meanwhile
            audience = {"eligible": queued, "excluded": audience["excluded"]}
        return {"id": broadcast_id, "status": "queued", "audience": audience,
                "segment": segment.as_dict(), "send_at": None}

    async def start_due(self, now: float | None = None) -> list[tuple[str, str, int]]:
        """Start every scheduled broadcast whose ``send_at`` has come (``(campaign, channel,
        id)`` of those this call started). Safe to run in several processes at once: each
        broadcast is started by exactly one of them."""
        now = time.time() if now is None else now
        async with self.db.read() as conn:
            due = (await conn.execute(
                select(broadcasts.c.id).where(broadcasts.c.status == "scheduled",
                                              broadcasts.c.send_at <= now)
                .order_by(broadcasts.c.send_at, broadcasts.c.id))).scalars().all()
        started = []
        for broadcast_id in due:
            key = await self._start(int(broadcast_id), now)
            if key is not None:
                started.append(key)
        return started

    async def next_due(self) -> float | None:
        """When the earliest scheduled broadcast is due, if any is."""
        async with self.db.read() as conn:
            due = (await conn.execute(select(func.min(broadcasts.c.send_at)).where(
                broadcasts.c.status == "scheduled"))).scalar()
        return None if due is None else float(due)

    async def _start(self, broadcast_id: int, now: float) -> tuple[str, str, int] | None:
        async with self.db.read() as conn:
            b = (await conn.execute(select(broadcasts).where(
                broadcasts.c.id == broadcast_id))).first()
        if b is None or b.status != "scheduled":
            return None
        # Resolved now, not when it was scheduled: who subscribed, left or changed tags
        # meanwhile counts as of now.
        audience = await self.audience(b.campaign, b.channel, _segment(b))
        walk = await self._walk(b.campaign, b.channel, _segment(b), audience)
        async with self.db.write() as conn:
            upper = (await conn.execute(select(func.max(subscriptions.c.id)))).scalar() or 0
            # Only from ``scheduled``: a cancel, or another process starting it, came first.
            result = await conn.execute(
                update(broadcasts).where(broadcasts.c.id == broadcast_id,
                                         broadcasts.c.status == "scheduled")
                .values(status="enqueuing", upper=upper, cursor=0, started_at=now,
                        hash_cursor=walk, excluded=json.dumps(audience["excluded"]),
                        audience=audience["eligible"]))
            if not result.rowcount:
                return None
            late = max(0.0, now - float(b.send_at))
            await audit.append(conn, b.campaign, "scheduler", "broadcast.started",
                               f"broadcast#{broadcast_id}",
                               {"send_at": iso(b.send_at), "late_seconds": round(late, 1),
                                "audience": audience}, at=now)
        _log.info("broadcast.started", campaign=b.campaign, broadcast_id=broadcast_id,
                  late_seconds=round(late, 1), late=late > LATE_AFTER)
        await self.enqueue(broadcast_id, until=self.ahead)
        return (b.campaign, b.channel, broadcast_id)

    async def _walk(self, campaign: str, channel: str, segment: Segment,
                    audience: dict[str, Any]) -> str | None:
        """How :meth:`enqueue` walks this audience: ``""`` (the start of the hash order)
        for most of the channel's list, None (id ranges, read from the tags) for a segment
        of under a quarter of it, where reading the whole list would cost more than the
        outbox index saves."""
        if segment.everyone or not (segment.tags_any or segment.tags_all):
            return ""
        size = audience["eligible"] + sum(audience["excluded"].values())
        s = subscriptions
        async with self.db.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(s).where(
                s.c.campaign == campaign, s.c.channel == channel))).scalar_one()
        return "" if size * 4 >= total else None

    async def enqueue(self, broadcast_id: int, batch: int | None = None, *,
                      until: int | None = None) -> tuple[int, bool]:
        """Queue the eligible audience in ranges of about ``batch`` subscriptions, one
        transaction each (resumable), until ``until`` messages were queued by this call
        (None: all). Returns (messages of the broadcast queued so far, whether queueing is
        done).

        The ranges are of keyed hashes, not of ids: ``ix_messages_recipient`` begins with
        the hash, so a batch taken in hash order adds its rows to one narrow part of that
        index instead of to pages all over it (each transaction then rewrites a few dozen
        pages, not thousands). ``hash_cursor`` is the last hash done; ``upper`` (the
        highest subscription id when it started) keeps later sign-ups out. A narrow
        segment (see :meth:`_walk`) and a broadcast whose queueing began before hash
        ranges go in id ranges (``hash_cursor`` None), ``cursor`` the last id done."""
        added = 0
        while True:
            async with self.db.write(bulk=True) as conn:
                # Locked (PostgreSQL): two processes queueing the same broadcast take its
                # ranges in turn, so nobody is queued twice.
                b = (await conn.execute(select(broadcasts).where(
                    broadcasts.c.id == broadcast_id).with_for_update())).one()
                if b.status != "enqueuing":
                    return int(b.eligible), b.cursor >= b.upper
                if until is not None and added >= until:
                    return int(b.eligible), False
                batch = batch or self.batch
                lo = int(b.cursor)
                if lo >= b.upper:
                    await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                                       .values(status="queued"))
                    return int(b.eligible), True
                if b.hash_cursor is None:  # a narrow segment, or begun before hash ranges
                    hi = min(int(b.upper), lo + batch)
                    n = await self._enqueue_range(conn, b, lo, hi)
                    await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                                       .values(cursor=hi, eligible=broadcasts.c.eligible + n))
                    added += n
                    continue
                after = b.hash_cursor or ""
                until_hash, last = await _hash_boundary(conn, b.channel, after, batch)
                n = (await self._enqueue_hashes(conn, b, after, until_hash)
                     if until_hash > after else 0)
                added += n
                # Done: the id cursor at ``upper`` says so (also to resume()).
                done: dict[str, Any] = {"cursor": b.upper} if last else {}
                await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                                   .values(hash_cursor=until_hash,
                                           eligible=broadcasts.c.eligible + n, **done))

    async def _enqueue_hashes(self, conn: AsyncConnection, b: Any, after: str,
                              until: str) -> int:
        """Queue the eligible audience with ``after < address_hash <= until``, read through
        ``ix_subscriptions_hash``.

        A person whose address was corrected while the broadcast was being queued has a
        new keyed hash, possibly one the walk has still to reach: whoever already has a
        message of this broadcast is left out: one probe of the recipient index each,
        written as a count so that PostgreSQL runs it per row, as meant, instead of turning
        it into a join it may read the whole outbox for."""
        s, m = subscriptions, messages
        return await self._queue(
            conn, b, s, s.c.channel == b.channel, s.c.address_hash > after,
            s.c.address_hash <= until,
            select(func.count()).where(
                m.c.channel == s.c.channel, m.c.address_hash == s.c.address_hash,
                m.c.campaign == s.c.campaign, m.c.broadcast_id == b.id
            ).scalar_subquery() == 0)

    async def _enqueue_range(self, conn: AsyncConnection, b: Any, lo: int, hi: int) -> int:
        """Queue the eligible audience with ``lo < id <= hi``; a segment naming tags to
        have is read from its tags' holders (:func:`segment_members`)."""
        s = subscriptions
        members = segment_members(_segment(b), b.campaign, b.channel, lo, hi)
        source = s if members is None else s.join(members,
                                                  s.c.id == members.c.subscription_id)
        return await self._queue(conn, b, source, s.c.id > lo, s.c.id <= hi)

    async def _queue(self, conn: AsyncConnection, b: Any, source: Any, *where: Any) -> int:
        """One batch: an outbox row for each eligible subscription of ``source`` in the
        broadcast's segment (tested on each row, :func:`segment_conditions`) that meets
        ``where`` and subscribed before the broadcast began (``upper``)."""
        s = subscriptions
        now = time.time()
        chosen = select(
            s.c.campaign, s.c.channel, s.c.address, s.c.address_hash,
            literal("campaign"), literal(MessageStatus.QUEUED, String), literal(b.id), literal(0),
            literal(b.created_by), literal(now), literal(now), literal(now),
        ).select_from(source).where(
            _eligible(b.campaign, b.channel), s.c.id <= b.upper,
            *await segment_conditions(conn, _segment(b), b.campaign), *where)
        result = await conn.execute(messages.insert().from_select(
            ["campaign", "channel", "address", "address_hash", "kind", "status",
             "broadcast_id", "attempts", "created_by", "created_at", "updated_at",
             "not_before"], chosen))
        return int(result.rowcount or 0)

    async def resume_unfinished(self) -> list[int]:
        """Go on queueing broadcasts a stop or crash interrupted (start-up): their next
        batches, the scheduler the rest."""
        ids = [broadcast_id for broadcast_id, _, _ in await self._unfinished()]
        for broadcast_id in ids:
            await self.enqueue(broadcast_id, until=self.ahead)
        return ids

    async def _unfinished(self) -> list[tuple[int, str, str]]:
        async with self.db.read() as conn:
            return [(int(i), str(campaign), str(channel)) for i, campaign, channel in
                    await conn.execute(
                        select(broadcasts.c.id, broadcasts.c.campaign, broadcasts.c.channel)
                        .where(broadcasts.c.status == "enqueuing").order_by(broadcasts.c.id))]

    async def feed(self) -> tuple[list[tuple[str, str]], bool]:
        """Queue the next batches of each broadcast still being queued that has fewer than
        half of :attr:`ahead` messages waiting. Returns the (campaign, channel) of those
        given more, and whether any broadcast is still being queued."""
        unfinished = False
        fed: list[tuple[str, str]] = []
        for broadcast_id, campaign, channel in await self._unfinished():
            async with self.db.read() as conn:
                waiting = (await conn.execute(select(func.count()).select_from(
                    select(messages.c.id).where(messages.c.broadcast_id == broadcast_id,
                                                messages.c.status == MessageStatus.QUEUED)
                    .limit(self.ahead).subquery()))).scalar_one()
            done = False
            if waiting * 2 < self.ahead:
                try:
                    _, done = await self.enqueue(broadcast_id, until=self.ahead - waiting)
                except Exception:  # the others still get their batches; this one next time
                    _log.exception("broadcast.queueing_failed", campaign=campaign,
                                   broadcast_id=broadcast_id)
                fed.append((campaign, channel))
            unfinished = unfinished or not done
        return fed, unfinished

    async def view(self, campaign: str, broadcast_id: int) -> dict[str, Any]:
        async with self.db.read() as conn:
            b = (await conn.execute(select(broadcasts).where(
                broadcasts.c.id == broadcast_id, broadcasts.c.campaign == campaign))).first()
            if b is None:
                raise NotFound("broadcast_not_found", "no such broadcast in this campaign")
            found = await outbox.counts_by_status(conn, broadcast_id)
            judged = found  # what the failure rule looked at
            if b.status == "paused" and b.resumed_at is not None:
                judged = await outbox.counts_by_status(conn, broadcast_id,
                                                       dispatched_since=b.resumed_at)
        return _summary(b, found, judged, self.pause_after_attempts)

    async def latest(self, campaign: str, limit: int = 20) -> list[dict[str, Any]]:
        """The campaign's broadcasts, newest first, each as :meth:`view` shows it."""
        m = messages
        async with self.db.read() as conn:
            rows = (await conn.execute(
                select(broadcasts).where(broadcasts.c.campaign == campaign)
                .order_by(broadcasts.c.id.desc()).limit(limit))).all()
            found: dict[int, dict[str, int]] = {int(b.id): {} for b in rows}
            if found:
                counted = await conn.execute(
                    select(m.c.broadcast_id, m.c.status, func.count())
                    .where(m.c.broadcast_id.in_(list(found)))
                    .group_by(m.c.broadcast_id, m.c.status))
                for broadcast_id, status, n in counted:
                    found[int(broadcast_id)][status] = int(n)
        return [_summary(b, found[int(b.id)], found[int(b.id)], self.pause_after_attempts)
                for b in rows]

    async def nothing_dispatching(self, broadcast_id: int) -> bool:
        """Whether this broadcast has messages due that no process is there to send (no
        ``serve`` or ``worker`` running): on SQLite none holds the single-process lock; on
        PostgreSQL, where processes come and go freely, no message anywhere is leased
        although some of this broadcast's are due. Messages held for quiet hours are not
        due, so a broadcast waiting for the morning is not taken for a stalled one."""
        now = time.time()
        async with self.db.read() as conn:
            due = (await conn.execute(
                select(messages.c.id).where(messages.c.broadcast_id == broadcast_id,
                                            messages.c.status == MessageStatus.QUEUED,
                                            messages.c.not_before <= now).limit(1))).first()
            if due is None:
                return False
            if self.db.is_sqlite:
                return not self.db.single_process_claimed()
            leased = (await conn.execute(
                select(messages.c.id).where(messages.c.lease_expires > now).limit(1))).first()
        return leased is None

    async def recent_ids(self, campaign: str, *, before: int | None = None,
                         limit: int = 50) -> list[int]:
        """A campaign's broadcast ids, newest first; ``before`` continues from a page."""
        stmt = (select(broadcasts.c.id).where(broadcasts.c.campaign == campaign)
                .order_by(broadcasts.c.id.desc()).limit(limit))
        if before is not None:
            stmt = stmt.where(broadcasts.c.id < before)
        async with self.db.read() as conn:
            return [int(i) for i in (await conn.execute(stmt)).scalars()]

    async def content(self, campaign: str, broadcast_id: int) -> tuple[str, str | None]:
        """What a broadcast says: (text, email subject). 404 ``broadcast_not_found``."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(broadcasts.c.text, broadcasts.c.subject).where(
                broadcasts.c.id == broadcast_id,
                broadcasts.c.campaign == campaign))).first()
        if row is None:
            raise NotFound("broadcast_not_found", "no such broadcast in this campaign")
        return str(row.text), row.subject

    async def resume(self, campaign: str, broadcast_id: int, actor: str) -> dict[str, Any]:
        """Resume a paused broadcast: its held messages are due again at once (the gate
        still decides each one when it is sent, so whoever opted out meanwhile gets
        nothing), queueing goes on if the pause interrupted it, and from now on the failure
        rule judges only messages admitted after this. Any other state is a Conflict."""
        now = time.time()
        async with self.db.write() as conn:
            b = (await conn.execute(
                select(broadcasts.c.status, broadcasts.c.cursor, broadcasts.c.upper)
                .where(broadcasts.c.id == broadcast_id, broadcasts.c.campaign == campaign)
                .with_for_update())).first()
            if b is None:
                raise NotFound("broadcast_not_found", "no such broadcast in this campaign")
            if b.status != "paused":
                state = "cancelled" if b.status == "cancelled" else "not paused"
                raise Conflict("broadcast_not_paused",
                               f"only a paused broadcast can be resumed; this one is {state}")
            status = "enqueuing" if b.cursor < b.upper else "queued"
            await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                               .values(status=status, resumed_at=now))
            released = await conn.execute(
                update(messages).where(messages.c.broadcast_id == broadcast_id,
                                       messages.c.status == MessageStatus.QUEUED,
                                       messages.c.not_before >= HELD_UNTIL)
                .values(not_before=now, updated_at=now))
            await audit.append(conn, campaign, actor, "broadcast.resumed",
                               f"broadcast#{broadcast_id}",
                               {"released": int(released.rowcount or 0)}, at=now)
        if status == "enqueuing":
            await self.enqueue(broadcast_id, until=self.ahead)
        return await self.view(campaign, broadcast_id)

    async def cancel(self, campaign: str, broadcast_id: int, actor: str) -> dict[str, Any]:
        """Cancel: no message of it is handed to a provider after this commits (a message
        already on the wire, at most one provider call each, completes)."""
        async with self.db.write() as conn:
            b = (await conn.execute(select(
                broadcasts.c.id, broadcasts.c.status, broadcasts.c.audience,
                broadcasts.c.eligible, broadcasts.c.cursor, broadcasts.c.upper).where(
                broadcasts.c.id == broadcast_id, broadcasts.c.campaign == campaign)
                .with_for_update())).first()
            if b is None:
                raise NotFound("broadcast_not_found", "no such broadcast in this campaign")
            await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                               .values(status="cancelled"))
            cancelled = await outbox.cancel_queued(
                conn, messages.c.broadcast_id == broadcast_id, "broadcast_cancelled")
            if b.status != "cancelled" and b.audience is not None and b.cursor < b.upper:
                cancelled += max(0, int(b.audience) - int(b.eligible))  # never queued now
            await audit.append(conn, campaign, actor, "broadcast.cancelled",
                               f"broadcast#{broadcast_id}", {"cancelled": cancelled})
        return {"id": broadcast_id, "status": "cancelled", "cancelled": cancelled}


class BroadcastScheduler:
    """Starts scheduled broadcasts when they are due, and queues the next batches of
    broadcasts that are sending (:meth:`BroadcastService.feed`). The schedule and the
    queueing's progress live in the database (``broadcasts.send_at``, the cursors), so
    nothing is lost when a process stops: whichever process runs a dispatcher next starts
    what is due, late if it was down at the time, and goes on queueing what was begun.

    ``clock`` is the time the schedule is read against (tests move it forward instead of
    waiting); ``poll_interval`` bounds how long a broadcast scheduled by another process
    waits to be noticed. :meth:`wake` makes it look again at once (this process scheduled
    or cancelled something)."""

    def __init__(self, service: BroadcastService, *,
                 started: Callable[[str, str], None] | None = None,
                 poll_interval: float = 5.0,
                 feed_interval: float = FEED_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.started = started
        self.poll_interval = poll_interval
        self.feed_interval = feed_interval
        self.clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run_due(self) -> list[int]:
        """Start what is due now; the ids started."""
        started = await self.service.start_due(self.clock())
        for campaign, channel, _ in started:
            if self.started is not None:
                self.started(campaign, channel)
        return [broadcast_id for _, _, broadcast_id in started]

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping`` is set: start what is due and queue the next batches of what
        is sending, then wait for the next one to be due, a :meth:`wake`, or the poll
        interval (:data:`FEED_INTERVAL` while a broadcast is still being queued), whichever
        comes first."""
        while not stopping.is_set():
            self._wake.clear()
            wait = self.poll_interval
            try:
                await self.run_due()
            except Exception:  # the database was away: try again at the next poll
                _log.exception("broadcast.schedule_failed")
            try:
                fed, unfinished = await self.service.feed()
                for campaign, channel in fed:
                    if self.started is not None:
                        self.started(campaign, channel)
                if unfinished:
                    wait = min(wait, self.feed_interval)
                due = await self.service.next_due()
                if due is not None:
                    wait = min(wait, max(0.01, due - self.clock()))
            except Exception:  # the database was away: try again at the next poll
                _log.exception("broadcast.schedule_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
