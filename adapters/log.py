"""The ``log`` provider: writes what would be sent to the log instead of sending it.

It is the embedded default, so a fresh install runs with no provider accounts. It checks the
permit like every adapter. It never logs a message body, only its length and a digest.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import deque

import structlog

from consentgate.adapters.base import OutboundMessage, Permit, SendResult, mask

__all__ = ["LogChannel"]

_log = structlog.get_logger("consentgate.provider.log")
_counter = itertools.count(1)
#: How many of the latest messages a LogChannel keeps for :attr:`LogChannel.sent`.
SENT_KEPT = 100


class LogChannel:
    #: Writing a log line holds no connection: no cap on concurrent sends.
    max_concurrency: int | None = None

    def __init__(self, channel: str, *, rate_per_second: float = 100.0,
                 sender: str = "log") -> None:
        self.channel = channel
        self.rate_per_second = rate_per_second
        self.sender_key = f"log:{sender}:{channel}"
        # The latest messages, for a demo or a test to inspect in-process (the gateway's
        # /dev/outbox page shows them); bounded, so a long run does not grow without end.
        self.sent: deque[OutboundMessage] = deque(maxlen=SENT_KEPT)

    async def send(self, message: OutboundMessage, permit: Permit) -> SendResult:
        permit.check(message)
        provider_id = f"log-{next(_counter)}"
        self.sent.append(message)
        _log.info("provider.log.would_send", provider_id=provider_id, kind=message.kind,
                  to=mask(message.address), chars=len(message.text),
                  digest=hashlib.sha256(message.text.encode()).hexdigest()[:12])
        return SendResult(provider_id=provider_id)

    async def close(self) -> None:
        return None
