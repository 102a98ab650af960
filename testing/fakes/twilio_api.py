"""A loopback fake of Twilio's Messages API, served over real HTTP.

Tests, benchmarks and the demo point ``api_base_url`` at it and talk to it with the real twilio
client, over real sockets, from this process or another one. It answers as Twilio does
(form-encoded requests, HTTP Basic auth, Twilio's JSON message and error shapes), records what
it accepted and every request it saw, and has knobs for what Twilio does to a sender: latency,
numbers that replied STOP (21610), invalid numbers (21211), and injected failures (429, 5xx).
For runs of millions of messages, ``keep_history=False`` keeps only the count of accepted
messages and hands each one to ``on_accept``, so its memory does not grow with the run.

    async with FakeTwilio() as fake:
        sms = TwilioSms(account_sid=fake.account_sid, auth_token=fake.auth_token,
                        from_number="+447700900000", api_base_url=fake.base_url)
        ...
        await fake.wait_for(3)

Run ``python -m consentgate.testing.fakes.twilio_api --port 8099`` to serve it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from consentgate.testing.fakes._served import Served

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "ApiRequest",
    "FakeTwilio",
    "SentSms",
    "new_sid",
]

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token"

_API_VERSION = "2010-04-01"
_MESSAGES_PATH = f"/{_API_VERSION}/Accounts/{{account_sid}}/Messages.json"

#: Twilio's error messages for the codes this fake produces.
_ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    20503: "Service is unavailable. Please try again",
    21211: "The 'To' number {to} is not a valid phone number.",
    21602: "Message body is required.",
    21603: "The 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
}

# GSM 03.38: the basic set costs one septet a character, the extension set two.
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = set("^{}\\[~]|€\f")


def new_sid(prefix: str = "SM") -> str:
    """A Twilio-shaped sid: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def count_segments(body: str) -> int:
    """How many SMS segments Twilio bills ``body`` as (GSM-7 when it fits, else UCS-2)."""
    if all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in body):
        septets = sum(2 if c in _GSM_EXTENDED else 1 for c in body)
        return 1 if septets <= 160 else math.ceil(septets / 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


@dataclass(frozen=True)
class SentSms:
    """A message the fake accepted (answered 201)."""

    sid: str
    to: str
    from_: str | None
    body: str
    status_callback: str | None
    messaging_service_sid: str | None
    #: ``time.monotonic()`` when the request arrived (before any simulated latency)
    received_at: float
    #: the account whose credentials sent it
    account_sid: str = DEFAULT_ACCOUNT_SID


@dataclass(frozen=True)
class ApiRequest:
    """Any request the fake answered, accepted or not."""

    method: str
    path: str
    form: dict[str, str]
    status: int
    #: ``host:port`` of the client's end of the connection (one per pooled connection)
    peer: str
    received_at: float
    authorization: str | None = None


@dataclass
class _Failure:
    status: int
    code: int | None
    retry_after: float | None


@dataclass
class FakeTwilio(Served):
    """Twilio's ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` on loopback."""

    account_sid: str = DEFAULT_ACCOUNT_SID
    auth_token: str = DEFAULT_AUTH_TOKEN
    #: seconds each request takes to answer (provider latency)
    latency: float = 0.0
    #: numbers that replied STOP at Twilio: sends to them get 400, code 21610
    unsubscribed: set[str] = field(default_factory=set)
    #: numbers Twilio does not accept: sends to them get 400, code 21211
    invalid: set[str] = field(default_factory=set)
    #: further accounts served beside ``account_sid``: {account sid: auth token}
    credentials: dict[str, str] = field(default_factory=dict)
    #: keep every accepted message in ``messages`` and every request in ``requests``
    keep_history: bool = True
    #: called with each accepted message, whether or not it is kept
    on_accept: Callable[[SentSms], None] | None = None

    #: how many messages it accepted since it started (kept or not)
    accepted: int = field(default=0, init=False)
    messages: list[SentSms] = field(default_factory=list, init=False)
    requests: list[ApiRequest] = field(default_factory=list, init=False)
    base_url: str = field(default="", init=False)

    _failures: deque[_Failure] = field(default_factory=deque, init=False, repr=False)
    _accepted: asyncio.Condition = field(default_factory=asyncio.Condition, init=False,
                                         repr=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("FakeTwilio is already running")
        app = web.Application()
        app.router.add_post(_MESSAGES_PATH, self._create_message)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # A short grace at stop: a request held by ``latency`` need not delay a test's teardown.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving (open connections are closed)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- knobs and synchronisation -----------------------------------------------------------

    def fail_next(
        self, status: int, count: int = 1, code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``count`` requests with HTTP ``status`` (Twilio error ``code``,
        by default 20000 + status as Twilio does for 429 and 5xx) and, if given, a
        ``Retry-After`` header. Nothing is accepted for those requests."""
        for _ in range(count):
            self._failures.append(_Failure(status, code, retry_after))

    async def wait_for(
        self, count: int, timeout: float = 10.0  # noqa: ASYNC109 - a deadline is its point
    ) -> list[SentSms]:
        """Wait until at least ``count`` messages were accepted; raise ``TimeoutError``
        if that takes longer than ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._accepted:
            await self._accepted.wait_for(lambda: self.accepted >= count)
        return list(self.messages)

    def sent_to(self, number: str) -> list[SentSms]:
        """The accepted messages to ``number``, oldest first."""
        return [sms for sms in self.messages if sms.to == number]

    # -- handlers ----------------------------------------------------------------------------

    async def _create_message(self, request: web.Request) -> web.Response:
        received_at = time.monotonic()
        form = {key: str(value) for key, value in (await request.post()).items()}
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        response, accepted = self._answer(request, form, received_at)
        self._record(request, form, response.status, received_at)
        if accepted is not None:
            async with self._accepted:
                self.accepted += 1
                if self.keep_history:
                    self.messages.append(accepted)
                if self.on_accept is not None:
                    self.on_accept(accepted)
                self._accepted.notify_all()
        return response

    def _answer(
        self, request: web.Request, form: dict[str, str], received_at: float
    ) -> tuple[web.Response, SentSms | None]:
        if self._failures:
            failure = self._failures.popleft()
            headers = ({"Retry-After": _format_seconds(failure.retry_after)}
                       if failure.retry_after is not None else None)
            return _error(failure.status, failure.code or 20000 + failure.status,
                          headers=headers), None
        login = self._authorized(request.headers.get("Authorization"))
        if login is None:
            return _error(401, 20003,
                          headers={"WWW-Authenticate": 'Basic realm="Twilio API"'}), None
        if request.match_info["account_sid"] != login:
            return _error(404, 20404), None
        to = form.get("To", "")
        if not to:
            return _error(400, 21604), None
        if not form.get("Body"):
            return _error(400, 21602), None
        from_ = form.get("From") or None
        service = form.get("MessagingServiceSid") or None
        if from_ is None and service is None:
            return _error(400, 21603), None
        if to in self.invalid:
            return _error(400, 21211, to=to), None
        if to in self.unsubscribed:
            return _error(400, 21610), None
        sms = SentSms(sid=new_sid(), to=to, from_=from_, body=form["Body"],
                      status_callback=form.get("StatusCallback") or None,
                      messaging_service_sid=service, received_at=received_at,
                      account_sid=login)
        return web.json_response(self._message_json(sms), status=201), sms

    async def _not_found(self, request: web.Request) -> web.Response:
        received_at = time.monotonic()
        form = {key: str(value) for key, value in (await request.post()).items()}
        response = _error(404, 20404)
        self._record(request, form, response.status, received_at)
        return response

    def _authorized(self, header: str | None) -> str | None:
        """The account sid whose credentials ``header`` carries, or None."""
        if not header:
            return None
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode(
                "latin-1").partition(":")
        except ValueError:  # binascii.Error is one
            return None
        accounts = {self.account_sid: self.auth_token, **self.credentials}
        expected = accounts.get(login)
        if expected is None or not secrets.compare_digest(password, expected):
            return None
        return login

    def _record(
        self, request: web.Request, form: dict[str, str], status: int, received_at: float
    ) -> None:
        if not self.keep_history:
            return
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = f"{peername[0]}:{peername[1]}" if peername else ""
        self.requests.append(ApiRequest(
            method=request.method, path=request.path, form=form, status=status, peer=peer,
            received_at=received_at, authorization=request.headers.get("Authorization")))

    def _message_json(self, sms: SentSms) -> dict[str, Any]:
        now = format_datetime(datetime.now(UTC))
        uri = f"/{_API_VERSION}/Accounts/{self.account_sid}/Messages/{sms.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": _API_VERSION,
            "body": sms.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sms.from_,
            "messaging_service_sid": sms.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(count_segments(sms.body)),
            "price": None,
            "price_unit": "USD",
            "sid": sms.sid,
            # Twilio answers "accepted" while a messaging service still picks the sender.
            "status": "queued" if sms.from_ else "accepted",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": sms.to,
            "uri": f"{uri}.json",
        }


def _error(status: int, code: int, headers: dict[str, str] | None = None,
           to: str = "") -> web.Response:
    """Twilio's JSON error body."""
    message = _ERROR_MESSAGES.get(code, "Error").format(to=to)
    body = {"code": code, "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return web.json_response(body, status=status, headers=headers)


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeTwilio(account_sid=args.account_sid, auth_token=args.auth_token,
                      latency=args.latency)
    url = await fake.start(args.host, args.port)
    print(f"fake Twilio on {url} (account {fake.account_sid})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    """Serve the fake until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN)
    parser.add_argument("--latency", type=float, default=0.0)
    try:
        asyncio.run(_serve(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
