"""Data rights over HTTP: subject access, erasure, rectification and restriction, the
suppression list as CSV, and the compliance report. Thin: a decoded request in, a call to
``gateway.privacy`` (:mod:`bot.privacy`) or :mod:`bot.report`, JSON out. An auditor may
read all of it and change none (roles: :mod:`bot.web.routes`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from consentgate.bot.errors import InvalidInput
from consentgate.bot.report import compliance_report
from consentgate.bot.web.common import Call, channel_of, json_answer
from consentgate.bot.web.models import SubjectPatch

__all__ = ["delete_subject", "get_report", "get_subject", "get_suppressions",
           "patch_subject"]


def _subject(call: Call) -> tuple[str, str]:
    match = call.request.match_info
    channel = channel_of(match["channel"])
    return channel, call.gw.privacy.address(call.op.campaign, channel, match["address"])


async def get_subject(call: Call) -> web.Response:
    channel, address = _subject(call)
    export = await call.gw.privacy.export(call.op.campaign, channel, address, call.op.name)
    return web.json_response(export, dumps=_pretty)


async def delete_subject(call: Call) -> web.Response:
    channel, address = _subject(call)
    return json_answer(await call.gw.privacy.erase(call.op.campaign, channel, address,
                                                   call.op.name))


async def patch_subject(call: Call, body: SubjectPatch) -> web.Response:
    """``{"address": corrected}`` (rectification) and/or ``{"restricted": bool}``."""
    privacy = call.gw.privacy
    op = call.op
    channel, address = _subject(call)
    if body.address is None and body.restricted is None:
        raise InvalidInput("invalid_body", "send address (a correction) and/or restricted "
                                           "(true or false)")
    answer: dict[str, Any] = {"channel": channel, "address": address}
    if body.address is not None:
        corrected = privacy.address(op.campaign, channel, body.address)
        answer.update(await privacy.rectify(op.campaign, channel, address, corrected,
                                            op.name))
        address = corrected
    if body.restricted is not None:
        answer.update(await privacy.restrict(op.campaign, channel, address, body.restricted,
                                             op.name))
    return json_answer(answer)


async def get_suppressions(call: Call) -> web.Response:
    slug = call.op.campaign.slug
    text = await call.gw.privacy.suppressions_csv(slug)
    return web.Response(text=text, content_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{slug}-suppressions.csv"'})


async def get_report(call: Call) -> web.Response:
    return json_answer(await compliance_report(call.gw.db, call.op.campaign.slug))


def _pretty(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
