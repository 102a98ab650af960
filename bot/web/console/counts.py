"""Counts the console shows at a glance, reused briefly when they are expensive.

The home page's subscribers by status and the compose page's live audience preview count a
whole campaign. For a campaign of thousands that takes milliseconds and is always counted
fresh; for a million it takes most of a second, too slow for a preview that follows every
keystroke. So a count that took longer than ``slow_after`` seconds is kept for ``keep_for``
seconds and shown with the time it was made. The confirmation step before a broadcast always
counts afresh, and the send is refused if that number moved (see ``pages.broadcast_send``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Counted", "SlowCounts"]

T = TypeVar("T")


@dataclass(frozen=True)
class Counted(Generic[T]):
    value: T
    at: float  # when it was counted
    reused: bool  # served from an earlier count


class SlowCounts:
    def __init__(self, *, slow_after: float = 0.05, keep_for: float = 10.0,
                 max_entries: int = 1000) -> None:
        self.slow_after = slow_after
        self.keep_for = keep_for
        self.max_entries = max_entries
        self._kept: dict[Hashable, tuple[float, object]] = {}

    async def get(self, key: Hashable, count: Callable[[], Awaitable[T]]) -> Counted[T]:
        now = time.time()
        kept = self._kept.get(key)
        if kept is not None and now - kept[0] < self.keep_for:
            value: T = kept[1]  # type: ignore[assignment]
            return Counted(value, kept[0], True)
        started = time.perf_counter()
        fresh = await count()
        if time.perf_counter() - started >= self.slow_after:
            if len(self._kept) >= self.max_entries:
                self._kept.clear()
            self._kept[key] = (now, fresh)
        else:
            self._kept.pop(key, None)
        return Counted(fresh, now, False)
