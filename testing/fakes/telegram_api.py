"""A loopback Telegram Bot API: a real HTTP server on 127.0.0.1 that answers like Telegram.

Point an adapter (or any Bot API client) at :meth:`FakeTelegram.start`'s URL and it talks to
this server over real sockets, in Telegram's wire format: ``/bot{token}/{method}``, parameters
as JSON or as a form (python-telegram-bot sends a form whose nested values are JSON strings),
answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": ..., "description":
...}``. It records what it was asked, refuses what Telegram refuses, and has knobs for the
failures a test needs (blocked users, 429 with retry_after, 5xx, latency).

The module also builds Updates in Telegram's JSON shape (:func:`message_update`,
:func:`callback_update`, ...), for webhook bodies and for :meth:`FakeTelegram.queue_update`.

    async with FakeTelegram() as fake:
        channel = TelegramChannel(bot_token=fake.token, api_base_url=fake.base_url)
        ...
        await fake.wait_for(1)
        assert fake.sent[0].text == "hello"
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from consentgate.testing.fakes._served import Served

__all__ = [
    "DEFAULT_BOT_ID",
    "DEFAULT_TOKEN",
    "FakeTelegram",
    "SentTelegram",
    "callback_update",
    "chat_member_update",
    "group_message_update",
    "join_request_update",
    "message_update",
    "my_chat_member_update",
]

DEFAULT_BOT_ID = 7000000001
DEFAULT_TOKEN = f"{DEFAULT_BOT_ID}:AAF-loopback_fake_token_0123456789ab"
DEFAULT_BOT_USERNAME = "consentgate_test_bot"

#: Update types Telegram leaves out when allowed_updates is empty or was never set.
_OPT_IN_UPDATE_TYPES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

# Descriptions as Telegram words them (seen in Bot API answers; TDLib's own messages get the
# "Bad Request: " prefix and a lower-case first letter).
_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
BLOCKED = "Forbidden: bot was blocked by the user"
CHAT_NOT_FOUND = "Bad Request: chat not found"
MEMBER_LIMIT_WITH_JOIN_REQUEST = (
    "Bad Request: member limit can't be specified for links requiring administrator approval"
)
PRIVATE_CHAT_INVITE = "Bad Request: can't invite members to a private chat"
SECRET_TOKEN_CHARS = "Bad Request: secret token contains unallowed characters"
WEBHOOK_ACTIVE = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
HIDE_REQUESTER_MISSING = "Bad Request: HIDE_REQUESTER_MISSING"


@dataclass(frozen=True)
class SentTelegram:
    """One ``sendMessage`` the fake accepted. ``at`` is ``time.monotonic()`` on arrival."""

    chat_id: int
    text: str
    reply_markup: dict[str, Any] | None
    message_id: int
    at: float


@dataclass
class _Failure:
    status: int
    body: dict[str, Any]
    method: str | None
    remaining: int


class _ApiError(Exception):
    def __init__(self, status: int, description: str, **extra: Any) -> None:
        super().__init__(description)
        self.status = status
        self.body: dict[str, Any] = {
            "ok": False, "error_code": status, "description": description, **extra
        }


@dataclass
class _Webhook:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None
    max_connections: int | None
    drop_pending_updates: bool


class FakeTelegram(Served):
    """The Bot API for one bot, served on a loopback port.

    Records: :attr:`sent` (accepted messages), :attr:`calls` (every request with the right
    token, as ``(method, params)``), :attr:`invite_links`, :attr:`approved`, :attr:`declined`,
    :attr:`answered_callbacks`, :attr:`webhook`.

    Knobs: :attr:`blocked` (chat ids that blocked the bot: 403), :attr:`missing_chats` (400
    chat not found), :meth:`retry_after_next`, :meth:`fail_next`, :attr:`latency` (seconds
    before each answer), :meth:`queue_update` (for getUpdates). With
    ``strict_join_requests=True`` approving or declining a join request that was never made
    (see :meth:`expect_join_request`) fails like Telegram does.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        username: str = DEFAULT_BOT_USERNAME,
        first_name: str = "Consentgate Test",
        strict_join_requests: bool = False,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_user: dict[str, Any] = {
            "id": self.bot_id, "is_bot": True, "first_name": first_name, "username": username
        }
        self.strict_join_requests = strict_join_requests

        self.sent: list[SentTelegram] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.invite_links: list[dict[str, Any]] = []
        self.approved: list[tuple[int, int]] = []
        self.declined: list[tuple[int, int]] = []
        self.answered_callbacks: list[tuple[str, str | None]] = []
        self.webhook: _Webhook | None = None

        self.blocked: set[int] = set()
        self.missing_chats: set[int] = set()
        self.latency = 0.0

        self._failures: list[_Failure] = []
        self._pending_join_requests: set[tuple[int, int]] = set()
        self._updates: list[dict[str, Any]] = []
        self._allowed_updates: list[str] | None = None
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._changed = asyncio.Condition()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve, and return the base URL to give a client (``http://host:port/bot``)."""
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound = runner.addresses[0]
        self.base_url = f"http://{bound[0]}:{bound[1]}/bot"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; long polls in progress are answered at once."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- knobs ------------------------------------------------------------------------------

    def retry_after_next(self, seconds: int, count: int = 1, method: str | None = None) -> None:
        """Answer the next ``count`` requests (of ``method``, or any) with 429 retry_after."""
        self._failures.append(_Failure(
            429,
            {"ok": False, "error_code": 429,
             "description": f"Too Many Requests: retry after {seconds}",
             "parameters": {"retry_after": seconds}},
            method, count,
        ))

    def fail_next(
        self, status: int, count: int = 1, description: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (of ``method``, or any) with ``status``."""
        text = description or _DESCRIPTIONS.get(status, "Internal Server Error")
        self._failures.append(_Failure(
            status, {"ok": False, "error_code": status, "description": text}, method, count
        ))

    def expect_join_request(self, chat_id: int, user_id: int) -> None:
        """Record that ``user_id`` asked to join ``chat_id`` (queue_update does this too)."""
        self._pending_join_requests.add((chat_id, user_id))

    def queue_update(self, update: Mapping[str, Any]) -> None:
        """Hold ``update`` for getUpdates and wake a waiting long poll."""
        update = dict(update)
        request = update.get("chat_join_request")
        if isinstance(request, Mapping):
            self.expect_join_request(request["chat"]["id"], request["from"]["id"])
        self._updates.append(update)
        self._updates.sort(key=lambda u: int(u["update_id"]))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # queued before serving: nobody can be waiting yet
        task = loop.create_task(self._notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_for(
        self, count: int, timeout: float = 10.0  # noqa: ASYNC109 - a test's patience
    ) -> list[SentTelegram]:
        """Wait until ``count`` messages were accepted in all; return them."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.sent) >= count)
        except TimeoutError:
            raise AssertionError(
                f"expected {count} sendMessage calls within {timeout}s, got {len(self.sent)}"
            ) from None
        return self.sent[:count]

    async def wait_for_call(
        self, method: str, count: int = 1, timeout: float = 10.0  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """Wait until ``method`` was requested ``count`` times in all (whatever the answer)."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.calls_to(method)) >= count)
        except TimeoutError:
            raise AssertionError(
                f"expected {count} {method} calls within {timeout}s, "
                f"got {len(self.calls_to(method))}"
            ) from None
        return self.calls_to(method)[:count]

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        """The parameters of every request to ``method``."""
        return [params for name, params in self.calls if name == method.lower()]

    # -- HTTP -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        if self.latency:
            await asyncio.sleep(self.latency)
        if request.match_info["token"] != self.token:
            return _answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        method = request.match_info["method"].lower()  # Telegram's method names ignore case
        try:
            params = await _read_params(request)
        except ValueError as exc:
            return _answer(400, {"ok": False, "error_code": 400,
                                 "description": f"Bad Request: {exc}"})
        self.calls.append((method, params))
        await self._notify()

        failure = self._take_failure(method)
        if failure is not None:
            return _answer(failure.status, failure.body)
        handler = _METHODS.get(method)
        if handler is None:
            return _answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
        try:
            result = await handler(self, _Params(params), arrived)
        except _ApiError as exc:
            return _answer(exc.status, exc.body)
        body: dict[str, Any] = {"ok": True, "result": result}
        if method == "setwebhook":
            body["description"] = "Webhook was set"
        elif method == "deletewebhook":
            body["description"] = "Webhook was deleted"
        return _answer(200, body)

    def _take_failure(self, method: str) -> _Failure | None:
        for failure in self._failures:
            if failure.method is None or failure.method.lower() == method:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- methods ----------------------------------------------------------------------------

    async def _get_me(self, p: _Params, arrived: float) -> Any:
        return {**self.bot_user, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False, "can_connect_to_business": False,
                "has_main_web_app": False}

    async def _send_message(self, p: _Params, arrived: float) -> Any:
        chat_id = p.chat_id()
        text = p.text("text")
        if not text:
            raise _ApiError(400, "Bad Request: message text is empty")
        if chat_id in self.missing_chats:
            raise _ApiError(400, CHAT_NOT_FOUND)
        if chat_id in self.blocked:
            raise _ApiError(403, BLOCKED)
        markup = p.decoded("reply_markup")
        message_id = next(self._message_ids.setdefault(chat_id, itertools.count(1)))
        self.sent.append(SentTelegram(chat_id, text, markup, message_id, arrived))
        await self._notify()
        message: dict[str, Any] = {
            "message_id": message_id, "from": self.bot_user, "chat": _chat(chat_id),
            "date": int(time.time()), "text": text,
        }
        if markup is not None:
            message["reply_markup"] = markup
        return message

    async def _create_chat_invite_link(self, p: _Params, arrived: float) -> Any:
        chat_id = p.chat_id()
        if chat_id in self.missing_chats:
            raise _ApiError(400, CHAT_NOT_FOUND)
        if chat_id > 0:
            raise _ApiError(400, PRIVATE_CHAT_INVITE)
        name = p.text("name")
        member_limit = p.number("member_limit")
        creates_join_request = p.flag("creates_join_request")
        if creates_join_request and member_limit:
            raise _ApiError(400, MEMBER_LIMIT_WITH_JOIN_REQUEST)
        if name is not None and len(name) > 32:
            # Wording not confirmed against Telegram; the limit (0-32 characters) is documented.
            raise _ApiError(400, "Bad Request: invite link name is too long")
        if member_limit is not None and not 1 <= member_limit <= 99999:
            raise _ApiError(400, "Bad Request: member limit must be between 1 and 99999")
        link: dict[str, Any] = {
            "invite_link": "https://t.me/+" + secrets.token_urlsafe(12),
            "creator": self.bot_user,
            "creates_join_request": creates_join_request,
            "is_primary": False,
            "is_revoked": False,
        }
        if name:
            link["name"] = name
        expire_date = p.number("expire_date")
        if expire_date is not None:
            link["expire_date"] = expire_date
        if member_limit is not None:
            link["member_limit"] = member_limit
        if creates_join_request:
            link["pending_join_request_count"] = 0
        self.invite_links.append({**link, "chat_id": chat_id})
        return link

    async def _revoke_chat_invite_link(self, p: _Params, arrived: float) -> Any:
        chat_id = p.chat_id()
        url = p.text("invite_link")
        for link in self.invite_links:
            if link["invite_link"] == url and link["chat_id"] == chat_id:
                link["is_revoked"] = True
                return {k: v for k, v in link.items() if k != "chat_id"}
        raise _ApiError(400, "Bad Request: INVITE_HASH_EXPIRED")

    async def _approve_chat_join_request(self, p: _Params, arrived: float) -> Any:
        key = self._join_request(p)
        self.approved.append(key)
        return True

    async def _decline_chat_join_request(self, p: _Params, arrived: float) -> Any:
        key = self._join_request(p)
        self.declined.append(key)
        return True

    def _join_request(self, p: _Params) -> tuple[int, int]:
        key = (p.chat_id(), p.required_int("user_id"))
        if self.strict_join_requests and key not in self._pending_join_requests:
            raise _ApiError(400, HIDE_REQUESTER_MISSING)
        self._pending_join_requests.discard(key)
        return key

    async def _answer_callback_query(self, p: _Params, arrived: float) -> Any:
        query_id = p.text("callback_query_id")
        if not query_id:
            raise _ApiError(400, "Bad Request: query is too old and response timeout expired "
                                 "or query ID is invalid")
        self.answered_callbacks.append((query_id, p.text("text")))
        return True

    async def _set_webhook(self, p: _Params, arrived: float) -> Any:
        url = p.text("url")
        if url is None:
            raise _ApiError(400, "Bad Request: parameter \"url\" is required")
        secret = p.text("secret_token")
        if secret is not None and not (
            0 < len(secret) <= 256
            and all(c.isascii() and (c.isalnum() or c in "_-") for c in secret)
        ):
            raise _ApiError(400, SECRET_TOKEN_CHARS)
        allowed = p.decoded("allowed_updates")
        if not url:  # an empty url removes the webhook, as in Telegram
            self.webhook = None
            return True
        self.webhook = _Webhook(url, secret, allowed, p.number("max_connections"),
                                bool(p.flag("drop_pending_updates")))
        if allowed is not None:
            self._allowed_updates = list(allowed)
        if p.flag("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _delete_webhook(self, p: _Params, arrived: float) -> Any:
        self.webhook = None
        if p.flag("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _get_updates(self, p: _Params, arrived: float) -> Any:
        if self.webhook is not None:
            raise _ApiError(409, WEBHOOK_ACTIVE)
        offset = p.number("offset") or 0
        limit = p.number("limit") or 100
        timeout = p.number("timeout") or 0
        allowed = p.decoded("allowed_updates")
        if allowed is not None:
            self._allowed_updates = list(allowed)
        if offset > 0:  # confirms everything before it
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]

        def ready() -> list[dict[str, Any]]:
            return [u for u in self._updates if self._wanted(u)][:limit]

        if not ready() and timeout > 0 and not self._closing:
            try:
                async with asyncio.timeout(timeout):
                    async with self._changed:
                        await self._changed.wait_for(lambda: bool(ready()) or self._closing)
            except TimeoutError:
                pass
        return ready()

    def _wanted(self, update: Mapping[str, Any]) -> bool:
        kind = next((k for k in update if k != "update_id"), "")
        if self._allowed_updates:
            return kind in self._allowed_updates
        return kind not in _OPT_IN_UPDATE_TYPES


_METHODS = {
    "getme": FakeTelegram._get_me,
    "sendmessage": FakeTelegram._send_message,
    "createchatinvitelink": FakeTelegram._create_chat_invite_link,
    "revokechatinvitelink": FakeTelegram._revoke_chat_invite_link,
    "approvechatjoinrequest": FakeTelegram._approve_chat_join_request,
    "declinechatjoinrequest": FakeTelegram._decline_chat_join_request,
    "answercallbackquery": FakeTelegram._answer_callback_query,
    "setwebhook": FakeTelegram._set_webhook,
    "deletewebhook": FakeTelegram._delete_webhook,
    "getupdates": FakeTelegram._get_updates,
}


class _Params:
    """Request parameters as Telegram reads them: a form sends every value as a string
    (objects and arrays JSON-encoded), a JSON body sends native values."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw

    def text(self, name: str) -> str | None:
        value = self._raw.get(name)
        return None if value is None else str(value)

    def number(self, name: str) -> int | None:
        value = self._raw.get(name)
        if value is None or value == "":
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _ApiError(400, f"Bad Request: invalid {name} specified") from None

    def required_int(self, name: str) -> int:
        value = self.number(name)
        if value is None:
            raise _ApiError(400, f"Bad Request: {name} is empty")
        return value

    def chat_id(self) -> int:
        if self._raw.get("chat_id") in (None, ""):
            raise _ApiError(400, "Bad Request: chat_id is empty")
        try:
            return int(self._raw["chat_id"])
        except (TypeError, ValueError):
            raise _ApiError(400, CHAT_NOT_FOUND) from None

    def flag(self, name: str) -> bool:
        value = self._raw.get(name)
        if isinstance(value, str):
            return value.lower() in ("true", "1")
        return bool(value)

    def decoded(self, name: str) -> Any:
        value = self._raw.get(name)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise _ApiError(400, f"Bad Request: can't parse {name} JSON object") from None
        return value


async def _read_params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_type == "application/json":
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the JSON body is not an object")
        params.update(body)
    else:  # application/x-www-form-urlencoded or multipart/form-data
        form = await request.post()
        params.update({key: value for key, value in form.items() if isinstance(value, str)})
    return params


def _answer(status: int, body: Mapping[str, Any]) -> web.Response:
    return web.json_response(dict(body), status=status)


def _chat(
    chat_id: int, *, first_name: str = "Ada", title: str = "Campaign group"
) -> dict[str, Any]:
    """A Chat object: private for a user id, a group or supergroup (-100...) otherwise."""
    if chat_id > 0:
        return {"id": chat_id, "first_name": first_name, "type": "private"}
    kind = "supergroup" if str(chat_id).startswith("-100") else "group"
    return {"id": chat_id, "title": title, "type": kind}


# -- Update builders -------------------------------------------------------------------------


def _user(user_id: int, first_name: str = "Ada") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}


def _bot_user(bot_id: int) -> dict[str, Any]:
    return {"id": bot_id, "is_bot": True, "first_name": "Consentgate Test",
            "username": DEFAULT_BOT_USERNAME}


def _text_message(message_id: int, sender: dict[str, Any], chat: dict[str, Any],
                  text: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": message_id, "from": sender, "chat": chat, "date": int(time.time()),
        "text": text,
    }
    if text.startswith("/"):  # Telegram marks a leading command as an entity
        command = text.split(maxsplit=1)[0]
        message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
    return message


def message_update(
    update_id: int, user_id: int, text: str, chat_id: int | None = None,
    first_name: str = "Ada", message_id: int | None = None,
) -> dict[str, Any]:
    """A person's text message; in their private chat with the bot unless ``chat_id`` names
    a group (negative id)."""
    chat = _chat(user_id if chat_id is None else chat_id, first_name=first_name)
    return {"update_id": update_id, "message": _text_message(
        message_id if message_id is not None else update_id, _user(user_id, first_name), chat,
        text,
    )}


def group_message_update(
    update_id: int, user_id: int, chat_id: int, text: str, title: str = "Campaign group",
    first_name: str = "Ada",
) -> dict[str, Any]:
    """A message someone wrote in a group or supergroup the bot is in."""
    return {"update_id": update_id, "message": _text_message(
        update_id, _user(user_id, first_name), _chat(chat_id, title=title), text,
    )}


def callback_update(
    update_id: int, user_id: int, data: str, message_id: int = 1, first_name: str = "Ada",
    bot_id: int = DEFAULT_BOT_ID,
) -> dict[str, Any]:
    """A person pressing an inline button (``data`` is its callback_data) under one of the
    bot's messages in their private chat."""
    return {"update_id": update_id, "callback_query": {
        "id": str(4_000_000_000_000_000_000 + update_id),
        "from": _user(user_id, first_name),
        "message": {
            "message_id": message_id, "from": _bot_user(bot_id),
            "chat": _chat(user_id, first_name=first_name), "date": int(time.time()),
            "text": "Would you like updates?",
        },
        "chat_instance": str(-7_000_000_000_000_000_000 + user_id),
        "data": data,
    }}


def _member(user: dict[str, Any], status: str) -> dict[str, Any]:
    """A ChatMember in the shape Telegram sends for ``status``."""
    member: dict[str, Any] = {"user": user, "status": status}
    if status == "kicked":
        member["until_date"] = 0
    elif status == "administrator":
        member.update({
            "can_be_edited": False, "is_anonymous": False, "can_manage_chat": True,
            "can_delete_messages": True, "can_manage_video_chats": True,
            "can_restrict_members": True, "can_promote_members": False,
            "can_change_info": True, "can_invite_users": True, "can_post_stories": False,
            "can_edit_stories": False, "can_delete_stories": False,
        })
    elif status == "restricted":
        member.update({
            "is_member": True, "can_send_messages": False, "can_send_audios": False,
            "can_send_documents": False, "can_send_photos": False, "can_send_videos": False,
            "can_send_video_notes": False, "can_send_voice_notes": False,
            "can_send_polls": False, "can_send_other_messages": False,
            "can_add_web_page_previews": False, "can_change_info": False,
            "can_invite_users": False, "can_pin_messages": False, "can_manage_topics": False,
            "until_date": 0,
        })
    elif status not in ("member", "left", "creator"):
        raise ValueError(f"unknown chat member status {status!r}")
    if status == "creator":
        member["is_anonymous"] = False
    return member


def my_chat_member_update(
    update_id: int, user_id: int, new_status: str, old_status: str,
    chat_id: int | None = None, bot_id: int = DEFAULT_BOT_ID,
) -> dict[str, Any]:
    """The bot's own membership changed: in a private chat ``kicked`` is the person blocking
    the bot and ``member`` unblocking it; with a group ``chat_id`` it is the bot being added
    or removed by ``user_id``."""
    bot = _bot_user(bot_id)
    return {"update_id": update_id, "my_chat_member": {
        "chat": _chat(user_id if chat_id is None else chat_id),
        "from": _user(user_id),
        "date": int(time.time()),
        "old_chat_member": _member(bot, old_status),
        "new_chat_member": _member(bot, new_status),
    }}


def chat_member_update(
    update_id: int, user_id: int, chat_id: int, new_status: str, old_status: str,
) -> dict[str, Any]:
    """Someone's membership of a group changed (sent only to admin bots that ask for it)."""
    person = _user(user_id)
    return {"update_id": update_id, "chat_member": {
        "chat": _chat(chat_id),
        "from": person,
        "date": int(time.time()),
        "old_chat_member": _member(person, old_status),
        "new_chat_member": _member(person, new_status),
    }}


def join_request_update(
    update_id: int, user_id: int, chat_id: int, invite_link: str, name: str | None,
    bot_id: int = DEFAULT_BOT_ID, first_name: str = "Ada",
) -> dict[str, Any]:
    """A person asked to join ``chat_id`` through one of the bot's invite links (Telegram
    shows a link's full URL only to the admin who created it, here the bot)."""
    link: dict[str, Any] = {
        "invite_link": invite_link, "creator": _bot_user(bot_id), "creates_join_request": True,
        "is_primary": False, "is_revoked": False, "pending_join_request_count": 1,
    }
    if name:
        link["name"] = name
    return {"update_id": update_id, "chat_join_request": {
        "chat": _chat(chat_id),
        "from": _user(user_id, first_name),
        "user_chat_id": user_id,
        "date": int(time.time()),
        "invite_link": link,
    }}
