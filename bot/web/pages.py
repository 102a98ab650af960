"""Public pages and service endpoints: health, metrics, unsubscribe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consentgate.bot.tokens import TokenError
from consentgate.bot.web.common import gateway
from consentgate.bot.web.problems import problem

__all__ = ["add_routes"]


async def healthz(request: web.Request) -> web.Response:
    try:
        await gateway(request).db.ping()
    except Exception:
        return problem(503, "database_unavailable", "the database does not answer")
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(gateway(request).metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


_templates = Environment(
    loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True, lstrip_blocks=True,
)

# A page whose URL holds a token: never cached, indexed, framed or passed on as a referrer,
# and no script runs on it.
_PRIVATE_PAGE = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
}
_MAX_UNSUBSCRIBE_FORM = 16 * 1024


def _page(template: str, status: int = 200, **context: Any) -> web.Response:
    return web.Response(text=_templates.get_template(template).render(**context),
                        status=status, content_type="text/html", headers=_PRIVATE_PAGE)


async def unsubscribe_page(request: web.Request) -> web.Response:
    """GET /u/{token}: a page with one button. Reads only: mail scanners fetch links."""
    try:
        view = await gateway(request).unsubscribe.view(request.match_info["token"])
    except TokenError:
        return _page("link_not_found.html", 404)
    return _page("unsubscribe.html", view=view)


async def unsubscribe_now(request: web.Request) -> web.Response:
    """POST /u/{token}: RFC 8058 one-click (``List-Unsubscribe=One-Click``) or the page's
    button. Opts out at once; 200 once it has committed, never a redirect."""
    if request.content_length is not None and request.content_length > _MAX_UNSUBSCRIBE_FORM:
        return problem(413, "body_too_large", "the form is too large")
    form = await request.post()
    method = "one_click" if form.get("List-Unsubscribe") == "One-Click" else "unsubscribe_page"
    try:
        view = await gateway(request).unsubscribe.unsubscribe(request.match_info["token"],
                                                              method=method)
    except TokenError:
        return _page("link_not_found.html", 404)
    return _page("unsubscribed.html", view=view)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/u/{token}", unsubscribe_page)
    app.router.add_post("/u/{token}", unsubscribe_now)
