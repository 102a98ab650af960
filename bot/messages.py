"""One-off messages from the API: the gate's answer up front, idempotency, and the view.

The early gate answer only spares the caller a message that could not go now: the message
is decided again when it is about to be handed to the provider.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.bot import audit, outbox
from consentgate.bot.addresses import normalise_address
from consentgate.bot.config import CampaignSettings
from consentgate.bot.errors import Forbidden, InvalidInput, NotFound
from consentgate.bot.gate import ConsentGate
from consentgate.bot.ledger import Ledger
from consentgate.bot.outbox import MessageStatus
from consentgate.storage.db import Database
from consentgate.storage.models import idempotency_keys, messages

__all__ = ["MessageService", "check_text", "iso"]

MAX_TEXT = 4096


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def check_text(text: str, subject: str | None) -> None:
    """A message's text and (email) subject as any caller may give them: text not blank
    and within MAX_TEXT; a subject on one line (a line break would start a new header)."""
    if not text.strip():
        raise InvalidInput("invalid_text", "text must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise InvalidInput("invalid_text", f"text is longer than {MAX_TEXT} characters")
    if subject is not None and ("\r" in subject or "\n" in subject):
        raise InvalidInput("invalid_subject", "subject must be one line")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class MessageService:
    def __init__(self, db: Database, gate: ConsentGate, ledger: Ledger) -> None:
        self.db = db
        self.gate = gate
        self.ledger = ledger

    async def send(self, settings: CampaignSettings, actor: str, channel: str, to: str,
                   text: str, subject: str | None = None,
                   idempotency_key: str | None = None) -> Answer:
        """Queue one message, or refuse it now (403 with the gate's reason). With an
        Idempotency-Key the first answer is stored with the message, in one transaction,
        and replayed for every repeat."""
        check_text(text, subject)
        address = normalise_address(channel, to, settings.default_region)
        request_hash = hashlib.sha256(
            json.dumps([channel, address, text, subject]).encode()).hexdigest()
        try:
            return await self._send(settings, actor, channel, address, text, subject,
                                    idempotency_key, request_hash)
        except IntegrityError:
            # A concurrent request with the same key committed first: answer as it did.
            async with self.db.read() as conn:
                stored = await self._stored(conn, settings.slug, idempotency_key or "",
                                            request_hash)
            if stored is None:
                raise
            return stored

    async def _stored(self, conn: AsyncConnection, campaign: str, key: str,
                      request_hash: str) -> Answer | None:
        row = (await conn.execute(select(idempotency_keys).where(
            idempotency_keys.c.campaign == campaign, idempotency_keys.c.key == key))).first()
        if row is None:
            return None
        if row.request_hash != request_hash:
            raise InvalidInput("idempotency_key_reused",
                               "this Idempotency-Key was used for a different request")
        return Answer(row.status_code, json.loads(row.body))

    async def _send(self, settings: CampaignSettings, actor: str, channel: str, address: str,
                    text: str, subject: str | None, key: str | None,
                    request_hash: str) -> Answer:
        async with self.db.write() as conn:
            if key is not None:
                stored = await self._stored(conn, settings.slug, key, request_hash)
                if stored is not None:
                    return stored
            decision = await self.gate.decide_now(conn, settings.slug, channel, address)
            if decision.allowed:
                message_id = await outbox.enqueue(
                    conn, campaign=settings.slug, channel=channel, address=address,
                    address_hash=self.ledger.hash(channel, address), text=text,
                    subject=subject, created_by=actor)
                await audit.append(conn, settings.slug, actor, "message.queued",
                                   audit.subject_for(channel, self.ledger.hash(channel, address)),
                                   {"message_id": message_id})
                answer = Answer(202, {"id": message_id, "status": MessageStatus.QUEUED})
            else:
                assert decision.reason is not None
                err = Forbidden(decision.reason.value,
                                f"the consent gate refuses this message: {decision.reason.value}")
                answer = Answer(403, err.problem())
            if key is not None:
                await conn.execute(idempotency_keys.insert().values(
                    campaign=settings.slug, key=key, request_hash=request_hash,
                    status_code=answer.status, body=json.dumps(answer.body),
                    created_at=time.time()))
        return answer

    async def view(self, campaign: str, message_id: int) -> dict[str, Any]:
        async with self.db.read() as conn:
            row = (await conn.execute(select(messages).where(
                messages.c.id == message_id, messages.c.campaign == campaign))).first()
        if row is None:
            raise NotFound("message_not_found", "no such message in this campaign")
        return {
            "id": row.id, "channel": row.channel, "to": row.address, "status": row.status,
            "reason": row.reason, "provider_id": row.provider_id,
            "created_at": iso(row.created_at), "sent_at": iso(row.sent_at),
            "attempts": row.attempts, "broadcast_id": row.broadcast_id,
        }


