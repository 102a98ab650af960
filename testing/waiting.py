"""Waiting for something to happen, in tests: poll a condition against a deadline.

A test that sleeps and then looks proves little (too short on a busy machine, too long
everywhere else); one that waits for the condition it needs is both quick and sure. This is
the one such helper consentgate's own tests use, shipped for integrators' tests too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], *,
                     timeout: float = 30.0,  # noqa: ASYNC109 - a deadline is its point
                     interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy and return that value; fail with
    an :class:`AssertionError` naming ``what`` (and the last value seen) after ``timeout``
    seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)
