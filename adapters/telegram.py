"""Telegram: send messages through the Bot API, and read Telegram updates as plain events.

:class:`TelegramChannel` drives python-telegram-bot's :class:`telegram.Bot` as a plain client
(no ``Application``, no polling framework). Each :meth:`TelegramChannel.send` checks its permit,
waits for the chat's turn and makes exactly one ``sendMessage`` call; Telegram's refusals come
back as this package's :class:`~adapters.base.SendError` family. The same class carries the
Bot API calls that are not messages (invite links, join requests, webhooks, polling).

:func:`parse_update` turns one Update (a webhook body or an item of ``getUpdates``) into
:class:`~adapters.base.InboundEvent` values, without a running bot.

Pacing. Telegram allows about one message a second to one chat and twenty a minute to one
group; the adapter keeps to that per chat, without holding up other chats. A message whose chat
is not free within ``max_pacing_wait`` seconds is not held at all: ``send`` raises
:class:`~adapters.base.RetryableSendError` (reason ``telegram_chat_pacing``, with
``retry_after``) so the message returns to the outbox and is decided by the gate again when it
is due; a permit is never kept waiting long enough for an opt-out to slip past it. The per-bot
rate (``rate_per_second``) is the dispatcher's to apply.

Errors. ``send`` raises :class:`~adapters.base.RecipientRefused` (scope ``all``) when Telegram
answers 403 for a person's chat ("bot was blocked by the user" gives reason
``telegram_blocked``, any other 403 ``telegram_forbidden``); a 403 for a group or channel (the
bot was removed from it) is a :class:`~adapters.base.PermanentSendError`
``telegram_forbidden``, because nobody opted out. 429 gives ``telegram_429`` with
``retry_after``; timeouts and connection trouble ``network``; 400 ``telegram_bad_request``; a
group that became a supergroup ``telegram_chat_migrated``; anything else from Telegram is
retryable. The other operations raise the same classes, except that a 403 is never a
recipient's refusal there. Invalid arguments (a member limit on a link that asks to join) raise
:class:`ValueError` before anything is sent. The bot token never appears in an error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import re
import time
import warnings
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from telegram import Bot, Chat, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from consentgate.adapters.base import (
    InboundEvent,
    OutboundMessage,
    OutcomeUnknown,
    PermanentSendError,
    Permit,
    RecipientRefused,
    RetryableSendError,
    SendError,
    SendResult,
)
from consentgate.adapters.pacing import ChatPacer

__all__ = [
    "ALLOWED_UPDATES",
    "INVITE_LINK_NAME_MAX",
    "BotIdentity",
    "TelegramChannel",
    "parse_update",
    "secret_token_is_valid",
    "webhook_secret_is_well_formed",
]

#: The update types the gateway asks Telegram for. ``chat_member`` must be named explicitly:
#: an empty list means "everything except chat_member".
ALLOWED_UPDATES: tuple[str, ...] = (
    "message",
    "callback_query",
    "my_chat_member",
    "chat_join_request",
    "chat_member",
)

#: Telegram's limit on an invite link's name.
INVITE_LINK_NAME_MAX = 32

#: Telegram's member_limit range for invite links.
_MEMBER_LIMIT_RANGE = range(1, 100_000)

#: HTTP connections to the Bot API (everything but getUpdates). Messages may use all but
#: :data:`_OTHER_CALLS` of them at once (``max_concurrency``): the rest are for the bot's other
#: calls (join requests, button answers, invite links), so a send finds a free connection.
_POOL_SIZE = 64
_OTHER_CALLS = 16

#: The Update fields :func:`parse_update` reads; every other kind of update gives no event.
_HANDLED_UPDATES = ("message", "callback_query", "my_chat_member", "chat_join_request")

_T = TypeVar("_T")

#: ``/start``, ``/start PAYLOAD`` and ``/start@botname PAYLOAD``.
_START_COMMAND = re.compile(r"/start(?:@\w+)?(?:\s+(?P<payload>.*))?", re.IGNORECASE | re.DOTALL)
#: What Telegram lets a deep link (``t.me/<bot>?start=PAYLOAD``) carry.
_DEEP_LINK_PAYLOAD = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class BotIdentity:
    """Who the bot is (``getMe``)."""

    id: int
    username: str
    first_name: str


class TelegramChannel:
    """The Telegram Bot API as a :class:`~adapters.base.ChannelAdapter`, plus the bot's
    other operations. One instance per bot; no network traffic until the first call."""

    channel = "telegram"

    def __init__(
        self,
        *,
        bot_token: str,
        api_base_url: str = "https://api.telegram.org/bot",
        rate_per_second: float = 25.0,
        per_chat_interval: float = 1.0,
        group_per_minute: int = 20,
        max_pacing_wait: float = 5.0,
        request_timeout: float = 10.0,
    ) -> None:
        bot_id, sep, secret = bot_token.partition(":")
        if not (bot_id.isdigit() and sep and secret):
            raise ValueError("bot_token is not a Telegram bot token (expected '<bot id>:<secret>')")
        self._token = bot_token
        self._api_base_url = api_base_url
        self.sender_key = f"telegram:{bot_id}"
        self.rate_per_second = rate_per_second
        self.max_concurrency = _POOL_SIZE - _OTHER_CALLS
        self._max_pacing_wait = max_pacing_wait
        self._request_timeout = request_timeout
        self._pacer = ChatPacer(per_chat_interval, group_per_minute)
        self._bot: Bot | None = None
        self._requests: tuple[HTTPXRequest, HTTPXRequest] | None = None

    # -- messages ---------------------------------------------------------------------------

    async def send(self, message: OutboundMessage, permit: Permit) -> SendResult:
        """Check ``permit``, wait for the chat's turn, then make one ``sendMessage`` call.

        ``message.address`` is the numeric chat id. ``message.buttons`` become an inline
        keyboard, one button per row. The text is sent as plain text (no parse mode).
        """
        permit.check(message)
        if message.channel != self.channel:
            raise PermanentSendError("wrong_channel", f"a {message.channel} message for telegram")
        chat_id = _numeric_chat_id(message.address)

        now = time.monotonic()
        slot = self._pacer.next_slot(chat_id, now)
        if slot - now > self._max_pacing_wait:
            raise RetryableSendError(
                "telegram_chat_pacing",
                "the chat's send limit is used up for now",
                retry_after=slot - now,
            )
        self._pacer.reserve(chat_id, slot, now)
        if slot > now:
            await asyncio.sleep(slot - now)
            # The permit must still hold at the moment of the provider call.
            permit.check(message)

        markup = None
        if message.buttons:
            markup = InlineKeyboardMarkup(
                [[InlineKeyboardButton(label, callback_data=data)]
                 for label, data in message.buttons]
            )
        try:
            sent = await self._client().send_message(
                chat_id=chat_id, text=message.text, reply_markup=markup
            )
        except RetryAfter as exc:
            error = self._translate(exc, recipient=chat_id > 0)
            if isinstance(error, RetryableSendError) and error.retry_after:
                self._pacer.hold(chat_id, time.monotonic() + error.retry_after)
            raise error from exc
        except TelegramError as exc:
            if _outcome_unknown(exc):
                # Sent, perhaps delivered, answer lost: a retry could be a second message.
                raise OutcomeUnknown("timeout" if isinstance(exc, TimedOut) else "network",
                                     str(exc).replace(self._token, "<token>")) from exc
            raise self._translate(exc, recipient=chat_id > 0) from exc
        return SendResult(provider_id=f"{sent.chat_id}:{sent.message_id}")

    async def close(self) -> None:
        """Close the HTTP connections. The channel may be used again afterwards."""
        requests, self._requests, self._bot = self._requests, None, None
        if requests is not None:
            await asyncio.gather(*(request.shutdown() for request in requests))

    # -- Bot API operations that are not messages -------------------------------------------

    async def get_me(self) -> BotIdentity:
        """The bot's own id and username (also a cheap check of the token)."""
        user = await self._call(self._client().get_me())
        return BotIdentity(id=user.id, username=user.username or "", first_name=user.first_name)

    async def create_invite_link(
        self,
        chat_id: int,
        name: str,
        expire_date: dt.datetime | None,
        member_limit: int | None,
        creates_join_request: bool,
    ) -> str:
        """Create an invite link to ``chat_id`` and return its URL.

        ``name`` is cut to :data:`INVITE_LINK_NAME_MAX` characters. A naive ``expire_date`` is
        taken as UTC. Raises :class:`ValueError`, sending nothing, for a ``member_limit``
        together with ``creates_join_request`` (Telegram refuses that combination) or outside
        1-99999.
        """
        if member_limit is not None:
            if creates_join_request:
                raise ValueError(
                    "member_limit can't be used with creates_join_request (Telegram refuses it)"
                )
            if member_limit not in _MEMBER_LIMIT_RANGE:
                raise ValueError("member_limit must be between 1 and 99999")
        link = await self._call(
            self._client().create_chat_invite_link(
                chat_id=chat_id,
                name=name[:INVITE_LINK_NAME_MAX],
                expire_date=expire_date,
                member_limit=member_limit,
                creates_join_request=creates_join_request,
            )
        )
        return link.invite_link

    async def revoke_invite_link(self, chat_id: int, invite_link: str) -> None:
        """Revoke an invite link the bot created."""
        await self._call(self._client().revoke_chat_invite_link(chat_id, invite_link))

    async def approve_join_request(self, chat_id: int, user_id: int) -> None:
        """Let ``user_id`` into ``chat_id`` (the bot needs the can_invite_users right)."""
        await self._call(self._client().approve_chat_join_request(chat_id, user_id))

    async def decline_join_request(self, chat_id: int, user_id: int) -> None:
        """Turn down ``user_id``'s request to join ``chat_id``."""
        await self._call(self._client().decline_chat_join_request(chat_id, user_id))

    async def answer_callback_query(self, callback_query_id: str, text: str | None = None) -> None:
        """Stop the pressed button's spinner, optionally showing ``text`` to the person."""
        await self._call(self._client().answer_callback_query(callback_query_id, text=text))

    async def set_webhook(
        self, url: str, secret_token: str, allowed_updates: Sequence[str]
    ) -> None:
        """Have Telegram POST updates to ``url`` with ``X-Telegram-Bot-Api-Secret-Token``."""
        await self._call(
            self._client().set_webhook(
                url=url, secret_token=secret_token, allowed_updates=list(allowed_updates)
            )
        )

    async def delete_webhook(self) -> None:
        """Stop webhook delivery (needed before polling). Pending updates are kept."""
        await self._call(self._client().delete_webhook(drop_pending_updates=False))

    async def get_updates(
        # timeout is Telegram's long-poll time, sent to the server, not a local deadline
        self, offset: int | None, timeout: int  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """Long-poll for updates (of :data:`ALLOWED_UPDATES`) from ``offset`` on, waiting up to
        ``timeout`` seconds; returns them in wire form, for :func:`parse_update`. Pass the last
        ``update_id`` + 1 as the next ``offset`` to confirm what was handled."""
        updates = await self._call(
            self._client().get_updates(
                offset=offset, timeout=timeout, allowed_updates=list(ALLOWED_UPDATES)
            )
        )
        # PTB has parsed them already; back to plain JSON values (its enums are str subclasses).
        return [json.loads(update.to_json()) for update in updates]

    # -- internals --------------------------------------------------------------------------

    def _client(self) -> Bot:
        if self._bot is None:
            # Our own request objects: we decide the pool and timeouts, and close them
            # ourselves (Bot.shutdown() only closes what Bot.initialize() opened, and
            # Bot.initialize() would spend a getMe call). Neither retries: retries are the
            # outbox's job, and a retried sendMessage could be a second message.
            timeout = self._request_timeout
            requests = (
                HTTPXRequest(connection_pool_size=_POOL_SIZE, read_timeout=timeout,
                             write_timeout=timeout, connect_timeout=timeout, pool_timeout=timeout),
                HTTPXRequest(connection_pool_size=1, read_timeout=timeout,
                             write_timeout=timeout, connect_timeout=timeout, pool_timeout=timeout),
            )
            self._requests = requests
            self._bot = Bot(
                self._token,
                base_url=self._api_base_url,
                request=requests[0],
                get_updates_request=requests[1],
            )
        return self._bot

    async def _call(self, operation: Awaitable[_T]) -> _T:
        try:
            return await operation
        except TelegramError as exc:
            raise self._translate(exc, recipient=False) from exc

    def _translate(self, exc: TelegramError, *, recipient: bool) -> SendError:
        return _translate_error(exc, recipient=recipient, token=self._token)


def _outcome_unknown(exc: TelegramError) -> bool:
    """Whether the request may have reached Telegram without an answer coming back (a read
    timeout, a dropped connection). An HTTP answer (even a 5xx) or a failure to connect means
    it was not taken, so trying again cannot duplicate it."""
    cause = exc.__cause__
    if not isinstance(cause, httpx.HTTPError):
        return False
    return not isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _translate_error(exc: TelegramError, *, recipient: bool, token: str) -> SendError:
    """One mapping from python-telegram-bot's errors to ours. ``recipient``: the call was a
    message to a person's private chat, so a 403 means that person refuses the bot."""
    detail = str(exc).replace(token, "<token>")
    if isinstance(exc, Forbidden):
        reason = "telegram_blocked" if "blocked" in detail.lower() else "telegram_forbidden"
        if recipient:
            return RecipientRefused(reason, detail, scope="all")
        return PermanentSendError("telegram_forbidden", detail)
    if isinstance(exc, RetryAfter):
        return RetryableSendError("telegram_429", detail, retry_after=_retry_after_seconds(exc))
    if isinstance(exc, ChatMigrated):
        return PermanentSendError(
            "telegram_chat_migrated", f"the group is now the supergroup {exc.new_chat_id}"
        )
    if isinstance(exc, BadRequest):  # a NetworkError subclass in PTB: test it first
        return PermanentSendError("telegram_bad_request", detail)
    if isinstance(exc, NetworkError):  # includes TimedOut
        return RetryableSendError("network", detail)
    if isinstance(exc, InvalidToken):
        return RetryableSendError("telegram_unauthorized", "Telegram rejected the bot token")
    if isinstance(exc, Conflict):
        return RetryableSendError("telegram_conflict", detail)
    return RetryableSendError("telegram_error", detail)


def _retry_after_seconds(exc: RetryAfter) -> float:
    # RetryAfter.retry_after is an int, or a timedelta when PTB_TIMEDELTA is set; reading it as
    # an int warns about the coming switch, which is no news to us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: object = exc.retry_after
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"unexpected retry_after {value!r}")


