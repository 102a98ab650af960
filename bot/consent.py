"""The consent rules: statuses, reason codes, evidence and the one decision function.

Everything here is plain data and plain functions, free of I/O, so the rules that are the
product can be read in one place and tested without a database or a network.
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "CONSENT_METHODS",
    "Decision",
    "Evidence",
    "Reason",
    "Status",
    "SubscriberState",
    "Target",
    "check_new_consent",
    "decide",
    "method_allowed",
    "next_send_time",
    "source_skeleton",
    "source_is_denied",
]


class Status(enum.StrEnum):
    SUBSCRIBED = "subscribed"
    PENDING = "pending"
    OPTED_OUT = "opted_out"
    SUPPRESSED = "suppressed"
    UNKNOWN = "unknown"


class Reason(enum.StrEnum):
    """The gate's reason codes: one set, used by the API, logs, metrics and audit."""

    NO_CONSENT = "no_consent"
    OPTED_OUT = "opted_out"
    SUPPRESSED = "suppressed"
    CHANNEL_DISABLED = "channel_disabled"
    DESTINATION_NOT_ALLOWED = "destination_not_allowed"


#: How a consent may be recorded. ``keyword`` and ``telegram_start`` come only from the
#: recipient; ``web_form`` also from the join page (the recipient) or an operator's records.
CONSENT_METHODS = frozenset(
    {"web_form", "paper_form", "verbal", "keyword", "telegram_start", "import"}
)


@dataclass(frozen=True)
class SubscriberState:
    """What the gate knows about one address in one campaign and channel."""

    status: Status = Status.UNKNOWN
    suppressed: bool = False  # on the every-campaign suppression list
    #: pending a double opt-in the person started after opting out: until they confirm,
    #: their objection stands (an operator still may not subscribe them)
    objected: bool = False


def state_of(status: str | None, restricted: bool, consented_at: float | None,
             suppressed_at: float | None, last_settled: str | None) -> SubscriberState:
    """A person's state from their subscription row (``status`` None: none), the time of a
    suppression of their address (None: none) and the last consent event that is not a
    pending double opt-in. A suppression recorded after the last consent outranks it; a
    restricted subscription is kept but sent nothing; a pending double opt-in after an
    opt-out leaves the objection standing until the person confirms."""
    suppressed = suppressed_at is not None and (consented_at is None
                                                or suppressed_at >= consented_at)
    if status is None:
        return SubscriberState(Status.UNKNOWN, suppressed)
    current = Status(status)
    if restricted and current is Status.SUBSCRIBED:
        current = Status.PENDING
    objected = current is Status.PENDING and last_settled == "opted_out"
    return SubscriberState(current, suppressed, objected)


@dataclass(frozen=True)
class Target:
    """Where a message is going. ``group`` is a Telegram group/channel post."""

    channel: str
    address: str
    group: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason | None = None

    @classmethod
    def allow(cls) -> Decision:
        return cls(True, None)

    @classmethod
    def refuse(cls, reason: Reason) -> Decision:
        return cls(False, reason)


def decide(
    state: SubscriberState,
    target: Target,
    channels_enabled: frozenset[str],
    own_chats: frozenset[str] = frozenset(),
) -> Decision:
    """Whether a campaign message may go to ``target`` now.

    The order matters for the reason reported: an absolute objection (suppression, opt-out)
    is named before the absence of consent, so the team sees why a person is out of reach.
    """
    if target.channel not in channels_enabled:
        return Decision.refuse(Reason.CHANNEL_DISABLED)
    if target.group:
        # A post to a group or channel reaches its members, not one person who consented:
        # allowed only into the campaign's own chats, which people joined by choice.
        if target.address in own_chats:
            return Decision.allow()
        return Decision.refuse(Reason.DESTINATION_NOT_ALLOWED)
    if state.suppressed or state.status is Status.SUPPRESSED:
        return Decision.refuse(Reason.SUPPRESSED)
    if state.status is Status.OPTED_OUT:
        return Decision.refuse(Reason.OPTED_OUT)
    if state.status is Status.SUBSCRIBED:
        return Decision.allow()
    return Decision.refuse(Reason.NO_CONSENT)


@dataclass(frozen=True)
class Evidence:
    """What makes a consent provable: how, from where, what the person was shown."""

    method: str
    source: str
    evidence: str
    consent_text_version: str
    actor: str  # the operator's name, or "recipient"


#: Telegram consent is the person's own /start and "yes" button: nobody else can vouch for it.
OPERATOR_METHODS_BY_CHANNEL: dict[str, frozenset[str]] = {
    "telegram": frozenset({"telegram_start"}),
}


