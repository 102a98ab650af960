"""Addresses: reading what people type into the one canonical form we store and compare.

SMS numbers become E.164 (read with the campaign's default region), emails are normalised
and lower-cased (compared case-insensitively), Telegram ids are decimal strings.
The keyed hash is what the suppression list keeps, so an erased address stays blocked
without being stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from consentgate.adapters.base import mask
from consentgate.bot.errors import InvalidInput

__all__ = ["address_hash", "mask", "normalise_address"]

_TELEGRAM_ID = re.compile(r"-?[1-9][0-9]{0,19}")
_MAX_ADDRESS = 320


def normalise_address(channel: str, raw: str, default_region: str = "GB") -> str:
    """The canonical form of ``raw`` on ``channel``, or :class:`InvalidInput`
    (code ``invalid_address``) naming what is wrong."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput("invalid_address", "address must be a non-empty string")
    value = raw.strip()
    if len(value) > _MAX_ADDRESS:
        raise InvalidInput("invalid_address", "address is too long")
    if channel == "sms":
        try:
            number = phonenumbers.parse(value, default_region)
        except phonenumbers.NumberParseException as exc:
            raise InvalidInput("invalid_address", f"not a phone number: {exc}") from None
        if not phonenumbers.is_valid_number(number):
            raise InvalidInput("invalid_address", "not a valid phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if channel == "email":
        try:
            info = validate_email(value, check_deliverability=False)
        except EmailNotValidError as exc:
            raise InvalidInput("invalid_address", f"not a valid email address: {exc}") from None
        return info.normalized.lower()
    if channel == "telegram":
        if not _TELEGRAM_ID.fullmatch(value):
            raise InvalidInput("invalid_address", "a Telegram address is the numeric user id")
        return value
    raise InvalidInput("invalid_channel", f"unknown channel {channel!r}")


def address_hash(secret_key: str, channel: str, address: str) -> str:
    """HMAC of the canonical address: stable per gateway, useless without the secret."""
    msg = f"{channel}:{address}".encode()
    return hmac.new(secret_key.encode(), msg, hashlib.sha256).hexdigest()
