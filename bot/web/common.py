"""What every handler needs: the gateway, the calling operator, and bounded JSON input."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from consentgate.adapters.base import CHANNELS
from consentgate.bot.config import CampaignSettings
from consentgate.bot.errors import (
    Forbidden,
    GatewayError,
    InvalidInput,
    PayloadTooLarge,
    Unauthorized,
)
from consentgate.bot.gateway import Gateway

__all__ = ["GATEWAY", "OPERATORS", "Operator", "channel_of", "gateway", "operator",
           "operator_table", "read_json"]

GATEWAY = web.AppKey("gateway", Gateway)
OPERATORS: web.AppKey[dict[bytes, Operator]] = web.AppKey("operators", dict)


def operator_table(gw: Gateway) -> dict[bytes, Operator]:
    """Operators by the SHA-256 of their token (tokens are compared as digests, in constant
    time, and never kept in a lookup structure as they are)."""
    return {_digest(op.token): Operator(op.name, op.role, c)
            for c in gw.settings.campaigns for op in c.operators}


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    campaign: CampaignSettings

    @property
    def can_change(self) -> bool:
        return self.role != "auditor"


def gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def operator(request: web.Request, *, change: bool | None = None) -> Operator:
    """The operator behind the bearer token. ``change`` (default: any method but GET/HEAD)
    requires a role that may change things: an auditor reads, never writes."""
    table = request.app[OPERATORS]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("unauthorized", "send Authorization: Bearer <operator token>")
    digest = _digest(token.strip())
    found = None
    for known, op in table.items():
        if hmac.compare_digest(known, digest):
            found = op
    if found is None:
        raise Unauthorized("unauthorized", "unknown operator token")
    if change is None:
        change = request.method not in ("GET", "HEAD")
    if change and not found.can_change:
        raise Forbidden("forbidden", "the auditor role may read but not change anything")
    return found


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, within the size limit, or a clear 4xx."""
    limit = gateway(request).settings.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("body_too_large", f"the body is over {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge("body_too_large", f"the body is over {limit} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError("malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError("invalid_body", "the body must be a JSON object")
    return body


def channel_of(value: object, campaign: CampaignSettings | None = None) -> str:
    if not isinstance(value, str) or value not in CHANNELS:
        raise InvalidInput("invalid_channel", "channel must be one of sms, email, telegram")
    return value


def require_str(body: dict[str, Any], key: str, *, code: str = "invalid_input",
                allow_empty: bool = False) -> str:
    value = body.get(key)
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(code, f"{key} must be a string")
    if not allow_empty and not value.strip():
        raise InvalidInput(code, f"{key} must not be empty")
    return value


