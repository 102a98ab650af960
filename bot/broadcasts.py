"""Broadcasts: who is in the audience, queueing them in batches, progress, pause, resume
and cancel.

The audience is resolved by set-based SQL (one statement counts it by reason; one
INSERT ... SELECT per batch queues it), never by a Python loop over people. Each batch is its
own short transaction so a STOP never waits long behind a broadcast, and the broadcast row
keeps a cursor, so a crash during queueing resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import and_, case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.bot import audit, outbox
from consentgate.bot.errors import Conflict, Forbidden, NotFound
from consentgate.bot.ledger import suppressed_clause
from consentgate.bot.messages import check_text, iso
from consentgate.storage.db import Database
from consentgate.storage.models import broadcasts, messages, subscriptions

__all__ = ["BroadcastService", "MESSAGE_STATUSES", "pause_if_failing"]

MESSAGE_STATUSES = ("queued", "sending", "sent", "delivered", "failed", "blocked", "cancelled")
BATCH = 5000

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


def _failure_figures(counts: dict[str, int]) -> tuple[int, int]:
    attempted = counts.get("sent", 0) + counts.get("delivered", 0) + counts.get("failed", 0)
    return counts.get("failed", 0), attempted


async def pause_if_failing(conn: AsyncConnection, broadcast_id: int) -> bool:
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
                                   messages.c.status == "queued",
                                   messages.c.not_before < HELD_UNTIL)
            .values(not_before=HELD_UNTIL, lease_owner=None, lease_expires=None))
        return False
    if b is None or b.status not in ("enqueuing", "queued"):
        return False
    failed, attempted = _failure_figures(await outbox.counts_by_status(
        conn, broadcast_id, dispatched_since=b.resumed_at))
    if attempted < PAUSE_AFTER_ATTEMPTS or failed <= PAUSE_FAILURE_RATE * attempted:
        return False
    now = time.time()
    await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                       .values(status="paused"))
    held = await conn.execute(
        update(messages).where(messages.c.broadcast_id == broadcast_id,
                               messages.c.status == "queued")
        .values(not_before=HELD_UNTIL, lease_owner=None, lease_expires=None, updated_at=now))
    await audit.append(conn, b.campaign, "gateway", "broadcast.paused",
                       f"broadcast#{broadcast_id}",
                       {"failed": failed, "attempted": attempted,
                        "held": int(held.rowcount or 0)}, at=now)
    return True


def _exclusion_reason() -> Any:
    s = subscriptions
    return case(
        (suppressed_clause(s.c.channel, s.c.address_hash, s.c.consented_at), "suppressed"),
        (s.c.status == "suppressed", "suppressed"),
        (s.c.status == "opted_out", "opted_out"),
        (and_(s.c.status == "subscribed", s.c.restricted.is_(False)), "eligible"),
        else_="no_consent",
    )


def _eligible(campaign: str, channel: str) -> Any:
    s = subscriptions
    return and_(s.c.campaign == campaign, s.c.channel == channel,
                s.c.status == "subscribed", s.c.restricted.is_(False),
                ~suppressed_clause(s.c.channel, s.c.address_hash, s.c.consented_at))


class BroadcastService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def audience(self, campaign: str, channel: str) -> dict[str, Any]:
        reason = _exclusion_reason().label("reason")
        s = subscriptions
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(reason, func.count()).select_from(s)
                .where(s.c.campaign == campaign, s.c.channel == channel)
                .group_by(reason))
            counts = {r: int(n) for r, n in rows}
        eligible = counts.pop("eligible", 0)
        return {"eligible": eligible, "excluded": counts}

    async def create(self, campaign: str, channels_enabled: frozenset[str], actor: str,
                     channel: str, text: str, subject: str | None = None,
                     dry_run: bool = False) -> dict[str, Any]:
        if channel not in channels_enabled:
            raise Forbidden("channel_disabled", f"this campaign has no {channel} channel")
        check_text(text, subject)
        audience = await self.audience(campaign, channel)
        if dry_run:
            return {"id": None, "status": "dry_run", "audience": audience}
        now = time.time()
        async with self.db.write() as conn:
            upper = (await conn.execute(select(func.max(subscriptions.c.id)))).scalar() or 0
            broadcast_id = int((await conn.execute(broadcasts.insert().values(
                campaign=campaign, channel=channel, text=text, subject=subject,
                status="enqueuing", cursor=0, upper=upper, eligible=0,
                excluded=json.dumps(audience["excluded"]), created_by=actor,
                created_at=now).returning(broadcasts.c.id))).scalar_one())
            await audit.append(conn, campaign, actor, "broadcast.created",
                               f"broadcast#{broadcast_id}",
                               {"channel": channel, "audience": audience}, at=now)
        eligible = await self.enqueue(broadcast_id)
        audience = {"eligible": eligible, "excluded": audience["excluded"]}
        return {"id": broadcast_id, "status": "queued", "audience": audience}

    async def enqueue(self, broadcast_id: int, batch: int = BATCH) -> int:
        """Queue the eligible audience in id ranges, one transaction each (resumable)."""
        while True:
            async with self.db.write(bulk=True) as conn:
                # Locked (PostgreSQL): two processes finishing the same broadcast at start-up
                # take its ranges in turn, so nobody is queued twice.
                b = (await conn.execute(select(broadcasts).where(
                    broadcasts.c.id == broadcast_id).with_for_update())).one()
                if b.status != "enqueuing":
                    return int(b.eligible)
                lo = int(b.cursor)
                if lo >= b.upper:
                    await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                                       .values(status="queued"))
                    return int(b.eligible)
                hi = min(int(b.upper), lo + batch)
                n = await self._enqueue_range(conn, b, lo, hi)
                await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                                   .values(cursor=hi, eligible=broadcasts.c.eligible + n))

    async def _enqueue_range(self, conn: AsyncConnection, b: Any, lo: int, hi: int) -> int:
        s = subscriptions
        now = time.time()
        chosen = select(
            s.c.campaign, s.c.channel, s.c.address, s.c.address_hash,
            literal("campaign"), literal("queued"), literal(b.id), literal(0),
            literal(b.created_by), literal(now), literal(now), literal(now),
        ).where(_eligible(b.campaign, b.channel), s.c.id > lo, s.c.id <= hi)
        result = await conn.execute(messages.insert().from_select(
            ["campaign", "channel", "address", "address_hash", "kind", "status",
             "broadcast_id", "attempts", "created_by", "created_at", "updated_at",
             "not_before"], chosen))
        return int(result.rowcount or 0)

    async def resume_unfinished(self) -> list[int]:
        """Finish queueing broadcasts a crash interrupted (start-up)."""
        async with self.db.read() as conn:
            ids = [int(i) for i in (await conn.execute(
                select(broadcasts.c.id).where(broadcasts.c.status == "enqueuing"))).scalars()]
        for broadcast_id in ids:
            await self.enqueue(broadcast_id)
        return ids

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
        counts = {k: found.get(k, 0) for k in MESSAGE_STATUSES}
        paused: dict[str, Any] = {}
        if b.status == "cancelled":
            status = "cancelled"
        elif b.status == "paused":
            status = "paused"
            failed, attempted = _failure_figures(judged)
            since = " since it was resumed" if b.resumed_at is not None else ""
            paused = {"paused": {
                "reason": "too_many_failures", "failed": failed, "attempted": attempted,
                "detail": f"{failed} of {attempted} messages{since} failed, over "
                          f"{PAUSE_FAILURE_RATE:.0%} after at least {PAUSE_AFTER_ATTEMPTS}; "
                          "the rest are held until the broadcast is resumed or cancelled"}}
        elif b.status == "enqueuing" or counts["queued"] + counts["sending"] > 0:
            progressed = sum(counts.values()) - counts["queued"]
            status = "sending" if progressed else "queued"
        else:
            status = "done"
        return {"id": b.id, "channel": b.channel, "status": status, "counts": counts,
                "eligible": b.eligible, "excluded": json.loads(b.excluded),
                "created_at": iso(b.created_at), "created_by": b.created_by,
                "resumed_at": iso(b.resumed_at), **paused}

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
                                       messages.c.status == "queued",
                                       messages.c.not_before >= HELD_UNTIL)
                .values(not_before=now, updated_at=now))
            await audit.append(conn, campaign, actor, "broadcast.resumed",
                               f"broadcast#{broadcast_id}",
                               {"released": int(released.rowcount or 0)}, at=now)
        if status == "enqueuing":
            await self.enqueue(broadcast_id)
        return await self.view(campaign, broadcast_id)

    async def cancel(self, campaign: str, broadcast_id: int, actor: str) -> dict[str, Any]:
        """Cancel: no message of it is handed to a provider after this commits (a message
        already on the wire, at most one provider call each, completes)."""
        async with self.db.write() as conn:
            b = (await conn.execute(select(broadcasts.c.id, broadcasts.c.status).where(
                broadcasts.c.id == broadcast_id, broadcasts.c.campaign == campaign))).first()
            if b is None:
                raise NotFound("broadcast_not_found", "no such broadcast in this campaign")
            await conn.execute(update(broadcasts).where(broadcasts.c.id == broadcast_id)
                               .values(status="cancelled"))
            result = await conn.execute(
                update(messages).where(messages.c.broadcast_id == broadcast_id,
                                       messages.c.status == "queued")
                .values(status="cancelled", reason="broadcast_cancelled",
                        updated_at=time.time(), lease_owner=None, lease_expires=None))
            cancelled = int(result.rowcount or 0)
            await audit.append(conn, campaign, actor, "broadcast.cancelled",
                               f"broadcast#{broadcast_id}", {"cancelled": cancelled})
        return {"id": broadcast_id, "status": "cancelled", "cancelled": cancelled}
