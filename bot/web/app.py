"""The aiohttp application: middleware (request context, limits, errors) and routes.

Handlers are thin: the API's route table (:mod:`bot.web.routes`) authorises and decodes,
the handler calls a service. Every error a service raises is a
:class:`bot.errors.GatewayError` and becomes problem+json here, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from consentgate.bot.errors import GatewayError
from consentgate.bot.gateway import Gateway
from consentgate.bot.web import join_pages, pages, routes, webhooks
from consentgate.bot.web.common import GATEWAY, OPERATORS, operator_table
from consentgate.bot.web.console import console_app
from consentgate.bot.web.openapi import OPENAPI_PATH, openapi_document
from consentgate.bot.web.problems import problem

__all__ = ["GATEWAY", "create_app"]


_log = structlog.get_logger("consentgate.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:12],
                                           method=request.method,
                                           path=request.path)  # masked by bot.logs
    response = await _answer(request, handler)
    return _harden(request, response)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        _log.info("request.refused", code=exc.code, status=exc.status)
        return problem(exc.status, exc.code, exc.detail, exc.title)
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "body_too_large", "the request body is too large")
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            answer = problem(exc.status, code, exc.reason)
            if "Allow" in exc.headers:  # a 405 says what the resource does allow
                answer.headers["Allow"] = exc.headers["Allow"]
            return answer
        raise
    except UnicodeDecodeError:  # a form or query that is not UTF-8 (request.post() raises)
        return problem(400, "invalid_body", "the request is not valid UTF-8")
    except Exception:
        # Never a half-applied change: the transaction rolled back. 503 so that providers
        # retry their webhook and callers may try again.
        _log.exception("request.failed")
        return problem(503, "temporarily_unavailable",
                       "the request could not be completed; nothing was changed, "
                       "please retry")


def _harden(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Headers every answer of a kind carries: API answers are never cached (they hold
    personal data and change with every call); a page is never sniffed as anything but
    HTML."""
    if response.prepared:
        return response
    if request.path.startswith("/api/") and response.content_type in (
            "application/json", "application/problem+json"):
        response.headers.setdefault("Cache-Control", "no-store")
    elif response.content_type == "text/html":
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def create_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[_errors],
                          client_max_size=gateway.settings.server.max_import_bytes)
    app[GATEWAY] = gateway
    app[OPERATORS] = operator_table(gateway)
    app.router.add_get(OPENAPI_PATH, openapi_document)
    routes.add_routes(app)
    webhooks.add_routes(app)
    pages.add_routes(app)
    join_pages.add_routes(app)
    app.router.add_get("/", _to_console)
    app.router.add_get("/console", _to_console)
    app.add_subapp("/console", console_app(gateway))
    return app


async def _to_console(_request: web.Request) -> web.Response:
    """A person who opens the server in a browser finds the organiser console."""
    return web.Response(status=303, headers={"Location": "/console/"})
