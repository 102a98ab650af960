"""Email unsubscribes, and what comes back by mail: one-click links, ``mailto:``
unsubscribes, replies and bounces, each turned into a ledger change.

Two kinds of token name a recipient without naming the address:

- ``/u/{token}`` links use :class:`bot.tokens.Tokens` (signed, URL-safe, case-sensitive).
- Tokens inside mail addresses (``unsubscribe+TOKEN@``, ``reply+TOKEN@``, ``bounce+TOKEN@``)
  use :class:`MailTokens`: lower-case hex and base-36 only, because mail servers may change
  the case of a local part. They are keyed hashes, bound to a purpose, the campaign, the
  channel and the address's keyed hash (a bounce token also to the one message it was the
  envelope sender of), so a made-up or altered one resolves to nothing.

Every opt-out is one transaction with the cancellation of the address's queued mail
(:meth:`bot.ledger.Ledger.record_opt_out`); the page, or the inbound SMTP answer, is given
only after it has committed. A GET of an unsubscribe link never changes anything: mail
scanners fetch links.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.adapters.base import InboundEvent
from consentgate.bot.addresses import mask, normalise_address
from consentgate.bot.broadcasts import PAUSE_AFTER_ATTEMPTS, pause_if_failing
from consentgate.bot.config import CampaignSettings, ConfigError
from consentgate.bot.consent import Status
from consentgate.bot.errors import GatewayError
from consentgate.bot.keywords import Intent, classify
from consentgate.bot.ledger import Ledger
from consentgate.bot.metrics import Metrics
from consentgate.bot.outbox import MessageStatus
from consentgate.bot.tokens import TokenError, Tokens
from consentgate.storage.db import Database
from consentgate.storage.models import inbound_messages, messages, processed_events, subscriptions
from consentgate.storage.sql import insert_ignore

__all__ = [
    "MailListeners",
    "MailTokens",
    "UnsubscribeService",
    "UnsubscribeView",
]

_log = structlog.get_logger("consentgate.email")

_CHANNEL = "email"
_HEX = frozenset("0123456789abcdef")
_BASE36 = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")
_CODE_LEN = 8  # campaign code
_PREFIX_LEN = 24  # leading hex digits of the address hash (96 bits: unique in practice)
_MAC_LEN = 16  # 64 bits: far beyond guessing over SMTP


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(frozen=True)
class AddressToken:
    """A parsed address token: still to be checked against the full address hash."""

    campaign: str
    hash_prefix: str
    mac: str


class MailTokens:
    """Case-insensitive tokens for the local part of mail addresses.

    An address token (``unsubscribe`` and ``reply``) is 48 hex digits: a campaign code, the
    first 24 digits of the address hash (to find the subscription) and a MAC over the whole
    hash. ``unsubscribe+`` and the token make 60 characters, within the 64 a local part may
    have. A bounce token is the message id in base 36 followed by a MAC.
    """

    def __init__(self, secret_key: str, campaigns: Iterable[str]) -> None:
        self._key = secret_key.encode()
        self._codes: dict[str, str] = {}
        for slug in campaigns:
            code = self._mac(f"campaign:{slug}", _CODE_LEN)
            if code in self._codes:  # 32 bits: only a pathological configuration collides
                raise ValueError(f"campaigns {self._codes[code]!r} and {slug!r} share a code")
            self._codes[code] = slug
        self._code_of = {slug: code for code, slug in self._codes.items()}

    def _mac(self, message: str, length: int) -> str:
        digest = hmac.new(self._key, f"consentgate.mail.{message}".encode(), hashlib.sha256)
        return digest.hexdigest()[:length]

    def address_token(self, purpose: str, campaign: str, address_hash: str) -> str:
        mac = self._mac(f"{purpose}:{campaign}:{_CHANNEL}:{address_hash}", _MAC_LEN)
        return self._code_of[campaign] + address_hash[:_PREFIX_LEN] + mac

    def parse_address_token(self, token: str | None) -> AddressToken | None:
        token = (token or "").lower()
        if len(token) != _CODE_LEN + _PREFIX_LEN + _MAC_LEN or not set(token) <= _HEX:
            return None
        campaign = self._codes.get(token[:_CODE_LEN])
        if campaign is None:
            return None
        return AddressToken(campaign, token[_CODE_LEN:_CODE_LEN + _PREFIX_LEN],
                            token[_CODE_LEN + _PREFIX_LEN:])

    def address_token_matches(self, purpose: str, parsed: AddressToken,
                              address_hash: str) -> bool:
        expected = self._mac(f"{purpose}:{parsed.campaign}:{_CHANNEL}:{address_hash}",
                             _MAC_LEN)
        return (address_hash.startswith(parsed.hash_prefix)
                and hmac.compare_digest(expected, parsed.mac))

    def bounce_token(self, message_id: int, campaign: str, address_hash: str) -> str:
        mac = self._mac(f"bounce:{message_id}:{campaign}:{address_hash}", _MAC_LEN)
        return _base36(message_id) + mac

    def parse_bounce_token(self, token: str | None) -> tuple[int, str] | None:
        """(message id, MAC), to be checked with :meth:`bounce_token_matches`."""
        token = (token or "").lower()
        if not _MAC_LEN < len(token) <= _MAC_LEN + 13 or not set(token) <= _BASE36:
            return None
        return int(token[:-_MAC_LEN], 36), token[-_MAC_LEN:]

    def bounce_token_matches(self, message_id: int, mac: str, campaign: str,
                             address_hash: str) -> bool:
        expected = self._mac(f"bounce:{message_id}:{campaign}:{address_hash}", _MAC_LEN)
        return hmac.compare_digest(expected, mac)


@dataclass(frozen=True)
class UnsubscribeView:
    """What the unsubscribe page shows."""

    campaign: CampaignSettings
    #: the address as the page may show it (``j***@example.org``), None once erased
    masked_address: str | None
    #: already unsubscribed (GET), or unsubscribed now (POST)
    unsubscribed: bool


class _Server(Protocol):
    async def start(self) -> int: ...
    async def stop(self) -> None: ...


class MailListeners:
    """The inbound SMTP listeners of every campaign with ``[campaigns.email.inbound]``:
    one per bound host and port (campaigns may share one if they share its domain)."""

    def __init__(self, servers: list[_Server]) -> None:
        self.servers = servers
        #: bound ports, in the order of :attr:`servers`, once started
        self.ports: list[int] = []

    async def start(self) -> list[int]:
        self.ports = [await server.start() for server in self.servers]
        return self.ports

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()


class UnsubscribeService:
    def __init__(self, db: Database, ledger: Ledger, metrics: Metrics,
                 campaigns: dict[str, CampaignSettings], tokens: Tokens,
                 mail_tokens: MailTokens, *,
                 pause_after_attempts: int = PAUSE_AFTER_ATTEMPTS) -> None:
        self.db = db
        self.pause_after_attempts = pause_after_attempts
        self.ledger = ledger
        self.metrics = metrics
        self.campaigns = campaigns
        self.tokens = tokens
        self.mail_tokens = mail_tokens

    # -- /u/{token} ------------------------------------------------------------------------

    def _link_subject(self, token: str) -> tuple[CampaignSettings, str, str]:
        subject = self.tokens.read("unsubscribe", token)
        campaign = self.campaigns.get(subject.campaign)
        if campaign is None:
            raise TokenError("the campaign of this link is no longer configured")
        return campaign, subject.channel, subject.address_hash

    async def view(self, token: str) -> UnsubscribeView:
        """What GET shows. Reads only. Raises :class:`TokenError` (404) for a token we did
        not issue."""
        campaign, channel, ahash = self._link_subject(token)
        async with self.db.read() as conn:
            address = await _address_of(conn, campaign.slug, channel, ahash)
            done = address is None or await self._is_opted_out(conn, campaign.slug, channel,
                                                               address)
        return UnsubscribeView(campaign, mask(address) if address else None, done)

    async def unsubscribe(self, token: str, *, method: str) -> UnsubscribeView:
        """POST: opt out at once (and cancel the address's queued mail of the campaign);
        returns after the change has committed. Repeating it changes nothing more. A
        person's change: written as an SMS STOP is (:meth:`Database.write_now`)."""
        campaign, channel, ahash = self._link_subject(token)
        async with self.db.write_now() as conn:
            address = await _address_of(conn, campaign.slug, channel, ahash)
            if address is not None:
                await self._opt_out(conn, campaign.slug, channel, address, method=method,
                                    reason="list_unsubscribe")
        return UnsubscribeView(campaign, mask(address) if address else None, True)

    async def _is_opted_out(self, conn: AsyncConnection, campaign: str, channel: str,
                            address: str) -> bool:
        state = await self.ledger.state(conn, campaign, channel, address)
        return state.status is Status.OPTED_OUT

    async def _opt_out(self, conn: AsyncConnection, campaign: str, channel: str,
                       address: str, *, method: str, reason: str,
                       every_campaign: bool = False) -> None:
        if not every_campaign and await self._is_opted_out(conn, campaign, channel, address):
            return  # a second click, a scanner's POST after the person's: nothing to add
        cancelled = await self.ledger.record_opt_out(
            conn, campaign, channel, address, method=method, reason=reason,
            actor="recipient", every_campaign=every_campaign,
            suppression_reason="stop_all" if every_campaign else None)
        self.metrics.opt_outs.labels(channel, method).inc()
        _log.info("email.opted_out", campaign=campaign, method=method, to=mask(address),
                  cancelled=cancelled, every_campaign=every_campaign)

    # -- inbound mail ----------------------------------------------------------------------

    def listeners(self) -> MailListeners | None:
        """The inbound SMTP listeners the configuration asks for (not started), or None."""
        wanted: dict[tuple[str, int], str] = {}
        for index, c in enumerate(self.campaigns.values()):
            inbound = c.email.inbound if c.email else None
            if inbound is None:
                continue
            where = (inbound.host, inbound.port)
            domain = wanted.setdefault(where, inbound.domain)
            if domain.lower() != inbound.domain.lower():
                raise ConfigError(
                    f"campaigns[{index}].email.inbound.port",
                    f"{inbound.host}:{inbound.port} is another campaign's inbound listener, "
                    f"for domain {domain!r}; campaigns share a listener only with its domain")
        if not wanted:
            return None
        from consentgate.adapters.smtp_inbound import InboundMailServer

        servers: list[_Server] = [
            InboundMailServer(host, port, domain, self._handler_for(domain))
            for (host, port), domain in wanted.items()
        ]
        return MailListeners(servers)

    def _handler_for(self, domain: str) -> Callable[[list[InboundEvent]], Awaitable[None]]:
        async def on_events(events: list[InboundEvent]) -> None:
            await self.apply_mail(domain, events)
        return on_events

    async def apply_mail(self, domain: str, events: list[InboundEvent]) -> None:
        """Apply the events of one received mail, each in its own transaction and at most
        once (by Message-ID). Raises if one could not be recorded: the listener then
        answers 4xx and the sending server tries again."""
        for event in events:
            if event.kind == "unsubscribe":
                await self._mail_unsubscribe(event)
            elif event.kind == "bounce":
                await self._bounce(event)
            elif event.kind == "message":
                await self._reply(domain, event)

    async def _first_time(self, conn: AsyncConnection, campaign: str, event_id: str) -> bool:
        result = await conn.execute(insert_ignore(
            conn, processed_events, ("campaign", "channel", "event_id"),
            dict(campaign=campaign, channel=_CHANNEL, event_id=event_id[:200],
                 at=time.time())))
        return bool(result.rowcount)

    async def _resolve(self, conn: AsyncConnection, purpose: str,
                       token: str | None) -> tuple[str, str | None] | None:
        """(campaign, address) of an address token; the address is None once erased.
        None for a token we did not issue."""
        parsed = self.mail_tokens.parse_address_token(token)
        if parsed is None:
            return None
        s = subscriptions
        rows = await conn.execute(
            select(s.c.address, s.c.address_hash)
            .where(s.c.campaign == parsed.campaign, s.c.channel == _CHANNEL,
                   s.c.address_hash >= parsed.hash_prefix,
                   s.c.address_hash < parsed.hash_prefix + "g"))  # hex sorts below "g"
        for row in rows:
            if self.mail_tokens.address_token_matches(purpose, parsed, row.address_hash):
                return parsed.campaign, row.address
        return None

    async def _mail_unsubscribe(self, event: InboundEvent) -> None:
        async with self.db.write_now() as conn:
            found = await self._resolve(conn, "unsubscribe", event.payload)
            if found is None:
                _log.warning("email.unsubscribe_token_invalid")
                return
            campaign, address = found
            if not await self._first_time(conn, campaign, event.provider_event_id):
                return
            if address is not None:
                await self._opt_out(conn, campaign, _CHANNEL, address, method="mailto",
                                    reason="list_unsubscribe mailto")

    async def _reply(self, domain: str, event: InboundEvent) -> None:
        if event.extra.get("auto_submitted"):
            return  # an out-of-office or another robot: says nothing about consent
        async with self.db.write() as conn:
            found = await self._resolve(conn, "reply", event.payload)
            if found is not None:
                campaign, address = found
            else:
                served = [c.slug for c in self.campaigns.values()
                          if c.email and c.email.inbound
                          and c.email.inbound.domain.lower() == domain.lower()]
                if len(served) != 1:
                    _log.info("email.reply_unattributed", domain=domain)
                    return
                campaign = served[0]
                try:
                    address = normalise_address(_CHANNEL, event.address)
                except GatewayError:
                    return
            if address is None:  # erased: nothing is kept about them, not even this
                return
            if not await self._first_time(conn, campaign, event.provider_event_id):
                return
            reading = classify(event.text)
            intent = reading.intent
            await conn.execute(inbound_messages.insert().values(
                campaign=campaign, channel=_CHANNEL, from_address=address,
                address_hash=self.ledger.hash(_CHANNEL, address), text=event.text,
                intent=intent.value,
                flag="possible_opt_out" if intent is Intent.POSSIBLE_OPT_OUT else None,
                rule=reading.rule[:120],
                provider_event_id=event.provider_event_id[:200], at=time.time()))
            if intent in (Intent.OPT_OUT, Intent.OPT_OUT_ALL):
                await self._opt_out(conn, campaign, _CHANNEL, address, method="email_reply",
                                    reason=f"{reading.keyword or 'STOP'} email reply",
                                    every_campaign=intent is Intent.OPT_OUT_ALL)
        self.metrics.inbound.labels(_CHANNEL, intent.value).inc()

    async def _bounce(self, event: InboundEvent) -> None:
        parsed = self.mail_tokens.parse_bounce_token(event.payload)
        if parsed is None:
            _log.warning("email.bounce_token_invalid")
            return
        message_id, mac = parsed
        m = messages
        async with self.db.write() as conn:
            row = (await conn.execute(
                select(m.c.id, m.c.campaign, m.c.channel, m.c.address, m.c.address_hash,
                       m.c.broadcast_id)
                .where(m.c.id == message_id, m.c.channel == _CHANNEL))).first()
            if row is None or not self.mail_tokens.bounce_token_matches(
                    message_id, mac, row.campaign, row.address_hash):
                _log.warning("email.bounce_token_invalid")
                return
            if not await self._first_time(conn, row.campaign, event.provider_event_id):
                return
            code = event.error_code or ""
            diagnostic = event.extra.get("diagnostic", "")
            detail = f"{event.status} bounce {code} {diagnostic}".strip()
            log = _log.bind(campaign=row.campaign, message_id=row.id, status=code,
                            to=mask(row.address or ""))
            if event.status != "hard":
                # The relay that reported it is still trying (or gave up on a passing
                # fault): the address stays, and resending the message could deliver twice.
                await conn.execute(update(m).where(m.c.id == row.id)
                                   .values(last_error=detail[:1000], updated_at=time.time()))
                log.info("email.soft_bounce")
                return
            await conn.execute(
                update(m).where(m.c.id == row.id,
                                m.c.status.in_((MessageStatus.SENDING, MessageStatus.SENT,
                                                MessageStatus.DELIVERED)))
                .values(status=MessageStatus.FAILED, reason="hard_bounce", last_error=detail[:1000],
                        updated_at=time.time(), lease_owner=None, lease_expires=None))
            if row.address is not None:
                await self.ledger.record_opt_out(
                    conn, row.campaign, _CHANNEL, row.address, method="bounce",
                    reason=f"hard bounce {code}".strip(), actor="provider",
                    every_campaign=True, suppression_reason="hard_bounce")
                self.metrics.opt_outs.labels(_CHANNEL, "bounce").inc()
            if row.broadcast_id is not None:
                await pause_if_failing(conn, int(row.broadcast_id), self.pause_after_attempts)
            log.info("email.hard_bounce")


async def _address_of(conn: AsyncConnection, campaign: str, channel: str,
                      address_hash: str) -> str | None:
    """The address behind a keyed hash in this campaign; None when it is not held (erased,
    or never recorded here)."""
    s = subscriptions
    row: Any = (await conn.execute(
        select(s.c.address).where(s.c.campaign == campaign, s.c.channel == channel,
                                  s.c.address_hash == address_hash))).first()
    return None if row is None else str(row.address)
