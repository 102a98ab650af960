"""SMS through Twilio's Messages API, and the plain readers for Twilio's webhooks.

:class:`TwilioSms` sends one message per permit with twilio's asynchronous client, over one
aiohttp session, never retrying a POST itself (a POST retried after its answer was lost is a
second text on someone's phone; retrying is the outbox's decision). Everything else here is a
pure function: checking ``X-Twilio-Signature``, reading an inbound SMS or a status callback
into an :class:`~adapters.base.InboundEvent`, and writing a TwiML answer.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from contextvars import ContextVar
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

from consentgate.adapters.base import (
    InboundEvent,
    OutboundMessage,
    OutcomeUnknown,
    PermanentSendError,
    Permit,
    RecipientRefused,
    RetryableSendError,
    SendResult,
)

__all__ = [
    "TwilioSms",
    "parse_inbound_sms",
    "parse_status_callback",
    "signature_is_valid",
    "twiml_reply",
]

#: Twilio error code: the recipient replied STOP and has not replied START since.
UNSUBSCRIBED_RECIPIENT = 21610

#: ``OptOutType`` (Twilio Advanced Opt-Out) -> our event kind.
_OPT_OUT_KINDS = {"STOP": "opt_out", "START": "opt_in", "HELP": "help"}

#: The ``Retry-After`` header of the response the current task's send received. twilio's
#: exceptions keep the status and the error code but drop the headers, so the HTTP client
#: leaves the one header we need here. A context variable keeps concurrent sends (each in its
#: own task) apart.
_retry_after_header: ContextVar[str | None] = ContextVar("twilio_retry_after", default=None)

#: Connections the aiohttp session keeps to the API (aiohttp's default, made explicit): a
#: request beyond them would wait for one, so it is also the adapter's ``max_concurrency``.
_MAX_CONNECTIONS = 100


class _RebasedHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """twilio's asynchronous HTTP client, sending every request to ``base_url``.

    The twilio client has no base-URL option: it builds ``https://api.twilio.com/...`` (or a
    regional host from ``TWILIO_EDGE`` / ``TWILIO_REGION``) itself. Rewriting scheme and host
    here, at the last step, sends every request to the configured place whatever the client
    built. Three more corrections to the parent class: it opens its aiohttp session in its
    constructor (which fails outside a running event loop), so the session is opened on the
    first request instead; it ignores its own ``timeout`` unless each call passes one (aiohttp
    then waits forever), so the configured timeout is applied to every request; and it hands
    credentials to aiohttp's deprecated ``auth=``, so they go in the header instead.
    ``max_retries`` is never set: a retried POST is a second SMS.
    """

    session: aiohttp.ClientSession | None

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(pool_connections=False, timeout=timeout)
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_base_url must be an http(s) URL, not {base_url!r}")
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._path_prefix = parts.path.rstrip("/")

    def rebase(self, url: str) -> str:
        """``url`` with the scheme and host of ``base_url`` (and its path in front)."""
        parts = urlsplit(url)
        return urlunsplit((self._scheme, self._netloc, self._path_prefix + parts.path,
                           parts.query, ""))

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the parent's signature
        allow_redirects: bool = False,
    ) -> Any:
        if self.session is None:
            # No await between the test and the assignment: concurrent first sends share it.
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        if auth is not None:
            # As a header: aiohttp deprecates the ``auth=`` argument the parent would use.
            headers = {**(headers or {}), "Authorization": _basic_auth(*auth)}
        response = await super().request(
            method, self.rebase(url), params=params, data=data, headers=headers, auth=None,
            timeout=timeout if timeout is not None else self.timeout,
            allow_redirects=allow_redirects)
        _retry_after_header.set(response.headers.get("Retry-After"))
        return response

    async def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()


def _basic_auth(login: str, password: str) -> str:
    credentials = f"{login}:{password}".encode("latin-1")
    return "Basic " + base64.b64encode(credentials).decode("ascii")


class TwilioSms:
    """The ``sms`` channel through one Twilio sender (a number or a messaging service)."""

    channel = "sms"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_base_url: str = "https://api.twilio.com",
        rate_per_second: float = 10.0,
        status_callback_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        sender = from_number or messaging_service_sid
        if not sender:
            raise ValueError("from_number or messaging_service_sid is required")
        if not account_sid or not auth_token:
            raise ValueError("account_sid and auth_token are required")
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.sender_key = f"twilio:{sender}"
        self.rate_per_second = rate_per_second
        self.max_concurrency = _MAX_CONNECTIONS
        self._from_number = from_number
        self._messaging_service_sid = messaging_service_sid
        self._status_callback_url = status_callback_url
        self._status_callback_prefix = _with_message_id(status_callback_url or "", "")
        self._http = _RebasedHttpClient(api_base_url, timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)

    async def send(self, message: OutboundMessage, permit: Permit) -> SendResult:
        """Check the permit, then make exactly one Messages API call for ``message``."""
        permit.check(message)
        params: dict[str, str] = {"to": message.address, "body": message.text}
        if self._from_number:
            params["from_"] = self._from_number
        if self._messaging_service_sid:
            params["messaging_service_sid"] = self._messaging_service_sid
        if self._status_callback_url:
            params["status_callback"] = self._status_callback_prefix + quote(
                message.message_id, safe="")
        _retry_after_header.set(None)
        try:
            created = await self._client.messages.create_async(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise _send_error(exc, _retry_after_header.get()) from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # The request never reached Twilio: safe to try again.
            raise RetryableSendError("network", f"{type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:  # asyncio.TimeoutError; before OSError, as it is one
            raise OutcomeUnknown("timeout", str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            # Sent, perhaps taken, answer lost: a retry could be a second text.
            raise OutcomeUnknown("network", f"{type(exc).__name__}: {exc}") from exc
        sid = getattr(created, "sid", None)
        return SendResult(provider_id=sid if isinstance(sid, str) else None)

    async def close(self) -> None:
        """Close the HTTP session (a later send opens a new one)."""
        await self._http.close()


def _with_message_id(url: str, message_id: str) -> str:
    """``url`` with ``m=<message_id>`` added to its query, so a status callback names our
    message even if we never recorded the sid Twilio gave it. The id ends the URL (a
    fragment is dropped: it never reaches a server), so ``_with_message_id(url, "")`` is a
    prefix to append ids to."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path,
                       query + urlencode({"m": message_id}), ""))


