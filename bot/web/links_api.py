"""Join links under ``/api/v1/links``: create (with a QR code), list, show, revoke.

Thin, like the rest of the API: parse, authorise, call :class:`bot.links.LinkService`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from consentgate.bot.errors import InvalidInput
from consentgate.bot.links import Link, LinkService, qr_png, qr_svg
from consentgate.bot.messages import iso
from consentgate.bot.web.common import channel_of, gateway, operator, read_json

__all__ = ["add_routes", "link_view"]


def link_view(service: LinkService, link: Link) -> dict[str, Any]:
    """A link as the API shows it (the contract's ``id, name, channel, url, joins``, and
    what else an operator needs to manage it)."""
    return {
        "id": link.id,
        "name": link.name,
        "channel": link.channel,
        "url": link.url,
        "joins": link.joins,
        "kind": "telegram_invite" if link.is_invite else "join_page",
        "telegram_chat_id": int(link.telegram_chat_id) if link.telegram_chat_id else None,
        "telegram_start_url": service.start_url(link),
        "expires_at": iso(link.expires_at),
        "member_limit": link.member_limit,
        "revoked_at": iso(link.revoked_at),
        "active": link.is_live(),
        "created_by": link.created_by,
        "created_at": iso(link.created_at),
        "tags": list(link.tags),
    }


async def post_link(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    body = await read_json(request)
    link = await gw.links.create(
        op.campaign.slug, op.name, channel=channel_of(body.get("channel")),
        name=body.get("name"), telegram_chat_id=body.get("telegram_chat_id"),
        expires_at=body.get("expires_at"), member_limit=body.get("member_limit"),
        tags=body.get("tags"))
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
