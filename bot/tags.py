"""Tags: the words a campaign puts on its subscribers (``volunteer``, ``ward-north``,
``freshers-fair``) so that a broadcast can reach one part of its list.

A tag belongs to one subscription (campaign, channel, address), so it is personal data like
the subscription itself: the subject export shows it, erasure and retention remove it, and an
operator can correct it (:meth:`TagService.change`). A campaign's tags are read and written
only under that campaign.

Tag names are checked in one pure function, :func:`tag_names`; segments are a frozen
:class:`Segment` turned into SQL conditions on the subscription row by
:func:`segment_conditions`, used alike by the dry run's count and by the enqueue, so the count
is exactly the audience.

``subscription_tags`` is the record of who has which tag. Each subscription also carries its
tags as bits (``subscriptions.tag_bits``, one bit per tag of the campaign, given on the tag's
first use in ``campaign_tags``), kept in step in the same transaction by :func:`add_tags` and
:func:`remove_tags`, the only writers of tags besides erasure and retention (which clear
both). A segment of most of a million-strong list is then a test of one integer in the
audience index, not a lookup of tags per person. A campaign has 63 bits; a tag first used
after they are all given has none, and a segment naming it reads ``subscription_tags`` for it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    and_,
    case,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.bot import audit
from consentgate.bot.errors import InvalidInput, NotFound
from consentgate.storage.db import Database
from consentgate.storage.models import campaign_tags, campaigns, subscription_tags, subscriptions
from consentgate.storage.sql import dialect_insert

if TYPE_CHECKING:  # the ledger applies a link's tags itself (bot.ledger imports this module)
    from consentgate.bot.ledger import Ledger

__all__ = [
    "MAX_TAG",
    "MAX_TAGS",
    "Segment",
    "TagService",
    "add_tags",
    "remove_tags",
    "segment_conditions",
    "segment_members",
    "segment_of",
    "tag_names",
    "tags_of",
]

MAX_TAG = 64
#: Bits a campaign can give its tags in ``subscriptions.tag_bits`` (a signed 64-bit integer
#: on both backends; the sign bit is left alone).
TAG_BITS = 63
#: The most tags one request names (one person, one link, one segment list).
MAX_TAGS = 50
_TAG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def tag_names(value: object, field: str = "tags") -> tuple[str, ...]:
    """A list of tag names as given (JSON list, or a CSV cell split on ``;``), checked and
    normalised: trimmed, case-folded, duplicates dropped, sorted. Each must be lower-case
    letters or digits in words joined by single hyphens (``ward-north``, ``2026-canvass``),
    at most :data:`MAX_TAG` characters. Raises ``invalid_tag`` (422) naming the field."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part for part in value.split(";") if part.strip()]
    if not isinstance(value, list | tuple):
        raise InvalidInput("invalid_tag", f"{field} must be a list of tag names")
    if len(value) > MAX_TAGS:
        raise InvalidInput("invalid_tag", f"{field} names more than {MAX_TAGS} tags")
    out: set[str] = set()
    for item in value:
        if not isinstance(item, str):
            raise InvalidInput("invalid_tag", f"{field} must be a list of tag names")
        tag = item.strip().lower()
        if not tag or len(tag) > MAX_TAG or not _TAG.fullmatch(tag):
            shown = item if len(item) <= MAX_TAG else item[:MAX_TAG] + "..."
            raise InvalidInput(
                "invalid_tag",
                f"{field}: {shown!r} is not a tag name (lower-case letters and digits, "
                f"words joined by hyphens, e.g. ward-north; at most {MAX_TAG} characters)")
        out.add(tag)
    return tuple(sorted(out))


@dataclass(frozen=True)
class Segment:
    """Who of a channel's subscribers a broadcast is for: those with at least one of
    ``tags_any`` (if given), all of ``tags_all``, and none of ``exclude_tags``. All empty:
    everyone."""

    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()

    @property
    def everyone(self) -> bool:
        return not (self.tags_any or self.tags_all or self.exclude_tags)

    def as_dict(self) -> dict[str, list[str]]:
        return {"tags_any": list(self.tags_any), "tags_all": list(self.tags_all),
                "exclude_tags": list(self.exclude_tags)}


def segment_of(tags_any: object = None, tags_all: object = None,
               exclude_tags: object = None) -> Segment:
    """A :class:`Segment` from a request's three lists (each checked by :func:`tag_names`)."""
    return Segment(tag_names(tags_any, "tags_any"), tag_names(tags_all, "tags_all"),
                   tag_names(exclude_tags, "exclude_tags"))


def segment_members(segment: Segment, campaign: str, channel: str, lo: int, hi: int) -> Any:
    """The subscription ids in ``lo < id <= hi`` with any of ``tags_any`` (or the first of
    ``tags_all``), read from ``ix_subscription_tags_segment``: what a narrow segment's
    queueing is driven from, so it reads a tag's holders rather than every subscriber. None
    when the segment names no tag to have. Who is in the segment is still decided by
    :func:`segment_conditions`."""
    tags = segment.tags_any or segment.tags_all[:1]
    if not tags:
        return None
    t = subscription_tags
    return (select(t.c.subscription_id)
            .where(t.c.campaign == campaign, t.c.channel == channel, t.c.tag.in_(list(tags)),
                   t.c.subscription_id > lo, t.c.subscription_id <= hi)
            .distinct().subquery("members"))