def _numeric_chat_id(address: str) -> int:
    try:
        return int(address)
    except ValueError:
        raise PermanentSendError(
            "telegram_bad_address", f"{address!r} is not a numeric Telegram chat id"
        ) from None


# -- inbound ---------------------------------------------------------------------------------


#: The longest decimal form of a 64-bit id, sign included.
_MAX_ID_CHARS = 20


def parse_update(data: Mapping[str, Any]) -> list[InboundEvent]:
    """Read one Telegram Update as inbound events (none for updates the gateway ignores).

    Raises :class:`ValueError` when ``data`` is not an Update.
    """
    if not isinstance(data, Mapping) or type(data.get("update_id")) is not int:
        raise ValueError("not a Telegram Update: no integer update_id")
    # Only the parts we act on are parsed, so an update type we ignore can never fail on a
    # shape this python-telegram-bot version does not expect.
    wanted = {key: data[key] for key in ("update_id", *_HANDLED_UPDATES) if key in data}
    if len(wanted) == 1:
        return []  # chat_member, edits, channel posts and the rest
    try:
        update = Update.de_json(wanted, bot=None)
        events = _events(update, str(update.update_id))
        # Telegram's ids are 64-bit integers: anything longer is not from Telegram, and
        # would not fit the columns that store senders and event ids.
        if any(len(v) > _MAX_ID_CHARS for e in events
               for v in (e.address, e.chat_id or "", e.provider_event_id)):
            raise ValueError("an id beyond Telegram's 64-bit range")
        return events
    except (TypeError, KeyError, AttributeError, ValueError, OverflowError, OSError) as exc:
        # PTB fills missing nested fields with None rather than refusing them, and a date
        # out of range fails in datetime (OverflowError / OSError): whatever breaks on the
        # way is a malformed Update.
        raise ValueError(f"not a Telegram Update: {exc}") from exc


