"""The public join page and the double opt-in confirmation: ``/join/{link}``, ``/confirm/{token}``.

Server-rendered, no script: the pages work on any phone, with a keyboard and a screen reader.
The work is :class:`bot.join.JoinService`'s; these handlers read the form and pick a page.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from consentgate.bot.errors import NotFound
from consentgate.bot.join import JoinService, LinkGone, RateLimited
from consentgate.bot.templating import templates as _templates
from consentgate.bot.tokens import TokenError
from consentgate.bot.web.common import GATEWAY

__all__ = ["JOIN", "add_routes", "render"]

JOIN = web.AppKey("join", JoinService)


# No script, no framing, forms post only here, nothing cached or passed on as a referrer.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}
_MAX_FORM = 8 * 1024


def render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(**context)


def _page(template: str, status: int = 200, headers: dict[str, str] | None = None,
          **context: Any) -> web.Response:
    return web.Response(text=render(template, **context), status=status,
                        content_type="text/html", headers={**_PAGE_HEADERS, **(headers or {})})


def _service(request: web.Request) -> JoinService:
    return request.app[JOIN]


def _ip(request: web.Request) -> str:
    # The peer address. Behind a reverse proxy every request shares the proxy's address,
    # so the per-IP limit then applies to all visitors together (see docs/join-links.md).
    return request.remote or "unknown"


async def join_page(request: web.Request) -> web.Response:
    try:
        page = await _service(request).page(request.match_info["link"])
    except NotFound:
        return _page("join_gone.html", 404, gone=False)
    except LinkGone:
        return _page("join_gone.html", 410, gone=True)
    return _page("join.html", page=page, address="", error=None, field=None)


async def join_submit(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > _MAX_FORM:
        raise web.HTTPRequestEntityTooLarge(max_size=_MAX_FORM,
                                            actual_size=request.content_length)
    form = await request.post()

    def text(name: str) -> str:
        value = form.get(name)
        return value if isinstance(value, str) else ""

    try:
        result = await _service(request).submit(
            request.match_info["link"], address=text("address")[:320],
            consent=text("consent") == "yes", honeypot=text("website"),
            shown_version=text("v"), ip=_ip(request),
            user_agent=request.headers.get("User-Agent", ""))
    except NotFound:
        return _page("join_gone.html", 404, gone=False)
    except LinkGone:
        return _page("join_gone.html", 410, gone=True)
    except RateLimited:
        return _page("join_limited.html", 429, headers={"Retry-After": "3600"})
    if result.outcome == "invalid":
        return _page("join.html", 422, page=result.page, address=text("address")[:320],
                     error=result.error, field=result.field)
    return _page("join_sent.html", page=result.page)


async def confirm(request: web.Request) -> web.Response:
    try:
        result = await _service(request).confirm(
            request.match_info["token"], ip=_ip(request),
            user_agent=request.headers.get("User-Agent", ""))
    except TokenError:
        return _page("confirm_invalid.html", 404)
    return _page("join_confirmed.html", result=result)


def add_routes(app: web.Application) -> None:
    gw = app[GATEWAY]
    app[JOIN] = JoinService(gw.db, gw.ledger, gw.links, gw.tokens, gw.campaigns,
                            gw.settings.server.public_url, wake=gw.dispatcher.wake)
    app.router.add_get("/join/{link}", join_page)
    app.router.add_post("/join/{link}", join_submit)
    app.router.add_get("/confirm/{token}", confirm)
