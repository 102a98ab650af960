"""The console's pages: thin handlers that read a form, call a service and pick a template.

Each change is made by the same service call the API makes, under the signed-in operator's
name, so the audit log attributes it to them. An auditor sees every page but no change
control, and every change route refuses an auditor anyway (:func:`_changer`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

from consentgate.adapters.base import CHANNELS
from consentgate.bot.broadcasts import parse_send_at
from consentgate.bot.errors import Forbidden, InvalidInput, NotFound
from consentgate.bot.imports import ImportReport, import_consents, import_opt_outs
from consentgate.bot.links import qr_png, qr_svg
from consentgate.bot.messages import iso
from consentgate.bot.report import compliance_report
from consentgate.bot.tags import Segment, segment_of
from consentgate.bot.web.common import GATEWAY
from consentgate.bot.web.console.auth import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    ConsoleUser,
    csrf_token,
    find_operator,
    verify_password,
)
from consentgate.bot.web.console.preview import sms_preview
from consentgate.bot.web.console.routes import (
    COUNTS,
    LIMITER,
    SESSIONS,
    USER,
    page,
    see_other,
    set_session_cookie,
    set_signin_cookie,
    user,
)

__all__ = ["add_routes"]

_log = structlog.get_logger("consentgate.console")

PAGE_SIZE = 50
_STATUSES = ("subscribed", "pending", "opted_out", "suppressed")


def _gw(request: web.Request) -> Any:
    return request.app[GATEWAY]


def _changer(request: web.Request) -> ConsoleUser:
    """The signed-in operator, who must be allowed to change things."""
    me = user(request)
    if not me.can_change:
        raise Forbidden("forbidden", "the auditor role may read but not change anything")
    return me


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _when(ts: float | str | None) -> str:
    """A time as the console shows it; ``ts`` is seconds or an ISO 8601 string (as the
    services' answers carry)."""
    if ts is None or ts == "":
        return ""
    when = datetime.fromisoformat(ts) if isinstance(ts, str) else datetime.fromtimestamp(ts, UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _cursor(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 18:
        raise InvalidInput("invalid_query", "the page cursor must be a number")
    return int(value)


def _channel(value: str | None, me: ConsoleUser) -> str:
    if value not in CHANNELS:
        raise InvalidInput("invalid_channel", "channel must be one of sms, email, telegram")
    assert value is not None
    return value


# -- sign-in ------------------------------------------------------------------------------


def _campaign_choices(request: web.Request) -> list[Any]:
    return list(_gw(request).settings.campaigns)


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    if request.get(USER) is not None:
        return see_other("/console/")
    return _sign_in_form(request, 200, error=None, name="")


def _sign_in_form(request: web.Request, status: int, *, error: str | None, name: str,
                  headers: dict[str, str] | None = None) -> web.Response:
    gw = _gw(request)
    pre = secrets.token_urlsafe(24)
    response = page(request, "sign_in.html", status, headers=headers,
                    csrf=csrf_token(gw.settings.security.secret_key, "signin", pre),
                    campaigns=_campaign_choices(request), error=error, name=name)
    set_signin_cookie(response, gw, pre)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    gw = _gw(request)
    form = await _form(request)
    name = form.get("name", "").strip()[:200]
    password = form.get("password", "")[:1000]
    campaigns = _campaign_choices(request)
    slug = form.get("campaign", campaigns[0].slug if len(campaigns) == 1 else "")
    limiter = request.app[LIMITER]
    key = f"{slug}\x00{name.casefold()}"
    address = request.remote or "unknown"
    wait = limiter.retry_after(key, address)
    if wait:
        minutes = max(1, -(-wait // 60))
        return _sign_in_form(request, 429, name=name, headers={"Retry-After": str(wait)},
                             error=f"Too many attempts. Try again in {minutes} minutes.")
    op = find_operator(gw.settings, slug, name) if name else None
    ok = await verify_password(op.password_hash if op else None, password)
    if not ok or op is None:
        limiter.failed(key, address)
        _log.info("console.sign_in_failed", campaign=slug)
        return _sign_in_form(request, 401, name=name,
                             error="That name and password do not match. Try again.")
    limiter.succeeded(key)
    sid = await request.app[SESSIONS].start(slug, op.name)
    _log.info("console.signed_in", campaign=slug, operator=op.name)
    response = see_other("/console/")
    set_session_cookie(response, gw, sid)
    response.del_cookie(SIGNIN_COOKIE, path="/console/sign-in")
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    me = user(request)
    sid = request.cookies.get(SESSION_COOKIE, "")
    await request.app[SESSIONS].end(sid, me)
    _log.info("console.signed_out", campaign=me.campaign.slug, operator=me.name)
    response = see_other("/console/sign-in")
    response.del_cookie(SESSION_COOKIE, path="/console")
    return response


# -- home ---------------------------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    me = user(request)
    gw = _gw(request)
    slug = me.campaign.slug

    async def by_status() -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = await gw.overview.by_status(slug)
        return found

    counts = await request.app[COUNTS].get(("home", slug), by_status)
    glance = await gw.overview.glance(slug, since=time.time() - 7 * 86400)
    views = [await gw.broadcasts.view(slug, b) for b in glance.recent_broadcasts]
    active = [v for v in views if v["status"] in ("queued", "sending", "paused")]
    links = await gw.links.list(slug)
    channels = me.campaign.channels()
    return page(request, "home.html", counts=counts.value, counted=counts, when=_when,
                channels=channels, statuses=_STATUSES, opt_outs=glance.opt_outs,
                flagged=glance.flagged_waiting, active=active, links=links[:10])


# -- join links ---------------------------------------------------------------------------


async def links_page(request: web.Request) -> web.Response:
    me = user(request)
    gw = _gw(request)
    found = await gw.links.list(me.campaign.slug)
    return page(request, "links.html", links=found, channels=me.campaign.channels(),
                now=time.time(), when=_when, form={}, error=None,
                own_chats=me.campaign.telegram.own_chats if me.campaign.telegram else ())


async def create_link(request: web.Request) -> web.StreamResponse:
    me = _changer(request)
    gw = _gw(request)
    form = await _form(request)
    chat = form.get("telegram_chat_id") or None
    expires = form.get("expires_at") or None
    limit = form.get("member_limit") or None
    try:
        link = await gw.links.create(
            me.campaign.slug, me.name, channel=_channel(form.get("channel"), me),
            name=form.get("name", ""),
            telegram_chat_id=int(chat) if chat and chat.lstrip("-").isdigit() else chat,
            expires_at=expires,
            member_limit=int(limit) if limit and limit.isdigit() else limit)
    except InvalidInput as exc:
        found = await gw.links.list(me.campaign.slug)
        return page(request, "links.html", exc.status, links=found,
                    channels=me.campaign.channels(), now=time.time(), when=_when, form=form,
                    error=exc.detail,
                    own_chats=me.campaign.telegram.own_chats if me.campaign.telegram else ())
    return see_other(f"/console/links/{link.id}")


async def link_page(request: web.Request) -> web.Response:
    me = user(request)
    gw = _gw(request)
    link = await gw.links.get(me.campaign.slug, request.match_info["id"])
    return page(request, "link.html", link=link, when=_when, live=link.is_live(),
                start_url=gw.links.start_url(link))


async def link_qr_svg(request: web.Request) -> web.Response:
    me = user(request)
    link = await _gw(request).links.get(me.campaign.slug, request.match_info["id"])
    return web.Response(text=qr_svg(link.url, scale=10), content_type="image/svg+xml",
                        headers={"Content-Disposition":
                                 f'inline; filename="join-{link.id}.svg"'})


async def link_qr_png(request: web.Request) -> web.Response:
    me = user(request)
    link = await _gw(request).links.get(me.campaign.slug, request.match_info["id"])
    return web.Response(body=qr_png(link.url), content_type="image/png",
                        headers={"Content-Disposition":
                                 f'attachment; filename="join-{link.id}.png"'})


async def link_poster(request: web.Request) -> web.Response:
    """The printable poster the API serves (same template), for A4 or A5."""
    from consentgate.bot.web.join_pages import render

    me = user(request)
    link = await _gw(request).links.get(me.campaign.slug, request.match_info["id"])
    size = request.query.get("size", "A4").upper()
    if size not in ("A4", "A5"):
        raise InvalidInput("invalid_size", "size must be A4 or A5")
    html = render("poster.html", link=link, campaign=me.campaign, url=link.url,
                  short_url=link.url.split("://", 1)[-1], size=size,
                  qr=qr_svg(link.url, scale=10))
    # The poster is a stand-alone print page with its own inline styles and no script.
    return web.Response(text=html, content_type="text/html", headers={
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                   "img-src 'self' data:; frame-ancestors 'none'"})


async def revoke_link(request: web.Request) -> web.StreamResponse:
    me = _changer(request)
    link = await _gw(request).links.revoke(me.campaign.slug, me.name,
                                           request.match_info["id"])
    return see_other(f"/console/links/{link.id}")


# -- broadcasts ---------------------------------------------------------------------------


_SEGMENT_FIELDS = ("tags_any", "tags_all", "exclude_tags")


def _values(form: Any, name: str) -> list[str]:
    """Every value of a repeated field (ticked checkboxes), from a query or a posted form."""
    found = form.getall(name, []) if hasattr(form, "getall") else [form.get(name)]
    return [v for v in found if isinstance(v, str) and v.strip()]


def segment_words(segment: Segment) -> str:
    """The segment as the confirmation states it, e.g. "people tagged volunteer or
    ward-north, leaving out those tagged staff"."""
    if segment.everyone:
        return "everyone"
    parts = []
    if segment.tags_any:
        parts.append("people tagged " + " or ".join(segment.tags_any))
    if segment.tags_all:
        parts.append(("with " if parts else "people tagged ")
                     + " and ".join(segment.tags_all))
    if segment.exclude_tags:
        parts.append(("leaving out " if parts else "everyone except ")
                     + "those tagged " + " or ".join(segment.exclude_tags))
    return ", ".join(parts)


def send_at_of(local: str, zone: str, now: float) -> str | None:
    """A ``datetime-local`` field's value (``2026-05-07T07:00``, a wall-clock time in the
    campaign's time zone ``zone``) as the ISO 8601 time with offset the service takes; None
    when empty. Raises ``invalid_send_at`` (422) for a malformed or past time. A wall-clock
    time that happens twice (clocks going back) is taken the first time; one that never
    happens (clocks going forward) is moved on by the gap, as ``zoneinfo`` does."""
    local = local.strip()
    if not local:
        return None
    try:
        if not local.isascii() or len(local) > 32:
            raise ValueError(local)
        wall = datetime.fromisoformat(local)
    except ValueError:
        raise InvalidInput("invalid_send_at", "send at: give a date and time, e.g. "
                                              "2026-05-07T07:00") from None
    if wall.tzinfo is None:
        wall = wall.replace(tzinfo=ZoneInfo(zone))
    when = wall.isoformat(timespec="seconds")
    parse_send_at(when, now)  # refuses a time in the past, as the API does
    return when


def _local(ts: str | None, zone: str) -> str:
    """An ISO 8601 time in the campaign's time zone, with UTC beside it."""
    if not ts:
        return ""
    when = datetime.fromisoformat(ts)
    there = when.astimezone(ZoneInfo(zone)).strftime("%a %d %b %Y, %H:%M")
    return f"{there} ({zone}; {when.astimezone(UTC).strftime('%H:%M')} UTC)"


def _draft(form: Any, me: ConsoleUser, zone: str = "UTC") -> dict[str, Any]:
    channels = me.campaign.channels()
    channel = form.get("channel") or (channels[0] if channels else "sms")
    if channel not in CHANNELS:
        raise InvalidInput("invalid_channel", "channel must be one of sms, email, telegram")
    text = form.get("text", "")
    subject = form.get("subject", "")
    lists = {name: _values(form, name) for name in _SEGMENT_FIELDS}
    segment = segment_of(*(lists[name] for name in _SEGMENT_FIELDS))
    send_at_local = form.get("send_at", "")
    send_at_local = send_at_local if isinstance(send_at_local, str) else ""
    draft: dict[str, Any] = {"channel": channel, "text": text, "subject": subject,
                             "segment": segment, "segment_words": segment_words(segment),
                             "send_at_local": send_at_local.strip()[:32]}
    pairs = [("channel", channel), ("text", text), ("subject", subject)]
    pairs += [(name, tag) for name in _SEGMENT_FIELDS for tag in getattr(segment, name)]
    if draft["send_at_local"]:
        pairs.append(("send_at", draft["send_at_local"]))
    draft["query"] = urlencode(pairs)
    if channel == "sms" and text.strip():
        sms = me.campaign.sms
        draft["sms"] = sms_preview(text, sms.opt_out_instruction if sms else "Reply STOP")
    return draft


def _schedule(draft: dict[str, Any], zone: str) -> str | None:
    """Check the draft's "send at" and put it, and when it goes in words, into the draft."""
    send_at = send_at_of(draft["send_at_local"], zone, time.time())
    due = parse_send_at(send_at, time.time())
    draft["send_at"] = send_at if due is not None else None
    draft["send_at_words"] = _local(send_at, zone) if due is not None else None
    return draft["send_at"]  # type: ignore[no-any-return]


async def _audience(request: web.Request, me: ConsoleUser, draft: dict[str, Any], *,
                    fresh: bool = False) -> dict[str, Any] | None:
    """Who the draft reaches: ``{eligible, excluded}`` as the API's dry run answers for the
    same channel and segment (and, for the preview, ``counted_at`` when the count was
    reused; see :mod:`.counts`)."""
    gw = _gw(request)
    slug, channel, segment = me.campaign.slug, draft["channel"], draft["segment"]
    if channel not in me.campaign.channels():
        return None
    if fresh:
        audience: dict[str, Any] = await gw.broadcasts.audience(slug, channel, segment)
        return audience

    async def count() -> dict[str, Any]:
        found: dict[str, Any] = await gw.broadcasts.audience(slug, channel, segment)
        return found

    counted = await request.app[COUNTS].get(("audience", slug, channel, segment), count)
    return {**counted.value, "counted_at": _when(counted.at) if counted.reused else None}


async def _tag_choices(request: web.Request, me: ConsoleUser,
                       draft: dict[str, Any]) -> list[dict[str, Any]]:
    """The campaign's tags for the compose form: ``[{tag, counts: {channel: n}}]`` (how
    many on each channel a broadcast could reach now), with any tag the draft names that
    nobody holds yet. Like the audience, a slow count is reused for a while."""
    slug = me.campaign.slug

    async def count() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await _gw(request).tags.counts(slug)
        return found

    rows = (await request.app[COUNTS].get(("tags", slug), count)).value
    found: dict[str, dict[str, int]] = {}
    for row in rows:
        found.setdefault(row["tag"], {})[row["channel"]] = row["subscribed"]
    segment: Segment = draft["segment"]
    for tag in (*segment.tags_any, *segment.tags_all, *segment.exclude_tags):
        found.setdefault(tag, {})
    return [{"tag": tag, "counts": found[tag]} for tag in sorted(found)]


def _zone(request: web.Request) -> str:
    zone: str = _gw(request).settings.policy.timezone
    return zone


async def broadcasts_page(request: web.Request) -> web.Response:
    me = user(request)
    gw = _gw(request)
    zone = _zone(request)
    draft = _draft(request.query, me, zone)
    before = _cursor(request.query.get("before"))
    ids = await gw.broadcasts.recent_ids(me.campaign.slug, before=before,
                                         limit=PAGE_SIZE + 1)
    more = len(ids) > PAGE_SIZE
    views = [await gw.broadcasts.view(me.campaign.slug, i) for i in ids[:PAGE_SIZE]]
    audience = await _audience(request, me, draft)
    tags = await _tag_choices(request, me, draft) if me.can_change else []
    return page(request, "broadcasts.html", draft=draft, audience=audience,
                campaign=me.campaign, channels=me.campaign.channels(), broadcasts=views,
                next_before=ids[PAGE_SIZE - 1] if more else None, error=None, tags=tags,
                zone=zone, local=lambda ts: _local(ts, zone))


async def broadcast_preview(request: web.Request) -> web.Response:
    """The live part of the compose form: the message as sent and who it reaches. An htmx
    request gets the fragment; a plain form's "Preview" button gets the whole page."""
    me = user(request)
    draft = _draft(request.query, me, _zone(request))
    audience = await _audience(request, me, draft)
    if request.headers.get("HX-Request") != "true":
        return await broadcasts_page(request)
    return page(request, "_preview.html", draft=draft, audience=audience,
                campaign=me.campaign)


def _check_text(draft: dict[str, Any]) -> None:
    if not draft["text"].strip():
        raise InvalidInput("invalid_text", "write the message first")


async def broadcast_confirm(request: web.Request) -> web.Response:
    """The step before anything is queued: the exact number of people it will reach (in
    the chosen segment, counted afresh) and when it goes."""
    me = _changer(request)
    zone = _zone(request)
    draft = _draft(await request.post(), me, zone)
    _check_text(draft)
    if draft["channel"] not in me.campaign.channels():
        raise Forbidden("channel_disabled", f"this campaign has no {draft['channel']} channel")
    _schedule(draft, zone)
    audience = await _audience(request, me, draft, fresh=True)
    return page(request, "confirm.html", draft=draft, audience=audience,
                campaign=me.campaign, changed=False)


async def broadcast_send(request: web.Request) -> web.StreamResponse:
    me = _changer(request)
    gw = _gw(request)
    zone = _zone(request)
    form = await request.post()
    draft = _draft(form, me, zone)
    _check_text(draft)
    send_at = _schedule(draft, zone)
    expected = form.get("expected", "")
    audience = await _audience(request, me, draft, fresh=True)
    if audience is None:
        raise Forbidden("channel_disabled", f"this campaign has no {draft['channel']} channel")
    if str(audience["eligible"]) != expected:
        # The audience moved since the operator confirmed: confirm the new number.
        return page(request, "confirm.html", 409, draft=draft, audience=audience,
                    campaign=me.campaign, changed=True)
    result = await gw.broadcasts.create(
        me.campaign.slug, gw.rules[me.campaign.slug].channels_enabled, me.name,
        draft["channel"], draft["text"],
        (draft["subject"] or None) if draft["channel"] == "email" else None, False,
        segment=draft["segment"], send_at=send_at)
    gw.scheduler.wake()  # to start it when due, or to queue its next batches
    if result["status"] != "scheduled":
        gw.dispatcher.wake(me.campaign.slug, draft["channel"])
    return see_other(f"/console/broadcasts/{result['id']}")


def _broadcast_id(request: web.Request) -> int:
    value = request.match_info["id"]
    if not value.isdigit() or len(value) > 18:
        raise NotFound("broadcast_not_found", "no such broadcast")
    return int(value)


async def broadcast_page(request: web.Request) -> web.Response:
    me = user(request)
    gw = _gw(request)
    view = await gw.broadcasts.view(me.campaign.slug, _broadcast_id(request))
    text, subject = await gw.broadcasts.content(me.campaign.slug, view["id"])
    template = "_progress.html" if request.headers.get("HX-Request") == "true" \
        else "broadcast.html"
    zone = _zone(request)
    return page(request, template, b=view, text=text, subject=subject,
                segment_words=segment_words(segment_of(**view["segment"])),
                local=lambda ts: _local(ts, zone))


async def broadcast_cancel(request: web.Request) -> web.StreamResponse:
    me = _changer(request)
    broadcast_id = _broadcast_id(request)
    await _gw(request).broadcasts.cancel(me.campaign.slug, broadcast_id, me.name)
    return see_other(f"/console/broadcasts/{broadcast_id}")


async def broadcast_resume(request: web.Request) -> web.StreamResponse:
    me = _changer(request)
    gw = _gw(request)
    broadcast_id = _broadcast_id(request)
    view = await gw.broadcasts.resume(me.campaign.slug, broadcast_id, me.name)
    gw.dispatcher.wake(me.campaign.slug, view["channel"])
    return see_other(f"/console/broadcasts/{broadcast_id}")


# -- replies ------------------------------------------------------------------------------


async def replies_page(request: web.Request) -> web.Response:
    """The inbox: flagged replies first (a person must read them), then the rest, newest
    first, a page at a time. ``unresolved=1`` leaves out the flagged replies already
    decided."""
    me = user(request)
    gw = _gw(request)
    slug = me.campaign.slug
    before = _cursor(request.query.get("before"))
    unresolved = request.query.get("unresolved") == "1"
    flagged = await gw.replies.list(slug, flagged=True, unresolved=unresolved,
                                    limit=PAGE_SIZE) if before is None else []
    if not unresolved:
        # Those still waiting for a decision come first.
        flagged.sort(key=lambda r: r["resolution"] is not None)
    rest = await gw.replies.list(slug, unflagged=True, before=before, limit=PAGE_SIZE + 1)
    more = len(rest) > PAGE_SIZE
    return page(request, "replies.html", flagged=flagged, rest=rest[:PAGE_SIZE], when=_when,
                next_before=rest[PAGE_SIZE - 1]["id"] if more else None,
                unresolved=unresolved, resolved=request.query.get("resolved"))


async def resolve_reply(request: web.Request) -> web.StreamResponse:
    """One click on a flagged reply: record the sender's opt-out, or mark it as not one.
    The work is the reply-review service's (``gateway.replies.resolve``), as in the API."""
    me = _changer(request)
    gw = _gw(request)
    form = await _form(request)
    action = form.get("action")
    if action not in ("opt_out", "not_an_opt_out"):
        raise InvalidInput("invalid_action", "action must be opt_out or not_an_opt_out")
    reply_id = request.match_info["id"]
    if not reply_id.isdigit() or len(reply_id) > 18:
        raise NotFound("reply_not_found", "no such reply")
    await gw.replies.resolve(me.campaign.slug, int(reply_id), action,
                             (form.get("note") or "")[:1000] or None, me.name)
    return see_other(f"/console/replies?resolved={int(reply_id)}")


# -- a person -----------------------------------------------------------------------------


async def person_page(request: web.Request) -> web.Response:
    me = user(request)
    gw = _gw(request)
    q = request.query
    if not q.get("address"):
        return page(request, "person.html", record=None, channels=me.campaign.channels(),
                    query={"channel": q.get("channel", "sms"), "address": ""})
    channel = _channel(q.get("channel"), me)
    address = gw.privacy.address(me.campaign, channel, q["address"][:320])
    record = await gw.subscribers.record(me.campaign.slug, channel, address,
                                         replies=PAGE_SIZE)
    return page(request, "person.html", record=record, channels=me.campaign.channels(),
                query={"channel": channel, "address": address}, when=_when)


def _confirmed(form: dict[str, str]) -> None:
    if form.get("confirm") != "yes":
        raise InvalidInput("not_confirmed", "tick the box to confirm, then send the form again")


async def _person_form(request: web.Request) -> tuple[ConsoleUser, dict[str, str], str, str]:
    me = _changer(request)
    form = await _form(request)
    channel = _channel(form.get("channel"), me)
    address = _gw(request).privacy.address(me.campaign, channel, form.get("address", "")[:320])
    return me, form, channel, address


def _person_url(channel: str, address: str) -> str:
    from urllib.parse import urlencode

    return "/console/people?" + urlencode({"channel": channel, "address": address})


async def person_export(request: web.Request) -> web.Response:
    """Subject access: everything held, as a JSON download (the access is audited). An
    auditor may export: it changes nothing about the person."""
    me = user(request)
    form = await _form(request)
    channel = _channel(form.get("channel"), me)
    privacy = _gw(request).privacy
    address = privacy.address(me.campaign, channel, form.get("address", "")[:320])
    export = await privacy.export(me.campaign, channel, address, me.name)
    return web.Response(text=json.dumps(export, indent=2, ensure_ascii=False),
                        content_type="application/json", headers={
                            "Cache-Control": "no-store",
                            "Content-Disposition": 'attachment; filename="subject-export.json"'})


async def person_rectify(request: web.Request) -> web.StreamResponse:
    me, form, channel, address = await _person_form(request)
    _confirmed(form)
    privacy = _gw(request).privacy
    corrected = privacy.address(me.campaign, channel, form.get("new_address", "")[:320])
    await privacy.rectify(me.campaign, channel, address, corrected, me.name)
    return see_other(_person_url(channel, corrected))


async def person_restrict(request: web.Request) -> web.StreamResponse:
    me, form, channel, address = await _person_form(request)
    _confirmed(form)
    restricted = form.get("restricted") == "true"
    await _gw(request).privacy.restrict(me.campaign, channel, address, restricted, me.name)
    return see_other(_person_url(channel, address))


async def person_erase(request: web.Request) -> web.Response:
    me, form, channel, address = await _person_form(request)
    _confirmed(form)
    result = await _gw(request).privacy.erase(me.campaign, channel, address, me.name)
    return page(request, "erased.html", channel=channel, result=result)


# -- opt-outs and imports -----------------------------------------------------------------


async def opt_outs_page(request: web.Request) -> web.Response:
    me = user(request)
    return page(request, "opt_outs.html", channels=me.campaign.channels(), report=None,
                done=request.query.get("done"))


async def record_opt_out(request: web.Request) -> web.StreamResponse:
    me, form, channel, address = await _person_form(request)
    gw = _gw(request)
    reason = (form.get("reason") or "operator request").strip()[:500]
    await gw.subscribers.opt_out(me.campaign, me.name, channel, address, reason)
    return see_other(_person_url(channel, address))


async def _upload(request: web.Request) -> bytes:
    form = await request.post()
    field = form.get("file")
    if field is None or isinstance(field, str) or not hasattr(field, "file"):
        raise InvalidInput("missing_file", "choose a CSV file to upload")
    data: bytes = field.file.read()
    return data


async def _import(request: web.Request, run: Callable[..., Awaitable[ImportReport]],
                  kind: str) -> web.Response:
    """An uploaded CSV through one of the imports, answered with its per-line results."""
    me = _changer(request)
    gw = _gw(request)
    report = await run(gw.db, gw.ledger, me.campaign, me.name, await _upload(request))
    return page(request, "opt_outs.html", channels=me.campaign.channels(),
                report=report.as_dict(), kind=kind, done=None)


async def import_suppressions(request: web.Request) -> web.Response:
    return await _import(request, import_opt_outs, "opt-outs")


async def import_consent_csv(request: web.Request) -> web.Response:
    return await _import(request, import_consents, "consents")


async def export_suppressions(request: web.Request) -> web.Response:
    me = user(request)
    text = await _gw(request).privacy.suppressions_csv(me.campaign.slug)
    return web.Response(text=text, content_type="text/csv", headers={
        "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="{me.campaign.slug}-suppressions.csv"'})


# -- audit and report ---------------------------------------------------------------------


async def audit_page(request: web.Request) -> web.Response:
    """The audit log, newest first, filterable by action and actor, a page at a time.
    Verifying the whole chain reads every record, so it runs when asked for."""
    me = user(request)
    gw = _gw(request)
    q = request.query
    before = _cursor(q.get("before"))
    filters = {k: q.get(k, "")[:200] for k in ("action", "actor")}
    rows = await gw.audit_log.recent(me.campaign.slug, before=before, limit=PAGE_SIZE + 1,
                                     action=filters["action"] or None,
                                     actor=filters["actor"] or None)
    verification = None
    if q.get("verify") == "1":
        verification = (await gw.audit_log.verify(me.campaign.slug)).result
    more = len(rows) > PAGE_SIZE
    return page(request, "audit.html", rows=rows[:PAGE_SIZE], filters=filters, when=_when,
                next_before=rows[PAGE_SIZE - 1].seq if more else None,
                verification=verification)


async def report_page(request: web.Request) -> web.Response:
    """The compliance report. Its figures are counted on every view; the audit chain is
    verified only when asked (``verify=1``, also from the audit page), since that reads
    every record: the page shows the last verification and how many records came since."""
    me = user(request)
    gw = _gw(request)
    slug = me.campaign.slug
    if request.query.get("verify") == "1":
        await gw.audit_log.verify(slug)
    verified = gw.audit_log.last_verified(slug)
    report = await compliance_report(gw.db, slug, verify_chain=False,
                                     chain=verified.result if verified else None)
    records = await gw.audit_log.records(slug)
    return page(request, "report.html", report=report, iso=iso, verified=verified,
                records=records, when=_when)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", home)
    r.add_get("/sign-in", sign_in_page)
    r.add_post("/sign-in", sign_in)
    r.add_post("/sign-out", sign_out)
    r.add_get("/links", links_page)
    r.add_post("/links", create_link)
    r.add_get("/links/{id}", link_page)
    r.add_get("/links/{id}/qr.svg", link_qr_svg)
    r.add_get("/links/{id}/qr.png", link_qr_png)
    r.add_get("/links/{id}/poster", link_poster)
    r.add_post("/links/{id}/revoke", revoke_link)
    r.add_get("/broadcasts", broadcasts_page)
    r.add_get("/broadcasts/preview", broadcast_preview)
    r.add_post("/broadcasts/confirm", broadcast_confirm)
    r.add_post("/broadcasts", broadcast_send)
    r.add_get("/broadcasts/{id}", broadcast_page)
    r.add_post("/broadcasts/{id}/cancel", broadcast_cancel)
    r.add_post("/broadcasts/{id}/resume", broadcast_resume)
    r.add_get("/replies", replies_page)
    r.add_post("/replies/{id}/resolve", resolve_reply)
    r.add_get("/people", person_page)
    r.add_post("/people/export", person_export)
    r.add_post("/people/rectify", person_rectify)
    r.add_post("/people/restrict", person_restrict)
    r.add_post("/people/erase", person_erase)
    r.add_get("/opt-outs", opt_outs_page)
    r.add_post("/opt-outs", record_opt_out)
    r.add_post("/opt-outs/import", import_suppressions)
    r.add_get("/opt-outs/export.csv", export_suppressions)
    r.add_post("/consents/import", import_consent_csv)
    r.add_get("/audit", audit_page)
    r.add_get("/report", report_page)
