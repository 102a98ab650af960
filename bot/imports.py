"""CSV imports: consents with their evidence (and, in an optional ``tags`` column, tags
separated by ``;``), and opt-outs brought from another platform.

Good rows are kept and bad rows listed with the code ``POST /consents`` would give. Rows are
checked and written in chunks, set-based, each chunk one transaction, so a row is written
whole or not at all, and six-figure files take seconds. An import is audited once, under the
operator's name, with the file's SHA-256.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import multiprocessing
import os
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.adapters.base import CHANNELS, has_unstorable_text
from consentgate.bot import audit, outbox
from consentgate.bot.addresses import normalise_address
from consentgate.bot.config import CampaignSettings
from consentgate.bot.consent import CONSENT_METHODS, method_allowed, source_is_denied
from consentgate.bot.csvcells import from_spreadsheet_safe
from consentgate.bot.errors import GatewayError, InvalidInput
from consentgate.bot.ledger import Ledger
from consentgate.bot.tags import add_tags, tag_names
from consentgate.bot.versions import consent_text_version
from consentgate.storage.db import Database
from consentgate.storage.models import consent_events, messages, subscriptions, suppressions
from consentgate.storage.sql import dialect_insert

__all__ = ["HASH_PREFIX", "ImportReport", "import_consents", "import_opt_outs"]

#: A consent import this large changes the subscriptions table enough that PostgreSQL's
#: planner, until its statistics are refreshed, may look people up through the audience index
#: instead of their address: the gate's per-batch read then grows with the list.
ANALYZE_AFTER = 1000
CHUNK = 5000
# Reading phone numbers (libphonenumber) costs ~0.1 ms a row, more than writing them: a
# large file is read in worker processes, off the event loop that answers STOP webhooks.
PARALLEL_FROM = 5000
CONSENT_HEADER = ["channel", "address", "method", "source", "evidence"]
OPT_OUT_HEADER = ["channel", "address", "reason"]
#: How an exported suppression list writes an erased address: only its keyed hash.
HASH_PREFIX = "hmac-sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class ImportReport:
    imported: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, line: int, code: str, detail: str) -> None:
        self.rejected.append({"line": line, "code": code, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "rejected": self.rejected}


def _unstorable(row: dict[str, str]) -> bool:
    """A row with a NUL in a field: no database stores it (PostgreSQL refuses NUL in text),
    and nothing a person wrote by hand holds one."""
    return any(has_unstorable_text(v) for v in row.values())


_UNSTORABLE_DETAIL = "a field holds a NUL character"


def _rows(data: bytes, header: list[str]) -> tuple[str, list[tuple[int, dict[str, str]]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("invalid_csv", "the file is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    except csv.Error as exc:  # the header line is already too long a field
        raise InvalidInput("invalid_csv", f"the file is not valid CSV: {exc}") from None
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


def _normalise_block(block: list[tuple[str, str]],
                     region: str) -> list[tuple[str | None, str, str]]:
    """``(channel, raw)`` -> ``(address, "", "")`` or ``(None, code, detail)``."""
    out: list[tuple[str | None, str, str]] = []
    for channel, raw in block:
        try:
            out.append((normalise_address(channel, raw, region), "", ""))
        except GatewayError as exc:
            out.append((None, exc.code, exc.detail))
    return out


async def _normalised_blocks(
        blocks: list[list[tuple[str, str]]],
        region: str) -> AsyncIterator[list[tuple[str | None, str, str]]]:
    """Each block of ``(channel, raw address)`` read as :func:`normalise_address` would, in
    order. With many rows the blocks are read in worker processes, so later blocks are
    read while the caller writes the earlier ones."""
    if sum(len(b) for b in blocks) < PARALLEL_FROM:
        for block in blocks:
            yield await asyncio.to_thread(_normalise_block, block, region)
        return
    loop = asyncio.get_running_loop()
    # forkserver: the workers are not forked from this (threaded) process.
    with ProcessPoolExecutor(max(1, os.cpu_count() or 1),
                             mp_context=multiprocessing.get_context("forkserver")) as pool:
        pending = [loop.run_in_executor(pool, _normalise_block, b, region) for b in blocks]
        try:
            for future in pending:
                yield await future
        finally:
            for future in pending:
                future.cancel()


async def _normalise_all(pairs: list[tuple[str, str]],
                         region: str) -> list[tuple[str | None, str, str]]:
    """Every ``(channel, raw address)`` read as :func:`normalise_address` would, in order."""
    blocks = [pairs[i:i + CHUNK] for i in range(0, len(pairs), CHUNK)]
    return [r async for block in _normalised_blocks(blocks, region) for r in block]


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
        pending: list[str] = []
        for r in rows:
            consented[r.address] = r.consented_at
            if r.status in ("opted_out", "suppressed"):
                out[(ch, r.address)] = r.status
            elif r.status == "pending":
                pending.append(r.address)
        if pending:
            objected = await ledger.objected_pending(
                conn, campaign, ch, [ledger.hash(ch, a) for a in pending])
            for a in pending:
                if ledger.hash(ch, a) in objected:
                    out[(ch, a)] = "opted_out"
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
    versions = {ch: consent_text_version(campaign.consent_text_for(ch)) for ch in CHANNELS}
    enabled = set(campaign.channels())
    seen: set[tuple[str, str]] = set()
    good: list[tuple[int, str, str, dict[str, str]]] = []
    row_tags: dict[int, tuple[str, ...]] = {}  # line -> the tags of its optional column
    read = await _normalise_all([(r.get("channel", ""), r.get("address", "")) for _, r in rows
                                 if r.get("channel", "") in enabled], campaign.default_region)
    next_read = iter(read)
    for line, row in rows:
        channel = row.get("channel", "")
        if channel not in CHANNELS:
            report.reject(line, "invalid_channel", "channel must be sms, email or telegram")
            continue
        if channel not in enabled:
            report.reject(line, "channel_disabled", f"this campaign has no {channel} channel")
            continue
        address, code, detail = next(next_read)
        if address is None:
            report.reject(line, code, detail)
            continue
        if _unstorable(row):
            report.reject(line, "invalid_text", _UNSTORABLE_DETAIL)
            continue
        if row.get("method", "") not in CONSENT_METHODS:
            report.reject(line, "invalid_method", "method must be one of "
                          + ", ".join(sorted(CONSENT_METHODS)))
            continue
        if not method_allowed(channel, row["method"]):
            report.reject(line, "method_not_allowed_for_channel",
                          "a Telegram user subscribes only themselves (/start and the yes "
                          "button): the method must be telegram_start")
            continue
        if not row.get("source") or not row.get("evidence"):
            report.reject(line, "missing_evidence", "source and evidence must not be empty")
            continue
        if source_is_denied(row["source"], ledger.denied_sources):
            report.reject(line, "denied_source", "consent from this source is refused")
            continue
        try:
            row_tags[line] = tag_names(row.get("tags") or None)
        except GatewayError as exc:
            report.reject(line, exc.code, exc.detail)
            continue
        if (channel, address) in seen:
            report.reject(line, "duplicate", "the same address appears earlier in the file")
            continue
        seen.add((channel, address))
        good.append((line, channel, address, row))
    for start in range(0, len(good), CHUNK):
        chunk = good[start:start + CHUNK]
        async with db.write(bulk=True) as conn:
            blocked = await _states(conn, ledger, campaign.slug,
                                    [(ch, a) for _, ch, a, _ in chunk])
            now = time.time()
            subs: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            tagged: dict[tuple[str, str], tuple[str, ...]] = {}
            for line, channel, address, row in chunk:
                if (channel, address) in blocked:
                    code = blocked[(channel, address)]
                    report.reject(line, code, "only the recipient can opt back in")
                    continue
                if row_tags.get(line):
                    tagged[(channel, address)] = row_tags[line]
                ahash = ledger.hash(channel, address)
                subs.append(dict(campaign=campaign.slug, channel=channel, address=address,
                                 address_hash=ahash, status="subscribed", restricted=False,
                                 consented_at=now, updated_at=now, last_contact_at=now))
                events.append(dict(campaign=campaign.slug, channel=channel, address=address,
                                   address_hash=ahash, at=now, event="subscribed",
                                   method=row["method"], source=row["source"],
                                   evidence=row["evidence"], consent_text_version=versions[channel],
                                   actor=actor, link_id=None))
            if subs:
                await _execute_many(conn, _bulk(conn, subs), subs)
                await _execute_many(conn, consent_events.insert(), events)
                if tagged:
                    await _tag_imported(conn, campaign.slug, tagged, now)
                report.imported += len(subs)
    report.rejected.sort(key=lambda r: r["line"])
    async with db.write() as conn:
        await audit.append(conn, campaign.slug, actor, "consents.imported", "import",
                           {"sha256": digest, "imported": report.imported,
                            "rejected": len(report.rejected)})
    if report.imported >= ANALYZE_AFTER:
        await db.refresh_statistics("subscriptions")
    return report


async def _tag_imported(conn: AsyncConnection, campaign: str,
                        tagged: dict[tuple[str, str], tuple[str, ...]], now: float) -> None:
    """Give the imported subscriptions the tags of their rows (in the chunk's transaction;
    tags they had already stay)."""
    for channel in {ch for ch, _ in tagged}:
        wanted = {a: t for (ch, a), t in tagged.items() if ch == channel}
        rows = await conn.execute(
            select(subscriptions.c.id, subscriptions.c.address)
            .where(subscriptions.c.campaign == campaign, subscriptions.c.channel == channel,
                   subscriptions.c.address.in_(list(wanted))))
        by_tags: dict[tuple[str, ...], list[int]] = {}
        for r in rows:
            by_tags.setdefault(wanted[r.address], []).append(int(r.id))
        for tags, ids in by_tags.items():
            await add_tags(conn, ids, campaign, channel, tags, now)


async def _execute_many(conn: AsyncConnection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """``executemany`` at the driver, the statement compiled once for this dialect.
    SQLAlchemy's per-row parameter handling costs more than the database's insert here
    (a third of a 100,000-row import); the values are plain str / float / bool / None."""
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(rows[0]))
    order = compiled.positiontup
    assert order is not None, "a positional paramstyle (qmark, numeric_dollar)"
    await conn.exec_driver_sql(str(compiled), [tuple(r[k] for k in order) for r in rows])


def _bulk(conn: AsyncConnection, rows: list[dict[str, Any]]) -> Any:
    """An executemany upsert of subscription rows to ``subscribed``."""
    ins = dialect_insert(conn, subscriptions)
    return ins.on_conflict_do_update(
        index_elements=["campaign", "channel", "address"],
        # ``restricted`` is left alone: a restriction the person asked for is theirs to lift.
        set_={"status": ins.excluded.status, "consented_at": ins.excluded.consented_at,
              "updated_at": ins.excluded.updated_at,
              "last_contact_at": ins.excluded.last_contact_at})


async def import_opt_outs(db: Database, ledger: Ledger, campaign: CampaignSettings,
                          actor: str, data: bytes) -> ImportReport:
    """Opt-outs from another platform: each becomes an opt-out of this campaign at once,
    cancelling anything queued for it. Never refused for the state an address is in."""
    digest, rows = _rows(data, OPT_OUT_HEADER)
    report = ImportReport()
    hashed: dict[tuple[str, str], str] = {}
    plain: list[tuple[int, str, str, str]] = []  # line, channel, address as written, reason
    for line, row in rows:
        channel = row.get("channel", "")
        if channel not in CHANNELS:
            report.reject(line, "invalid_channel", "channel must be sms, email or telegram")
        elif _unstorable(row):
            report.reject(line, "invalid_text", _UNSTORABLE_DETAIL)
        elif row.get("address", "").startswith(HASH_PREFIX):
            # An erased entry of an exported list: only the keyed hash travels.
            digest_hex = row["address"][len(HASH_PREFIX):].lower()
            if not _HEX64.fullmatch(digest_hex):
                report.reject(line, "invalid_address", f"{HASH_PREFIX} needs 64 hex digits")
            else:
                hashed[(channel, digest_hex)] = row.get("reason") or "erased"
        else:
            plain.append((line, channel, from_spreadsheet_safe(row.get("address", "")),
                          from_spreadsheet_safe(row.get("reason") or "imported opt-out")))
    if hashed:
        async with db.write() as conn:
            now = time.time()
            await conn.execute(
                dialect_insert(conn, suppressions).on_conflict_do_nothing(
                    index_elements=["channel", "address_hash"]),
                [dict(channel=ch, address_hash=h, address=None, reason=reason,
                      campaign=campaign.slug, actor=actor, at=now)
                 for (ch, h), reason in hashed.items()])
            await outbox.cancel_queued(
                conn, tuple_(messages.c.channel, messages.c.address_hash).in_(list(hashed)),
                "suppressed", now=now)
            report.imported += len(hashed)
    seen: set[tuple[str, str]] = set()
    blocks = [plain[i:i + CHUNK] for i in range(0, len(plain), CHUNK)]
    read_blocks = _normalised_blocks([[(ch, raw) for _, ch, raw, _ in b] for b in blocks],
                                     campaign.default_region)
    index = 0
    async for read in read_blocks:
        chunk: list[tuple[str, str, str]] = []
        for (line, channel, _, reason), (address, code, detail) in zip(
                blocks[index], read, strict=True):
            if address is None:
                report.reject(line, code, detail)
            elif (channel, address) not in seen:
                seen.add((channel, address))
                chunk.append((channel, address, reason))
        index += 1
        if chunk:
            async with db.write() as conn:
                report.imported += await _write_opt_outs(conn, ledger, campaign.slug, actor,
                                                         chunk)
    report.rejected.sort(key=lambda r: r["line"])
    async with db.write() as conn:
        await audit.append(conn, campaign.slug, actor, "opt_outs.imported", "import",
                           {"sha256": digest, "imported": report.imported,
                            "rejected": len(report.rejected)})
    return report


async def _write_opt_outs(conn: AsyncConnection, ledger: Ledger, campaign: str, actor: str,
                          chunk: list[tuple[str, str, str]]) -> int:
    """One chunk of opt-outs, set-based, in the caller's transaction: how many applied."""
    now = time.time()
    subs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    # An address erased (or pseudonymised) here is already blocked everywhere by its hash
    # alone: an imported list must not bring the address back.
    hashes = [ledger.hash(ch, a) for ch, a, _ in chunk]
    hash_only = {(r.channel, r.address_hash) for r in await conn.execute(
        select(suppressions.c.channel, suppressions.c.address_hash)
        .where(suppressions.c.address.is_(None),
               tuple_(suppressions.c.channel, suppressions.c.address_hash).in_(
                   [(ch, h) for (ch, _, _), h in zip(chunk, hashes, strict=True)])))}
    for (channel, address, reason), ahash in zip(chunk, hashes, strict=True):
        if (channel, ahash) in hash_only:
            continue
        subs.append(dict(campaign=campaign, channel=channel, address=address,
                         address_hash=ahash, status="opted_out", restricted=False,
                         consented_at=None, updated_at=now, last_contact_at=now))
        events.append(dict(campaign=campaign, channel=channel, address=address,
                           address_hash=ahash, at=now, event="opted_out", method="import",
                           source=reason, evidence=None, consent_text_version=None,
                           actor=actor, link_id=None))
    if subs:
        ins = dialect_insert(conn, subscriptions)
        await _execute_many(conn, ins.on_conflict_do_update(
            index_elements=["campaign", "channel", "address"],
            set_={"status": ins.excluded.status, "updated_at": ins.excluded.updated_at}), subs)
        await _execute_many(conn, consent_events.insert(), events)
        # One set-based cancel per channel (the rows outbox.cancel_queued_for would cancel
        # one address at a time).
        for ch in {s["channel"] for s in subs}:
            await outbox.cancel_queued(
                conn, and_(messages.c.campaign == campaign, messages.c.channel == ch,
                           messages.c.address_hash.in_(
                               [s["address_hash"] for s in subs if s["channel"] == ch])),
                "opted_out", now=now)
    return len(chunk)
