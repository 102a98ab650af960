"""Replies that a person must read: the review queue and its resolution.

The classifier acts at once only on a clear request to stop; everything else that mentions
stopping, or is hostile, is kept and flagged. A flag is a promise that a person will read the
reply, so the queue has to be visible (``GET /api/v1/replies?flagged=true&unresolved=true``),
resolvable (``POST /api/v1/replies/{id}/resolve``) and watched (two /metrics gauges per
campaign: how many wait, and how long the oldest has waited).

Resolving with ``opt_out`` has exactly the effect of the person's own STOP: the opt-out is
recorded (method ``reviewed_reply``, the operator named in the audit) and that address's
queued messages are cancelled, all in the same transaction as the resolution itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import structlog
from sqlalchemy import func, select, update

from consentgate.bot import audit
from consentgate.bot.errors import Conflict, InvalidInput, NotFound
from consentgate.bot.ledger import Ledger
from consentgate.bot.messages import iso
from consentgate.bot.metrics import Metrics
from consentgate.storage.db import Database
from consentgate.storage.models import inbound_messages

__all__ = ["ACTIONS", "ReplyService"]

_log = structlog.get_logger("consentgate.replies")

#: What an operator may decide about a reply, and the resolution each records.
ACTIONS = {"opt_out": "opted_out", "not_an_opt_out": "not_an_opt_out"}
_MAX_NOTE = 1000


class ReplyService:
    """Lists inbound replies and records what a person decided about them."""

    def __init__(self, db: Database, ledger: Ledger, metrics: Metrics,
                 campaigns: Iterable[str]) -> None:
        self.db = db
        self.ledger = ledger
        self.metrics = metrics
        self.campaigns = tuple(campaigns)

    async def list(self, campaign: str, *, flagged: bool = False, unresolved: bool = False,
                   limit: int = 500, unflagged: bool = False,
                   before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; ``flagged`` only the flagged ones (``unflagged`` only the others),
        ``unresolved`` only those no person has decided about yet. ``before`` (a reply id)
        continues from an earlier page: ids grow in order of arrival."""
        im = inbound_messages
        stmt = (select(im).where(im.c.campaign == campaign)
                .order_by(im.c.at.desc(), im.c.id.desc()).limit(limit))
        if flagged:
            stmt = stmt.where(im.c.flag.is_not(None))
        if unflagged:
            stmt = stmt.where(im.c.flag.is_(None))
        if before is not None:
            stmt = stmt.where(im.c.id < before)
        if unresolved:
            stmt = stmt.where(im.c.resolution.is_(None))
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_view(r) for r in rows]

    async def resolve(self, campaign: str, reply_id: int, action: str, note: str | None,
                      operator: str) -> dict[str, Any]:
        """Record an operator's decision about one reply; ``opt_out`` opts its sender out
        as their own STOP would. 404 ``reply_not_found``, 409 ``already_resolved``, 422
        ``invalid_action``."""
        if action not in ACTIONS:
            raise InvalidInput("invalid_action",
                               'action must be "opt_out" or "not_an_opt_out"')
        note_text = (note or "").strip()[:_MAX_NOTE] or None
        resolution = ACTIONS[action]
        im = inbound_messages
        now = time.time()
        async with self.db.write() as conn:
            row = (await conn.execute(select(im).where(
                im.c.id == reply_id, im.c.campaign == campaign))).first()
            if row is None:
                raise NotFound("reply_not_found", "no such reply")
            # The condition on resolution makes a concurrent second decision change nothing.
            changed = (await conn.execute(
                update(im).where(im.c.id == reply_id, im.c.resolution.is_(None))
                .values(resolution=resolution, resolved_by=operator, resolved_at=now,
                        resolution_note=note_text))).rowcount
            if not changed:
                raise Conflict("already_resolved",
                               f"this reply was already resolved ({row.resolution})")
            cancelled = 0
            if action == "opt_out" and row.from_address is not None:
                cancelled = await self.ledger.record_opt_out(
                    conn, campaign, row.channel, row.from_address, method="reviewed_reply",
                    reason=f"reviewed reply {reply_id}", actor=operator)
            await audit.append(conn, campaign, operator, "reply.resolved",
                               audit.subject_for(row.channel, row.address_hash),
                               {"reply": reply_id, "resolution": resolution,
                                "cancelled": cancelled}, at=now)
            updated = (await conn.execute(select(im).where(im.c.id == reply_id))).one()
        if action == "opt_out":
            self.metrics.opt_outs.labels(row.channel, "reviewed_reply").inc()
        _log.info("reply.resolved", campaign=campaign, reply=reply_id, resolution=resolution)
        return _view(updated) | {"cancelled": cancelled}

    async def refresh_gauges(self) -> None:
        """Set the review-queue gauges from the database (called before /metrics answers):
        flagged replies waiting per campaign, and the age of the oldest in seconds."""
        im = inbound_messages
        async with self.db.read() as conn:
            rows = (await conn.execute(
                select(im.c.campaign, func.count(), func.min(im.c.at))
                .where(im.c.flag.is_not(None), im.c.resolution.is_(None))
                .group_by(im.c.campaign))).all()
        waiting = {r[0]: (int(r[1]), float(r[2])) for r in rows}
        now = time.time()
        for campaign in {*self.campaigns, *waiting}:
            count, oldest = waiting.get(campaign, (0, now))
            self.metrics.flagged_waiting.labels(campaign).set(count)
            self.metrics.flagged_oldest_age.labels(campaign).set(
                max(0.0, now - oldest) if count else 0.0)


def _view(r: Any) -> dict[str, Any]:
    return {"id": r.id, "channel": r.channel, "from": r.from_address, "text": r.text,
            "at": iso(r.at), "flag": r.flag, "intent": r.intent, "rule": r.rule,
            "resolution": r.resolution, "resolved_by": r.resolved_by,
            "resolved_at": iso(r.resolved_at), "note": r.resolution_note}
