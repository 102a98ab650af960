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
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import audit_events, audit_heads

__all__ = ["AuditRecord", "GENESIS", "append", "first_broken", "record_hash", "subject_for"]

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


def first_broken(records: Iterable[AuditRecord]) -> int | None:
    """The ``seq`` of the first record whose link or hash does not hold, or None."""
    prev = GENESIS
    expected_seq = 1
    for r in records:
        if r.seq != expected_seq or r.prev_hash != prev:
            return r.seq
        if record_hash(prev, r.seq, r.at, r.actor, r.action, r.subject, r.detail) != r.hash:
            return r.seq
        prev = r.hash
        expected_seq += 1
    return None
