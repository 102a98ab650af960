"""What a campaign's home page shows at a glance: people by channel and status, opt-outs
this week, flagged replies still waiting for a person, and the latest broadcasts.

Each figure is one set-based query (a count or a group-by over an indexed column), never a
row-by-row walk, so the page stays quick with a million subscribers. Reusing a slow count for
a few seconds is the console's choice (see ``bot/web/console/counts.py``), not this one's.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from consentgate.storage.db import Database
from consentgate.storage.models import broadcasts, consent_events, inbound_messages, subscriptions

__all__ = ["Glance", "Overview"]


@dataclass(frozen=True)
class Glance:
    opt_outs: int  # opt-outs recorded since the time asked about
    flagged_waiting: int  # flagged replies no person has resolved yet
    recent_broadcasts: list[int]  # ids, newest first


class Overview:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def by_status(self, campaign: str) -> dict[str, dict[str, int]]:
        """``{channel: {status: people}}`` (statuses nobody has are left out)."""
        s = subscriptions
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(s.c.channel, s.c.status, func.count()).where(s.c.campaign == campaign)
                .group_by(s.c.channel, s.c.status))
            found: dict[str, dict[str, int]] = {}
            for channel, status, n in rows:
                found.setdefault(channel, {})[status] = int(n)
        return found

    async def glance(self, campaign: str, *, since: float, broadcasts_limit: int = 5) -> Glance:
        """The small figures, read together in one transaction."""
        ce, im, b = consent_events, inbound_messages, broadcasts
        async with self.db.read() as conn:
            opt_outs = int((await conn.execute(
                select(func.count()).select_from(ce).where(
                    ce.c.campaign == campaign, ce.c.event == "opted_out",
                    ce.c.at >= since))).scalar_one())
            flagged = int((await conn.execute(
                select(func.count()).select_from(im).where(
                    im.c.campaign == campaign, im.c.flag.is_not(None),
                    im.c.resolution.is_(None)))).scalar_one())
            recent = [int(i) for i in (await conn.execute(
                select(b.c.id).where(b.c.campaign == campaign)
                .order_by(b.c.id.desc()).limit(broadcasts_limit))).scalars()]
        return Glance(opt_outs, flagged, recent)
