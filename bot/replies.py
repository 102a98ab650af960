"""The inbound replies a campaign team reads: newest first, the flagged ones on request.

A reply is kept when it was not a keyword the gateway acted on, or when it looked like an
opt-out it could not be sure of (``possible_opt_out``): a person reads those and acts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from consentgate.bot.messages import iso
from consentgate.storage.db import Database
from consentgate.storage.models import inbound_messages

__all__ = ["ReplyService"]


class ReplyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, campaign: str, *, flagged: bool = False,
                   limit: int = 500) -> list[dict[str, Any]]:
        im = inbound_messages
        stmt = (select(im).where(im.c.campaign == campaign)
                .order_by(im.c.at.desc(), im.c.id.desc()).limit(limit))
        if flagged:
            stmt = stmt.where(im.c.flag.is_not(None))
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [{"id": r.id, "channel": r.channel, "from": r.from_address, "text": r.text,
                 "at": iso(r.at), "flag": r.flag, "intent": r.intent} for r in rows]
