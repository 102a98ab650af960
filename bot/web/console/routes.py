"""The console's route table, its middleware (sign-in, forgery checks, HTML errors) and the
headers every console page carries.

Pages are rendered on the server and work as plain HTML forms; htmx (served from
``/console/static/``) only refreshes the live parts. The Content-Security-Policy allows
scripts and styles from this server only: no inline script, no inline style.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from consentgate.bot.errors import GatewayError
from consentgate.bot.gateway import Gateway
from consentgate.bot.templating import templates as _templates
from consentgate.bot.web.common import GATEWAY
from consentgate.bot.web.console.auth import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    ConsoleUser,
    Sessions,
    SignInLimiter,
    csrf_token,
    same_origin,
)
from consentgate.bot.web.console.counts import SlowCounts

__all__ = ["COUNTS", "LIMITER", "SESSIONS", "USER", "console_app", "page", "see_other", "user"]

_log = structlog.get_logger("consentgate.console")

SESSIONS = web.AppKey("console_sessions", Sessions)
LIMITER = web.AppKey("console_limiter", SignInLimiter)
COUNTS = web.AppKey("console_counts", SlowCounts)
USER = web.RequestKey("console_user", ConsoleUser)  # the signed-in operator

_WEB = Path(__file__).resolve().parent.parent
STATIC = _WEB / "static"


HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

# Pages that need no signed-in operator.
_PUBLIC = {"/console/sign-in"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def user(request: web.Request) -> ConsoleUser:
    return request[USER]


def page(request: web.Request, template: str, status: int = 200,
         headers: dict[str, str] | None = None, **context: Any) -> web.Response:
    """A console page (or, for an htmx request, the fragment template given)."""
    html = _templates.get_template(f"console/{template}").render(
        me=request.get(USER), path=request.path, **context)
    return web.Response(text=html, status=status, content_type="text/html",
                        headers={**HEADERS, **(headers or {})})


def see_other(location: str) -> web.Response:
    """After a form: go to the page that shows the result (303, so a reload does not
    send the form again)."""
    return web.Response(status=303, headers={**HEADERS, "Location": location})


def _secure(gw: Gateway) -> bool:
    return gw.settings.server.public_url.startswith("https://")


def set_session_cookie(response: web.StreamResponse, gw: Gateway, sid: str) -> None:
    response.set_cookie(SESSION_COOKIE, sid, path="/console", httponly=True,
                        samesite="Lax", secure=_secure(gw))


def set_signin_cookie(response: web.StreamResponse, gw: Gateway, value: str) -> None:
    response.set_cookie(SIGNIN_COOKIE, value, path="/console/sign-in", httponly=True,
                        samesite="Strict", secure=_secure(gw), max_age=3600)


def _refused(request: web.Request, detail: str) -> web.Response:
    _log.info("console.forgery_refused", detail=detail)
    return page(request, "error.html", 403, code="forbidden", title="Refused",
                detail=detail)


@web.middleware
async def _console(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/console/static/"):
        return await handler(request)
    gw = request.app[GATEWAY]
    secret = gw.settings.security.secret_key
    changing = request.method not in ("GET", "HEAD")
    if changing and not same_origin(request, gw.settings.server.public_url):
        # Before anything else: a forged request learns nothing, not even "signed out".
        return _refused(request, "This form was sent from another site.")
    sid = request.cookies.get(SESSION_COOKIE)
    found = await request.app[SESSIONS].user(sid)
    if found is not None:
        request[USER] = found
    route = request.match_info.route.resource
    public = route is not None and route.canonical in _PUBLIC
    if found is None and not public:
        if not changing:
            return see_other("/console/sign-in")
        return page(request, "error.html", 401, code="unauthorized", title="Signed out",
                    detail="Your session has ended. Sign in again.")
    if changing:
        form = await request.post()
        sent = form.get("csrf")
        if found is not None and sid is not None:
            expected = csrf_token(secret, "session", sid)
        else:
            pre = request.cookies.get(SIGNIN_COOKIE, "")
            expected = csrf_token(secret, "signin", pre) if pre else ""
        if not isinstance(sent, str) or not expected or not _equal(sent, expected):
            return _refused(request, "This form has expired or was not sent from the "
                                     "console. Reload the page and try again.")
    try:
        return await handler(request)
    except GatewayError as exc:
        _log.info("console.refused", code=exc.code, status=exc.status)
        return page(request, "error.html", exc.status, code=exc.code, title=exc.title,
                    detail=exc.detail)
    except web.HTTPException as exc:
        if exc.status in (404, 405):
            return page(request, "error.html", exc.status,
                        code="not_found" if exc.status == 404 else "method_not_allowed",
                        title="Not found" if exc.status == 404 else "Not allowed",
                        detail="There is no such page in the console.")
        raise


def _equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def console_app(gateway: Gateway) -> web.Application:
    """The console as a sub-application, mounted at ``/console``."""
    from consentgate.bot.web.console import pages

    app = web.Application(middlewares=[_console],
                          client_max_size=gateway.settings.server.max_import_bytes)
    app[GATEWAY] = gateway
    app[SESSIONS] = Sessions(gateway.sessions, gateway.settings)
    app[LIMITER] = SignInLimiter()
    app[COUNTS] = SlowCounts()
    pages.add_routes(app)
    app.router.add_static("/static/", STATIC, append_version=False)
    return app
