"""What keeps audiences fast at a million, proved on a small list over real HTTP, on SQLite and
PostgreSQL: each subscription's tag bits always say what its tag rows say (whichever way the
tags came: a consent, an import, a link, a person's correction); a campaign's tags beyond
the 63 that have bits are still segmented exactly; and a broadcast queues its messages in
batches just ahead of sending, reaching each person once, leaving out whoever opts out
before their batch, cancellable and resumable after a restart, its counts adding up to the
audience throughout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select

from consentgate.storage.models import (
    broadcasts,
    campaign_tags,
    messages,
    subscription_tags,
    subscriptions,
)
from consentgate.testing.harness import Harness, running_gateway
from consentgate.testing.waiting import eventually
from tests.web.test_audiences import broadcast, consent, view, wait_done

PEOPLE = [f"+4479111002{i:02d}" for i in range(60)]


async def bits_follow_tags(h: Harness) -> None:
    """Every subscription's ``tag_bits`` is exactly the bits of its tags, and no two tags of
    a campaign share a bit."""
    async with h.db.read() as conn:
        bit_of = {(c, t): b for c, t, b in await conn.execute(
            select(campaign_tags.c.campaign, campaign_tags.c.tag, campaign_tags.c.bit))}
        held: dict[int, int] = {}
        for sub_id, campaign, tag in await conn.execute(
                select(subscription_tags.c.subscription_id, subscription_tags.c.campaign,
                       subscription_tags.c.tag)):
            bit = bit_of[(campaign, tag)]  # every tag in use has its row
            held[sub_id] = held.get(sub_id, 0) | (0 if bit is None else 1 << bit)
        stored = {i: b for i, b in await conn.execute(
            select(subscriptions.c.id, subscriptions.c.tag_bits))}
    assert {i: b for i, b in stored.items() if b} == {i: b for i, b in held.items() if b}
    given = [(c, b) for (c, _), b in bit_of.items() if b is not None]
    assert len(given) == len(set(given))


async def test_tag_bits_follow_the_tags_whichever_way_they_came(db_url: str) -> None:
    async with running_gateway(db_url) as h:
        await consent(h, PEOPLE[0], ["volunteer", "ward-north"])
        await consent(h, PEOPLE[1], ["volunteer"])
        csv = ("channel,address,method,source,evidence,tags\n"
               f"sms,{PEOPLE[2]},import,fair sheet,row 1,postal-voter;ward-north\n"
               f"sms,{PEOPLE[3]},import,fair sheet,row 2,freshers\n")
        code, report = await h.api("POST", "/api/v1/consents/import", raw=csv,
                                   headers={"Content-Type": "text/csv"})
        assert code == 200 and report["imported"] == 2, report
        code, link = await h.api("POST", "/api/v1/links",
                                 {"channel": "sms", "name": "Stall", "tags": ["stall"]})
        assert code == 201, link
        async with h.session.post(f"{h.url}/join/{link['id']}", data={
                "address": PEOPLE[4], "consent": "yes", "website": ""}) as r:
            assert r.status == 200
        assert (await h.sms_in(PEOPLE[4], "YES"))[0] == 200
        code, _ = await h.api("PATCH", f"/api/v1/subscribers/sms/{PEOPLE[0]}",
                              {"add_tags": ["canvasser"], "remove_tags": ["volunteer"]})
        assert code == 200
        await bits_follow_tags(h)
        _, dry = await broadcast(h, dry_run=True, tags_any=["volunteer", "stall"],
                                 exclude_tags=["freshers"])
        assert dry["audience"]["eligible"] == 2  # PEOPLE[1], PEOPLE[4]


async def test_tags_beyond_the_bits_are_segmented_exactly(db_url: str) -> None:
    """70 tags: the last seven have no bit and are read from the tag rows."""
    a, b, c = PEOPLE[:3]
    async with running_gateway(db_url) as h:
        for number in (a, b, c):
            await consent(h, number)
        every = [f"t-{i:02d}" for i in range(70)]
        for part in (every[:50], every[50:]):
            code, body = await h.api("PATCH", f"/api/v1/subscribers/sms/{a}",
                                     {"add_tags": part})
            assert code == 200, body
        for number, tags in ((b, ["t-65", "t-01"]), (c, ["t-01"])):
            assert (await h.api("PATCH", f"/api/v1/subscribers/sms/{number}",
                                {"add_tags": tags}))[0] == 200
        async with h.db.read() as conn:
            bitless = sorted(t for t, in await conn.execute(
                select(campaign_tags.c.tag).where(campaign_tags.c.bit.is_(None))))
        assert bitless == every[63:]
        await bits_follow_tags(h)
        cases: list[tuple[dict[str, Any], int]] = [
            ({"tags_any": ["t-65"]}, 2),                                    # a, b
            ({"tags_all": ["t-01", "t-66"]}, 1),                            # a
            ({"tags_any": ["t-01"], "exclude_tags": ["t-65"]}, 1),          # c
            ({"tags_any": ["t-64", "t-02"]}, 1),                            # a
            ({"exclude_tags": ["t-69", "t-00"]}, 2),                        # b, c
            ({"tags_all": ["t-01", "never-used"]}, 0),
        ]
        for segment, eligible in cases:
            _, dry = await broadcast(h, dry_run=True, **segment)
            assert dry["audience"]["eligible"] == eligible, segment
        code, body = await h.api("PATCH", f"/api/v1/subscribers/sms/{b}",
                                 {"remove_tags": ["t-65"]})
        assert code == 200 and body["tags"] == ["t-01"], body
        code, sent = await broadcast(h, tags_any=["t-65", "t-66"])
        assert code == 202 and sent["audience"]["eligible"] == 1, sent
        await wait_done(h, sent["id"])
        assert [m.to for m in h.twilio.messages] == [a]


async def queued_rows(h: Harness, broadcast_id: int) -> int:
    async with h.db.read() as conn:
        return int((await conn.execute(select(func.count()).where(
            messages.c.broadcast_id == broadcast_id))).scalar_one())


async def last_in_queueing_order(h: Harness) -> str:
    """The person whose message is queued last (queueing walks the keyed-hash order)."""
    async with h.db.read() as conn:
        return str((await conn.execute(
            select(subscriptions.c.address).where(subscriptions.c.channel == "sms")
            .order_by(subscriptions.c.address_hash.desc()).limit(1))).scalar_one())


def small_batches(h: Harness) -> None:
    """Batches of 5 subscriptions, 10 messages kept queued ahead (20,000 in production)."""
    h.gateway.broadcasts.batch = 5
    h.gateway.broadcasts.ahead = 10


@pytest.mark.parametrize("own_thread", [False, True], ids=["one-loop", "own-thread"])
async def test_a_broadcast_is_queued_just_ahead_of_sending_each_person_once(
        db_url: str, own_thread: bool) -> None:
    """Also with the dispatcher on its own thread, as ``serve`` runs it: the scheduler
    queueing the batches stays on the web loop and wakes the dispatcher across threads."""
    async with running_gateway(db_url, rate=50.0, dispatch_thread=own_thread) as h:
        for number in PEOPLE:
            await consent(h, number)
        small_batches(h)
        last = await last_in_queueing_order(h)
        code, sent = await broadcast(h)
        assert code == 202 and sent["audience"]["eligible"] == 60, sent
        assert await queued_rows(h, sent["id"]) < 60  # not the whole list up front
        early = await view(h, sent["id"])
        assert sum(early["counts"].values()) == 60 and early["eligible"] == 60, early
        # Not queued yet when they say STOP: their batch leaves them out.
        assert (await h.sms_in(last, "STOP"))[0] == 200
        done = await wait_done(h, sent["id"])
        sent_to = [m.to for m in h.twilio.messages]
        assert sorted(sent_to) == sorted(p for p in PEOPLE if p != last)
        assert done["counts"]["sent"] == 59 and sum(done["counts"].values()) == 59, done
        assert done["eligible"] == 59


async def test_a_broadcast_being_queued_can_be_cancelled(db_url: str) -> None:
    async with running_gateway(db_url, rate=10.0) as h:
        for number in PEOPLE:
            await consent(h, number)
        small_batches(h)
        _, sent = await broadcast(h)

        async def some_sent() -> bool:
            return len(h.twilio.messages) > 0
        await eventually(some_sent, timeout=20.0, what="the first messages sent")
        code, cancelled = await h.api("POST", f"/api/v1/broadcasts/{sent['id']}/cancel")
        assert code == 200, cancelled
        rows_then = await queued_rows(h, sent["id"])
        after = await view(h, sent["id"])
        assert after["status"] == "cancelled"
        assert sum(after["counts"].values()) == 60, after
        # Nothing more is queued for it, and at most what was on the wire still goes.
        assert h.gateway.scheduler is not None
        await h.gateway.scheduler.run_due()
        assert not (await h.gateway.broadcasts.feed())[1]
        assert await queued_rows(h, sent["id"]) == rows_then
        settled = await view(h, sent["id"])
        assert settled["counts"]["queued"] == 0
        assert cancelled["cancelled"] + settled["counts"]["sent"] \
            + settled["counts"]["sending"] <= 60


async def test_queueing_goes_on_after_a_restart(db_url: str) -> None:
    async with running_gateway(db_url, dispatch=False) as h:
        for number in PEOPLE:
            await consent(h, number)
        small_batches(h)
        _, sent = await broadcast(h)
        assert await queued_rows(h, sent["id"]) < 60
        assert (await view(h, sent["id"]))["status"] == "queued"
    async with running_gateway(db_url) as h:
        done = await wait_done(h, sent["id"])
        assert done["counts"]["sent"] == 60
        assert sorted(m.to for m in h.twilio.messages) == sorted(PEOPLE)


@pytest.mark.parametrize("segment", [{"tags_any": ["odd"]}, {"exclude_tags": ["odd"]}])
async def test_a_segment_queued_in_batches_matches_its_dry_run(db_url: str,
                                                                segment: dict[str, Any]) -> None:
    async with running_gateway(db_url) as h:
        for i, number in enumerate(PEOPLE):
            await consent(h, number, ["odd"] if i % 2 else ["even"])
        small_batches(h)
        _, dry = await broadcast(h, dry_run=True, **segment)
        code, sent = await broadcast(h, **segment)
        assert code == 202 and dry["audience"]["eligible"] == 30
        await wait_done(h, sent["id"])
        wanted = PEOPLE[1::2] if segment.get("tags_any") else PEOPLE[::2]
        assert sorted(m.to for m in h.twilio.messages) == sorted(wanted)


async def test_a_broadcast_paused_while_being_queued_goes_on_after_the_resume(
        db_url: str) -> None:
    """Every number is refused until the broadcast pauses itself (after 10 attempts): the
    queueing stops with it, and after the resume everyone not yet tried gets one message."""
    async with running_gateway(db_url, rate=20.0, pause_after_attempts=10) as h:
        for number in PEOPLE:
            await consent(h, number)
        small_batches(h)
        h.twilio.invalid.update(PEOPLE)
        _, sent = await broadcast(h)

        async def paused() -> dict[str, Any] | None:
            v = await view(h, sent["id"])
            return v if v["status"] == "paused" and v["counts"]["sending"] == 0 else None
        held = await eventually(paused, timeout=20.0, what="the broadcast paused")
        assert sum(held["counts"].values()) == 60, held
        rows_then = await queued_rows(h, sent["id"])
        await h.gateway.broadcasts.feed()
        assert await queued_rows(h, sent["id"]) == rows_then < 60  # queueing holds too
        h.twilio.invalid.clear()
        code, _ = await h.api("POST", f"/api/v1/broadcasts/{sent['id']}/resume")
        assert code == 200
        done = await wait_done(h, sent["id"])
        failed = done["counts"]["failed"]
        assert failed == held["counts"]["failed"] and done["counts"]["sent"] == 60 - failed
        assert len(h.twilio.messages) == 60 - failed
        assert len({m.to for m in h.twilio.messages}) == 60 - failed  # once each


async def test_tags_used_for_the_first_time_at_once_get_distinct_bits(db_url: str) -> None:
    async with running_gateway(db_url) as h:
        for number in PEOPLE[:12]:
            await consent(h, number)
        answers = await asyncio.gather(*(
            h.api("PATCH", f"/api/v1/subscribers/sms/{number}",
                  {"add_tags": [f"new-{i}", "shared"]})
            for i, number in enumerate(PEOPLE[:12])))
        assert [code for code, _ in answers] == [200] * 12, answers
        await bits_follow_tags(h)
        _, dry = await broadcast(h, dry_run=True, tags_all=["shared", "new-3"])
        assert dry["audience"]["eligible"] == 1


async def test_an_address_corrected_while_its_broadcast_is_queued_gets_one_message(
        db_url: str) -> None:
    """Queueing walks the keyed-hash order; a correction gives the person a new hash,
    here one the walk has still to reach. They are not queued a second time."""
    async with running_gateway(db_url, dispatch=False) as h:
        for number in PEOPLE[:40]:
            await consent(h, number)
        small_batches(h)
        _, sent = await broadcast(h)
        async with h.db.read() as conn:
            cursor, queued = (await conn.execute(
                select(broadcasts.c.hash_cursor, func.count(messages.c.id))
                .select_from(broadcasts.join(messages,
                                             messages.c.broadcast_id == broadcasts.c.id))
                .where(broadcasts.c.id == sent["id"])
                .group_by(broadcasts.c.hash_cursor))).one()
            first = str((await conn.execute(select(messages.c.address).where(
                messages.c.broadcast_id == sent["id"]).limit(1))).scalar_one())
        assert 0 < queued < 40
        corrected = next(f"+4479111099{i:02d}" for i in range(100)
                         if h.gateway.ledger.hash("sms", f"+4479111099{i:02d}") > cursor)
        code, body = await h.api("PATCH", f"/api/v1/subjects/sms/{first}",
                                 {"address": corrected})
        assert code == 200, body
        queued_all, done = await h.gateway.broadcasts.enqueue(sent["id"])
        assert done and queued_all == 40
        async with h.db.read() as conn:
            addresses = [a for a, in await conn.execute(select(messages.c.address).where(
                messages.c.broadcast_id == sent["id"]))]
        assert len(addresses) == 40 and corrected in addresses and first not in addresses


async def test_a_tag_added_and_removed_at_once_leaves_bits_and_rows_agreeing(
        db_url: str) -> None:
    async with running_gateway(db_url) as h:
        for number in PEOPLE[:10]:
            await consent(h, number, ["volunteer"])
        for _ in range(3):
            answers = await asyncio.gather(*(
                h.api("PATCH", f"/api/v1/subscribers/sms/{number}",
                      {"add_tags": ["volunteer"]} if i % 2 else {"remove_tags": ["volunteer"]})
                for number in PEOPLE[:10] for i in range(4)))
            assert {code for code, _ in answers} == {200}, answers
            await bits_follow_tags(h)
