"""What every handler needs: the gateway, the calling operator, and input decoded at the
edge: bodies read whole within their size limit, then checked against their declared model
(``bot.web.models``), so a service only ever sees typed values."""

from __future__ import annotations

import difflib
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from consentgate.adapters.base import CHANNELS
from consentgate.bot.config import CampaignSettings
from consentgate.bot.errors import (
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from consentgate.bot.gateway import Gateway
from consentgate.bot.web.models import code_of

__all__ = ["GATEWAY", "OPERATORS", "Call", "Operator", "channel_of", "decode_body",
           "decode_query", "gateway", "json_answer", "operator", "operator_table", "path_id",
           "read_body", "read_json"]

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


@dataclass(frozen=True)
class Call:
    """One API call as a handler sees it: the request, the operator behind it (already
    checked for the role the route needs) and the gateway with its services."""

    request: web.Request
    op: Operator
    gw: Gateway


def json_answer(data: Any, status: int = 200) -> web.Response:
    """A JSON answer of the API."""
    return web.json_response(data, status=status)


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


#: How deep a JSON body may nest. The API's bodies are flat; a Telegram update nests a
#: dozen levels at most. Deeper input is refused before anything walks it.
MAX_DEPTH = 64


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, or 413 if it is over ``limit`` bytes. Read to the end:
    ``content.read(n)`` returns only what has arrived so far, which is not the body."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("body_too_large", f"the body is over {limit} bytes")
    raw = bytearray()
    while chunk := await request.content.read(64 * 1024):
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge("body_too_large", f"the body is over {limit} bytes")
    return bytes(raw)


def _bad_text(value: str) -> bool:
    """NUL, or a lone surrogate (JSON can spell one, ``"\\ud800"``; no database can hold it)."""
    return "\x00" in value or _SURROGATE.search(value) is not None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_tree(body: Any, *, refuse_unstorable: bool = True) -> None:
    """Walk parsed JSON without recursion: refuse nesting deeper than MAX_DEPTH, and (with
    ``refuse_unstorable``) text no storage or provider can take (NUL, lone surrogates),
    naming where it is."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            if refuse_unstorable and _bad_text(value):
                raise InvalidInput("invalid_input", f"{where or 'body'}: contains a NUL "
                                                    "character or a lone surrogate")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise GatewayError("invalid_body", f"the body nests deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            name = f"{where}.{key}" if where else str(key)
            if refuse_unstorable and isinstance(key, str) and _bad_text(key):
                raise InvalidInput("invalid_input", "a field name contains a NUL character "
                                                    "or a lone surrogate")
            stack.append((item, depth + 1, name))


async def read_json(request: web.Request, *, refuse_unstorable: bool = True) -> dict[str, Any]:
    """The whole request body as a JSON object, within the size limit, or a clear 4xx:
    413 when too large, 400 when not JSON, not an object, or nested too deep, 422 when a
    text holds NUL or a lone surrogate (unless ``refuse_unstorable`` is off: a provider's
    inbound update, whose text is cleaned where it is read, so that ``STOP\0`` still opts
    out)."""
    raw = await read_body(request, gateway(request).settings.server.max_body_bytes)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise GatewayError("invalid_body",
                           f"the body nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError("malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError("invalid_body", "the body must be a JSON object")
    _check_tree(body, refuse_unstorable=refuse_unstorable)
    return body


M = TypeVar("M", bound=BaseModel)


def _refusal(model: type[BaseModel], exc: ValidationError) -> InvalidInput:
    """The one problem a refused request gets: an unknown field first (with the nearest
    known name), else the first bad field, with the code declared for it."""
    errors = exc.errors(include_url=False)
    known = [info.alias or name for name, info in model.model_fields.items()]
    for err in errors:
        if err["type"] == "extra_forbidden":
            name = str(err["loc"][0])
            lowered = {k.lower(): k for k in known}
            near = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
            hint = f' (did you mean "{lowered[near[0]]}"?)' if near else ""
            return InvalidInput("unknown_field", f"{name}: unknown field{hint}")
    err = errors[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    code = code_of(model, field) or "invalid_input"
    message = "field required" if err["type"] == "missing" else err["msg"]
    return InvalidInput(code, f"{field or 'body'}: {message}")


async def decode_body(request: web.Request, model: type[M]) -> M:
    """The body read whole and decoded into its declared model, or a 4xx that changes
    nothing (``unknown_field``, ``invalid_input`` or the field's own code)."""
    body = await read_json(request)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _refusal(model, exc) from None


def decode_query(request: web.Request, model: type[M]) -> M:
    """The query string decoded into its declared model (same refusals as a body)."""
    query: dict[str, str] = {}
    for key, value in request.query.items():
        if _bad_text(key) or _bad_text(value):
            raise InvalidInput("invalid_input", "the query contains a NUL character or a "
                                                "lone surrogate")
        query[key] = value
    try:
        return model.model_validate(query)
    except ValidationError as exc:
        raise _refusal(model, exc) from None


def path_id(request: web.Request, name: str, what: str) -> int:
    """A numeric id from the path: ASCII digits only (``²`` or a fullwidth ``１`` is not a
    number here), else 404 as for any id that does not exist."""
    value = request.match_info[name]
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise NotFound(f"{what}_not_found", f"no such {what}")
    return int(value)


def channel_of(value: object, campaign: CampaignSettings | None = None) -> str:
    if not isinstance(value, str) or value not in CHANNELS:
        raise InvalidInput("invalid_channel", "channel must be one of sms, email, telegram")
    return value
