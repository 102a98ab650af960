"""Data rights over HTTP: subject access, erasure, rectification and restriction, the
suppression list as CSV, and the compliance report. Thin: parse, authorise, call
:mod:`bot.privacy` / :mod:`bot.report`. An auditor may read all of it and change none."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from consentgate.bot.errors import InvalidInput
from consentgate.bot.privacy import Privacy
from consentgate.bot.report import compliance_report
from consentgate.bot.web.common import Operator, channel_of, gateway, operator, read_json

__all__ = ["add_routes"]


def _privacy(request: web.Request) -> Privacy:
    gw = gateway(request)
    return Privacy(gw.db, gw.ledger, gw.settings)


def _subject(request: web.Request, op: Operator, privacy: Privacy) -> tuple[str, str]:
    channel = channel_of(request.match_info["channel"])
    return channel, privacy.address(op.campaign, channel, request.match_info["address"])


async def get_subject(request: web.Request) -> web.Response:
    op = operator(request)
    privacy = _privacy(request)
    channel, address = _subject(request, op, privacy)
    export = await privacy.export(op.campaign, channel, address, op.name)
    return web.json_response(export, dumps=_pretty)


async def delete_subject(request: web.Request) -> web.Response:
    op = operator(request)
    privacy = _privacy(request)
    channel, address = _subject(request, op, privacy)
    return web.json_response(await privacy.erase(op.campaign, channel, address, op.name))


async def patch_subject(request: web.Request) -> web.Response:
    """``{"address": corrected}`` (rectification) and/or ``{"restricted": bool}``."""
    op = operator(request)
    privacy = _privacy(request)
    channel, address = _subject(request, op, privacy)
    body = await read_json(request)
    unknown = set(body) - {"address", "restricted"}
    if unknown or not body:
        raise InvalidInput("invalid_body", "send address (a correction) and/or restricted "
                                           "(true or false)")
    restricted = body.get("restricted")
    if "restricted" in body and not isinstance(restricted, bool):
        raise InvalidInput("invalid_restricted", "restricted must be true or false")
    answer: dict[str, Any] = {"channel": channel, "address": address}
    if "address" in body:
        corrected = privacy.address(op.campaign, channel, body["address"])
        answer.update(await privacy.rectify(op.campaign, channel, address, corrected,
                                            op.name))
        address = corrected
    if isinstance(restricted, bool):
        answer.update(await privacy.restrict(op.campaign, channel, address, restricted,
                                             op.name))
    return web.json_response(answer)


async def get_suppressions(request: web.Request) -> web.Response:
    op = operator(request)
    text = await _privacy(request).suppressions_csv(op.campaign.slug)
    return web.Response(text=text, content_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{op.campaign.slug}-suppressions.csv"'})


async def get_report(request: web.Request) -> web.Response:
    op = operator(request)
    return web.json_response(await compliance_report(gateway(request).db, op.campaign.slug))


def _pretty(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/subjects/{channel}/{address}", get_subject)
    r.add_delete("/api/v1/subjects/{channel}/{address}", delete_subject)
    r.add_patch("/api/v1/subjects/{channel}/{address}", patch_subject)
    r.add_get("/api/v1/suppressions", get_suppressions)
    r.add_get("/api/v1/report", get_report)
