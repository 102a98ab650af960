"""structlog set-up: JSON lines with campaign, channel, message id and reason bound.

Never log a message body, a token or a secret; addresses go through
:func:`bot.addresses.mask` before they reach a log call.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


class _Stderr:
    """Whatever ``sys.stderr`` is at the moment of writing (it may be replaced after
    start-up, e.g. by a test runner or a daemon wrapper)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    logging.basicConfig(format="%(message)s", stream=_Stderr(),
                        level=getattr(logging, level.upper(), logging.INFO))
    for noisy in ("aiohttp.access", "twilio", "httpx", "telegram", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
