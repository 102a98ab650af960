"""Twilio's side of the webhooks: the forms Twilio posts and the signature it puts on them.

``inbound_sms_form`` and ``status_callback_form`` build the fields Twilio sends; ``sign``
computes ``X-Twilio-Signature`` with twilio's own ``RequestValidator``; ``post_signed`` posts
a form to a running server the way Twilio does.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from twilio.request_validator import RequestValidator

from consentgate.testing.fakes.twilio_api import DEFAULT_ACCOUNT_SID, new_sid

__all__ = ["inbound_sms_form", "post_signed", "sign", "status_callback_form"]

_API_VERSION = "2010-04-01"

#: calling code -> ISO country, for the ``FromCountry`` / ``ToCountry`` fields
_COUNTRIES = (("+44", "GB"), ("+353", "IE"), ("+1", "US"), ("+33", "FR"), ("+49", "DE"))


def sign(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for a POST of ``params`` to ``url``."""
    return str(RequestValidator(auth_token).compute_signature(url, params))


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    params: dict[str, str],
    auth_token: str,
    signature_url: str | None = None,
) -> aiohttp.ClientResponse:
    """POST ``params`` form-encoded to ``url`` with Twilio's signature header.

    ``signature_url`` is the public URL Twilio was configured with (what it signs), when that
    differs from where the request is actually sent (a server behind a proxy). The caller reads
    and releases the response (``async with await post_signed(...) as response``).
    """
    signature = sign(auth_token, signature_url or url, params)
    return await session.post(url, data=params, headers={"X-Twilio-Signature": signature})


def _country(number: str) -> str:
    return next((iso for prefix, iso in _COUNTRIES if number.startswith(prefix)), "")


def inbound_sms_form(
    from_: str,
    to: str,
    body: str,
    sid: str | None = None,
    opt_out_type: str | None = None,
    *,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    messaging_service_sid: str | None = None,
) -> dict[str, str]:
    """The form Twilio posts for an incoming SMS (``opt_out_type`` ``STOP`` / ``START`` /
    ``HELP`` when Advanced Opt-Out matched a keyword)."""
    sid = sid or new_sid()
    form = {
        "ToCountry": _country(to),
        "ToState": "",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": _country(from_),
        "To": to,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": _API_VERSION,
    }
    if messaging_service_sid:
        form["MessagingServiceSid"] = messaging_service_sid
    if opt_out_type:
        form["OptOutType"] = opt_out_type
    return form


def status_callback_form(
    message_sid: str,
    status: str,
    to: str,
    from_: str,
    error_code: str | None = None,
    *,
    account_sid: str = DEFAULT_ACCOUNT_SID,
) -> dict[str, str]:
    """The form Twilio posts to a message's ``StatusCallback`` (``status`` ``sent``,
    ``delivered``, ``undelivered``, ``failed`` ...; ``error_code`` e.g. ``30008``, ``21610``)."""
    form = {
        "SmsSid": message_sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": to,
        "MessageSid": message_sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": _API_VERSION,
    }
    if error_code:
        form["ErrorCode"] = error_code
    return form
