"""Provider webhooks. Each is authenticated (Twilio's signature over ``public_url`` + path,
Telegram's secret header) before anything is read or changed, and answered only after the
change it causes has committed."""

from __future__ import annotations

import structlog
from aiohttp import web

from consentgate.adapters.telegram import secret_token_is_valid
from consentgate.adapters.twilio_sms import (
    parse_inbound_sms,
    parse_status_callback,
    signature_is_valid,
    twiml_reply,
)
from consentgate.bot.config import CampaignSettings
from consentgate.bot.errors import Forbidden, InvalidInput, NotFound
from consentgate.bot.web.common import gateway, read_json

__all__ = ["add_routes"]

_MAX_FORM = 64 * 1024

_log = structlog.get_logger("consentgate.webhooks")


def _twilio_campaign(request: web.Request) -> CampaignSettings:
    campaign = gateway(request).campaigns.get(request.match_info["campaign"])
    if campaign is None:
        raise NotFound("unknown_campaign", "no such campaign")
    if campaign.sms is None or campaign.sms.provider != "twilio":
        raise NotFound("channel_disabled", "this campaign has no Twilio SMS channel")
    return campaign


async def _signed_form(request: web.Request, campaign: CampaignSettings) -> dict[str, str]:
    if request.content_length is not None and request.content_length > _MAX_FORM:
        raise InvalidInput("body_too_large", "webhook body too large")
    form = await request.post()
    params = {k: v for k, v in form.items() if isinstance(v, str)}
    url = gateway(request).settings.server.public_url + request.rel_url.raw_path_qs
    assert campaign.sms is not None and campaign.sms.auth_token is not None
    if not signature_is_valid(campaign.sms.auth_token, url, params,
                              request.headers.get("X-Twilio-Signature")):
        raise Forbidden("invalid_signature", "X-Twilio-Signature does not match")
    return params


def _twiml(text: str | None) -> web.Response:
    return web.Response(text=twiml_reply(text), content_type="application/xml")


async def twilio_sms(request: web.Request) -> web.Response:
    campaign = _twilio_campaign(request)
    form = await _signed_form(request, campaign)
    try:
        event = parse_inbound_sms(form)
    except ValueError as exc:
        raise InvalidInput("invalid_webhook", str(exc)) from None
    scheme, colon, _ = event.address.partition(":")
    if colon:
        # ``whatsapp:+44...``, ``messenger:...``: another channel on the same Twilio account,
        # not this number's SMS. Its START must not subscribe the SMS number (nor its STOP
        # unsubscribe it): answered (so Twilio does not retry), nothing recorded.
        _log.warning("webhook.sender_not_sms", campaign=campaign.slug,
                     scheme=scheme if scheme.isalpha() and len(scheme) <= 16 else "other")
        return _twiml(None)
    result = await gateway(request).inbound.apply_text(campaign.slug, event)
    return _twiml(result.reply)


async def twilio_status(request: web.Request) -> web.Response:
    campaign = _twilio_campaign(request)
    form = await _signed_form(request, campaign)
    try:
        event = parse_status_callback(form, request.query.get("m"))
    except ValueError as exc:
        raise InvalidInput("invalid_webhook", str(exc)) from None
    await gateway(request).inbound.apply_status(campaign.slug, event)
    return web.Response(status=204)


async def telegram_update(request: web.Request) -> web.Response:
    gw = gateway(request)
    campaign = gw.campaigns.get(request.match_info["campaign"])
    if campaign is None:
        raise NotFound("unknown_campaign", "no such campaign")
    if campaign.telegram is None or campaign.telegram.provider != "telegram":
        raise NotFound("channel_disabled", "this campaign has no Telegram bot")
    if not secret_token_is_valid(campaign.telegram.webhook_secret or "",
                                 request.headers.get("X-Telegram-Bot-Api-Secret-Token")):
        raise Forbidden("invalid_secret_token", "X-Telegram-Bot-Api-Secret-Token does not match")
    try:
        update = await read_json(request, refuse_unstorable=False)
    except RecursionError:  # brackets nested past the parser's limit: not an Update
        raise InvalidInput("malformed_json", "the body is nested too deeply") from None
    await gw.telegram.handle_update(campaign.slug, update)
    return web.Response(status=200)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/webhooks/twilio/{campaign}/sms", twilio_sms)
    app.router.add_post("/webhooks/twilio/{campaign}/status", twilio_status)
    app.router.add_post("/webhooks/telegram/{campaign}", telegram_update)