def _has(sub_id: Any, tags: Sequence[str]) -> Any:
    """"This subscription has one of ``tags``", a probe of the tags' primary key: for tags
    without a bit."""
    t = subscription_tags
    if len(tags) == 1:
        return exists().where(t.c.subscription_id == sub_id, t.c.tag == tags[0])
    # The range lets SQLite seek once into the subscription's few tags and filter them,
    # instead of seeking once per listed tag.
    return exists().where(t.c.subscription_id == sub_id,
                          t.c.tag.between(min(tags), max(tags)), t.c.tag.in_(list(tags)))


def _mask(value: int) -> Any:
    return literal(value, BigInteger)


async def tag_bits(conn: AsyncConnection, campaign: str,
                   tags: Iterable[str]) -> dict[str, int | None]:
    """The bit value (``1 << bit``) of each of ``tags`` the campaign has used, None for one
    used after its bits ran out; tags never used are absent (nobody has them)."""
    tags = list(tags)
    if not tags:
        return {}
    rows = await conn.execute(select(campaign_tags.c.tag, campaign_tags.c.bit).where(
        campaign_tags.c.campaign == campaign, campaign_tags.c.tag.in_(tags)))
    return {str(tag): None if bit is None else 1 << int(bit) for tag, bit in rows}


async def _give_bits(conn: AsyncConnection, campaign: str, tags: Sequence[str],
                     now: float) -> dict[str, int | None]:
    """:func:`tag_bits`, giving each tag not used before the next free bit."""
    known = await tag_bits(conn, campaign, tags)
    new = [tag for tag in tags if tag not in known]
    if not new:
        return known
    # Serialises the giving of bits within a campaign (PostgreSQL: two first uses at once
    # must not take the same bit); only taken when a tag is used for the first time, always
    # after the subscriptions' locks (see add_tags), so the two are taken in one order.
    await conn.execute(select(campaigns.c.slug).where(campaigns.c.slug == campaign)
                       .with_for_update(key_share=True))
    known = await tag_bits(conn, campaign, tags)
    used = {int(b) for b in (await conn.execute(select(campaign_tags.c.bit).where(
        campaign_tags.c.campaign == campaign, campaign_tags.c.bit.is_not(None)))).scalars()}
    free = (bit for bit in range(TAG_BITS) if bit not in used)
    for tag in (tag for tag in tags if tag not in known):
        bit = next(free, None)
        await conn.execute(campaign_tags.insert().values(campaign=campaign, tag=tag, bit=bit,
                                                         created_at=now))
        known[tag] = None if bit is None else 1 << bit
    return known


def _or(values: Iterable[int | None]) -> int:
    mask = 0
    for value in values:
        mask |= value or 0
    return mask


async def segment_conditions(conn: AsyncConnection, segment: Segment, campaign: str,
                             sub: Any = subscriptions) -> list[Any]:
    """The segment as conditions on one subscription row of ``sub`` (``subscriptions`` or
    an alias): its ``tag_bits`` for the tags that have bits, a probe of
    ``subscription_tags`` for any that do not. A tag the campaign never used is held by
    nobody."""
    named = {*segment.tags_any, *segment.tags_all, *segment.exclude_tags}
    bits = await tag_bits(conn, campaign, named)
    tag_bits_col = sub.c.tag_bits

    def bitless(tags: Iterable[str]) -> list[str]:
        return [tag for tag in tags if tag in bits and bits[tag] is None]

    conds: list[Any] = []
    if segment.tags_any:
        mask = _or(bits.get(tag) for tag in segment.tags_any)
        either = ([tag_bits_col.bitwise_and(_mask(mask)) != 0] if mask else [])
        if slow := bitless(segment.tags_any):
            either.append(_has(sub.c.id, slow))
        conds.append(or_(*either) if either else false())
    if segment.tags_all:
        if any(tag not in bits for tag in segment.tags_all):
            conds.append(false())
        mask = _or(bits.get(tag) for tag in segment.tags_all)
        if mask:
            conds.append(tag_bits_col.bitwise_and(_mask(mask)) == _mask(mask))
        conds.extend(_has(sub.c.id, [tag]) for tag in bitless(segment.tags_all))
    if segment.exclude_tags:
        mask = _or(bits.get(tag) for tag in segment.exclude_tags)
        if mask:
            conds.append(tag_bits_col.bitwise_and(_mask(mask)) == 0)
        if slow := bitless(segment.exclude_tags):
            conds.append(~_has(sub.c.id, slow))
    return conds


