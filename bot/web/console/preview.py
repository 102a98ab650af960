"""What a broadcast will look like on the phone or in the inbox, before it is sent.

Pure functions on plain text: the SMS as the dispatcher will compose it (with the opt-out
instruction added unless the text already says how to opt out) and how many segments it
costs. GSM-7 texts carry 160 characters in one segment and 153 per segment when split;
anything outside GSM-7 is sent as UCS-2: 70, then 67 per segment (counted in UTF-16 units).
"""

from __future__ import annotations

from dataclasses import dataclass

from consentgate.bot.compose import says_how_to_opt_out

__all__ = ["SmsPreview", "sms_preview", "sms_segments"]

_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€\f")


@dataclass(frozen=True)
class SmsPreview:
    text: str  # as it will be sent
    added_line: str | None  # the opt-out instruction the gateway adds, if any
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # characters as the network counts them
    segments: int


def sms_segments(text: str) -> tuple[str, int, int]:
    """(encoding, units, segments) of one SMS body."""
    if all(ch in _GSM7 or ch in _GSM7_EXTENDED for ch in text):
        units = sum(2 if ch in _GSM7_EXTENDED else 1 for ch in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    if units <= single:
        return encoding, units, 1 if units else 0
    return encoding, units, -(-units // multi)


def sms_preview(text: str, instruction: str) -> SmsPreview:
    """The campaign SMS exactly as the dispatcher composes it (see ``Composer._sms``)."""
    added = None if says_how_to_opt_out(text) else instruction
    full = f"{text.rstrip()}\n{added}" if added else text
    encoding, units, segments = sms_segments(full)
    return SmsPreview(full, added, encoding, units, segments)
