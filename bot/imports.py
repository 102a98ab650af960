"""CSV imports: consents with their evidence, and opt-outs brought from another platform.

Good rows are kept and bad rows listed with the code ``POST /consents`` would give. Rows are
checked and written in chunks, set-based, each chunk one transaction, so a row is written
whole or not at all, and six-figure files take seconds. An import is audited once, under the
operator's name, with the file's SHA-256.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.base import CHANNELS
from bot import audit, outbox
from bot.addresses import normalise_address
from bot.config import CampaignSettings
from bot.consent import CONSENT_METHODS, source_is_denied
from bot.errors import GatewayError, InvalidInput
from bot.ledger import Ledger
from bot.versions import consent_text_version
from storage.db import Database
from storage.models import consent_events, subscriptions, suppressions
from storage.sql import dialect_insert

__all__ = ["ImportReport", "import_consents", "import_opt_outs"]

CHUNK = 2000
CONSENT_HEADER = ["channel", "address", "method", "source", "evidence"]
OPT_OUT_HEADER = ["channel", "address", "reason"]


@dataclass
class ImportReport:
    imported: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, line: int, code: str, detail: str) -> None:
        self.rejected.append({"line": line, "code": code, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "rejected": self.rejected}


def _rows(data: bytes, header: list[str]) -> tuple[str, list[tuple[int, dict[str, str]]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("invalid_csv", "the file is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if fields[: len(header)] != header:
        raise InvalidInput("invalid_csv", f"the header must be {','.join(header)}")
    reader.fieldnames = fields
    digest = hashlib.sha256(data).hexdigest()
    try:
        rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k})
                for row in reader]
    except csv.Error as exc:
        raise InvalidInput("invalid_csv", f"the file is not valid CSV: {exc}") from None
    return digest, rows


async def _states(conn: AsyncConnection, ledger: Ledger, campaign: str,
                  keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """``(channel, address)`` -> ``opted_out`` / ``suppressed`` for those that are."""
    out: dict[tuple[str, str], str] = {}
    by_channel: dict[str, list[str]] = {}
    for ch, addr in keys:
        by_channel.setdefault(ch, []).append(addr)
    for ch, addrs in by_channel.items():
        consented: dict[str, float | None] = {}
        rows = await conn.execute(
            select(subscriptions.c.address, subscriptions.c.status,
                   subscriptions.c.consented_at)
            .where(subscriptions.c.campaign == campaign, subscriptions.c.channel == ch,
                   subscriptions.c.address.in_(addrs)))
        for r in rows:
            consented[r.address] = r.consented_at
            if r.status in ("opted_out", "suppressed"):
                out[(ch, r.address)] = r.status
        hashes = {ledger.hash(ch, a): a for a in addrs}
        rows = await conn.execute(
            select(suppressions.c.address_hash, suppressions.c.at)
            .where(suppressions.c.channel == ch, suppressions.c.address_hash.in_(list(hashes))))
        for r in rows:
            addr = hashes[r.address_hash]
            c_at = consented.get(addr)
            if c_at is None or r.at >= c_at:
                out[(ch, addr)] = "suppressed"
    return out


async def import_consents(db: Database, ledger: Ledger, campaign: CampaignSettings,
                          actor: str, data: bytes) -> ImportReport:
    digest, rows = _rows(data, CONSENT_HEADER)
    report = ImportReport()
    version = consent_text_version(campaign.consent_text)
    enabled = set(campaign.channels())
    seen: set[tuple[str, str]] = set()
    good: list[tuple[int, str, str, dict[str, str]]] = []
    for line, row in rows:
        channel = row.get("channel", "")
        if channel not in CHANNELS:
            report.reject(line, "invalid_channel", "channel must be sms, email or telegram")
            continue
        if channel not in enabled:
            report.reject(line, "channel_disabled", f"this campaign has no {channel} channel")
            continue
        try:
            address = normalise_address(channel, row.get("address", ""),
                                        campaign.default_region)
        except GatewayError as exc:
            report.reject(line, exc.code, exc.detail)
            continue
        if row.get("method", "") not in CONSENT_METHODS:
            report.reject(line, "invalid_method", "method must be one of "
                          + ", ".join(sorted(CONSENT_METHODS)))
            continue
        if not row.get("source") or not row.get("evidence"):
            report.reject(line, "missing_evidence", "source and evidence must not be empty")
            continue
        if source_is_denied(row["source"], ledger.denied_sources):
            report.reject(line, "denied_source", "consent from this source is refused")
            continue
        if (channel, address) in seen:
            report.reject(line, "duplicate", "the same address appears earlier in the file")
            continue
        seen.add((channel, address))
        good.append((line, channel, address, row))
    for start in range(0, len(good), CHUNK):
        chunk = good[start:start + CHUNK]
        async with db.write() as conn:
            blocked = await _states(conn, ledger, campaign.slug,
                                    [(ch, a) for _, ch, a, _ in chunk])
            now = time.time()
            subs: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for line, channel, address, row in chunk:
                if (channel, address) in blocked:
                    code = blocked[(channel, address)]
                    report.reject(line, code, "only the recipient can opt back in")
                    continue
                ahash = ledger.hash(channel, address)
                subs.append(dict(campaign=campaign.slug, channel=channel, address=address,
                                 address_hash=ahash, status="subscribed", restricted=False,
                                 consented_at=now, updated_at=now, last_contact_at=now))
                events.append(dict(campaign=campaign.slug, channel=channel, address=address,
                                   address_hash=ahash, at=now, event="subscribed",
                                   method=row["method"], source=row["source"],
                                   evidence=row["evidence"], consent_text_version=version,
                                   actor=actor, link_id=None))
            if subs:
                await conn.execute(_bulk(conn, subs), subs)
                await conn.execute(consent_events.insert(), events)
                report.imported += len(subs)
    report.rejected.sort(key=lambda r: r["line"])
    async with db.write() as conn:
        await audit.append(conn, campaign.slug, actor, "consents.imported", "import",
                           {"sha256": digest, "imported": report.imported,
                            "rejected": len(report.rejected)})
    return report


def _bulk(conn: AsyncConnection, rows: list[dict[str, Any]]) -> Any:
    """An executemany upsert of subscription rows to ``subscribed``."""
    ins = dialect_insert(conn, subscriptions)
    return ins.on_conflict_do_update(
        index_elements=["campaign", "channel", "address"],
        set_={"status": ins.excluded.status, "consented_at": ins.excluded.consented_at,
              "updated_at": ins.excluded.updated_at, "restricted": False})


async def import_opt_outs(db: Database, ledger: Ledger, campaign: CampaignSettings,
                          actor: str, data: bytes) -> ImportReport:
    """Opt-outs from another platform: each becomes an opt-out of this campaign at once,
    cancelling anything queued for it. Never refused for the state an address is in."""
    digest, rows = _rows(data, OPT_OUT_HEADER)
    report = ImportReport()
    good: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for line, row in rows:
        channel = row.get("channel", "")
        if channel not in CHANNELS:
            report.reject(line, "invalid_channel", "channel must be sms, email or telegram")
            continue
        try:
            address = normalise_address(channel, row.get("address", ""),
                                        campaign.default_region)
        except GatewayError as exc:
            report.reject(line, exc.code, exc.detail)
            continue
        if (channel, address) in seen:
            continue
        seen.add((channel, address))
        good.append((channel, address, row.get("reason") or "imported opt-out"))
    for start in range(0, len(good), CHUNK):
        chunk = good[start:start + CHUNK]
        async with db.write() as conn:
            now = time.time()
            subs: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for channel, address, reason in chunk:
                ahash = ledger.hash(channel, address)
                subs.append(dict(campaign=campaign.slug, channel=channel, address=address,
                                 address_hash=ahash, status="opted_out", restricted=False,
                                 consented_at=None, updated_at=now, last_contact_at=now))
                events.append(dict(campaign=campaign.slug, channel=channel, address=address,
                                   address_hash=ahash, at=now, event="opted_out",
                                   method="import", source=reason, evidence=None,
                                   consent_text_version=None, actor=actor, link_id=None))
            ins = dialect_insert(conn, subscriptions)
            await conn.execute(ins.on_conflict_do_update(
                index_elements=["campaign", "channel", "address"],
                set_={"status": "opted_out", "updated_at": now}), subs)
            await conn.execute(consent_events.insert(), events)
            for channel, address, _ in chunk:
                await outbox.cancel_queued_for(conn, campaign.slug, channel,
                                               ledger.hash(channel, address), "opted_out")
            report.imported += len(subs)
    async with db.write() as conn:
        await audit.append(conn, campaign.slug, actor, "opt_outs.imported", "import",
                           {"sha256": digest, "imported": report.imported,
                            "rejected": len(report.rejected)})
    return report
