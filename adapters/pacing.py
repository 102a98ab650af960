"""Pacing and rate limits, one implementation of each, for the adapters and the application.

Providers queue what they are given faster than they deliver, and a message in a provider's
queue is beyond the reach of a later STOP; public forms must not become a way to message
strangers. Three small algorithms cover every limit the gateway keeps:

- :class:`Pacer`: a token bucket, the per-sender send rate (``rate_per_second``). The
  dispatcher asks it for a turn before each gate decision and takes a message to the gate
  only when it can go on the wire at once; a small burst (``burst_seconds`` of the rate) lets
  fast senders admit messages in batches. Across the processes of one PostgreSQL database the
  budget lives in the database instead (``bot.pgpacer.SharedPacer``, the same
  :class:`SendBudget` interface).
- :class:`SlidingWindow`: at most ``limit`` events per key in the last ``window`` seconds
  (join page submissions per IP and per address; Telegram's posts per group a minute).
- :class:`ChatPacer`: send slots per chat, a fixed interval apart in every chat, plus a
  :class:`SlidingWindow` for groups (Telegram: about one message a second to a chat and
  twenty a minute to a group).

All of them count in this process's memory, on ``time.monotonic()``. This module is in
``adapters`` because adapters may not import the application; the application imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol

__all__ = ["ChatPacer", "Pacer", "SendBudget", "SlidingWindow"]


class SendBudget(Protocol):
    """What the dispatcher needs of a sender's pacing: :class:`Pacer` in one process,
    ``bot.pgpacer.SharedPacer`` across the processes of one PostgreSQL database."""

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


class SlidingWindow:
    """At most ``limit`` events per key in the last ``window`` seconds, in this process's
    memory (several processes each keep their own count). Keys are forgotten once their
    window has passed; past ``max_keys`` live keys the oldest half is forgotten rather than
    memory growing without end."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: dict[object, deque[float]] = {}

    def allow(self, key: object, now: float | None = None) -> bool:
        """Count one event for ``key``; False (and not counted) when it is over the limit."""
        now = time.monotonic() if now is None else now
        if self.next_free(key, now) > now:
            return False
        self.record(key, now)
        return True

    def next_free(self, key: object, now: float) -> float:
        """The earliest moment (``now`` or later) at which one more event for ``key`` stays
        within the limit, counting events already recorded for later moments."""
        seen = self._events.get(key)
        if seen is None:
            return now
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) < self.limit:
            return now
        return max(now, seen[-self.limit] + self.window)

    def record(self, key: object, at: float) -> None:
        """Count an event for ``key`` at ``at`` (not before the key's last one)."""
        if key not in self._events and len(self._events) >= self.max_keys:
            self._prune(at)
        self._events.setdefault(key, deque()).append(at)

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._events.items() if not v or v[-1] <= now - self.window]:
            del self._events[key]
        if len(self._events) >= self.max_keys:
            # Still full of live keys: forget the oldest half rather than grow without end.
            for key in list(self._events)[: self.max_keys // 2]:
                del self._events[key]


class ChatPacer:
    """Send slots per chat: ``interval`` seconds apart in every chat, and at most
    ``group_per_minute`` in any 60 seconds for a group or channel (negative chat id; 0 for
    no such limit).

    Slots are reserved without awaiting, so concurrent senders to one chat queue up in order
    and senders to different chats never wait for each other.
    """

    def __init__(self, interval: float, group_per_minute: int) -> None:
        self._interval = interval
        self._groups = (SlidingWindow(group_per_minute, 60.0)
                        if group_per_minute > 0 else None)
        self._next_free: dict[int, float] = {}
        self._prune_above = 4096

    def next_slot(self, chat_id: int, now: float) -> float:
        """The earliest moment a message to ``chat_id`` may go, reserving nothing."""
        slot = max(now, self._next_free.get(chat_id, now))
        if chat_id < 0 and self._groups is not None:
            slot = self._groups.next_free(chat_id, slot)
        return slot

    def reserve(self, chat_id: int, slot: float, now: float) -> None:
        self._next_free[chat_id] = slot + self._interval
        if chat_id < 0 and self._groups is not None:
            self._groups.record(chat_id, slot)
        if len(self._next_free) > self._prune_above:
            # Forget chats whose spacing has lapsed, so memory follows the active chats.
            for chat in [c for c, free in self._next_free.items() if free <= now]:
                del self._next_free[chat]
            self._prune_above = max(4096, 2 * len(self._next_free))

    def hold(self, chat_id: int, until: float) -> None:
        """The provider asked us to wait: nothing more to this chat before ``until``."""
        self._next_free[chat_id] = max(self._next_free.get(chat_id, until), until)
