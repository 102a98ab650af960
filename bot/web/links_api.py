"""Join links under ``/api/v1/links``: create (with a QR code), list, show, revoke.

Thin, like the rest of the API: parse, authorise, call :class:`bot.links.LinkService`.
"""

from __future__ import annotations

from aiohttp import web

from consentgate.bot.errors import InvalidInput
from consentgate.bot.links import link_view, qr_png, qr_svg
from consentgate.bot.web.common import channel_of, gateway, operator, read_json

__all__ = ["add_routes", "link_view"]


async def post_link(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    body = await read_json(request)
    link = await gw.links.create(
        op.campaign.slug, op.name, channel=channel_of(body.get("channel")),
        name=body.get("name"), telegram_chat_id=body.get("telegram_chat_id"),
        expires_at=body.get("expires_at"), member_limit=body.get("member_limit"))
    answer = link_view(gw.links, link)
    answer["qr_svg"] = qr_svg(link.url)
    return web.json_response(answer, status=201)


async def get_links(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    found = await gw.links.list(op.campaign.slug)
    return web.json_response([link_view(gw.links, link) for link in found])


async def get_link(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    link = await gw.links.get(op.campaign.slug, request.match_info["id"])
    answer = link_view(gw.links, link)
    answer["qr_svg"] = qr_svg(link.url)
    return web.json_response(answer)


async def get_link_qr(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    link = await gw.links.get(op.campaign.slug, request.match_info["id"])
    return web.Response(text=qr_svg(link.url, scale=10), content_type="image/svg+xml")


async def get_link_qr_png(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    link = await gw.links.get(op.campaign.slug, request.match_info["id"])
    return web.Response(body=qr_png(link.url), content_type="image/png")


async def get_link_poster(request: web.Request) -> web.Response:
    """A printable poster (``?size=A4`` or ``A5``): campaign, QR code, short URL, link
    name and imprint."""
    from consentgate.bot.web.join_pages import render

    op = operator(request)
    gw = gateway(request)
    link = await gw.links.get(op.campaign.slug, request.match_info["id"])
    size = request.query.get("size", "A4").upper()
    if size not in ("A4", "A5"):
        raise InvalidInput("invalid_size", "size must be A4 or A5")
    short = link.url.split("://", 1)[-1]
    html = render("poster.html", link=link, campaign=op.campaign, url=link.url,
                  short_url=short, size=size, qr=qr_svg(link.url, scale=10))
    return web.Response(text=html, content_type="text/html")


async def revoke_link(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    link = await gw.links.revoke(op.campaign.slug, op.name, request.match_info["id"])
    return web.json_response(link_view(gw.links, link))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/links", post_link)
    r.add_get("/api/v1/links", get_links)
    r.add_get("/api/v1/links/{id}", get_link)
    r.add_get("/api/v1/links/{id}/qr.svg", get_link_qr)
    r.add_get("/api/v1/links/{id}/qr.png", get_link_qr_png)
    r.add_get("/api/v1/links/{id}/poster", get_link_poster)
    r.add_post("/api/v1/links/{id}/revoke", revoke_link)
