"""Per-sender pacing: send at the rate the sender really delivers.

Twilio, Telegram and SMTP relays queue what they are given faster than they deliver, and a
message in a provider's queue is beyond the reach of a later STOP. So the dispatcher asks for
a turn before each gate decision and takes a message to the gate only when it can go on the
wire at once. A small burst (``burst_seconds`` of the rate) lets fast senders admit messages
to the gate in batches.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Pacer", "SendBudget"]


class SendBudget(Protocol):
    """What the dispatcher needs of a sender's pacing: :class:`Pacer` in one process,
    :class:`bot.pgpacer.SharedPacer` across the processes of one PostgreSQL database."""

    async def take(self, wanted: int) -> int: ...

    def give_back(self, n: int) -> None: ...


class Pacer:
    """A token bucket for one sender, shared by every lane that uses that sender."""

    def __init__(self, rate_per_second: float, burst_seconds: float = 0.05) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self.rate = rate_per_second
        self.capacity = max(1.0, rate_per_second * burst_seconds)
        self._tokens = 1.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, wanted: int) -> int:
        """Wait until at least one send may start; return how many may start now
        (1 .. ``wanted``)."""
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1.0:
                    n = min(wanted, int(self._tokens))
                    self._tokens -= n
                    return n
                await asyncio.sleep((1.0 - self._tokens) / self.rate)

    def give_back(self, n: int) -> None:
        """Return turns that were not used (a message the gate refused sends nothing)."""
        self._tokens = min(self.capacity, self._tokens + n)
