"""Join links under ``/api/v1/links``: create (with a QR code), list, show, revoke.

Thin, like the rest of the API: a decoded request in, one call to
:class:`bot.links.LinkService`, JSON out (routes and roles: :mod:`bot.web.routes`).
"""

from __future__ import annotations

from aiohttp import web

from consentgate.bot.links import POSTER_SIZES, Link, link_view, qr_png, qr_svg
from consentgate.bot.web.common import Call, json_answer
from consentgate.bot.web.models import LinkIn, PosterQuery

__all__ = ["get_link", "get_link_poster", "get_link_qr", "get_link_qr_png", "get_links",
           "link_view", "post_link", "revoke_link"]


async def post_link(call: Call, body: LinkIn) -> web.Response:
    links = call.gw.links
    link = await links.create(
        call.op.campaign.slug, call.op.name, channel=body.channel, name=body.name,
        telegram_chat_id=body.telegram_chat_id, expires_at=body.expires_at,
        member_limit=body.member_limit, tags=body.tags)
    answer = link_view(links, link)
    answer["qr_svg"] = qr_svg(link.url)
    return json_answer(answer, 201)


async def get_links(call: Call) -> web.Response:
    links = call.gw.links
    found = await links.list(call.op.campaign.slug)
    return json_answer([link_view(links, link) for link in found])


async def _link(call: Call) -> Link:
    return await call.gw.links.get(call.op.campaign.slug, call.request.match_info["id"])


async def get_link(call: Call) -> web.Response:
    link = await _link(call)
    answer = link_view(call.gw.links, link)
    answer["qr_svg"] = qr_svg(link.url)
    return json_answer(answer)


async def get_link_qr(call: Call) -> web.Response:
    link = await _link(call)
    return web.Response(text=qr_svg(link.url, scale=10), content_type="image/svg+xml")


async def get_link_qr_png(call: Call) -> web.Response:
    link = await _link(call)
    return web.Response(body=qr_png(link.url), content_type="image/png")


async def get_link_poster(call: Call, query: PosterQuery) -> web.Response:
    """A printable poster (``?size=A4``, ``A5``, ``A6`` or ``card``): campaign, what people
    get, the QR code scaled to the page, the short link written out, the controller, the
    privacy notice and the imprint. The link's own name is for the team, not printed."""
    from consentgate.bot.web.join_pages import render

    link = await _link(call)
    short = link.url.split("://", 1)[-1]
    html = render("poster.html", link=link, campaign=call.op.campaign, url=link.url,
                  short_url=short, size=POSTER_SIZES[query.size.upper()], qr=qr_svg(link.url))
    return web.Response(text=html, content_type="text/html")


async def revoke_link(call: Call) -> web.Response:
    link = await call.gw.links.revoke(call.op.campaign.slug, call.op.name,
                                      call.request.match_info["id"])
    return json_answer(link_view(call.gw.links, link))
