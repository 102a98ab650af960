"""The operators' HTTP API under ``/api/v1`` (see README.md and docs/api.md): consents, opt-outs,
subscribers, messages, broadcasts, the audit log and replies.

Thin: each handler gets the calling operator and its decoded request model (the route table
in :mod:`bot.web.routes` declares which, and checks the role), calls one service, and
answers JSON. No SQL and no transaction here: the services own both.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from consentgate.bot.errors import InvalidInput
from consentgate.bot.imports import import_consents, import_opt_outs
from consentgate.bot.tags import segment_of
from consentgate.bot.web.common import Call, channel_of, json_answer, path_id
from consentgate.bot.web.models import (
    AuditQuery,
    BroadcastIn,
    BroadcastsQuery,
    ConsentIn,
    MessageIn,
    OptOutIn,
    RepliesQuery,
    ResolveIn,
    SubscriberPatch,
)

__all__ = [
    "cancel_broadcast",
    "get_audit",
    "get_broadcast",
    "get_broadcasts",
    "get_message",
    "get_replies",
    "get_subscriber",
    "get_tags",
    "patch_subscriber",
    "post_broadcast",
    "post_consent",
    "post_consent_import",
    "post_message",
    "post_opt_out",
    "post_suppression_import",
    "resolve_reply",
    "resume_broadcast",
]


async def post_consent(call: Call, body: ConsentIn) -> web.Response:
    answer = await call.gw.subscribers.record_consent(
        call.op.campaign, call.op.name, body.channel, body.address, body.method,
        body.source, body.evidence, body.tags)
    return json_answer(answer, 201)


async def post_consent_import(call: Call) -> web.Response:
    gw = call.gw
    data = await call.request.read()
    report = await import_consents(gw.db, gw.ledger, call.op.campaign, call.op.name, data)
    return json_answer(report.as_dict())


async def post_suppression_import(call: Call) -> web.Response:
    gw = call.gw
    data = await call.request.read()
    report = await import_opt_outs(gw.db, gw.ledger, call.op.campaign, call.op.name, data)
    return json_answer(report.as_dict())


async def post_opt_out(call: Call, body: OptOutIn) -> web.Response:
    answer = await call.gw.subscribers.opt_out(call.op.campaign, call.op.name, body.channel,
                                               body.address, body.reason)
    return json_answer(answer, 201)


async def patch_subscriber(call: Call, body: SubscriberPatch) -> web.Response:
    match = call.request.match_info
    channel = channel_of(match["channel"])
    return json_answer(await call.gw.subscribers.change_tags(
        call.op.campaign, call.op.name, channel, match["address"], body.add_tags,
        body.remove_tags))


async def get_tags(call: Call) -> web.Response:
    return json_answer(await call.gw.tags.counts(call.op.campaign.slug))


async def get_subscriber(call: Call) -> web.Response:
    match = call.request.match_info
    channel = channel_of(match["channel"])
    return json_answer(await call.gw.subscribers.view(call.op.campaign, channel,
                                                      match["address"]))


async def post_message(call: Call, body: MessageIn) -> web.Response:
    gw = call.gw
    key = call.request.headers.get("Idempotency-Key")
    if key is not None and (not key.strip() or len(key) > 200):
        raise InvalidInput("invalid_idempotency_key", "Idempotency-Key must be 1-200 chars")
    answer = await gw.messages.send(call.op.campaign, call.op.name, body.channel, body.to,
                                    body.text, body.subject, key)
    if answer.status == 202:
        gw.dispatcher.wake(call.op.campaign.slug, body.channel)
        return json_answer(answer.body, 202)
    return web.json_response(answer.body, status=answer.status,
                             content_type="application/problem+json")


async def get_message(call: Call) -> web.Response:
    message_id = path_id(call.request, "id", "message")
    return json_answer(await call.gw.messages.view(call.op.campaign.slug, message_id))


async def post_broadcast(call: Call, body: BroadcastIn) -> web.Response:
    gw = call.gw
    slug = call.op.campaign.slug
    segment = segment_of(body.tags_any, body.tags_all, body.exclude_tags)
    result = await gw.broadcasts.create(slug, gw.rules[slug].channels_enabled, call.op.name,
                                        body.channel, body.text, body.subject, body.dry_run,
                                        segment=segment, send_at=body.send_at)
    if body.dry_run:
        return json_answer(result, 200)
    gw.scheduler.wake()  # to start it when due, or to queue its next batches
    if result["status"] != "scheduled":
        gw.dispatcher.wake(slug, body.channel)
    return json_answer(result, 202)


async def get_broadcasts(call: Call, query: BroadcastsQuery) -> web.Response:
    """The campaign's broadcasts, newest first."""
    return json_answer(await call.gw.broadcasts.latest(call.op.campaign.slug, query.limit))


async def get_broadcast(call: Call) -> web.Response:
    broadcast_id = path_id(call.request, "id", "broadcast")
    return json_answer(await call.gw.broadcasts.view(call.op.campaign.slug, broadcast_id))


async def cancel_broadcast(call: Call) -> web.Response:
    broadcast_id = path_id(call.request, "id", "broadcast")
    return json_answer(await call.gw.broadcasts.cancel(call.op.campaign.slug, broadcast_id,
                                                       call.op.name))


async def resume_broadcast(call: Call) -> web.Response:
    """A paused broadcast goes on: 200 with its view; 409 ``broadcast_not_paused`` otherwise."""
    broadcast_id = path_id(call.request, "id", "broadcast")
    view: dict[str, Any] = await call.gw.broadcasts.resume(call.op.campaign.slug,
                                                           broadcast_id, call.op.name)
    call.gw.dispatcher.wake(call.op.campaign.slug, view["channel"])
    return json_answer(view)


async def get_audit(call: Call, query: AuditQuery) -> web.Response:
    return json_answer(await call.gw.audit_log.list(
        call.op.campaign.slug, after=query.after, limit=query.limit, action=query.action,
        actor=query.actor, subject=query.subject))


async def get_replies(call: Call, query: RepliesQuery) -> web.Response:
    return json_answer(await call.gw.replies.list(call.op.campaign.slug,
                                                  flagged=query.flagged,
                                                  unresolved=query.unresolved,
                                                  limit=query.limit))


async def resolve_reply(call: Call, body: ResolveIn) -> web.Response:
    """A person's decision about one reply: 200 with the reply; 404, 409 ``already_resolved``."""
    reply_id = path_id(call.request, "id", "reply")
    return json_answer(await call.gw.replies.resolve(call.op.campaign.slug, reply_id,
                                                     body.action, body.note, call.op.name))
