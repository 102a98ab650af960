"""The hash-chained, append-only audit log: every change, under the name of who made it.

Each campaign has its own chain (an auditor of one campaign can verify it without seeing
another's). Each record's hash covers the previous record's hash and its own content, so
altering, removing or reordering a row breaks every hash after it. Subjects are written as
pseudonyms (``sms#<keyed hash>``) so that erasing a person never has to touch the chain.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.storage.db import Database
from consentgate.storage.models import audit_events, audit_heads

__all__ = ["GENESIS", "AuditLog", "AuditRecord", "Verification", "Verified", "append",
           "first_broken", "record_hash", "subject_for", "verify"]

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: float
    actor: str
    action: str
    subject: str
    detail: str
    prev_hash: str
    hash: str


def subject_for(channel: str, address_hash: str) -> str:
    """How the audit names a person: their channel and keyed hash, never the address."""
    return f"{channel}#{address_hash[:24]}"


def record_hash(prev_hash: str, seq: int, at: float, actor: str, action: str,
                subject: str, detail: str) -> str:
    payload = json.dumps([prev_hash, seq, repr(at), actor, action, subject, detail],
                         separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


async def append(
    conn: AsyncConnection,
    campaign: str,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any] | None = None,
    *,
    at: float | None = None,
) -> AuditRecord:
    """Append one record inside the caller's transaction, so the change and its audit
    commit together or not at all."""
    at = time.time() if at is None else at
    detail_text = json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"))
    head = (
        await conn.execute(
            select(audit_heads.c.seq, audit_heads.c.hash)
            .where(audit_heads.c.campaign == campaign)
            .with_for_update()
        )
    ).first()
    if head is None:
        seq, prev = 1, GENESIS
    else:
        seq, prev = head.seq + 1, head.hash
    digest = record_hash(prev, seq, at, actor, action, subject, detail_text)
    await conn.execute(
        insert(audit_events).values(
            campaign=campaign, seq=seq, at=at, actor=actor, action=action,
            subject=subject, detail=detail_text, prev_hash=prev, hash=digest,
        )
    )
    if head is None:
        await conn.execute(insert(audit_heads).values(campaign=campaign, seq=seq, hash=digest))
    else:
        await conn.execute(
            update(audit_heads).where(audit_heads.c.campaign == campaign)
            .values(seq=seq, hash=digest)
        )
    return AuditRecord(seq, at, actor, action, subject, detail_text, prev, digest)


def _fault(r: AuditRecord, prev: str, expected_seq: int) -> str | None:
    """What is wrong with record ``r`` coming after ``prev``, or None."""
    if r.seq > expected_seq:
        gone = (str(expected_seq) if r.seq == expected_seq + 1
                else f"{expected_seq} to {r.seq - 1}")
        return f"the record(s) before it ({gone}) are missing"
    if r.seq != expected_seq:
        return "it is out of order"
    if r.prev_hash != prev:
        return "its link to the previous record does not match"
    if record_hash(prev, r.seq, r.at, r.actor, r.action, r.subject, r.detail) != r.hash:
        return "its content does not match its hash"
    return None


def first_broken(records: Iterable[AuditRecord], prev: str = GENESIS,
                 expected_seq: int = 1) -> int | None:
    """The ``seq`` of the first record whose link or hash does not hold, or None.
    ``prev`` / ``expected_seq`` continue a check from an earlier page."""
    for r in records:
        if _fault(r, prev, expected_seq) is not None:
            return r.seq
        prev = r.hash
        expected_seq += 1
    return None


@dataclass(frozen=True)
class Verification:
    campaign: str
    records: int
    first_broken: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_broken is None


async def verify(conn: AsyncConnection, campaign: str, *, page: int = 5000) -> Verification:
    """Recompute a campaign's chain from the first record, page by page, then compare its
    end with ``audit_heads`` (which catches a removed tail or a record added behind the
    chain's back). Names the first broken ``seq`` and what is wrong with it."""
    prev, expected, count = GENESIS, 1, 0
    while True:
        rows = (await conn.execute(
            select(audit_events).where(audit_events.c.campaign == campaign,
                                       audit_events.c.seq >= expected)
            .order_by(audit_events.c.seq).limit(page))).all()
        for row in rows:
            r = AuditRecord(row.seq, row.at, row.actor, row.action, row.subject, row.detail,
                            row.prev_hash, row.hash)
            fault = _fault(r, prev, expected)
            if fault is not None:
                return Verification(campaign, count, r.seq, fault)
            prev, expected, count = r.hash, expected + 1, count + 1
        if len(rows) < page:
            break
    head = (await conn.execute(select(audit_heads.c.seq, audit_heads.c.hash)
                               .where(audit_heads.c.campaign == campaign))).first()
    last = expected - 1
    if head is None:
        if count:
            return Verification(campaign, count, last, "the chain's head record is missing")
        return Verification(campaign, 0)
    if head.seq > last:
        gone = str(head.seq) if head.seq == last + 1 else f"{last + 1} to {head.seq}"
        return Verification(campaign, count, last + 1,
                            f"the last record(s) ({gone}) are missing")
    if head.seq < last:
        return Verification(campaign, count, head.seq + 1,
                            "records were added after the chain's head")
    if head.hash != prev:
        return Verification(campaign, count, last, "the last record does not match the head")
    return Verification(campaign, count)


@dataclass(frozen=True)
class Verified:
    """A verification of a campaign's chain and when it ran."""

    at: float
    result: Verification


class AuditLog:
    """Reading a campaign's audit log, a page at a time, and verifying its chain.

    Verifying reads every record of the campaign (seconds for millions), so pages that show
    the chain's state show the last verification this process ran and verify on request."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._verified: dict[str, Verified] = {}

    async def verify(self, campaign: str) -> Verified:
        """Verify the whole chain now (see :func:`verify`) and remember the answer."""
        at = time.time()
        async with self.db.read() as conn:
            result = await verify(conn, campaign)
        done = Verified(at, result)
        self._verified[campaign] = done
        return done

    def last_verified(self, campaign: str) -> Verified | None:
        """The last verification this process ran for the campaign, if any."""
        return self._verified.get(campaign)

    async def recent(self, campaign: str, *, before: int | None = None, limit: int = 50,
                     action: str | None = None, actor: str | None = None) -> list[AuditRecord]:
        """Records newest first; ``before`` (a ``seq``) continues from an earlier page;
        ``action`` and ``actor`` narrow it."""
        ae = audit_events
        stmt = (select(ae).where(ae.c.campaign == campaign)
                .order_by(ae.c.seq.desc()).limit(limit))
        if action:
            stmt = stmt.where(ae.c.action == action)
        if actor:
            stmt = stmt.where(ae.c.actor == actor)
        if before is not None:
            stmt = stmt.where(ae.c.seq < before)
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [AuditRecord(r.seq, r.at, r.actor, r.action, r.subject, r.detail, r.prev_hash,
                            r.hash) for r in rows]

    async def records(self, campaign: str) -> int:
        """How many records the campaign's chain holds (its head's ``seq``)."""
        async with self.db.read() as conn:
            seq = (await conn.execute(select(audit_heads.c.seq).where(
                audit_heads.c.campaign == campaign))).scalar()
        return int(seq or 0)

    async def list(self, campaign: str, *, after: int = 0, limit: int = 1000,
                   action: str | None = None, actor: str | None = None,
                   subject: str | None = None) -> list[dict[str, Any]]:
        """Records with ``seq`` above ``after``; ``action``, ``actor`` and ``subject``
        (e.g. ``sms#<hash>``: everything done about one person) narrow it."""
        ae = audit_events
        stmt = (select(ae).where(ae.c.campaign == campaign, ae.c.seq > after)
                .order_by(ae.c.seq).limit(limit))
        if action:
            stmt = stmt.where(ae.c.action == action)
        if actor:
            stmt = stmt.where(ae.c.actor == actor)
        if subject:
            stmt = stmt.where(ae.c.subject == subject)
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [{"seq": r.seq, "at": _iso(r.at), "actor": r.actor, "action": r.action,
                 "subject": r.subject, "detail": r.detail, "prev_hash": r.prev_hash,
                 "hash": r.hash} for r in rows]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
