"""The public join page and the double opt-in confirmation: ``/join/{link}``, ``/confirm/{token}``.

Server-rendered, no script: the pages work on any phone, with a keyboard and a screen reader.
The work is :class:`bot.join.JoinService`'s; these handlers read the form and pick a page.

``GET /confirm/{token}`` shows one button and changes nothing (mail scanners fetch every
link); its ``POST`` confirms. Both POSTs refuse a cross-site request (403, nothing changed):
another site must not sign people up, or confirm for them, through their browser.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from consentgate.bot.errors import NotFound
from consentgate.bot.join import JoinService, LinkGone, RateLimited
from consentgate.bot.templating import templates as _templates
from consentgate.bot.tokens import TokenError
from consentgate.bot.web.common import GATEWAY
from consentgate.bot.web.problems import problem

__all__ = ["add_routes", "render"]


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
    return request.app[GATEWAY].joins


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def is_cross_site(request: web.Request, public_url: str) -> bool:
    """A form post that another site made a browser send. ``Sec-Fetch-Site`` decides where
    the browser sends it; else an ``Origin`` other than ours. No header at all (old
    browsers, curl) and ``Origin: null`` (what browsers send from a page with
    ``Referrer-Policy: no-referrer``, like ours) are allowed."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site.strip().lower() not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None or origin.strip().lower() == "null":
        return False
    own = {_origin(public_url), f"{request.scheme}://{request.host}".lower()}
    return origin.strip().rstrip("/").lower() not in own


def _refuse_cross_site(request: web.Request) -> web.Response | None:
    if is_cross_site(request, _service(request).public_url):
        return problem(403, "cross_site_request",
                       "this form can only be sent from its own page; nothing was changed")
    return None


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
    refused = _refuse_cross_site(request)
    if refused is not None:
        return refused
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


async def confirm_page(request: web.Request) -> web.Response:
    """GET: the page with the one button; reads only."""
    try:
        result = await _service(request).preview(request.match_info["token"])
    except TokenError:
        return _page("confirm_invalid.html", 404)
    if result.outcome == "already":
        return _page("join_confirmed.html", result=result)
    return _page("confirm.html", result=result)


async def confirm(request: web.Request) -> web.Response:
    """POST: the person pressed the button; the double opt-in completes."""
    refused = _refuse_cross_site(request)
    if refused is not None:
        return refused
    try:
        result = await _service(request).confirm(
            request.match_info["token"], ip=_ip(request),
            user_agent=request.headers.get("User-Agent", ""))
    except TokenError:
        return _page("confirm_invalid.html", 404)
    return _page("join_confirmed.html", result=result)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/join/{link}", join_page)
    app.router.add_post("/join/{link}", join_submit)
    app.router.add_get("/confirm/{token}", confirm_page)
    app.router.add_post("/confirm/{token}", confirm)
