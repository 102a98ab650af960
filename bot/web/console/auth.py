"""Who is using the console: passwords, sessions, sign-in limits and forgery checks.

A campaign's operators sign in with their name and a password whose argon2id hash is in the
config; an operator without one cannot sign in. The session id lives only in an HttpOnly
cookie; the database keeps its SHA-256, so a copy of the database cannot be replayed as a
session. Sessions end when idle, when their owner signs out, or when the operator is no
longer in the config.

Every state-changing request must come from the console itself: its ``Origin`` (or
``Sec-Fetch-Site``) must be this gateway's, and its form must carry a token derived from the
session (or, before sign-in, from a short-lived cookie). A request that fails either check
is refused with 403 before any handler runs.

Neither the password nor the session id is ever logged. Failed sign-ins never say whether
the name or the password was wrong, and are limited per name and per client address.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update

from consentgate.bot import audit
from consentgate.bot.config import CampaignSettings, OperatorSettings, Settings
from consentgate.storage.db import Database
from consentgate.storage.models import console_sessions

__all__ = [
    "IDLE_SECONDS",
    "SESSION_COOKIE",
    "SIGNIN_COOKIE",
    "ConsoleUser",
    "SignInLimiter",
    "Sessions",
    "csrf_token",
    "same_origin",
    "verify_password",
]

_log = structlog.get_logger("consentgate.console")

SESSION_COOKIE = "consentgate_console"
SIGNIN_COOKIE = "consentgate_signin"
IDLE_SECONDS = 30 * 60  # a console left alone at a stall signs itself out
MAX_AGE_SECONDS = 12 * 3600  # and no session outlives a long day
_TOUCH_EVERY = 60.0  # last_seen_at is written at most once a minute per session

_hasher = PasswordHasher()
_dummy_hash: str | None = None


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _dummy() -> str:
    """A hash to verify against when the name is unknown, so that a wrong name takes as
    long as a wrong password."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hash


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        ok = _hasher.verify(password_hash or _dummy(), password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None


async def verify_password(password_hash: str | None, password: str) -> bool:
    """argon2 is slow on purpose: verify on a thread so the server keeps answering."""
    return await asyncio.to_thread(_verify, password_hash, password)


def csrf_token(secret: str, purpose: str, value: str) -> str:
    """The form token for a session id (``purpose`` "session") or a sign-in cookie
    ("signin"): a keyed hash, so nothing needs storing and it cannot be guessed."""
    return hmac.new(secret.encode(), f"console-{purpose}:{value}".encode(),
                    hashlib.sha256).hexdigest()


def same_origin(request: web.Request, public_url: str) -> bool:
    """Whether a state-changing request comes from this gateway's own pages. Browsers send
    ``Sec-Fetch-Site`` and/or ``Origin`` on every POST; a client that sends neither (curl)
    is left to the form token."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    public = urlsplit(public_url)
    allowed = {f"{public.scheme}://{public.netloc}", f"{request.scheme}://{request.host}"}
    return origin in allowed


@dataclass(frozen=True)
class ConsoleUser:
    """The signed-in operator of one campaign."""

    name: str
    role: str
    campaign: CampaignSettings
    csrf: str

    @property
    def can_change(self) -> bool:
        return self.role != "auditor"


def find_operator(settings: Settings, campaign: str, name: str) -> OperatorSettings | None:
    for c in settings.campaigns:
        if c.slug == campaign:
            for op in c.operators:
                if op.name == name:
                    return op
    return None


class Sessions:
    """Console sessions in the database (only the hash of each id)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.campaigns = {c.slug: c for c in settings.campaigns}

    async def start(self, campaign: str, operator: str) -> str:
        """A new session for a signed-in operator; returns its id (for the cookie only).
        Expired sessions are cleared here, so the table stays small."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        async with self.db.write() as conn:
            await conn.execute(delete(console_sessions).where(
                console_sessions.c.last_seen_at < now - IDLE_SECONDS))
            await conn.execute(console_sessions.insert().values(
                id_hash=_sha256(sid), campaign=campaign, operator=operator,
                created_at=now, last_seen_at=now))
            await audit.append(conn, campaign, operator, "console.signed_in",
                               f"operator#{operator}", {}, at=now)
        return sid

    async def user(self, sid: str | None) -> ConsoleUser | None:
        """The operator behind a session id, or None if it is unknown, idle too long,
        too old, or its operator may no longer sign in."""
        if not sid or len(sid) > 100:
            return None
        now = time.time()
        id_hash = _sha256(sid)
        async with self.db.read() as conn:
            row = (await conn.execute(select(console_sessions).where(
                console_sessions.c.id_hash == id_hash))).first()
        if (row is None or row.last_seen_at < now - IDLE_SECONDS
                or row.created_at < now - MAX_AGE_SECONDS):
            return None
        campaign = self.campaigns.get(row.campaign)
        op = find_operator(self.settings, row.campaign, row.operator)
        if campaign is None or op is None or not op.password_hash:
            return None
        if row.last_seen_at < now - _TOUCH_EVERY:
            async with self.db.write() as conn:
                await conn.execute(update(console_sessions)
                                   .where(console_sessions.c.id_hash == id_hash)
                                   .values(last_seen_at=now))
        return ConsoleUser(op.name, op.role, campaign,
                           csrf_token(self.settings.security.secret_key, "session", sid))

    async def end(self, sid: str, user: ConsoleUser) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(console_sessions).where(
                console_sessions.c.id_hash == _sha256(sid)))
            await audit.append(conn, user.campaign.slug, user.name, "console.signed_out",
                               f"operator#{user.name}", {})


class SignInLimiter:
    """Failed sign-ins per name and per client address in a sliding window (this process;
    a refused attempt is not counted, so a locked-out name unlocks when the window moves)."""

    def __init__(self, *, per_name: int = 5, per_address: int = 20,
                 window: float = 15 * 60) -> None:
        self.per_name = per_name
        self.per_address = per_address
        self.window = window
        self._failures: dict[str, collections.deque[float]] = {}

    def _recent(self, key: str, now: float) -> int:
        q = self._failures.get(key)
        if q is None:
            return 0
        while q and q[0] < now - self.window:
            q.popleft()
        if not q:
            del self._failures[key]
            return 0
        return len(q)

    def retry_after(self, name_key: str, address: str, now: float | None = None) -> int:
        """Seconds until a sign-in may be tried again (0: it may be tried now)."""
        now = time.time() if now is None else now
        keys = [(f"name:{name_key}", self.per_name), (f"addr:{address}", self.per_address)]
        wait = 0.0
        for key, limit in keys:
            if self._recent(key, now) >= limit:
                wait = max(wait, self._failures[key][0] + self.window - now)
        return int(wait) + (1 if wait else 0)

    def failed(self, name_key: str, address: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if len(self._failures) > 100_000:  # a flood of made-up names: forget the oldest
            for key in list(self._failures)[:50_000]:
                del self._failures[key]
        for key in (f"name:{name_key}", f"addr:{address}"):
            self._failures.setdefault(key, collections.deque()).append(now)

    def succeeded(self, name_key: str) -> None:
        self._failures.pop(f"name:{name_key}", None)
