"""Public pages and service endpoints: health, metrics, unsubscribe, and the log
providers' outbox.

``/dev/outbox`` lets a person trying the product on the ``log`` providers (the embedded
default) read the messages that would have been sent (confirmation links, unsubscribe
links) without reading the database and without any token going to the log. It exists
only for campaigns whose every channel is on the ``log`` provider: with a real provider
the messages went to real people, and the page is 404.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consentgate.adapters.base import OutboundMessage, mask
from consentgate.adapters.log import LogChannel
from consentgate.bot.gateway import Gateway
from consentgate.bot.templating import templates as _templates
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
    gw = gateway(request)
    await gw.replies.refresh_gauges()
    data = generate_latest(gw.metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})



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


_URL = re.compile(r"https?://[^\s<>\"']+")
#: How many of the latest messages /dev/outbox shows.
OUTBOX_SHOWN = 20


def log_only_campaigns(gw: Gateway) -> list[str]:
    """The campaigns whose every channel is on the ``log`` provider."""
    return [c.slug for c in gw.settings.campaigns if c.channels() and all(
        isinstance(gw.adapters.get((c.slug, ch)), LogChannel) for ch in c.channels())]


def _pieces(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into (piece, is_link), so the page can make its links clickable."""
    pieces: list[tuple[str, bool]] = []
    at = 0
    for found in _URL.finditer(text):
        url = found.group(0).rstrip(".,;:)")
        pieces.append((text[at:found.start()], False))
        pieces.append((url, True))
        at = found.start() + len(url)
    pieces.append((text[at:], False))
    return [p for p in pieces if p[0]]


def _shown(message: OutboundMessage) -> dict[str, Any]:
    return {"id": message.message_id, "campaign": message.campaign,
            "channel": message.channel, "kind": message.kind, "to": mask(message.address),
            "subject": message.subject, "pieces": _pieces(message.text)}


async def dev_outbox(request: web.Request) -> web.Response:
    """GET /dev/outbox: the latest messages the ``log`` providers would have sent."""
    gw = gateway(request)
    slugs = log_only_campaigns(gw)
    if not slugs:
        return problem(404, "not_found", "there is no outbox page: messages are really sent")
    sent: list[OutboundMessage] = []
    for slug in slugs:
        # The dispatcher's adapters: with its own thread it has its own, and they are the
        # ones that "sent" (a deque is copied whole under the interpreter lock).
        for (campaign, _), adapter in gw.dispatch_adapters.items():
            if campaign == slug and isinstance(adapter, LogChannel):
                sent.extend(list(adapter.sent))
    sent.sort(key=lambda m: int(m.message_id) if m.message_id.isdigit() else 0, reverse=True)
    return _page("dev_outbox.html", messages=[_shown(m) for m in sent[:OUTBOX_SHOWN]],
                 shown=OUTBOX_SHOWN)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/u/{token}", unsubscribe_page)
    app.router.add_post("/u/{token}", unsubscribe_now)
    app.router.add_get("/dev/outbox", dev_outbox)
