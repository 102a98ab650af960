"""Signed, opaque tokens for links people follow: unsubscribe, double opt-in confirmation.

A token names a campaign, a channel and the address's keyed hash, never the address, so a
forwarded or logged link gives nothing away, and it still works after the address itself has
been erased. Signed with the gateway's secret key: a changed or made-up token does not verify.
"""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadData, BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode

__all__ = ["TokenError", "TokenSubject", "Tokens"]


class TokenError(Exception):
    """Not a token we issued (or expired): answered as 404, changes nothing."""


@dataclass(frozen=True)
class TokenSubject:
    campaign: str
    channel: str
    address_hash: str
    extra: str = ""


class Tokens:
    def __init__(self, secret_key: str) -> None:
        self._secret = secret_key

    def _serializer(self, purpose: str) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._secret, salt=f"consentgate.{purpose}")

    def make(self, purpose: str, subject: TokenSubject) -> str:
        payload = [subject.campaign, subject.channel, subject.address_hash, subject.extra]
        return str(self._serializer(purpose).dumps(payload))

    def read(self, purpose: str, token: str, max_age: int | None = None) -> TokenSubject:
        if not _canonical_signature(token):
            raise TokenError("not a valid token")
        try:
            payload = self._serializer(purpose).loads(token, max_age=max_age)
        except SignatureExpired as exc:
            raise TokenError("expired") from exc
        except BadSignature as exc:
            raise TokenError("not a valid token") from exc
        if (not isinstance(payload, list) or len(payload) != 4
                or not all(isinstance(p, str) for p in payload)):
            raise TokenError("not a valid token")
        return TokenSubject(*payload)


def _canonical_signature(token: str) -> bool:
    """Whether the signature is spelled the one way we spell it.

    A 20-byte signature takes 27 base64 characters, and the last one carries two unused
    bits; the decoder ignores them, so four spellings of one signature would verify. A link
    that was altered must not work, so only the spelling we issue is accepted.
    """
    signature = token.rpartition(".")[2]
    try:
        return bool(signature) and base64_encode(base64_decode(signature)).decode() == signature
    except BadData:
        return False
