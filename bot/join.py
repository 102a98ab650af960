"""The public join page's service: a person signs themselves up, then confirms (double opt-in).

- The page (``GET /join/{link}``) shows the campaign's name, imprint, the current consent
  text of the one channel the link is for, and who holds the data and where the privacy
  notice is (UK GDPR Article 13: people are told when they are asked). A Telegram link
  shows a button that starts the campaign's bot naming the link (the bot's consent buttons
  do the rest, see :mod:`bot.telegram`).
- Submitting it records a *pending* consent (method ``web_form``, the consent text version
  shown, IP, user agent and time as evidence) and queues one confirmation message (kind
  ``confirm``) in the same transaction. The gate lets a ``confirm`` message reach only a
  pending address and nothing else reaches it until it is confirmed.
- Email is confirmed by following ``/confirm/{token}`` (signed, expiring); SMS by replying
  YES (the keyword opt-in of :mod:`bot.inbound`).

- The confirmation link opens a page with one button (``GET`` reads only: mail security
  scanners fetch every link, and a fetch is not a person's consent); pressing it
  (``POST /confirm/{token}``) completes the double opt-in.

Abuse: the form must not become a way to message third parties. Confirmation texts hold no
word the submitter typed; at most one confirmation per address per campaign and channel a
day, and at most :data:`CONFIRM_PER_ADDRESS_PER_DAY` per address whatever the campaign or
link (both read from the outbox, so they hold across processes); submissions are limited
per IP, per link, overall and per address in this process's memory; a filled honeypot
field is answered like a success and records nothing. An address that is already
subscribed is left exactly as it is. Cross-site posts are refused by the web layer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.adapters.pacing import SlidingWindow
from consentgate.bot import outbox
from consentgate.bot.addresses import mask, normalise_address
from consentgate.bot.config import CampaignSettings
from consentgate.bot.consent import Evidence, Status
from consentgate.bot.errors import GatewayError, NotFound
from consentgate.bot.ledger import Ledger
from consentgate.bot.links import Link, LinkService
from consentgate.bot.tokens import TokenError, Tokens, TokenSubject
from consentgate.bot.versions import consent_text_version
from consentgate.storage.db import Database
from consentgate.storage.models import messages, subscriptions

__all__ = [
    "CONFIRM_MAX_AGE",
    "ConfirmResult",
    "JoinPage",
    "JoinResult",
    "JoinService",
    "LinkGone",
    "SlidingWindow",
]

_log = structlog.get_logger("consentgate.join")

#: How long an emailed confirmation link works.
CONFIRM_MAX_AGE = 3 * 24 * 3600
#: At most one confirmation message per address (campaign and channel) in this window.
CONFIRM_INTERVAL = 24 * 3600
#: At most this many confirmation messages to one address a day, whatever campaign or link
#: the submissions came through.
CONFIRM_PER_ADDRESS_PER_DAY = 3
_MAX_USER_AGENT = 400


class LinkGone(GatewayError):
    """The link was revoked or has expired: 410, nothing recorded."""

    status = 410
    title = "Gone"


@dataclass(frozen=True)
class JoinPage:
    """What the join page shows."""

    link: Link
    campaign: CampaignSettings
    consent_text_version: str
    telegram_start_url: str | None


@dataclass(frozen=True)
class JoinResult:
    """``sent``: the page says "check your phone/email" (whatever happened behind it, so the
    page tells a stranger nothing about an address). ``invalid``: show the form again."""

    outcome: Literal["sent", "invalid"]
    page: JoinPage
    error: str | None = None
    field: str | None = None


@dataclass(frozen=True)
class ConfirmResult:
    """``ask``: the page with the button (nothing changed yet); ``confirmed`` now;
    ``already`` subscribed before."""

    outcome: Literal["ask", "confirmed", "already"]
    campaign: CampaignSettings
    masked_address: str
    channel: str = "email"


class RateLimited(GatewayError):
    status = 429
    title = "Too many requests"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


class JoinService:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        links: LinkService,
        tokens: Tokens,
        campaigns: Mapping[str, CampaignSettings],
        public_url: str,
        *,
        wake: Callable[[str, str], None] | None = None,
        per_ip: int = 10,
        per_address: int = 3,
        per_link: int = 300,
        overall: int = 1000,
        window: float = 3600.0,
        confirm_max_age: int = CONFIRM_MAX_AGE,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.links = links
        self.tokens = tokens
        self.campaigns = campaigns
        self.public_url = public_url.rstrip("/")
        self.confirm_max_age = confirm_max_age
        self._wake = wake
        self.by_ip = SlidingWindow(per_ip, window)
        self.by_address = SlidingWindow(per_address, window)
        # A poster at a rally brings many people through one link, from one venue's Wi-Fi;
        # these cap what one link, and the whole form, can make the gateway send.
        self.by_link = SlidingWindow(per_link, window)
        self.overall = SlidingWindow(overall, window)

    # -- the page ---------------------------------------------------------------------------

    async def page(self, link_id: str) -> JoinPage:
        """The join page for ``link_id``: NotFound (404) for no such join page, LinkGone
        (410) for a revoked or expired link."""
        async with self.db.read() as conn:
            return await self._page(conn, link_id)

    async def _page(self, conn: AsyncConnection, link_id: str) -> JoinPage:
        link = await self.links.find_any(conn, link_id)
        if link is None or link.is_invite or link.campaign not in self.campaigns:
            raise NotFound("link_not_found", "no such join page")
        settings = self.campaigns[link.campaign]
        if not link.is_live() or link.channel not in settings.channels():
            raise LinkGone("link_gone", "this join link has been withdrawn or has expired")
        return JoinPage(link, settings,
                        consent_text_version(settings.consent_text_for(link.channel)),
                        self.links.start_url(link))

    # -- submitting -------------------------------------------------------------------------

    async def submit(self, link_id: str, *, address: str, consent: bool, honeypot: str,
                     shown_version: str, ip: str, user_agent: str) -> JoinResult:
        """A submitted join form. Raises NotFound / LinkGone like :meth:`page`, and
        RateLimited (429) when this IP has sent too many."""
        page = await self.page(link_id)
        link, settings = page.link, page.campaign
        if not self.by_ip.allow(ip):
            raise RateLimited("rate_limited", "too many sign-ups from this connection; "
                                              "please try again later")
        if not self.by_link.allow(link.id) or not self.overall.allow("all"):
            _log.warning("join.link_limited", link=link.id)
            raise RateLimited("rate_limited", "too many sign-ups through this page; "
                                              "please try again later")
        if honeypot.strip():
            _log.info("join.honeypot", link=link.id)
            return JoinResult("sent", page)
        if link.channel == "telegram":
            return JoinResult("invalid", page, "Use the Telegram button to join.", None)
        if not consent:
            return JoinResult("invalid", page, "Tick the box to say you agree, or leave "
                              "this page if you do not.", "consent")
        try:
            normal = normalise_address(link.channel, address, settings.default_region)
        except GatewayError:
            what = "mobile number" if link.channel == "sms" else "email address"
            return JoinResult("invalid", page, f"That does not look like a {what}. "
                              "Please check it and try again.", "address")
        ahash = self.ledger.hash(link.channel, normal)
        if not self.by_address.allow(f"{link.campaign}/{ahash}"):
            _log.info("join.address_limited", link=link.id, to=mask(normal))
            return JoinResult("sent", page)
        # The version the person read: the page sends back the one it showed; a page left
        # open while the text changed is treated as showing the current text only if equal.
        version = page.consent_text_version
        if shown_version and shown_version != version:
            return JoinResult("invalid", page, "The wording below has changed since the page "
                              "was opened. Please read it again and tick the box.", "consent")
        queued = False
        async with self.db.write() as conn:
            # Look again inside the transaction: a revoke that committed meanwhile wins.
            page = await self._page(conn, link_id)
            queued = await self._start_double_opt_in(conn, page, normal, ahash, ip,
                                                     user_agent)
        if queued and self._wake is not None:
            self._wake(link.campaign, link.channel)
        return JoinResult("sent", page)

    async def _start_double_opt_in(self, conn: AsyncConnection, page: JoinPage, address: str,
                                   ahash: str, ip: str, user_agent: str) -> bool:
        link, settings = page.link, page.campaign
        state = await self.ledger.state(conn, link.campaign, link.channel, address)
        if state.status is Status.SUBSCRIBED and not state.suppressed:
            return False  # re-joining changes nothing about a subscriber
        now = time.time()
        recent = (await conn.execute(
            select(func.count()).select_from(messages).where(
                messages.c.campaign == link.campaign, messages.c.channel == link.channel,
                messages.c.address_hash == ahash, messages.c.kind == "confirm",
                messages.c.created_at > now - CONFIRM_INTERVAL))).scalar_one()
        if recent:
            _log.info("join.confirmation_already_sent", link=link.id, to=mask(address))
            return False
        # The hash is keyed by channel and address only: this counts every campaign's.
        anywhere = (await conn.execute(
            select(func.count()).select_from(messages).where(
                messages.c.channel == link.channel, messages.c.address_hash == ahash,
                messages.c.kind == "confirm",
                messages.c.created_at > now - CONFIRM_INTERVAL))).scalar_one()
        if anywhere >= CONFIRM_PER_ADDRESS_PER_DAY:
            _log.info("join.address_daily_limit", link=link.id, to=mask(address))
            return False
        evidence = json.dumps({
            "ip": ip, "user_agent": user_agent[:_MAX_USER_AGENT], "at": _iso(now),
            "consent_text_version": page.consent_text_version, "link_id": link.id,
            "page": self.links.join_page_url(link.id),
            # What the page said about who holds the data (UK GDPR Article 13).
            "controller": settings.controller,
            "privacy_notice_url": settings.privacy_notice_url,
        }, sort_keys=True)
        ev = Evidence("web_form", f"join link {link.name}", evidence,
                      page.consent_text_version, "recipient")
        try:
            await self.ledger.record_consent(conn, link.campaign, link.channel, address, ev,
                                             by_recipient=True, pending=True, link_id=link.id)
        except GatewayError as exc:
            # e.g. a link whose name matches a denied source: nothing recorded, nothing sent.
            _log.warning("join.refused", link=link.id, code=exc.code)
            return False
        if link.channel == "email":
            token = self.tokens.make("confirm", TokenSubject(
                link.campaign, link.channel, ahash,
                json.dumps([link.id, int(now), page.consent_text_version],
                           separators=(",", ":"))))
            text, subject = self.email_text(settings, f"{self.public_url}/confirm/{token}")
        else:
            text, subject = self.sms_text(settings), None
        await outbox.enqueue(conn, campaign=link.campaign, channel=link.channel,
                             address=address, address_hash=ahash, text=text, kind="confirm",
                             created_by="join page", subject=subject)
        _log.info("join.pending", link=link.id, channel=link.channel, to=mask(address))
        return True

    def sms_text(self, settings: CampaignSettings) -> str:
        """The SMS confirmation: only the campaign's own words, never the submitter's."""
        privacy = (f" Privacy notice: {settings.privacy_notice_url}"
                   if settings.privacy_notice_url else "")
        return (f"{settings.name}: reply YES to confirm you want campaign texts.{privacy} "
                "Not you? Ignore this and you will get nothing more.")

    def email_text(self, settings: CampaignSettings, url: str) -> tuple[str, str]:
        days = max(1, self.confirm_max_age // 86400)
        host = urlsplit(self.public_url).hostname or self.public_url
        about = ""
        if settings.controller:
            about += f"Your details are held by {settings.controller}.\n"
        if settings.privacy_notice_url:
            about += f"Privacy notice: {settings.privacy_notice_url}\n"
        text = (f"Please confirm you want email updates from {settings.name}.\n\n"
                f"This address was entered on the sign-up page at {host}. To confirm, open "
                f"this link within {days} days and press the button on the page:\n\n"
                f"{url}\n\n"
                "If it was not you, ignore this email: you will get nothing more from us.\n\n"
                f"{about}{settings.imprint}\n")
        return text, f"Please confirm: updates from {settings.name}"

    # -- confirming -------------------------------------------------------------------------

    def _read_confirm_token(self, token: str) -> tuple[TokenSubject, CampaignSettings, str,
                                                       float, str]:
        subject = self.tokens.read("confirm", token, max_age=self.confirm_max_age)
        settings = self.campaigns.get(subject.campaign)
        try:
            link_id, issued, version = json.loads(subject.extra)
            issued_at = float(issued)
        except (ValueError, TypeError) as exc:
            raise TokenError("not a valid token") from exc
        if settings is None or not isinstance(link_id, str) or not isinstance(version, str):
            raise TokenError("not a valid token")
        return subject, settings, link_id, issued_at, version

    async def preview(self, token: str) -> ConfirmResult:
        """What ``GET /confirm/{token}`` shows: reads only (link scanners fetch it).
        TokenError (404) as :meth:`confirm` would raise it."""
        subject, settings, *_ = self._read_confirm_token(token)
        async with self.db.read() as conn:
            address, already = await self._request_standing(conn, subject)
        return ConfirmResult("already" if already else "ask", settings, mask(address),
                             subject.channel)

    async def _request_standing(self, conn: AsyncConnection,
                                subject: TokenSubject) -> tuple[str, bool]:
        """The address a confirmation token stands for, and whether it is subscribed
        already. TokenError (404) when no request stands any more (the address opted out,
        was erased or never asked)."""
        row = (await conn.execute(
            select(subscriptions.c.address).where(
                subscriptions.c.campaign == subject.campaign,
                subscriptions.c.channel == subject.channel,
                subscriptions.c.address_hash == subject.address_hash))).first()
        if row is None or row.address is None:
            raise TokenError("no such request")
        address = str(row.address)
        state = await self.ledger.state(conn, subject.campaign, subject.channel, address)
        if state.status is Status.SUBSCRIBED and not state.suppressed:
            return address, True
        if state.status is not Status.PENDING:
            raise TokenError("the request no longer stands")
        return address, False

    async def confirm(self, token: str, *, ip: str, user_agent: str) -> ConfirmResult:
        """Complete an email double opt-in (the person pressed the button). TokenError
        (404) for a changed, made-up or expired token, or one whose request no longer
        stands (the address opted out or was erased since)."""
        subject, settings, link_id, issued_at, version = self._read_confirm_token(token)
        async with self.db.write() as conn:
            address, already = await self._request_standing(conn, subject)
            if already:
                return ConfirmResult("already", settings, mask(address), subject.channel)
            link = await self.links.find(conn, subject.campaign, link_id)
            now = time.time()
            # The words the person read on the page, as the token carries them.
            evidence = json.dumps({
                "confirmed_by": "email link and button", "token_issued_at": _iso(issued_at),
                "at": _iso(now), "ip": ip, "user_agent": user_agent[:_MAX_USER_AGENT],
                "link_id": link_id, "consent_text_version": version,
            }, sort_keys=True)
            name = link.name if link is not None else link_id
            await self.ledger.record_consent(
                conn, subject.campaign, subject.channel, address,
                Evidence("web_form", f"join link {name}", evidence, version, "recipient"),
                by_recipient=True, link_id=link_id)
            if link is not None:
                await self.links.count_join(conn, link.id)
        _log.info("join.confirmed", campaign=subject.campaign, link=link_id, to=mask(address))
        return ConfirmResult("confirmed", settings, mask(address), subject.channel)
