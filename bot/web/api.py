"""The operators' HTTP API under ``/api/v1`` (see CONTRACT.md). Thin: parse, authorise,
call a service, answer JSON."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from consentgate.adapters.base import has_unstorable_text
from consentgate.bot.addresses import normalise_address
from consentgate.bot.consent import Evidence, Status
from consentgate.bot.errors import InvalidInput, NotFound
from consentgate.bot.imports import import_consents, import_opt_outs
from consentgate.bot.messages import iso
from consentgate.bot.versions import consent_text_version
from consentgate.bot.web.common import channel_of, gateway, operator, read_json
from consentgate.storage.models import audit_events, inbound_messages

__all__ = ["add_routes"]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _int(value: str, name: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise NotFound(f"{name}_not_found", f"no such {name}")
    return int(value)


async def post_consent(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    body = await read_json(request)
    channel = channel_of(body.get("channel"))
    if channel not in op.campaign.channels():
        raise InvalidInput("channel_disabled", f"this campaign has no {channel} channel")
    address = normalise_address(channel, body.get("address"), op.campaign.default_region)
    method = body.get("method")
    source = body.get("source", "")
    evidence = body.get("evidence", "")
    if not isinstance(method, str):
        raise InvalidInput("invalid_method", "method must be a string")
    if not isinstance(source, str) or not isinstance(evidence, str):
        raise InvalidInput("missing_evidence", "source and evidence must be strings")
    ev = Evidence(method, source, evidence, consent_text_version(op.campaign.consent_text),
                  op.name)
    async with gw.db.write() as conn:
        status = await gw.ledger.record_consent(conn, op.campaign.slug, channel, address, ev,
                                                by_recipient=False)
    return _json({"channel": channel, "address": address, "status": status.value}, 201)


async def post_consent_import(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    data = await request.read()
    report = await import_consents(gw.db, gw.ledger, op.campaign, op.name, data)
    return _json(report.as_dict())


async def post_suppression_import(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    data = await request.read()
    report = await import_opt_outs(gw.db, gw.ledger, op.campaign, op.name, data)
    return _json(report.as_dict())


async def post_opt_out(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    body = await read_json(request)
    channel = channel_of(body.get("channel"))
    address = normalise_address(channel, body.get("address"), op.campaign.default_region)
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput("invalid_reason", "reason must be a string")
    async with gw.db.write() as conn:
        cancelled = await gw.ledger.record_opt_out(
            conn, op.campaign.slug, channel, address, method="operator",
            reason=(reason or "operator request").strip()[:500], actor=op.name)
    gw.metrics.opt_outs.labels(channel, "operator").inc()
    return _json({"channel": channel, "address": address, "status": "opted_out",
                  "cancelled": cancelled}, 201)


async def get_subscriber(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    channel = channel_of(request.match_info["channel"])
    address = normalise_address(channel, request.match_info["address"],
                                op.campaign.default_region)
    async with gw.db.read() as conn:
        state = await gw.ledger.state(conn, op.campaign.slug, channel, address)
        decision = await gw.gate.decide_now(conn, op.campaign.slug, channel, address)
        history = await gw.ledger.history(conn, op.campaign.slug, channel, address)
    status = Status.SUPPRESSED if state.suppressed else state.status
    return _json({
        "channel": channel, "address": address, "status": status.value,
        "can_send": decision.allowed,
        "reason": decision.reason.value if decision.reason else None,
        "history": [{"at": iso(h.at), "event": h.event, "method": h.method,
                     "source": h.source, "actor": h.actor} for h in history],
    })


async def post_message(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    body = await read_json(request)
    channel = channel_of(body.get("channel"))
    key = request.headers.get("Idempotency-Key")
    if key is not None and (not key.strip() or len(key) > 200):
        raise InvalidInput("invalid_idempotency_key", "Idempotency-Key must be 1-200 chars")
    answer = await gw.messages.send(op.campaign, op.name, channel, body.get("to"),
                                    body.get("text"), body.get("subject"), key)
    if answer.status == 202:
        gw.dispatcher.wake(op.campaign.slug, channel)
        return _json(answer.body, 202)
    return web.json_response(answer.body, status=answer.status,
                             content_type="application/problem+json")


async def get_message(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    message_id = _int(request.match_info["id"], "message")
    return _json(await gw.messages.view(op.campaign.slug, message_id))


async def post_broadcast(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    body = await read_json(request)
    channel = channel_of(body.get("channel"))
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("invalid_dry_run", "dry_run must be true or false")
    result = await gw.broadcasts.create(op.campaign.slug, gw.rules[op.campaign.slug]
                                        .channels_enabled, op.name, channel,
                                        body.get("text"), body.get("subject"), dry_run)
    if dry_run:
        return _json(result, 200)
    gw.dispatcher.wake(op.campaign.slug, channel)
    return _json(result, 202)


async def get_broadcast(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    broadcast_id = _int(request.match_info["id"], "broadcast")
    return _json(await gw.broadcasts.view(op.campaign.slug, broadcast_id))


async def cancel_broadcast(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    broadcast_id = _int(request.match_info["id"], "broadcast")
    return _json(await gw.broadcasts.cancel(op.campaign.slug, broadcast_id, op.name))


async def resume_broadcast(request: web.Request) -> web.Response:
    """A paused broadcast goes on: 200 with its view; 409 ``broadcast_not_paused`` otherwise."""
    op = operator(request)
    gw = gateway(request)
    broadcast_id = _int(request.match_info["id"], "broadcast")
    view = await gw.broadcasts.resume(op.campaign.slug, broadcast_id, op.name)
    gw.dispatcher.wake(op.campaign.slug, view["channel"])
    return _json(view)


async def get_audit(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    q = request.query
    after = q.get("after", "0")
    limit = q.get("limit", "1000")
    if (not after.isdigit() or len(after) > 18 or not limit.isdigit()
            or not 1 <= int(limit) <= 10000):
        raise InvalidInput("invalid_query", "after must be a number, limit 1-10000")
    if any(has_unstorable_text(v) for v in q.values()):  # PostgreSQL refuses NUL in text
        raise InvalidInput("invalid_query", "the query holds a NUL character")
    stmt = (select(audit_events).where(audit_events.c.campaign == op.campaign.slug,
                                       audit_events.c.seq > int(after))
            .order_by(audit_events.c.seq).limit(int(limit)))
    if q.get("action"):
        stmt = stmt.where(audit_events.c.action == q["action"])
    if q.get("actor"):
        stmt = stmt.where(audit_events.c.actor == q["actor"])
    if q.get("subject"):  # e.g. sms#<hash>: everything done about one person
        stmt = stmt.where(audit_events.c.subject == q["subject"])
    async with gw.db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return _json([{"seq": r.seq, "at": iso(r.at), "actor": r.actor, "action": r.action,
                   "subject": r.subject, "detail": r.detail, "prev_hash": r.prev_hash,
                   "hash": r.hash} for r in rows])


async def get_replies(request: web.Request) -> web.Response:
    op = operator(request)
    gw = gateway(request)
    flagged = request.query.get("flagged", "").lower() in ("1", "true", "yes")
    limit = request.query.get("limit", "500")
    if not limit.isdigit() or not 1 <= int(limit) <= 10000:
        raise InvalidInput("invalid_query", "limit must be 1-10000")
    im = inbound_messages
    stmt = (select(im).where(im.c.campaign == op.campaign.slug)
            .order_by(im.c.at.desc(), im.c.id.desc()).limit(int(limit)))
    if flagged:
        stmt = stmt.where(im.c.flag.is_not(None))
    async with gw.db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return _json([{"id": r.id, "channel": r.channel, "from": r.from_address, "text": r.text,
                   "at": iso(r.at), "flag": r.flag, "intent": r.intent} for r in rows])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/consents", post_consent)
    r.add_post("/api/v1/consents/import", post_consent_import)
    r.add_post("/api/v1/opt-outs", post_opt_out)
    r.add_get("/api/v1/subscribers/{channel}/{address}", get_subscriber)
    r.add_post("/api/v1/messages", post_message)
    r.add_get("/api/v1/messages/{id}", get_message)
    r.add_post("/api/v1/broadcasts", post_broadcast)
    r.add_get("/api/v1/broadcasts/{id}", get_broadcast)
    r.add_post("/api/v1/broadcasts/{id}/cancel", cancel_broadcast)
    r.add_post("/api/v1/broadcasts/{id}/resume", resume_broadcast)
    r.add_get("/api/v1/audit", get_audit)
    r.add_get("/api/v1/replies", get_replies)
    r.add_post("/api/v1/suppressions/import", post_suppression_import)