def _events(update: Update, event_id: str) -> list[InboundEvent]:
    if update.message is not None:
        return _from_message(update, event_id)
    if update.callback_query is not None:
        return _from_callback_query(update, event_id)
    if update.my_chat_member is not None:
        member = update.my_chat_member
        if member.chat.type != Chat.PRIVATE:
            return []  # the bot added to or removed from a group
        kind = {"kicked": "blocked", "member": "unblocked"}.get(member.new_chat_member.status)
        if kind is None:
            return []
        return [InboundEvent(kind=kind, channel="telegram", address=str(member.from_user.id),
                             provider_event_id=event_id, chat_id=str(member.chat.id))]
    if update.chat_join_request is not None:
        request = update.chat_join_request
        link = request.invite_link
        return [InboundEvent(
            kind="join_request",
            channel="telegram",
            address=str(request.from_user.id),
            provider_event_id=event_id,
            chat_id=str(request.chat.id),
            extra={
                "invite_link": link.invite_link if link is not None else "",
                "invite_link_name": (link.name or "") if link is not None else "",
                "user_chat_id": str(request.user_chat_id),
            },
        )]
    return []


def _from_message(update: Update, event_id: str) -> list[InboundEvent]:
    message = update.message
    assert message is not None
    if message.chat.type != Chat.PRIVATE:
        return []  # group and channel chatter is not addressed to the gateway
    sender = message.from_user
    address = str(sender.id if sender is not None else message.chat.id)
    text = message.text or message.caption or ""
    start = _START_COMMAND.fullmatch(text.strip())
    if start is not None:
        payload = (start.group("payload") or "").strip()
        return [InboundEvent(
            kind="start",
            channel="telegram",
            address=address,
            provider_event_id=event_id,
            text=text,
            # Only a well-formed deep-link payload names a link; anything else typed after
            # /start is kept in ``text`` but names nothing.
            payload=payload if _DEEP_LINK_PAYLOAD.fullmatch(payload) else None,
            chat_id=str(message.chat.id),
        )]
    return [InboundEvent(kind="message", channel="telegram", address=address,
                         provider_event_id=event_id, text=text,
                         provider_message_id=str(message.message_id),
                         chat_id=str(message.chat.id))]


