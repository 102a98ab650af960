"""The plain types every channel adapter speaks, and the permit that guards every send.

A provider can be reached only through an adapter's ``send(message, permit)``; the adapter
checks the permit first. Permits are sealed with a key that lives only in this process and
are issued by :func:`_issue_permit`, which only ``bot.gate`` calls. So a message that did not
pass the gate moments before cannot be handed to a provider, whatever else goes wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, Protocol

__all__ = [
    "CHANNELS",
    "mask",
    "ChannelAdapter",
    "InboundEvent",
    "OutboundMessage",
    "Permit",
    "PermitError",
    "OutcomeUnknown",
    "PermanentSendError",
    "RecipientRefused",
    "RetryableSendError",
    "SendError",
    "SendResult",
    "clean_text",
    "has_unstorable_text",
]

Channel = Literal["sms", "email", "telegram"]
CHANNELS: tuple[str, ...] = ("sms", "email", "telegram")

#: How long a permit stays valid after the gate issued it. The dispatcher hands a message to
#: its adapter immediately after the gate decision; a permit older than this means something
#: held it back, and the decision must be taken again.
PERMIT_TTL_SECONDS = 30.0

_SEAL_KEY = secrets.token_bytes(32)


def mask(address: str) -> str:
    """An address as logs may show it: enough to tell two apart, not enough to contact."""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(address) <= 4:
        return "***"
    return f"{address[:3]}***{address[-2:]}"


#: What no text column can hold: NUL (PostgreSQL refuses it in text, whatever the encoding)
#: and lone UTF-16 surrogates (not encodable as UTF-8, so the driver fails on them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def has_unstorable_text(value: str) -> bool:
    """Whether ``value`` holds a character no database text column can store."""
    return _UNSTORABLE.search(value) is not None


def clean_text(value: str) -> str:
    """``value`` without NUL and lone surrogates. What a person or a provider sends is
    cleaned at the edge, so a ``STOP\\0`` is read, stored and applied as ``STOP`` on every
    database, instead of failing to store and being retried for ever."""
    return _UNSTORABLE.sub("", value) if _UNSTORABLE.search(value) else value


@dataclass(frozen=True)
class OutboundMessage:
    """One message to one address, as the adapter needs it. ``kind`` is ``campaign`` for
    campaign content and ``reply`` for the transactional answers (STOP confirmation, HELP)."""

    message_id: str
    campaign: str
    channel: str
    address: str
    text: str
    kind: str = "campaign"
    subject: str | None = None
    html: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: email: the envelope sender (a VERP ``bounce+TOKEN@domain`` address) when set
    envelope_from: str | None = None
    #: telegram: inline keyboard buttons as (label, callback_data) pairs, one per row
    buttons: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Permit:
    """Proof that the consent gate allowed this exact message moments ago."""

    campaign: str
    channel: str
    address: str
    message_id: str
    issued_at: float
    seal: str

    def check(self, message: OutboundMessage) -> None:
        """Raise :class:`PermitError` unless this permit was issued by the gate, for this
        message, within :data:`PERMIT_TTL_SECONDS`."""
        expected = _seal(self.campaign, self.channel, self.address, self.message_id,
                         self.issued_at)
        if not hmac.compare_digest(expected, self.seal):
            raise PermitError("permit was not issued by the consent gate")
        if (self.campaign, self.channel, self.address, self.message_id) != (
            message.campaign, message.channel, message.address, message.message_id
        ):
            raise PermitError("permit is for a different message")
        if time.monotonic() - self.issued_at > PERMIT_TTL_SECONDS:
            raise PermitError("permit has expired")


def _seal(campaign: str, channel: str, address: str, message_id: str, issued_at: float) -> str:
    payload = "\x1f".join((campaign, channel, address, message_id, repr(issued_at)))
    # Keyed BLAKE2b is a MAC in its own right, and a fifth of the cost of HMAC-SHA256 here:
    # two seals per message, hundreds of messages a second.
    return hashlib.blake2b(payload.encode(), key=_SEAL_KEY, digest_size=32).hexdigest()


def _issue_permit(campaign: str, channel: str, address: str, message_id: str) -> Permit:
    """Issue a permit. Only ``bot.gate`` may call this: it is the one place consent is
    decided at dispatch time."""
    issued_at = time.monotonic()
    return Permit(campaign, channel, address, message_id, issued_at,
                  _seal(campaign, channel, address, message_id, issued_at))


@dataclass(frozen=True)
class SendResult:
    """The provider accepted the message."""

    provider_id: str | None = None


class PermitError(Exception):
    """A send was attempted without a valid permit. This is a programming error, never a
    provider condition, and the message is not sent."""


class SendError(Exception):
    """The provider did not take the message. ``reason`` is short and machine-readable
    (a provider error code such as ``twilio_21211``, or ``timeout``, ``http_500`` ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryableSendError(SendError):
    """Worth trying again later (429, 5xx, network trouble). ``retry_after`` in seconds when
    the provider said how long to wait."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class PermanentSendError(SendError):
    """Will never succeed as it is (invalid number, message refused): the message fails."""


class OutcomeUnknown(PermanentSendError):
    """The request may have reached the provider but no answer came back (a read timeout, a
    dropped connection after sending). Trying again could put a second copy on someone's
    phone, so the message is not retried: it fails with this reason, and a later provider
    status callback can still correct it."""


class RecipientRefused(PermanentSendError):
    """The provider says this person does not want this: Twilio 21610 (replied STOP at the
    carrier), Telegram "bot was blocked by the user", SMTP 5xx at RCPT. ``scope`` is
    ``campaign`` (an opt-out of this campaign) or ``all`` (a suppression on every campaign)."""

    def __init__(self, reason: str, detail: str = "", scope: str = "campaign") -> None:
        super().__init__(reason, detail)
        self.scope = scope


@dataclass(frozen=True)
class InboundEvent:
    """Something a person or provider told us, in plain terms.

    ``kind``: ``message`` (a text from the person), ``opt_out`` / ``opt_in`` / ``help``
    (a provider already classified it, e.g. Twilio Advanced Opt-Out), ``status`` (delivery
    status of one of our messages), ``blocked`` / ``unblocked`` (Telegram), ``bounce``,
    ``join_request``, ``consent_yes`` / ``consent_no`` (Telegram consent buttons), ``start``.
    ``provider_event_id`` is what providers retry with (MessageSid, update_id, Message-ID):
    an event is applied once per id.
    """

    kind: str
    channel: str
    address: str
    provider_event_id: str
    text: str = ""
    provider_message_id: str | None = None
    status: str | None = None
    error_code: str | None = None
    payload: str | None = None
    chat_id: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Clean at the edge, whichever provider built the event: every text of it is stored
        # (sender, text, event id ...), and PostgreSQL refuses NUL in any of them.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and has_unstorable_text(value):
                object.__setattr__(self, f.name, clean_text(value))
        if any(has_unstorable_text(k) or has_unstorable_text(v)
               for k, v in self.extra.items()):
            object.__setattr__(self, "extra", {clean_text(k): clean_text(v)
                                               for k, v in self.extra.items()})


class ChannelAdapter(Protocol):
    """What the dispatcher needs of a provider."""

    channel: str
    #: The rate limit applies per sender: a Twilio number or messaging service, an SMTP
    #: relay account, a bot. Two campaigns sharing a sender share its budget.
    sender_key: str
    rate_per_second: float

    @property
    def max_concurrency(self) -> int | None:
        """How many sends this adapter can have on the wire at once (its connection pool),
        or None when there is no such limit. The dispatcher never hands it more: a send
        beyond the pool would wait for a connection holding its permit, and a permit must
        not wait in a queue."""
        ...

    async def send(self, message: OutboundMessage, permit: Permit) -> SendResult:
        """Check ``permit`` against ``message`` (raising :class:`PermitError`), then make
        exactly one provider call. Raise a :class:`SendError` subclass when it is not taken."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
