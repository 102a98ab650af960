"""Tags: the words a campaign puts on its subscribers (``volunteer``, ``ward-north``,
``freshers-fair``) so that a broadcast can reach one part of its list.

A tag belongs to one subscription (campaign, channel, address), so it is personal data like
the subscription itself: the subject export shows it, erasure and retention remove it, and an
operator can correct it (:meth:`TagService.change`). A campaign's tags are read and written
only under that campaign.

Tag names are checked in one pure function, :func:`tag_names`; segments are a frozen
:class:`Segment` turned into set-based SQL by :func:`segment_filter`, used alike by the dry
run's count and by the enqueue, so the count is exactly the audience.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.bot import audit
from consentgate.bot.errors import InvalidInput, NotFound
from consentgate.storage.db import Database
from consentgate.storage.models import subscription_tags, subscriptions
from consentgate.storage.sql import dialect_insert

if TYPE_CHECKING:  # the ledger applies a link's tags itself (bot.ledger imports this module)
    from consentgate.bot.ledger import Ledger

__all__ = [
    "MAX_TAG",
    "MAX_TAGS",
    "Segment",
    "TagService",
    "add_tags",
    "segment_exists",
    "segment_filter",
    "segment_of",
    "tag_names",
    "tags_of",
]

MAX_TAG = 64
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


def segment_filter(segment: Segment, campaign: str, channel: str, sub_id: Any,
                   lo: int | None = None, hi: int | None = None) -> tuple[Any, list[Any]]:
    """The segment as SQL: ``(members, conditions)``. ``members`` is a subquery of the
    subscription ids with any of ``tags_any`` (or the first of ``tags_all``) to drive the
    query from, read from ``ix_subscription_tags_segment``, so a narrow segment is found
    from its tags and not by reading every subscriber; None when the segment names no tag
    a subscriber must have. ``conditions`` on ``sub_id`` are the rest (each other
    ``tags_all`` tag, ``exclude_tags``). ``lo < id <= hi`` bounds each tag list too when the
    caller reads one id range (a batch of the enqueue)."""
    t = subscription_tags

    def having(tags: Sequence[str]) -> Any:
        where = [t.c.campaign == campaign, t.c.channel == channel, t.c.tag.in_(list(tags))]
        if lo is not None:
            where.append(t.c.subscription_id > lo)
        if hi is not None:
            where.append(t.c.subscription_id <= hi)
        return select(t.c.subscription_id).where(*where)

    must = list(segment.tags_all)
    if segment.tags_any:
        members = having(segment.tags_any).distinct().subquery("members")
    elif must:
        members = having([must.pop(0)]).subquery("members")
    else:
        members = None
    conds = [sub_id.in_(having([tag])) for tag in must]
    if segment.exclude_tags:
        conds.append(~sub_id.in_(having(segment.exclude_tags)))
    return members, conds


def segment_exists(segment: Segment, sub_id: Any) -> list[Any]:
    """The segment as conditions on one subscription ``sub_id`` at a time (each a probe of
    the tags' primary key): for a query that reads subscriptions in another order (the
    enqueue's hash ranges). The same set as :func:`segment_filter`."""
    t = subscription_tags

    def has(tags: Sequence[str]) -> Any:
        if len(tags) == 1:
            return exists().where(t.c.subscription_id == sub_id, t.c.tag == tags[0])
        # The range lets SQLite seek once into the subscription's few tags and filter them,
        # instead of seeking once per listed tag (a third less CPU for ten tags).
        return exists().where(t.c.subscription_id == sub_id,
                              t.c.tag.between(min(tags), max(tags)), t.c.tag.in_(list(tags)))

    conds = []
    if segment.tags_any:
        conds.append(has(segment.tags_any))
    conds.extend(has([tag]) for tag in segment.tags_all)
    if segment.exclude_tags:
        conds.append(~has(segment.exclude_tags))
    return conds


async def add_tags(conn: AsyncConnection, subscription_ids: Iterable[int], campaign: str,
                   channel: str, tags: Sequence[str], now: float | None = None) -> None:
    """Give these subscriptions ``tags`` (those they have already are left as they are), in
    the caller's transaction."""
    rows = [dict(subscription_id=i, tag=tag, campaign=campaign, channel=channel,
                 created_at=time.time() if now is None else now)
            for i in subscription_ids for tag in tags]
    if rows:
        await conn.execute(dialect_insert(conn, subscription_tags).on_conflict_do_nothing(
            index_elements=["subscription_id", "tag"]), rows)


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
            if removed:
                await conn.execute(delete(subscription_tags).where(
                    subscription_tags.c.subscription_id == sub_id,
                    subscription_tags.c.tag.in_(list(removed))))
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

