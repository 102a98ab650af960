"""RFC 9457 problem details: the one place errors become HTTP answers."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from consentgate.bot.errors import problem_body

__all__ = ["problem"]

_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 410: "Gone",
           413: "Payload too large", 415: "Unsupported media type", 422: "Invalid input",
           429: "Too many requests", 503: "Service unavailable"}


def problem(status: int, code: str, detail: str, title: str | None = None,
            **extra: Any) -> web.Response:
    body = {**problem_body(status, code, detail, title or _TITLES.get(status, "Error")),
            **extra}
    headers = {"WWW-Authenticate": 'Bearer realm="consentgate"'} if status == 401 else None
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/problem+json", headers=headers)