def _from_callback_query(update: Update, event_id: str) -> list[InboundEvent]:
    query = update.callback_query
    assert query is not None
    data = query.data
    kind, payload = "callback", data
    if data is not None:
        parts = data.split(":", 2)
        if parts[0] == "consent" and len(parts) >= 2 and parts[1] in ("yes", "no"):
            kind = f"consent_{parts[1]}"
            payload = parts[2] if len(parts) == 3 and parts[2] else None
    return [InboundEvent(
        kind=kind,
        channel="telegram",
        address=str(query.from_user.id),
        provider_event_id=event_id,
        payload=payload,
        chat_id=str(query.message.chat.id) if query.message is not None else None,
        extra={"callback_query_id": query.id},
    )]


def secret_token_is_valid(expected: str, received: str | None) -> bool:
    """Whether a webhook's ``X-Telegram-Bot-Api-Secret-Token`` header matches, in constant
    time. An empty ``expected`` matches nothing."""
    if not expected or received is None:
        return False
    return hmac.compare_digest(expected.encode(), received.encode())


def webhook_secret_is_well_formed(secret: str) -> bool:
    """Whether Telegram accepts ``secret`` as a webhook secret_token (1-256 of A-Za-z0-9_-)."""
    return _WEBHOOK_SECRET.fullmatch(secret) is not None
