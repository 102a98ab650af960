"""Who is using the console: passwords, sessions, sign-in limits and forgery checks.

A campaign's operators sign in with their name and a password whose argon2id hash is in the
config; an operator without one cannot sign in. The session id lives only in an HttpOnly
cookie; the database keeps its SHA-256 (:mod:`bot.sessions`), so a copy of the database
cannot be replayed as a session. Sessions end when idle, when their owner signs out, or
when the operator is no longer in the config.

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

from consentgate.bot.config import CampaignSettings, OperatorSettings, Settings
from consentgate.bot.sessions import IDLE_SECONDS, SessionService

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

_hasher = PasswordHasher()
_dummy_hash: str | None = None


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
    """Who is behind a session cookie: the session service's record of it, checked against
    the config (an operator removed from it, or left without a password, is signed out)."""

    def __init__(self, service: SessionService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.campaigns = {c.slug: c for c in settings.campaigns}

    async def start(self, campaign: str, operator: str) -> str:
        """A new session for a signed-in operator; returns its id (for the cookie only)."""
        return await self.service.start(campaign, operator)

    async def user(self, sid: str | None) -> ConsoleUser | None:
        """The operator behind a session id, or None if it is unknown, idle too long,
        too old, or its operator may no longer sign in."""
        found = await self.service.find(sid)
        if found is None or sid is None:
            return None
        campaign = self.campaigns.get(found.campaign)
        op = find_operator(self.settings, found.campaign, found.operator)
        if campaign is None or op is None or not op.password_hash:
            return None
        return ConsoleUser(op.name, op.role, campaign,
                           csrf_token(self.settings.security.secret_key, "session", sid))

    async def end(self, sid: str, user: ConsoleUser) -> None:
        await self.service.end(sid, user.campaign.slug, user.name)


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
