"""Console sessions in the database: started at sign-in, looked up on every console request,
touched while in use, ended at sign-out, and expired when idle or too old.

Only the SHA-256 of a session id is stored, so a copy of the database cannot be replayed as
a session; the id itself exists only in the operator's cookie. Each start and end is audited
under the operator's name in the same transaction as the change. Who may hold a session
(an operator still in the config, with a password) is the console's check, not this one's.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from consentgate.bot import audit
from consentgate.storage.db import Database
from consentgate.storage.models import console_sessions

__all__ = ["IDLE_SECONDS", "MAX_AGE_SECONDS", "Session", "SessionService"]

IDLE_SECONDS = 30 * 60  # a console left alone at a stall signs itself out
MAX_AGE_SECONDS = 12 * 3600  # and no session outlives a long day
_TOUCH_EVERY = 60.0  # last_seen_at is written at most once a minute per session
_MAX_ID = 100


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """A live session: whose it is."""

    campaign: str
    operator: str


class SessionService:
    def __init__(self, db: Database, *, idle_seconds: float = IDLE_SECONDS,
                 max_age_seconds: float = MAX_AGE_SECONDS) -> None:
        self.db = db
        self.idle_seconds = idle_seconds
        self.max_age_seconds = max_age_seconds

    async def start(self, campaign: str, operator: str) -> str:
        """A new session for an operator who has just signed in; returns its id (for the
        cookie only). Expired sessions are cleared here, so the table stays small."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        async with self.db.write() as conn:
            await conn.execute(delete(console_sessions).where(
                console_sessions.c.last_seen_at < now - self.idle_seconds))
            await conn.execute(console_sessions.insert().values(
                id_hash=_sha256(sid), campaign=campaign, operator=operator,
                created_at=now, last_seen_at=now))
            await audit.append(conn, campaign, operator, "console.signed_in",
                               f"operator#{operator}", {}, at=now)
        return sid

    async def find(self, sid: str | None) -> Session | None:
        """The session behind an id, or None if it is unknown, idle too long or too old.
        A session in use is touched (at most once a minute, so a busy console does not
        write on every request)."""
        if not sid or len(sid) > _MAX_ID:
            return None
        now = time.time()
        id_hash = _sha256(sid)
        async with self.db.read() as conn:
            row = (await conn.execute(select(console_sessions).where(
                console_sessions.c.id_hash == id_hash))).first()
        if (row is None or row.last_seen_at < now - self.idle_seconds
                or row.created_at < now - self.max_age_seconds):
            return None
        if row.last_seen_at < now - _TOUCH_EVERY:
            async with self.db.write() as conn:
                await conn.execute(update(console_sessions)
                                   .where(console_sessions.c.id_hash == id_hash)
                                   .values(last_seen_at=now))
        return Session(row.campaign, row.operator)

    async def end(self, sid: str, campaign: str, operator: str) -> None:
        """Sign-out: the session is gone before this returns."""
        async with self.db.write() as conn:
            await conn.execute(delete(console_sessions).where(
                console_sessions.c.id_hash == _sha256(sid)))
            await audit.append(conn, campaign, operator, "console.signed_out",
                               f"operator#{operator}", {})

    async def expire(self, now: float | None = None) -> int:
        """Remove every idle or too old session; returns how many."""
        now = time.time() if now is None else now
        async with self.db.write() as conn:
            removed = (await conn.execute(delete(console_sessions).where(
                (console_sessions.c.last_seen_at < now - self.idle_seconds)
                | (console_sessions.c.created_at < now - self.max_age_seconds)))).rowcount
        return int(removed or 0)
