"""A per-sender send budget shared by every process on one PostgreSQL database.

Each sender has one row in ``rate_buckets`` holding the time (on the database's clock) of its
next free send slot. A process reserves a short run of slots (about ``chunk_seconds`` worth)
with one statement that moves the row forward, then hands the slots out locally as their
times come. However many ``serve`` / ``worker`` processes share a sender, together they
start at most ``rate_per_second`` sends a second, plus the slots one reservation may leave
unused: never more than the sender delivers.

The slot times are read and written on the database's clock only, so the machines' own
clocks need not agree. Reserved slots that no message uses are lost (at most one chunk per
process at a time), which only ever errs on the slow side.
"""

from __future__ import annotations

import asyncio
import math
import time

import structlog
from sqlalchemy import text

from consentgate.storage.db import Database

__all__ = ["SharedPacer"]

_log = structlog.get_logger("consentgate.pacer")

# Insert the sender's row on first use; otherwise move it on by `span` from now or from where
# the last reservation ended, whichever is later. The row lock serialises reservations.
_RESERVE = text("""
INSERT INTO rate_buckets (sender, next_slot)
VALUES (:sender, extract(epoch FROM clock_timestamp())::float8 + CAST(:span AS float8))
ON CONFLICT (sender) DO UPDATE
SET next_slot = GREATEST(rate_buckets.next_slot, extract(epoch FROM clock_timestamp())::float8)
                + CAST(:span AS float8)
RETURNING next_slot, extract(epoch FROM clock_timestamp())::float8 AS db_now
""")

_SENDER_MAX = 200  # rate_buckets.sender is String(200)


class SharedPacer:
    """The same interface as :class:`adapters.pacing.Pacer` (``take`` / ``give_back``), with
    the budget kept in the database so it holds across processes and machines."""

    def __init__(self, db: Database, sender: str, rate_per_second: float, *,
                 chunk_seconds: float = 0.05, retry_seconds: float = 0.5) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self.db = db
        self.sender = sender[:_SENDER_MAX]
        self.rate = rate_per_second
        self.chunk = max(1, math.ceil(rate_per_second * chunk_seconds))
        self.retry_seconds = retry_seconds
        self._next = 0.0  # time.monotonic() of the next reserved slot
        self._left = 0  # reserved slots from _next on, one every 1/rate seconds
        self._spare = 0  # slots paid for and due but given back unused
        self._lock = asyncio.Lock()

    async def take(self, wanted: int) -> int:
        """Wait until at least one send may start; return how many may start now
        (1 .. ``wanted``)."""
        wanted = max(1, wanted)
        async with self._lock:
            if self._spare:
                n = min(wanted, self._spare)
                self._spare -= n
                return n
            if self._left == 0:
                await self._reserve()
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
                now = time.monotonic()
            due = min(self._left, wanted, int((now - self._next) * self.rate) + 1)
            self._left -= due
            self._next += due / self.rate
            return due

    def give_back(self, n: int) -> None:
        """Return turns that were taken but not used: the next ``take`` gets them first."""
        if n > 0:
            self._spare = min(self._spare + n, self.chunk)

    async def _reserve(self) -> None:
        span = self.chunk / self.rate
        while True:
            try:
                async with self.db.write() as conn:
                    row = (await conn.execute(_RESERVE, {"sender": self.sender,
                                                         "span": span})).one()
                break
            except Exception:  # the database is away: nothing is claimed either; wait
                _log.exception("pacer.reserve_failed", sender=self.sender)
                await asyncio.sleep(self.retry_seconds)
        start = float(row.next_slot) - span  # database clock
        delay = max(0.0, start - float(row.db_now))
        self._next = time.monotonic() + delay
        self._left = self.chunk