def method_allowed(channel: str, method: str) -> bool:
    """Whether an operator (or an import) may record a consent by ``method`` on ``channel``.
    A Telegram user subscribes only themselves: an operator's paper form, call or list
    cannot start a bot conversation the person never started."""
    allowed = OPERATOR_METHODS_BY_CHANNEL.get(channel)
    return allowed is None or method in allowed


@functools.cache
def _latin_lookalikes() -> dict[int, str]:
    """Non-ASCII characters that look like an ASCII letter or digit (Cyrillic "о", Greek "ο",
    Cherokee, mathematical letters ...) -> that character, from the Unicode confusables data
    (TR39) shipped by ``confusable_homoglyphs``. Loaded once, on first use."""
    from confusable_homoglyphs import confusables

    table: dict[int, str] = {}
    for char, homoglyphs in confusables.confusables_data.items():
        if len(char) != 1 or char.isascii():
            continue
        for h in homoglyphs:
            c = h["c"]
            if len(c) == 1 and c.isascii() and c.isalnum():
                table[ord(char)] = c
                break
    return table


#: ASCII look-alikes folded together after case-folding (TR39 skeletons do the same):
#: "I", "l", "1" and "|" read alike, so do "0" and "o", and "rn" and "m".
_ASCII_FOLD = str.maketrans({"1": "l", "i": "l", "|": "l", "0": "o"})
_SEPARATORS = re.compile(r"[\W_]+")


def source_skeleton(text: str) -> str:
    """The form denied sources are compared on: what a reader sees, not how it was typed.

    Compatibility forms become plain (NFKC: fullwidth letters, ligatures), accents and
    zero-width or invisible characters go, look-alike letters of other scripts become the
    Latin letter they imitate, case is folded, and every separator (spaces of any kind,
    tabs, newlines, hyphens, underscores, punctuation) is dropped. So
    "Ｕnion\u00a0mailing-list", "UNION  MAILING\tLIST" and "uni\u200bon mailing list" with
    a Cyrillic "о" all read "unlonmalllngllst"."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in ("Mn", "Me", "Cf"))
    latin = unicodedata.normalize("NFKC", kept.translate(_latin_lookalikes()))
    folded = _SEPARATORS.sub("", latin.casefold().translate(_ASCII_FOLD))
    return folded.replace("rn", "m")


def source_is_denied(source: str, denied_sources: tuple[str, ...]) -> bool:
    """Lists harvested from other groups are refused: the source contains a denied one,
    compared on :func:`source_skeleton` so that no spelling, spacing or look-alike letter
    gets around it."""
    skeleton = source_skeleton(source)
    return any(d in skeleton for d in _denied_skeletons(denied_sources))


@functools.lru_cache(maxsize=16)
def _denied_skeletons(denied_sources: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for s in map(source_skeleton, denied_sources) if s)


def check_new_consent(
    evidence: Evidence,
    state: SubscriberState,
    denied_sources: tuple[str, ...],
    *,
    by_recipient: bool,
    channel: str | None = None,
) -> str | None:
    """The problem code that stops recording this consent, or None if it may be recorded.

    Only the recipient can undo their own opt-out or suppression: an operator or an import
    gets ``opted_out`` / ``suppressed`` back. Nor can an operator subscribe a Telegram user
    (``method_not_allowed_for_channel``).
    """
    if evidence.method not in CONSENT_METHODS:
        return "invalid_method"
    if not by_recipient and channel is not None and not method_allowed(channel,
                                                                        evidence.method):
        return "method_not_allowed_for_channel"
    if not evidence.source.strip() or not evidence.evidence.strip():
        return "missing_evidence"
    if source_is_denied(evidence.source, denied_sources):
        return "denied_source"
    if not by_recipient:
        if state.suppressed or state.status is Status.SUPPRESSED:
            return "suppressed"
        if state.status is Status.OPTED_OUT or state.objected:
            return "opted_out"
    return None


def _parse_hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def next_send_time(
    now: datetime, quiet_hours: tuple[str, str] | None, timezone: str
) -> datetime | None:
    """When a campaign message due ``now`` (aware, any zone) may go, if quiet hours hold it
    back; None when it may go now. Quiet hours delay messages, never drop them.
    ``quiet_hours`` is (start, end) local time: ("21:00", "08:00") wraps midnight."""
    if quiet_hours is None:
        return None
    start, end = (_parse_hhmm(v) for v in quiet_hours)
    if start == end:
        return None
    local = now.astimezone(ZoneInfo(timezone))
    t = local.timetz().replace(tzinfo=None)
    if start < end:
        inside = start <= t < end
    else:
        inside = t >= start or t < end
    if not inside:
        return None
    day = local.date()
    if start > end and t >= start:
        day = day + timedelta(days=1)
    resume = datetime.combine(day, end, tzinfo=ZoneInfo(timezone))
    return resume.astimezone(now.tzinfo)
