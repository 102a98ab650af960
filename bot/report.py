"""The compliance report of one campaign: what a returning officer or the regulator asks.

- every campaign message sent, by channel, traced to the consent record that allowed it
  (a ``subscribed`` record of that campaign, channel and person, made no later than the gate
  admitted the message); ``untraced`` must be 0;
- opt-outs by method, and the median time from a STOP reply to the recorded opt-out;
- the data-rights requests served (access, erasure, rectification, restriction);
- whether the audit chain is intact.

Each figure is one set-based query.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, case, exists, func, literal, not_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.bot import audit
from consentgate.bot.messages import iso
from consentgate.bot.outbox import MessageStatus
from consentgate.storage.db import Database
from consentgate.storage.models import audit_events, consent_events, inbound_messages, messages

__all__ = ["RIGHTS_ACTIONS", "compliance_report"]

SENT = (MessageStatus.SENT, MessageStatus.DELIVERED)
#: Audit actions that record a data-rights request served.
RIGHTS_ACTIONS = {
    "subject.exported": "access",
    "subject.erased": "erasure",
    "subject.rectified": "rectification",
    "subject.restricted": "restriction",
    "subject.unrestricted": "restriction_lifted",
}


async def compliance_report(db: Database, campaign: str, *,
                            chain: audit.Verification | None = None,
                            verify_chain: bool = True) -> dict[str, Any]:
    """The report. The audit chain is verified here unless ``chain`` passes a verification
    already made or ``verify_chain`` is False (then ``audit.intact`` is None): verifying
    reads every audit record."""
    async with db.read() as conn:
        by_channel = await _messages(conn, campaign)
        opt_outs = await _opt_outs(conn, campaign)
        median = await _median_stop_delay(conn, campaign)
        rights = await _rights(conn, campaign)
        if chain is None and verify_chain:
            chain = await audit.verify(conn, campaign)
    untraced = sum(c["untraced"] for c in by_channel.values())
    return {
        "campaign": campaign,
        "generated_at": iso(time.time()),
        "messages": by_channel,
        "untraced_total": untraced,
        "opt_outs": {
            "by_method": opt_outs,
            "total": sum(opt_outs.values()),
            "median_seconds_stop_to_opt_out": median,
        },
        "rights_requests": rights,
        "audit": ({"records": chain.records, "intact": chain.ok,
                   "first_broken": chain.first_broken, "problem": chain.problem}
                  if chain is not None else
                  {"records": None, "intact": None, "first_broken": None, "problem": None}),
    }


async def _messages(conn: AsyncConnection, campaign: str) -> dict[str, dict[str, int]]:
    m, ce = messages, consent_events
    admitted_at = func.coalesce(m.c.dispatched_at, m.c.sent_at, m.c.created_at)
    consent = and_(ce.c.campaign == m.c.campaign, ce.c.channel == m.c.channel,
                   ce.c.address_hash == m.c.address_hash, ce.c.event == "subscribed",
                   ce.c.at <= admitted_at)
    traced = exists().where(consent)
    with_evidence = exists().where(consent, ce.c.evidence.is_not(None))
    group_post = and_(m.c.channel == "telegram", m.c.address.like("-%"))
    campaign_sent = and_(m.c.kind == "campaign", m.c.status.in_(SENT), not_(group_post))

    def count(cond: Any) -> Any:
        return func.sum(case((cond, 1), else_=0))

    rows = await conn.execute(
        select(m.c.channel,
               count(campaign_sent).label("sent"),
               count(and_(campaign_sent, traced)).label("traced"),
               count(and_(campaign_sent, traced, not_(with_evidence))).label("erased"),
               count(and_(m.c.kind == "campaign", m.c.status.in_(SENT), group_post))
               .label("group_posts"),
               count(and_(m.c.kind != "campaign", m.c.status.in_(SENT))).label("replies"),
               count(m.c.status == MessageStatus.BLOCKED).label("blocked"))
        .where(m.c.campaign == campaign)
        .group_by(m.c.channel))
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        sent, traced_n = int(r.sent or 0), int(r.traced or 0)
        out[r.channel] = {
            "sent": sent,
            "traced_to_consent": traced_n,
            "untraced": sent - traced_n,
            # traced, but the evidence text was removed at the person's request or by
            # retention; the record of the consent itself remains
            "evidence_removed": int(r.erased or 0),
            "posts_to_own_chats": int(r.group_posts or 0),
            "replies_and_confirmations": int(r.replies or 0),
            "blocked_at_dispatch": int(r.blocked or 0),
        }
    return out


async def _opt_outs(conn: AsyncConnection, campaign: str) -> dict[str, int]:
    ce = consent_events
    method = func.coalesce(ce.c.method, literal("unknown"))
    rows = await conn.execute(
        select(method, func.count())
        .where(ce.c.campaign == campaign, ce.c.event == "opted_out")
        .group_by(method).order_by(method))
    return {str(k): int(n) for k, n in rows}


async def _median_stop_delay(conn: AsyncConnection, campaign: str) -> float | None:
    """Seconds from an opt-out reply's arrival to the opt-out being recorded (the first
    ``opted_out`` record of that person at or after the reply), median over all."""
    im, ce = inbound_messages, consent_events
    recorded = (select(func.min(ce.c.at))
                .where(ce.c.campaign == im.c.campaign, ce.c.channel == im.c.channel,
                       ce.c.address_hash == im.c.address_hash, ce.c.event == "opted_out",
                       ce.c.at >= im.c.at)
                .scalar_subquery())
    delays = (select((recorded - im.c.at).label("delay"))
              .where(im.c.campaign == campaign,
                     im.c.intent.in_(("opt_out", "opt_out_all")))
              .subquery())
    valid = delays.c.delay.is_not(None)
    n = int((await conn.execute(select(func.count()).where(valid)
                                .select_from(delays))).scalar_one())
    if n == 0:
        return None
    middle = (await conn.execute(
        select(delays.c.delay).where(valid).order_by(delays.c.delay)
        .offset((n - 1) // 2).limit(2 - n % 2))).scalars().all()
    return round(sum(float(v) for v in middle) / len(middle), 3)


async def _rights(conn: AsyncConnection, campaign: str) -> dict[str, int]:
    a = audit_events
    rows = await conn.execute(
        select(a.c.action, func.count())
        .where(a.c.campaign == campaign, a.c.action.in_(list(RIGHTS_ACTIONS)))
        .group_by(a.c.action))
    out = dict.fromkeys(RIGHTS_ACTIONS.values(), 0)
    for action, n in rows:
        out[RIGHTS_ACTIONS[action]] = int(n)
    objections = (await conn.execute(
        select(func.count()).where(consent_events.c.campaign == campaign,
                                   consent_events.c.event == "opted_out"))).scalar_one()
    out["objection"] = int(objections)
    return out