def _send_error(
    exc: TwilioRestException | TwilioServiceException, retry_after_header: str | None
) -> RetryableSendError | PermanentSendError:
    status = int(exc.status)
    # twilio puts the HTTP status in ``code`` when the body carried no Twilio error code;
    # Twilio's own codes have five digits.
    code = exc.code if isinstance(exc.code, int) and exc.code >= 10000 else None
    detail = str(getattr(exc, "msg", "") or getattr(exc, "title", "") or "")
    if code == UNSUBSCRIBED_RECIPIENT:
        return RecipientRefused(f"twilio_{code}", detail, scope="campaign")
    if status == 429 or status >= 500:
        return RetryableSendError(f"twilio_http_{status}", detail,
                                  retry_after=_parse_retry_after(retry_after_header))
    return PermanentSendError(f"twilio_{code}" if code else f"twilio_http_{status}", detail)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def signature_is_valid(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    """Whether ``signature`` (the ``X-Twilio-Signature`` header) signs this request.

    ``url`` must be the public URL Twilio called (``public_url`` + path + query), not the one
    the local server saw behind a proxy. ``params`` are the form fields as posted; a
    multi-dict is read with all its values, as Twilio signs them.
    """
    if not signature or not auth_token:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def parse_inbound_sms(form: Mapping[str, str]) -> InboundEvent:
    """Read Twilio's inbound-message webhook. ``OptOutType`` (set when Twilio Advanced
    Opt-Out matched a keyword and has already answered) makes it an ``opt_out`` / ``opt_in``
    / ``help`` event; otherwise it is a ``message`` for the keyword classifier."""
    address = form.get("From", "")
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    if not address:
        raise ValueError("inbound SMS webhook without From")
    if not sid:
        raise ValueError("inbound SMS webhook without MessageSid")
    opt_out_type = (form.get("OptOutType") or "").strip().upper()
    extra = {key: form[key] for key in ("To", "NumMedia") if key in form}
    return InboundEvent(
        kind=_OPT_OUT_KINDS.get(opt_out_type, "message"),
        channel="sms",
        address=address,
        provider_event_id=sid,
        text=form.get("Body", ""),
        provider_message_id=sid,
        extra=extra,
    )


def parse_status_callback(form: Mapping[str, str], message_id: str | None) -> InboundEvent:
    """Read a status callback for one of our messages. ``message_id`` is the ``m`` query
    parameter the adapter put on the callback URL, when there was one."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if not sid:
        raise ValueError("status callback without MessageSid")
    if not status:
        raise ValueError("status callback without MessageStatus")
    return InboundEvent(
        kind="status",
        channel="sms",
        address=form.get("To", ""),
        provider_event_id=f"{sid}:{status}",
        provider_message_id=sid,
        status=status,
        error_code=form.get("ErrorCode") or None,
        extra={"message_id": message_id} if message_id else {},
    )


def twiml_reply(text: str | None) -> str:
    """The TwiML answer to an inbound SMS: one ``<Message>`` with ``text``, or an empty
    ``<Response />`` when there is nothing to say."""
    response = MessagingResponse()
    if text:
        response.message(text)
    return str(response.to_xml())