async def add_tags(conn: AsyncConnection, subscription_ids: Iterable[int], campaign: str,
                   channel: str, tags: Sequence[str], now: float | None = None) -> None:
    """Give these subscriptions ``tags`` (those they have already are left as they are), in
    the caller's transaction, with their bits."""
    now = time.time() if now is None else now
    ids = list(subscription_ids)
    rows = [dict(subscription_id=i, tag=tag, campaign=campaign, channel=channel,
                 created_at=now)
            for i in ids for tag in tags]
    if not rows:
        return
    s = subscriptions
    # The subscriptions first (PostgreSQL): a removal of the same tag committing meanwhile
    # must not take the row and leave the bit, or the bit without the row.
    await conn.execute(select(s.c.id).where(s.c.id.in_(ids)).with_for_update())
    await conn.execute(dialect_insert(conn, subscription_tags).on_conflict_do_nothing(
        index_elements=["subscription_id", "tag"]), rows)
    mask = _or((await _give_bits(conn, campaign, sorted(set(tags)), now)).values())
    if mask:
        await conn.execute(update(s).where(s.c.id.in_(ids))
                           .values(tag_bits=s.c.tag_bits.bitwise_or(_mask(mask))))


async def remove_tags(conn: AsyncConnection, subscription_id: int, campaign: str,
                      tags: Sequence[str]) -> None:
    """Take ``tags`` from this subscription, and their bits, in the caller's transaction."""
    if not tags:
        return
    s = subscriptions
    # The subscription first, as in add_tags.
    await conn.execute(select(s.c.id).where(s.c.id == subscription_id).with_for_update())
    await conn.execute(delete(subscription_tags).where(
        subscription_tags.c.subscription_id == subscription_id,
        subscription_tags.c.tag.in_(list(tags))))
    mask = _or((await tag_bits(conn, campaign, tags)).values())
    if mask:
        await conn.execute(update(s).where(s.c.id == subscription_id)
                           .values(tag_bits=s.c.tag_bits.bitwise_and(_mask(~mask))))


async def tags_of(conn: AsyncConnection, subscription_id: int) -> list[str]:
    rows = await conn.execute(select(subscription_tags.c.tag).where(
        subscription_tags.c.subscription_id == subscription_id).order_by(subscription_tags.c.tag))
    return [str(r) for r in rows.scalars()]


class TagService:
    """Tags per person and the campaign's tag list with counts."""

    def __init__(self, db: Database, ledger: Ledger) -> None:
        self.db = db
        self.ledger = ledger

    async def change(self, campaign: str, actor: str, channel: str, address: str,
                     add: object = None, remove: object = None) -> list[str]:
        """Add and remove tags of one subscriber (removal wins for a tag named in both);
        audited. Returns the tags they have now. 404 ``subscriber_not_found`` if this
        campaign holds no subscription for the address."""
        added = tag_names(add, "add_tags")
        removed = tag_names(remove, "remove_tags")
        now = time.time()
        async with self.db.write() as conn:
            sub_id = (await conn.execute(select(subscriptions.c.id).where(
                subscriptions.c.campaign == campaign, subscriptions.c.channel == channel,
                subscriptions.c.address == address))).scalar()
            if sub_id is None:
                raise NotFound("subscriber_not_found",
                               "this campaign holds no subscription for that address")
            await add_tags(conn, [int(sub_id)], campaign, channel,
                           [t for t in added if t not in removed], now)
            await remove_tags(conn, int(sub_id), campaign, removed)
            if added or removed:
                await audit.append(conn, campaign, actor, "tags.changed",
                                   audit.subject_for(channel, self.ledger.hash(channel, address)),
                                   {"added": list(added), "removed": list(removed)}, at=now)
            return await tags_of(conn, int(sub_id))

    async def of(self, conn: AsyncConnection, campaign: str, channel: str,
                 address: str) -> list[str]:
        """The tags of one subscriber (none if there is no subscription)."""
        sub_id = (await conn.execute(select(subscriptions.c.id).where(
            subscriptions.c.campaign == campaign, subscriptions.c.channel == channel,
            subscriptions.c.address == address))).scalar()
        return [] if sub_id is None else await tags_of(conn, int(sub_id))

    async def counts(self, campaign: str) -> list[dict[str, Any]]:
        """``[{tag, channel, subscribed}]``: each tag of this campaign with how many of its
        holders a broadcast could reach now (subscribed, not restricted, not suppressed;
        a tag held only by people who left counts 0)."""
        from consentgate.bot.ledger import suppressed_clause

        t, s = subscription_tags, subscriptions
        subscribed = func.sum(case((and_(
            s.c.status == "subscribed", s.c.restricted.is_(False),
            ~suppressed_clause(s.c.channel, s.c.address_hash, s.c.consented_at)), 1), else_=0))
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(t.c.tag, t.c.channel, subscribed)
                .select_from(t.join(s, s.c.id == t.c.subscription_id))
                .where(t.c.campaign == campaign)
                .group_by(t.c.tag, t.c.channel).order_by(t.c.tag, t.c.channel))
            return [{"tag": r[0], "channel": r[1], "subscribed": int(r[2] or 0)} for r in rows]

