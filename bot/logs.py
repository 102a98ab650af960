"""structlog set-up: JSON lines with campaign, channel, message id and reason bound, and a
last line of defence that keeps people's data out of them.

Call sites pass addresses through :func:`bot.addresses.mask` and never log a message body,
a token or a secret. But logs also carry what nobody chose to write there: the request
path (``/api/v1/subjects/sms/+447911123456``, ``/u/<unsubscribe token>``), a provider's
error text, a traceback. So every line passes :func:`redact` just before it is rendered
(and every line of the standard library's loggers passes :class:`RedactingFilter`): phone
numbers and email addresses become their mask (``+44***56``, ``j***@example.org``), link
tokens, bearer tokens and bot tokens become ``***``, and the value of a key that holds a
text (``text``, ``body``, ``subject`` ...) becomes its length. docs/data-protection.md lists
what remains.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from consentgate.adapters.base import mask

__all__ = ["RedactingFilter", "configure_logging", "processors", "redact", "redact_text"]


class _Stderr:
    """Whatever ``sys.stderr`` is at the moment of writing (it may be replaced after
    start-up, e.g. by a test runner or a daemon wrapper)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# -- redaction ---------------------------------------------------------------------------

#: Keys whose value is a message or reply text, shown as its length only.
_TEXT_KEYS = frozenset({"text", "body", "html", "message_text", "reply"})
#: Keys whose value is a credential, never shown.
_SECRET_WORDS = ("token", "secret", "password", "authorization", "cookie", "signature")
#: Keys whose value is one address (a Telegram id is a plain number), masked whole.
_ADDRESS_KEYS = frozenset({"address", "to", "from", "from_", "sender", "user", "recipient",
                           "chat", "chat_id"})

#: Paths whose last part is an address: masked whatever its form (national, a Telegram id).
_ADDRESS_PATH = re.compile(r"(/api/v1/(?:subjects|subscribers)/[^/]+/)([^/?#]+)")
#: Paths whose last part is a capability (unsubscribe, confirmation, console session ...).
_TOKEN_PATH = re.compile(r"(/(?:u|confirm|console/reset|console/invite)/)([^/?#\s\"'<>]+)")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_BOT_TOKEN = re.compile(r"\bbot\d+:[\w-]+")
_EMAIL = re.compile(r"(?<![\w.+%-])[\w.+%-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
#: A phone number: seven or more digits (single spaces allowed between them), optionally
#: after ``+`` (or its URL encoding), standing alone (not part of a word, hash or id, nor
#: the id of a message, broadcast or link in a path).
_PHONE = re.compile(r"(?<![\w+%.])(?<!/messages/)(?<!/broadcasts/)(?<!/links/)"
                    r"(?:\+|%2[Bb])?\d(?: ?\d){6,}(?![\w.])")


def _mask_phone(match: re.Match[str]) -> str:
    number = match.group(0).replace(" ", "")
    if number[:3].upper() == "%2B":
        number = "+" + number[3:]
    return mask(number)


def _mask_email(match: re.Match[str]) -> str:
    return mask(match.group(0).replace("%40", "@"))


def redact_text(value: str) -> str:
    """``value`` with every address, link token and credential in it masked."""
    if not value:
        return value
    value = _ADDRESS_PATH.sub(lambda m: m.group(1) + mask(m.group(2)), value)
    value = _TOKEN_PATH.sub(r"\1***", value)
    value = _BEARER.sub(r"\1***", value)
    value = _BOT_TOKEN.sub("bot***", value)
    value = _EMAIL.sub(_mask_email, value)
    return _PHONE.sub(_mask_phone, value)


def _redact_value(key: str, value: Any) -> Any:
    lowered = key.lower()
    if lowered in _TEXT_KEYS and isinstance(value, str):
        return f"<{len(value)} chars>"
    if any(word in lowered for word in _SECRET_WORDS) and value not in (None, ""):
        return "***"
    if lowered in _ADDRESS_KEYS and isinstance(value, str | int) and "***" not in str(value):
        return mask(str(value))
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
           ) -> MutableMapping[str, Any]:
    """structlog processor: mask addresses, tokens and texts in every value of the line
    (the request path, an exception's text and traceback included)."""
    for key, value in event_dict.items():
        if key == "event":
            event_dict[key] = redact_text(value) if isinstance(value, str) else value
        else:
            event_dict[key] = _redact_value(key, value)
    return event_dict


class RedactingFilter(logging.Filter):
    """The same masking for the standard library's log records (aiohttp, asyncio, the
    database drivers): message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's format and arguments do not match
            message = f"{record.msg} {record.args!r}"
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def processors() -> list[structlog.typing.Processor]:
    """Every processor of a log line but the renderer, in order; :func:`redact` last, so it
    sees the bound context and the formatted traceback. Tests capture lines through the
    same chain (``structlog.testing.capture_logs(processors=processors())``)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    handler = logging.StreamHandler(_Stderr())
    handler.addFilter(RedactingFilter())
    logging.basicConfig(format="%(message)s", handlers=[handler],
                        level=getattr(logging, level.upper(), logging.INFO))
    for noisy in ("aiohttp.access", "twilio", "httpx", "telegram", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=[*processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
