"""The people's rights over their data, and how long it is kept.

Subject access (everything held about one address in one campaign), erasure, rectification
and restriction, the suppression list as a portable CSV, and retention: people out of
contact for ``policy.retention_days`` keep their place in the counts and the audit under an
artificial identifier, and lose everything that identifies them.

Each operation is a handful of set-based statements, one per table, in one transaction,
with its audit record. People are matched by their keyed hash (``address_hash``), which
every table carries, so the same statements reach rows whose address is already gone.
See docs/data-protection.md for what is kept, why, and for how long.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import (
    String,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.bot import audit, outbox
from consentgate.bot.addresses import normalise_address
from consentgate.bot.config import CampaignSettings, Settings
from consentgate.bot.consent import Status
from consentgate.bot.csvcells import spreadsheet_safe
from consentgate.bot.errors import Conflict, NotFound
from consentgate.bot.imports import HASH_PREFIX
from consentgate.bot.ledger import Ledger
from consentgate.bot.messages import iso
from consentgate.bot.outbox import ACTIVE_STATUSES, MessageStatus
from consentgate.storage.db import Database
from consentgate.storage.models import (
    audit_events,
    broadcasts,
    consent_events,
    consent_texts,
    idempotency_keys,
    inbound_messages,
    links,
    messages,
    subscription_tags,
    subscriptions,
    suppressions,
)
from consentgate.storage.sql import dialect_insert

__all__ = [
    "PSEUDONYM_PREFIX",
    "Privacy",
    "RetentionResult",
    "is_pseudonym",
    "run_daily_retention",
]

_log = structlog.get_logger("consentgate.privacy")

#: How an artificial identifier starts. It can never be a real address: not a number, not
#: an email (no "@"), not a Telegram id.
PSEUDONYM_PREFIX = "anon-"
DAY = 86400.0
SENT = (MessageStatus.SENT, MessageStatus.DELIVERED)


def is_pseudonym(column: Any) -> Any:
    """SQL truth of "this address is an artificial identifier"."""
    return and_(column.like(PSEUDONYM_PREFIX + "%"), not_(column.like("%@%")))


def _pseudonym_for(conn: AsyncConnection, row_id: Any) -> Any:
    """``anon-`` and 12 hex digits of the row id: unique, stable, and meaningless."""
    if conn.dialect.name == "postgresql":
        return literal(PSEUDONYM_PREFIX) + func.lpad(func.to_hex(row_id), 12, "0")
    return func.printf(PSEUDONYM_PREFIX + "%012x", row_id)


@dataclass(frozen=True)
class RetentionResult:
    """What one retention run did in one campaign."""

    campaign: str
    subscriptions: int = 0
    consent_events: int = 0
    messages: int = 0
    replies: int = 0
    suppressions: int = 0
    idempotency_keys: int = 0

    @property
    def changed(self) -> int:
        return (self.subscriptions + self.consent_events + self.messages + self.replies
                + self.suppressions + self.idempotency_keys)

    def as_dict(self) -> dict[str, int]:
        return {"subscriptions": self.subscriptions, "consent_events": self.consent_events,
                "messages": self.messages, "replies": self.replies,
                "suppressions": self.suppressions, "idempotency_keys": self.idempotency_keys}


class Privacy:
    """Data-rights operations on one gateway's database."""

    def __init__(self, db: Database, ledger: Ledger, settings: Settings) -> None:
        self.db = db
        self.ledger = ledger
        self.settings = settings
        self.retention_days = settings.policy.retention_days

    def address(self, campaign: CampaignSettings, channel: str, raw: str) -> str:
        """The canonical address, read as everywhere else (national numbers in the
        campaign's region)."""
        return normalise_address(channel, raw, campaign.default_region)

    # -- subject access ---------------------------------------------------------------------

    async def export(self, campaign: CampaignSettings, channel: str, address: str,
                     actor: str) -> dict[str, Any]:
        """Everything this campaign holds about one address, as a person can read it.
        The access itself is audited (``subject.exported``), so the rights requests a
        campaign served can be counted."""
        slug = campaign.slug
        ahash = self.ledger.hash(channel, address)
        subject = audit.subject_for(channel, ahash)
        async with self.db.write() as conn:
            state = await self.ledger.state(conn, slug, channel, address)
            sub = (await conn.execute(
                select(subscriptions).where(subscriptions.c.campaign == slug,
                                            subscriptions.c.channel == channel,
                                            subscriptions.c.address == address))).first()
            tags = [] if sub is None else (await conn.execute(
                select(subscription_tags.c.tag, subscription_tags.c.created_at)
                .where(subscription_tags.c.subscription_id == sub.id)
                .order_by(subscription_tags.c.tag))).all()
            ce = consent_events
            consents = (await conn.execute(
                select(ce, consent_texts.c.text.label("consent_text"),
                       links.c.name.label("link_name"))
                .select_from(ce.outerjoin(consent_texts, and_(
                    consent_texts.c.campaign == ce.c.campaign,
                    consent_texts.c.version == ce.c.consent_text_version))
                    .outerjoin(links, links.c.id == ce.c.link_id))
                .where(ce.c.campaign == slug, ce.c.channel == channel,
                       ce.c.address_hash == ahash)
                .order_by(ce.c.at, ce.c.id))).all()
            m = messages
            sent = (await conn.execute(
                select(m.c.id, m.c.kind, m.c.status, m.c.reason, m.c.created_at, m.c.sent_at,
                       func.coalesce(m.c.text, broadcasts.c.text).label("text"),
                       func.coalesce(m.c.subject, broadcasts.c.subject).label("subject"),
                       m.c.broadcast_id)
                .select_from(m.outerjoin(broadcasts, broadcasts.c.id == m.c.broadcast_id))
                .where(m.c.campaign == slug, m.c.channel == channel,
                       m.c.address_hash == ahash)
                .order_by(m.c.created_at, m.c.id))).all()
            im = inbound_messages
            replies = (await conn.execute(
                select(im.c.at, im.c.text, im.c.intent, im.c.flag)
                .where(im.c.campaign == slug, im.c.channel == channel,
                       im.c.address_hash == ahash)
                .order_by(im.c.at, im.c.id))).all()
            supp = (await conn.execute(
                select(suppressions.c.reason, suppressions.c.at, suppressions.c.campaign)
                .where(suppressions.c.channel == channel,
                       suppressions.c.address_hash == ahash))).first()
            trail = (await conn.execute(
                select(audit_events.c.at, audit_events.c.actor,
                       audit_events.c.action)
                .where(audit_events.c.campaign == slug,
                       audit_events.c.subject == subject)
                .order_by(audit_events.c.seq))).all()
            await audit.append(conn, slug, actor, "subject.exported", subject,
                               {"consents": len(consents), "messages": len(sent),
                                "replies": len(replies)})
        status = Status.SUPPRESSED if state.suppressed else state.status
        return {
            "about": (f"Everything {campaign.name} holds about this {channel} address, "
                      f"produced on request under UK GDPR Article 15. Times are UTC."),
            "campaign": {"slug": slug, "name": campaign.name, "imprint": campaign.imprint},
            "channel": channel,
            "address": address,
            "generated_at": iso(time.time()),
            "status": status.value,
            "restricted": bool(sub.restricted) if sub is not None else False,
            "subscription": None if sub is None else {
                "status": sub.status, "restricted": bool(sub.restricted),
                "consented_at": iso(sub.consented_at), "updated_at": iso(sub.updated_at),
                "last_contact_at": iso(sub.last_contact_at),
                "pseudonymised_after": None if sub.status == "opted_out" else iso(
                    sub.last_contact_at + self.retention_days * DAY),
            },
            "tags": [{"tag": r.tag, "since": iso(r.created_at)} for r in tags],
            "consent_history": [{
                "at": iso(r.at), "event": r.event, "method": r.method, "source": r.source,
                "evidence": r.evidence, "consent_text": r.consent_text,
                "consent_text_version": r.consent_text_version, "recorded_by": r.actor,
                "link": None if r.link_id is None else {"id": r.link_id,
                                                        "name": r.link_name},
            } for r in consents],
            "messages": [{
                "id": r.id, "kind": r.kind, "status": r.status, "reason": r.reason,
                "queued_at": iso(r.created_at), "sent_at": iso(r.sent_at),
                "subject": r.subject, "text": r.text, "broadcast_id": r.broadcast_id,
            } for r in sent],
            "replies": [{"at": iso(r.at), "text": r.text, "intent": r.intent,
                         "flag": r.flag} for r in replies],
            "link_joins": [{"at": iso(r.at), "link_id": r.link_id, "link_name": r.link_name,
                            "event": r.event} for r in consents if r.link_id is not None],
            "suppression": None if supp is None else {
                "reason": supp.reason, "at": iso(supp.at),
                "recorded_in_this_campaign": supp.campaign == slug,
                "meaning": "no campaign on this gateway messages this address until its "
                           "owner opts in again themselves",
            },
            "audit_trail": [{"at": iso(r.at), "actor": r.actor, "action": r.action}
                            for r in trail],
            "retention": {
                "retention_days": self.retention_days,
                "rule": "an address with no contact from its owner for retention_days is "
                        "replaced by an artificial identifier; opt-outs are kept so that "
                        "they keep being honoured",
            },
        }

    # -- erasure ----------------------------------------------------------------------------

    async def erase(self, campaign: CampaignSettings, channel: str, address: str,
                    actor: str, *, scrub: bool = True) -> dict[str, Any]:
        """Erase one address from this campaign: every row that names it loses the address
        and every free text about the person; what stays (dates, statuses, methods, the
        keyed hash) cannot be read back to them without the gateway's secret. The hash goes
        on the suppression list (reason ``erased``), which blocks every campaign until the
        person opts in again themselves. ``scrub`` (SQLite) then rewrites the file so no
        freed page keeps an old copy."""
        slug = campaign.slug
        ahash = self.ledger.hash(channel, address)
        subject = audit.subject_for(channel, ahash)
        now = time.time()
        async with self.db.write() as conn:
            if self.db.is_sqlite:
                # Freed cells and pages are zeroed instead of left for reuse.
                await conn.exec_driver_sql("PRAGMA secure_delete=ON")
            m = messages
            theirs = and_(m.c.channel == channel, m.c.address_hash == ahash)
            here = and_(theirs, m.c.campaign == slug)
            # Nothing queued for them goes anywhere: here including replies (their address
            # is about to go), elsewhere as a suppression does.
            cancelled = await outbox.cancel_queued(
                conn, and_(theirs, or_(m.c.campaign == slug, m.c.kind != "reply")),
                "suppressed", replies=True, now=now)
            # Stored Idempotency-Key answers name the message id (see bot.messages).
            answer = (literal('{"id": ') + cast(m.c.id, String)
                      + literal(', "status": "queued"}'))
            keys = (await conn.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.campaign == slug,
                    idempotency_keys.c.body.in_(select(answer).where(here))))).rowcount or 0
            sent = (await conn.execute(
                update(m).where(here).values(address=None, text=None, subject=None,
                                             last_error=None))).rowcount or 0
            ce = consent_events
            # Consent records keep their skeleton (when, how, by whom, which text): the
            # campaign must still be able to show that what it sent had been agreed to.
            # The source and evidence texts may name or locate the person: they go.
            consents = (await conn.execute(
                update(ce).where(ce.c.campaign == slug, ce.c.channel == channel,
                                 ce.c.address_hash == ahash)
                .values(address=None, source=None, evidence=None))).rowcount or 0
            im = inbound_messages
            replies = (await conn.execute(
                update(im).where(im.c.campaign == slug, im.c.channel == channel,
                                 im.c.address_hash == ahash)
                .values(from_address=None, text=None, resolution_note=None))).rowcount or 0
            await conn.execute(delete(subscription_tags).where(
                subscription_tags.c.subscription_id.in_(
                    select(subscriptions.c.id).where(subscriptions.c.campaign == slug,
                                                     subscriptions.c.channel == channel,
                                                     subscriptions.c.address_hash == ahash))))
            subs = (await conn.execute(
                delete(subscriptions).where(subscriptions.c.campaign == slug,
                                            subscriptions.c.channel == channel,
                                            subscriptions.c.address_hash == ahash))
                    ).rowcount or 0
            ins = dialect_insert(conn, suppressions).values(
                channel=channel, address_hash=ahash, address=None, reason="erased",
                campaign=slug, actor=actor, at=now)
            await conn.execute(ins.on_conflict_do_update(
                index_elements=["channel", "address_hash"],
                set_={"address": None, "reason": "erased", "campaign": slug, "actor": actor,
                      "at": now}))
            removed = {"subscriptions": subs, "consent_events": consents, "messages": sent,
                       "replies": replies, "idempotency_keys": keys}
            await audit.append(conn, slug, actor, "subject.erased", subject,
                               {**removed, "cancelled": cancelled}, at=now)
        scrubbed = False
        if scrub:
            try:
                scrubbed = await self.scrub()
            except Exception:  # noqa: BLE001 - the erasure itself has committed
                _log.warning("privacy.scrub_failed", exc_info=True)
        _log.info("subject.erased", campaign=slug, subject=subject, scrubbed=scrubbed,
                  **removed)
        return {"channel": channel, "subject": subject, "erased": True,
                "suppressed": True, "cancelled": cancelled, "removed": removed,
                "file_scrubbed": scrubbed if self.db.is_sqlite else None}

    async def scrub(self) -> bool:
        """SQLite keeps old copies of rows in the write-ahead log and in freed space of the
        file until they are overwritten. Fold the log into the file, rebuild the file
        (VACUUM), and empty the log. Returns False when another connection held an old
        snapshot so the log could not be emptied."""
        if not self.db.is_sqlite:
            return True
        async with self.db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            rows: list[Any] = []
            for sql in ("PRAGMA wal_checkpoint(TRUNCATE)", "VACUUM",
                        "PRAGMA wal_checkpoint(TRUNCATE)"):
                async with driver.execute(sql) as cursor:
                    rows = list(await cursor.fetchall())
        return not rows or int(rows[0][0]) == 0

    # -- rectification and restriction ------------------------------------------------------

    async def rectify(self, campaign: CampaignSettings, channel: str, address: str,
                      new_address: str, actor: str) -> dict[str, Any]:
        """Move everything recorded under ``address`` to the corrected ``new_address``.
        409 ``address_in_use`` if the campaign already has the new address."""
        slug = campaign.slug
        old_hash = self.ledger.hash(channel, address)
        new_hash = self.ledger.hash(channel, new_address)
        async with self.db.write() as conn:
            await self._subscription(conn, slug, channel, address)
            if new_address == address:
                return {"channel": channel, "address": address, "changed": False}
            taken = (await conn.execute(
                select(subscriptions.c.id).where(subscriptions.c.campaign == slug,
                                                 subscriptions.c.channel == channel,
                                                 subscriptions.c.address == new_address))
                     ).first()
            if taken is not None:
                raise Conflict("address_in_use", "this campaign already holds the corrected "
                                                 "address; erase or keep one of the two")
            await conn.execute(
                update(subscriptions).where(subscriptions.c.campaign == slug,
                                            subscriptions.c.channel == channel,
                                            subscriptions.c.address == address)
                .values(address=new_address, address_hash=new_hash, updated_at=time.time()))
            moved = {}
            for name, table, column in (("consent_events", consent_events, "address"),
                                        ("messages", messages, "address"),
                                        ("replies", inbound_messages, "from_address")):
                col = table.c[column]
                result = await conn.execute(
                    update(table).where(table.c.campaign == slug, table.c.channel == channel,
                                        table.c.address_hash == old_hash)
                    .values({column: case((col.is_(None), None), else_=new_address),
                             "address_hash": new_hash}))
                moved[name] = result.rowcount or 0
            await audit.append(conn, slug, actor, "subject.rectified",
                               audit.subject_for(channel, old_hash),
                               {"to": audit.subject_for(channel, new_hash), **moved})
        return {"channel": channel, "address": new_address, "changed": True, "moved": moved}

    async def restrict(self, campaign: CampaignSettings, channel: str, address: str,
                       restricted: bool, actor: str) -> dict[str, Any]:
        """Restriction of processing: the data is kept, nothing is sent (the gate and the
        broadcast audience treat a restricted subscriber as not sendable)."""
        slug = campaign.slug
        async with self.db.write() as conn:
            await self._subscription(conn, slug, channel, address)
            await conn.execute(
                update(subscriptions).where(subscriptions.c.campaign == slug,
                                            subscriptions.c.channel == channel,
                                            subscriptions.c.address == address)
                .values(restricted=restricted, updated_at=time.time()))
            await audit.append(conn, slug, actor,
                               "subject.restricted" if restricted else "subject.unrestricted",
                               audit.subject_for(channel, self.ledger.hash(channel, address)))
        return {"channel": channel, "address": address, "restricted": restricted}

    async def _subscription(self, conn: AsyncConnection, campaign: str, channel: str,
                            address: str) -> Any:
        row = (await conn.execute(
            select(subscriptions.c.id).where(subscriptions.c.campaign == campaign,
                                             subscriptions.c.channel == channel,
                                             subscriptions.c.address == address))).first()
        if row is None:
            raise NotFound("subject_not_found",
                           "this campaign holds no subscription for that address")
        return row

    # -- the suppression list as CSV --------------------------------------------------------

    async def suppressions_csv(self, campaign: str) -> str:
        """``channel,address,reason,at``: this campaign's opt-outs, and the every-campaign
        suppressions recorded here or covering its subscribers. An entry whose address is
        gone (erased, pseudonymised) is written ``hmac-sha256:<hash>``, which an import
        into a gateway with the same secret key turns back into the same block."""
        s, ce, sp = subscriptions, consent_events, suppressions
        latest = (select(ce.c.id).where(ce.c.campaign == s.c.campaign,
                                        ce.c.channel == s.c.channel,
                                        ce.c.address_hash == s.c.address_hash,
                                        ce.c.event == "opted_out")
                  .order_by(ce.c.at.desc(), ce.c.id.desc()).limit(1).scalar_subquery())
        last = ce.alias("last_opt_out")
        opt_outs = (
            select(s.c.channel, s.c.address,
                   func.coalesce(last.c.source, literal("opted out")).label("reason"),
                   func.coalesce(last.c.at, s.c.updated_at).label("at"))
            .select_from(s.outerjoin(last, last.c.id == latest))
            .where(s.c.campaign == campaign, s.c.status == "opted_out")
        )
        blocks = (
            select(sp.c.channel,
                   func.coalesce(sp.c.address, literal(HASH_PREFIX) + sp.c.address_hash)
                   .label("address"), sp.c.reason, sp.c.at)
            .where(or_(sp.c.campaign == campaign,
                       exists().where(s.c.campaign == campaign, s.c.channel == sp.c.channel,
                                      s.c.address_hash == sp.c.address_hash)))
        )
        both = union_all(opt_outs, blocks).subquery()
        async with self.db.read() as conn:
            rows = await conn.execute(select(both).order_by(both.c.at, both.c.channel,
                                                            both.c.address))
            out = io.StringIO()
            # RFC 4180 line ends, so that a CR inside a cell is quoted like a line feed
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(["channel", "address", "reason", "at"])
            writer.writerows((spreadsheet_safe(r.channel), spreadsheet_safe(r.address),
                              spreadsheet_safe(r.reason or ""), iso(r.at)) for r in rows)
        return out.getvalue()

    # -- retention --------------------------------------------------------------------------

    async def run_retention(self, now: float | None = None) -> list[RetentionResult]:
        """Pseudonymise everyone out of contact for ``retention_days``, campaign by
        campaign, each in one transaction, audited where anything changed.

        "Contact" is the person's own doing: a consent, an opt-in or opt-out, a reply. A
        stale subscriber's address becomes ``anon-<12 hex>`` and the row is restricted (it
        can never be sent to); the address and free texts of their consent records,
        messages and replies are removed; their keyed hash stays, so counts, the report
        and suppressions hold. An opt-out keeps its address on the subscription row: it is
        this campaign's own do-not-contact list and is looked up by address."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_days * DAY
        results = []
        known = [c.slug for c in self.settings.campaigns]
        for slug in known:
            results.append(await self._retain_campaign(slug, cutoff, now))
        # Suppressions recorded outside any configured campaign still lose their address.
        async with self.db.write(bulk=True) as conn:
            sp = suppressions
            await conn.execute(
                update(sp).where(sp.c.address.is_not(None), sp.c.at < cutoff,
                                 or_(sp.c.campaign.is_(None), sp.c.campaign.not_in(known)))
                .values(address=None))
        return results

    async def _retain_campaign(self, slug: str, cutoff: float, now: float) -> RetentionResult:
        s = subscriptions
        stale_sub = and_(s.c.campaign == slug, s.c.last_contact_at < cutoff,
                         s.c.status != "opted_out", not_(is_pseudonym(s.c.address)))

        def out_of_contact(t: Any) -> Any:
            """No live (non-pseudonymised) subscription of this person in this campaign
            with recent contact, and no recent reply from them."""
            fresh = exists().where(s.c.campaign == t.c.campaign, s.c.channel == t.c.channel,
                                   s.c.address_hash == t.c.address_hash,
                                   s.c.last_contact_at >= cutoff,
                                   not_(is_pseudonym(s.c.address)))
            im = inbound_messages.alias("recent")
            replied = exists().where(im.c.campaign == t.c.campaign,
                                     im.c.channel == t.c.channel,
                                     im.c.address_hash == t.c.address_hash,
                                     im.c.at >= cutoff)
            return and_(t.c.campaign == slug, not_(fresh), not_(replied))

        async with self.db.write(bulk=True) as conn:
            m = messages
            # Campaign messages still waiting for a subscriber about to be pseudonymised
            # will never be sent: cancel them while the address still joins.
            await outbox.cancel_queued(
                conn, exists().where(stale_sub, s.c.channel == m.c.channel,
                                     s.c.address == m.c.address, s.c.campaign == m.c.campaign),
                "no_consent", replies=True, now=now)
            # Their tags say something about them (a ward, a group): they go too.
            await conn.execute(delete(subscription_tags).where(
                subscription_tags.c.subscription_id.in_(select(s.c.id).where(stale_sub))))
            subs = (await conn.execute(
                update(s).where(stale_sub)
                .values(address=_pseudonym_for(conn, s.c.id), restricted=True,
                        tag_bits=0, updated_at=now))).rowcount or 0
            ce = consent_events
            consents = (await conn.execute(
                update(ce).where(out_of_contact(ce),
                                 or_(ce.c.address.is_not(None), ce.c.source.is_not(None),
                                     ce.c.evidence.is_not(None)))
                .values(address=None, source=None, evidence=None))).rowcount or 0
            group_post = and_(m.c.channel == "telegram", m.c.address.like("-%"))
            sent = (await conn.execute(
                update(m).where(out_of_contact(m), m.c.address.is_not(None),
                                m.c.status.not_in(ACTIVE_STATUSES), not_(group_post))
                .values(address=None, text=None, subject=None, last_error=None))
                    ).rowcount or 0
            im = inbound_messages
            replies = (await conn.execute(
                update(im).where(out_of_contact(im), im.c.from_address.is_not(None),
                                 im.c.at < cutoff)
                .values(from_address=None, text=None, resolution_note=None))).rowcount or 0
            sp = suppressions
            supp = (await conn.execute(
                update(sp).where(sp.c.campaign == slug, sp.c.address.is_not(None),
                                 sp.c.at < cutoff)
                .values(address=None))).rowcount or 0
            keys = (await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.campaign == slug,
                                               idempotency_keys.c.created_at < cutoff))
                    ).rowcount or 0
            result = RetentionResult(slug, subs, consents, sent, replies, supp, keys)
            if result.changed:
                await audit.append(conn, slug, "retention", "retention.pseudonymised",
                                   f"campaign#{slug}",
                                   {**result.as_dict(), "retention_days": self.retention_days,
                                    "cutoff": iso(cutoff)}, at=now)
        if result.changed:
            _log.info("retention.pseudonymised", campaign=slug, **result.as_dict())
        return result


async def run_daily_retention(privacy: Privacy, stop: asyncio.Event,
                              every: float = DAY) -> None:
    """Run retention at start-up and then once a day until ``stop`` is set. A failed run
    is logged and tried again the next day; it never stops the server."""
    while not stop.is_set():
        try:
            await privacy.run_retention()
        except Exception:  # noqa: BLE001 - keep serving; the next run tries again
            _log.exception("retention.failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except TimeoutError:
            pass

