"""Join links: the only way a person comes into a campaign's lists or chats, by choice.

A link is one named entry point a team hands out (a poster, a leaflet, a hustings slide) and
counts who came in through it. Two kinds:

- a join page link (any channel): ``{public_url}/join/{id}``, where the person reads the
  consent text and opts in themselves. For Telegram, the same id is also a deep-link payload
  (``t.me/<bot>?start=<id>``) naming the link when the person starts the bot.
- a Telegram invite link (``telegram_chat_id`` set): a link to one of the campaign's own
  groups or channels that asks to join (``creates_join_request``). The bot approves requests
  that come through a live campaign link and counts them here. Nothing ever adds a person
  to a chat; they ask, through a link they chose to follow.

Every change is audited under the operator's name. Joins are counted with
:meth:`LinkService.count_join` inside the caller's transaction, together with the change
the join caused.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import segno
import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.adapters.base import PermanentSendError, RetryableSendError, has_unstorable_text
from consentgate.adapters.telegram import TelegramChannel
from consentgate.bot import audit
from consentgate.bot.config import CampaignSettings
from consentgate.bot.errors import GatewayError, InvalidInput, NotFound
from consentgate.bot.messages import iso
from consentgate.bot.tags import tag_names
from consentgate.storage.db import Database
from consentgate.storage.models import links

__all__ = [
    "POSTER_SIZES",
    "Link",
    "LinkService",
    "link_view",
    "ProviderRefused",
    "ProviderUnavailable",
    "qr_png",
    "qr_svg",
]

_log = structlog.get_logger("consentgate.links")

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 12  # about 71 bits; also a valid Telegram deep-link payload
MAX_NAME = 200
_MEMBER_LIMIT_MAX = 99_999


class ProviderRefused(GatewayError):
    """The provider refused the operation (the bot is not an admin of the chat, the chat
    does not exist ...): nothing was changed here."""

    status = 502
    title = "Bad gateway"


class ProviderUnavailable(GatewayError):
    """The provider could not be reached or asked us to wait: nothing was changed here,
    try again."""

    status = 503
    title = "Service unavailable"


@dataclass(frozen=True)
class Link:
    id: str
    campaign: str
    channel: str
    name: str
    url: str
    telegram_chat_id: str | None
    expires_at: float | None
    member_limit: int | None
    revoked_at: float | None
    joins: int
    created_by: str
    created_at: float
    #: Everyone who joins through the link gets these tags.
    tags: tuple[str, ...] = ()

    @property
    def is_invite(self) -> bool:
        """A Telegram invite link to a group or channel (not a join page)."""
        return self.telegram_chat_id is not None

    def is_live(self, now: float | None = None) -> bool:
        """Not revoked and not expired: people may still join through it."""
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now


#: The quiet zone around a QR code, in modules: what ISO/IEC 18004 asks for, and what
#: phone readers need to find the code on a busy page.
QUIET_ZONE = 4


def qr_svg(url: str, scale: int = 4) -> str:
    """``url`` as a QR code, a standalone SVG document (for posters and leaflets).

    It has a ``viewBox`` (so CSS can scale it to any size without cropping it), a white
    quiet zone of :data:`QUIET_ZONE` modules inside it (so it also reads on coloured
    paper), and a ``width``/``height`` of ``scale`` pixels a module for where it is shown
    at its own size."""
    code = segno.make(url, error="m")
    buffer = io.BytesIO()
    code.save(buffer, kind="svg", scale=1, border=QUIET_ZONE, xmldecl=False, omitsize=True,
              light="#fff", dark="#000")
    size = code.symbol_size(scale=scale, border=QUIET_ZONE)[0]
    return buffer.getvalue().decode().replace("<svg ", f'<svg width="{size}" height="{size}" ',
                                              1)


def qr_png(url: str, scale: int = 10) -> bytes:
    """``url`` as a QR code, a PNG image (for print tools that do not take SVG)."""
    buffer = io.BytesIO()
    segno.make(url, error="m").save(buffer, kind="png", scale=scale, border=QUIET_ZONE)
    return buffer.getvalue()


@dataclass(frozen=True)
class PosterSize:
    """One printable poster format: the page, its margin and the QR code's printed width
    (quiet zone included), in millimetres, and the type sizes in points. The code is as
    wide as the page allows once the words fit: large enough to scan from arm's length
    (a code reads from about ten times its width)."""

    name: str
    width_mm: int
    height_mm: int
    margin_mm: int
    qr_mm: int
    title_pt: float
    ask_pt: float
    body_pt: float
    url_pt: float
    small_pt: float


#: ``?size=`` of the poster: ISO A4, A5 and A6, and a pocket card (55 x 85 mm, the size of
#: a business card stood upright), all portrait.
POSTER_SIZES: dict[str, PosterSize] = {
    "A4": PosterSize("A4", 210, 297, 15, 140, 32, 18, 13, 16, 9),
    "A5": PosterSize("A5", 148, 210, 10, 100, 23, 14, 10, 12, 7.5),
    "A6": PosterSize("A6", 105, 148, 7, 64, 15, 10, 7.5, 8.5, 5.5),
    "CARD": PosterSize("CARD", 55, 85, 4, 41, 10, 7, 5.5, 5.5, 4.5),
}


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def _row_to_link(row: Any) -> Link:
    return Link(row.id, row.campaign, row.channel, row.name, row.url, row.telegram_chat_id,
                row.expires_at, row.member_limit, row.revoked_at, row.joins, row.created_by,
                row.created_at, tuple(json.loads(row.tags)) if row.tags else ())


#: The furthest ahead a link may be set to expire (a century).
MAX_EXPIRY_SECONDS = 100 * 366 * 86400


def parse_expiry(value: object, now: float | None = None) -> float | None:
    """``expires_at`` as given to the API or CLI: an ISO 8601 date-time (naive means UTC) or
    UNIX seconds, in the future. Raises ``invalid_expires_at``."""
    if value is None:
        return None
    now = time.time() if now is None else now
    if isinstance(value, bool):
        raise InvalidInput("invalid_expires_at", "expires_at must be an ISO 8601 date-time")
    if isinstance(value, int | float):
        at = float(value)
        if not math.isfinite(at):
            raise InvalidInput("invalid_expires_at", "expires_at must be a finite time")
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput("invalid_expires_at",
                               "expires_at must be an ISO 8601 date-time, e.g. "
                               "2026-05-07T22:00:00+01:00") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        at = parsed.timestamp()
    else:
        raise InvalidInput("invalid_expires_at", "expires_at must be an ISO 8601 date-time")
    if at <= now:
        raise InvalidInput("invalid_expires_at", "expires_at must be in the future")
    if at > now + MAX_EXPIRY_SECONDS:
        # A time no calendar can show (1e279 seconds) would be stored and then break every
        # listing of the campaign's links.
        raise InvalidInput("invalid_expires_at", "expires_at must be within a hundred years")
    return at


def _member_limit(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("invalid_member_limit", "member_limit must be an integer")
    if not 1 <= value <= _MEMBER_LIMIT_MAX:
        raise InvalidInput("invalid_member_limit",
                           f"member_limit must be between 1 and {_MEMBER_LIMIT_MAX}")
    return value


def _chat_id(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value == 0:
        raise InvalidInput("invalid_telegram_chat_id",
                           "telegram_chat_id must be a numeric chat id, e.g. -1001234567890")
    return value


class LinkService:
    """Create, list and revoke a campaign's links, and count the joins they bring."""

    def __init__(self, db: Database, campaigns: Mapping[str, CampaignSettings],
                 public_url: str, telegram_bots: Mapping[str, TelegramChannel]) -> None:
        self.db = db
        self.campaigns = campaigns
        self.public_url = public_url.rstrip("/")
        self.telegram_bots = telegram_bots

    def join_page_url(self, link_id: str) -> str:
        return f"{self.public_url}/join/{link_id}"

    def start_url(self, link: Link) -> str | None:
        """The Telegram deep link that starts the campaign's bot naming this link, when the
        bot's username is configured (join page links of the telegram channel only)."""
        settings = self.campaigns.get(link.campaign)
        if (link.channel != "telegram" or link.is_invite or settings is None
                or settings.telegram is None or not settings.telegram.bot_username):
            return None
        return f"https://t.me/{settings.telegram.bot_username}?start={link.id}"

    async def create(
        self,
        campaign: str,
        actor: str,
        *,
        channel: str,
        name: str,
        telegram_chat_id: int | str | None = None,
        expires_at: str | float | None = None,
        member_limit: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> Link:
        """Create a link. With ``telegram_chat_id`` (one of the campaign's ``own_chats``)
        Telegram is asked for an invite link that creates join requests; the row is written
        only once Telegram has answered."""
        settings = self.campaigns[campaign]
        if channel not in settings.channels():
            raise InvalidInput("channel_disabled", f"this campaign has no {channel} channel")
        if not settings.privacy_notice_url:
            # People are asked for their details through a link: they must be told then who
            # holds the data and where the privacy notice is (UK GDPR Article 13).
            raise InvalidInput("privacy_notice_missing",
                               "this campaign has no privacy_notice_url in its configuration; "
                               "people asked through a join link must be able to read it")
        if not name.strip():
            raise InvalidInput("invalid_name", "name must be a non-empty string")
        name = name.strip()
        if len(name) > MAX_NAME:
            raise InvalidInput("invalid_name", f"name is longer than {MAX_NAME} characters")
        chat_id = _chat_id(telegram_chat_id)
        expiry = parse_expiry(expires_at)
        limit = _member_limit(member_limit)
        given_tags = tag_names(tags)
        link_id = _new_id()
        if chat_id is not None:
            if channel != "telegram":
                raise InvalidInput("invalid_telegram_chat_id",
                                   "telegram_chat_id needs channel telegram")
            if given_tags:
                raise InvalidInput("invalid_tag", "tags go to people who subscribe through a "
                                   "link; a group invite link subscribes nobody")
            if limit is not None:
                raise InvalidInput("member_limit_with_join_request",
                                   "Telegram does not allow member_limit on a link that asks "
                                   "to join (join requests are approved one by one)")
            assert settings.telegram is not None
            if chat_id not in settings.telegram.own_chats:
                raise InvalidInput("destination_not_allowed",
                                   "telegram_chat_id is not one of the campaign's own_chats")
            url = await self._create_invite(campaign, chat_id, name, expiry)
        else:
            url = self.join_page_url(link_id)
        now = time.time()
        link = Link(id=link_id, campaign=campaign, channel=channel, name=name, url=url,
                    telegram_chat_id=str(chat_id) if chat_id is not None else None,
                    expires_at=expiry, member_limit=limit, revoked_at=None, joins=0,
                    created_by=actor, created_at=now, tags=given_tags)
        try:
            async with self.db.write() as conn:
                await conn.execute(links.insert().values(**{
                    **dataclasses.asdict(link),
                    "tags": json.dumps(list(given_tags)) if given_tags else None}))
                await audit.append(conn, campaign, actor, "link.created", f"link#{link_id}",
                                   {"name": name, "channel": channel,
                                    "telegram_chat_id": link.telegram_chat_id,
                                    "expires_at": expiry, "member_limit": limit,
                                    "tags": list(given_tags)}, at=now)
        except Exception:
            if chat_id is not None:
                # Nothing records the invite link: take it back, so no join can come
                # through a link nobody can see or revoke.
                await self._revoke_invite(campaign, chat_id, url, best_effort=True)
            raise
        _log.info("link.created", campaign=campaign, link=link_id, channel=channel,
                  invite=chat_id is not None)
        return link

    async def list(self, campaign: str) -> list[Link]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(links).where(links.c.campaign == campaign)
                .order_by(links.c.created_at, links.c.id))
            return [_row_to_link(r) for r in rows]

    async def get(self, campaign: str, link_id: str) -> Link:
        async with self.db.read() as conn:
            link = await self.find(conn, campaign, link_id)
        if link is None:
            raise NotFound("link_not_found", "no such link")
        return link

    async def find(self, conn: AsyncConnection, campaign: str, link_id: str) -> Link | None:
        """A link of ``campaign`` by id (revoked and expired ones too), or None."""
        if len(link_id) > 64:
            return None
        row = (await conn.execute(select(links).where(
            links.c.id == link_id, links.c.campaign == campaign))).first()
        return _row_to_link(row) if row is not None else None

    async def find_any(self, conn: AsyncConnection, link_id: str) -> Link | None:
        """A link of any campaign by id (ids are unique across campaigns), or None: the
        public join page knows only the id."""
        if len(link_id) > 64 or has_unstorable_text(link_id):  # no such id can exist
            return None
        row = (await conn.execute(select(links).where(links.c.id == link_id))).first()
        return _row_to_link(row) if row is not None else None

    async def find_invite(self, conn: AsyncConnection, campaign: str, chat_id: str,
                          invite_url: str) -> Link | None:
        """The campaign's invite link to ``chat_id`` with this URL, or None (a link some
        admin made by hand, or another bot's)."""
        if not invite_url:
            return None
        row = (await conn.execute(select(links).where(
            links.c.campaign == campaign, links.c.telegram_chat_id == chat_id,
            links.c.url == invite_url))).first()
        return _row_to_link(row) if row is not None else None

    async def count_join(self, conn: AsyncConnection, link_id: str) -> None:
        """One more person came in through ``link_id`` (in the caller's transaction)."""
        await conn.execute(update(links).where(links.c.id == link_id)
                           .values(joins=links.c.joins + 1))

    async def revoke(self, campaign: str, actor: str, link_id: str) -> Link:
        """Stop a link: nobody joins through it from now on. A Telegram invite link is
        revoked at Telegram too; should Telegram refuse (the bot lost its admin rights), the
        link is still revoked here, and the bot approves no join request through it.
        Revoking a revoked link changes nothing."""
        link = await self.get(campaign, link_id)
        if link.revoked_at is not None:
            return link
        at_telegram: bool | None = None
        if link.telegram_chat_id is not None:
            at_telegram = await self._revoke_invite(campaign, int(link.telegram_chat_id),
                                                    link.url, best_effort=False)
        now = time.time()
        async with self.db.write() as conn:
            result = await conn.execute(
                update(links).where(links.c.id == link_id, links.c.campaign == campaign,
                                    links.c.revoked_at.is_(None))
                .values(revoked_at=now))
            if result.rowcount:
                await audit.append(conn, campaign, actor, "link.revoked", f"link#{link_id}",
                                   {"name": link.name, "revoked_at_telegram": at_telegram},
                                   at=now)
            found = await self.find(conn, campaign, link_id)
        assert found is not None
        _log.info("link.revoked", campaign=campaign, link=link_id,
                  revoked_at_telegram=at_telegram)
        return found

    # -- Telegram ---------------------------------------------------------------------------

    def _bot(self, campaign: str) -> TelegramChannel:
        bot = self.telegram_bots.get(campaign)
        if bot is None:
            raise InvalidInput("telegram_unavailable",
                               "this campaign's Telegram channel has no bot (provider "
                               "\"log\"): invite links need provider \"telegram\"")
        return bot

    async def _create_invite(self, campaign: str, chat_id: int, name: str,
                             expiry: float | None) -> str:
        bot = self._bot(campaign)
        expire_date = datetime.fromtimestamp(expiry, UTC) if expiry is not None else None
        try:
            return await bot.create_invite_link(chat_id, name, expire_date, None,
                                                creates_join_request=True)
        except RetryableSendError as exc:
            raise ProviderUnavailable("telegram_unavailable",
                                      f"Telegram did not answer, nothing was created: "
                                      f"{exc.reason}") from None
        except PermanentSendError as exc:
            raise ProviderRefused("telegram_refused",
                                  "Telegram refused to create the invite link (is the bot an "
                                  "admin of the chat with the right to invite users?): "
                                  f"{exc.detail or exc.reason}") from None

    async def _revoke_invite(self, campaign: str, chat_id: int, url: str, *,
                             best_effort: bool) -> bool:
        """True when Telegram revoked it; False when Telegram refused (permanently)."""
        try:
            await self._bot(campaign).revoke_invite_link(chat_id, url)
            return True
        except RetryableSendError as exc:
            if best_effort:
                _log.warning("link.revoke_failed", campaign=campaign, reason=exc.reason)
                return False
            raise ProviderUnavailable("telegram_unavailable",
                                      "Telegram did not answer, the link was not revoked: "
                                      f"{exc.reason}") from None
        except PermanentSendError as exc:
            _log.warning("link.revoke_refused", campaign=campaign, reason=exc.reason)
            return False
        except GatewayError:
            if best_effort:
                return False
            raise


def link_view(service: LinkService, link: Link) -> dict[str, Any]:
    """A link as the API and the command line show it (the documented ``id, name, channel,
    url, joins``, and what else an operator needs to manage it)."""
    return {
        "id": link.id,
        "name": link.name,
        "channel": link.channel,
        "url": link.url,
        "joins": link.joins,
        "kind": "telegram_invite" if link.is_invite else "join_page",
        "telegram_chat_id": int(link.telegram_chat_id) if link.telegram_chat_id else None,
        "telegram_start_url": service.start_url(link),
        "expires_at": iso(link.expires_at),
        "member_limit": link.member_limit,
        "revoked_at": iso(link.revoked_at),
        "active": link.is_live(),
        "created_by": link.created_by,
        "created_at": iso(link.created_at),
        "tags": list(link.tags),
    }
