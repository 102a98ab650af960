"""Audiences over real HTTP: tags on consents, imports, links and people; segmented
broadcasts (any / all / exclude, with opt-outs and suppressions left out); scheduled
broadcasts that wait, go when due (late after a restart), skip whoever opted out
meanwhile, hold for quiet hours, and can be cancelled. Messages arrive at the loopback
Twilio fake through the real dispatcher.

The scheduler's clock is moved forward instead of waiting for the time to come.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from consentgate.storage.models import messages, subscription_tags
from consentgate.testing.harness import (
    BOB_TOKEN,
    JANE_AUDITOR,
    Harness,
    running_gateway,
)

ANN, BEN, CAT, DAN, EVE, FAY = (f"+4479111000{i:02d}" for i in range(1, 7))


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 15.0) -> None:  # noqa: ASYNC109 - a test's patience
    """Poll ``check`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def consent(h: Harness, number: str, tags: list[str] | None = None,
                  token: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": "sms", "address": number, "method": "paper_form",
                            "source": "street stall", "evidence": "signed form"}
    if tags is not None:
        body["tags"] = tags
    code, answer = await h.api("POST", "/api/v1/consents", body,
                               **({} if token is None else {"token": token}))
    assert code == 201, answer
    return dict(answer)


async def broadcast(h: Harness, **body: Any) -> tuple[int, dict[str, Any]]:
    code, answer = await h.api("POST", "/api/v1/broadcasts",
                               {"channel": "sms", "text": "Canvass on Saturday", **body})
    return code, answer


async def view(h: Harness, broadcast_id: int) -> dict[str, Any]:
    code, body = await h.api("GET", f"/api/v1/broadcasts/{broadcast_id}")
    assert code == 200, body
    return dict(body)


async def wait_done(h: Harness, broadcast_id: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def done() -> bool:
        seen.update(await view(h, broadcast_id))
        return seen["status"] == "done"

    await eventually(done, f"broadcast {broadcast_id} to be done")
    return seen


def at(offset: timedelta) -> str:
    return (datetime.now(UTC) + offset).isoformat(timespec="seconds")


def advance_clock(h: Harness, seconds: float) -> None:
    """The scheduler now reads the time ``seconds`` ahead, and looks at once."""
    h.gateway.scheduler.clock = lambda: time.time() + seconds
    h.gateway.scheduler.wake()


async def tags_rows(h: Harness) -> int:
    async with h.db.read() as conn:
        return int((await conn.execute(
            select(func.count()).select_from(subscription_tags))).scalar_one())


async def six_people(h: Harness) -> None:
    """Ann (volunteer, ward-north), Ben (volunteer), Cat (ward-north), Dan (volunteer,
    ward-north; opted out), Eve (volunteer; STOPALL), Fay (no tags)."""
    await consent(h, ANN, ["volunteer", "ward-north"])
    await consent(h, BEN, ["volunteer"])
    await consent(h, CAT, ["ward-north"])
    await consent(h, DAN, ["volunteer", "ward-north"])
    await consent(h, EVE, ["volunteer"])
    await consent(h, FAY)
    code, _ = await h.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": DAN})
    assert code == 201
    assert (await h.sms_in(EVE, "STOPALL"))[0] == 200


# -- segments ---------------------------------------------------------------------------------


async def test_a_dry_run_counts_each_segment_without_opt_outs_or_suppressions(
        gw: Harness) -> None:
    await six_people(gw)
    cases = [
        ({"tags_any": ["volunteer"]}, 2, {"opted_out": 1, "suppressed": 1}),       # Ann, Ben
        ({"tags_all": ["volunteer", "ward-north"]}, 1, {"opted_out": 1}),          # Ann
        ({"tags_any": ["ward-north"], "exclude_tags": ["volunteer"]}, 1, {}),      # Cat
        ({"exclude_tags": ["ward-north"]}, 2, {"suppressed": 1}),                  # Ben, Fay
        ({"tags_any": ["nobody-has-this"]}, 0, {}),
        ({}, 4, {"opted_out": 1, "suppressed": 1}),                                # everyone
    ]
    for segment, eligible, excluded in cases:
        code, answer = await broadcast(gw, dry_run=True, **segment)
        assert code == 200, answer
        assert answer["id"] is None
        assert answer["audience"] == {"eligible": eligible, "excluded": excluded}, segment
    assert len(gw.twilio.messages) == 0


async def test_a_segmented_broadcast_reaches_exactly_what_its_dry_run_counted(
        gw: Harness) -> None:
    await six_people(gw)
    segment = {"tags_any": ["volunteer", "ward-north"], "exclude_tags": ["ward-north"]}
    code, dry = await broadcast(gw, dry_run=True, **segment)
    assert code == 200
    code, sent = await broadcast(gw, **segment)
    assert code == 202, sent
    assert sent["audience"] == dry["audience"] == {"eligible": 1,
                                                   "excluded": {"suppressed": 1}}
    assert sent["segment"] == {"tags_any": ["volunteer", "ward-north"], "tags_all": [],
                               "exclude_tags": ["ward-north"]}
    done = await wait_done(gw, sent["id"])
    assert done["counts"]["sent"] == 1
    assert [m.to for m in gw.twilio.messages] == [BEN]


async def test_broadcasts_are_listed_newest_first_with_status_and_counts(
        gw: Harness) -> None:
    await six_people(gw)
    _, first = await broadcast(gw, tags_any=["volunteer"])
    await wait_done(gw, first["id"])
    _, second = await broadcast(gw, send_at=at(timedelta(days=1)))
    code, listed = await gw.api("GET", "/api/v1/broadcasts")
    assert code == 200
    assert [b["id"] for b in listed] == [second["id"], first["id"]]
    assert listed[0]["status"] == "scheduled" and listed[0]["counts"]["sent"] == 0
    assert listed[1]["status"] == "done" and listed[1]["counts"]["sent"] == 2
    assert listed[1]["segment"]["tags_any"] == ["volunteer"]
    code, other = await gw.api("GET", "/api/v1/broadcasts", token=BOB_TOKEN)
    assert (code, other) == (200, [])
    code, problem = await gw.api("GET", "/api/v1/broadcasts?limit=0")
    assert (code, problem["code"]) == (422, "invalid_query")


async def test_bad_tags_or_send_at_are_refused_and_change_nothing(gw: Harness) -> None:
    await consent(gw, ANN, ["volunteer"])
    refused = [
        ("POST", "/api/v1/consents", {"channel": "sms", "address": BEN, "method": "verbal",
                                      "source": "phone", "evidence": "said yes",
                                      "tags": ["Ward North"]}, "invalid_tag"),
        ("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "x",
                                        "tags_any": "volunteer,ward"}, "invalid_tag"),
        ("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "x",
                                        "send_at": "2030-05-07T07:00:00"}, "invalid_send_at"),
        ("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "x",
                                        "send_at": at(-timedelta(days=1))}, "invalid_send_at"),
        ("PATCH", f"/api/v1/subscribers/sms/{ANN}", {"add_tags": ["ok", "not ok"]},
         "invalid_tag"),
        ("POST", "/api/v1/links", {"channel": "sms", "name": "Poster",
                                   "tags": ["under_score"]}, "invalid_tag"),
    ]
    for method, path, body, wanted in refused:
        code, problem = await gw.api(method, path, body)
        assert (code, problem["code"]) == (422, wanted), (path, problem)
    code, subscriber = await gw.api("GET", f"/api/v1/subscribers/sms/{BEN}")
    assert subscriber["status"] == "unknown"
    assert (await gw.api("GET", f"/api/v1/subscribers/sms/{ANN}"))[1]["tags"] == ["volunteer"]
    assert (await gw.api("GET", "/api/v1/broadcasts"))[1] == []
    assert (await gw.api("GET", "/api/v1/links"))[1] == []


# -- tags on people, links and imports --------------------------------------------------------


async def test_tags_are_added_and_removed_per_person_and_counted_per_tag(gw: Harness) -> None:
    await six_people(gw)
    code, changed = await gw.api("PATCH", f"/api/v1/subscribers/sms/{FAY}",
                                 {"add_tags": ["Postal-Voter", "volunteer"]})
    assert code == 200, changed
    assert changed == {"channel": "sms", "address": FAY,
                       "tags": ["postal-voter", "volunteer"]}
    code, changed = await gw.api("PATCH", f"/api/v1/subscribers/sms/{ANN}",
                                 {"remove_tags": ["ward-north"]})
    assert changed["tags"] == ["volunteer"]
    code, tags = await gw.api("GET", "/api/v1/tags")
    assert code == 200
    # Dan (opted out) and Eve (suppressed) keep their tags but are not counted.
    assert tags == [{"tag": "postal-voter", "channel": "sms", "subscribed": 1},
                    {"tag": "volunteer", "channel": "sms", "subscribed": 3},
                    {"tag": "ward-north", "channel": "sms", "subscribed": 1}]
    code, audit = await gw.api("GET", "/api/v1/audit?action=tags.changed")
    assert [e["actor"] for e in audit] == ["Jane Doe", "Jane Doe"]
    code, problem = await gw.api("PATCH", "/api/v1/subscribers/sms/+447911100099",
                                 {"add_tags": ["volunteer"]})
    assert (code, problem["code"]) == (404, "subscriber_not_found")
    code, problem = await gw.api("PATCH", f"/api/v1/subscribers/sms/{FAY}",
                                 {"add_tags": ["x"]}, token=JANE_AUDITOR)
    assert code == 403


async def test_a_campaigns_tags_are_never_visible_to_another_campaign(gw: Harness) -> None:
    await consent(gw, ANN, ["volunteer"])
    await consent(gw, ANN, ["treasurer-team"], token=BOB_TOKEN)
    assert (await gw.api("GET", "/api/v1/tags", token=BOB_TOKEN))[1] == [
        {"tag": "treasurer-team", "channel": "sms", "subscribed": 1}]
    code, seen = await gw.api("GET", f"/api/v1/subscribers/sms/{ANN}", token=BOB_TOKEN)
    assert seen["tags"] == ["treasurer-team"]
    code, problem = await gw.api("PATCH", f"/api/v1/subscribers/sms/{BEN}",
                                 {"add_tags": ["x"]}, token=BOB_TOKEN)
    assert code == 404
    # Bob's segment on Jane's tag reaches nobody.
    code, dry = await gw.api("POST", "/api/v1/broadcasts",
                             {"channel": "sms", "text": "x", "dry_run": True,
                              "tags_any": ["volunteer"]}, token=BOB_TOKEN)
    assert dry["audience"]["eligible"] == 0


async def test_everyone_who_joins_through_a_tagged_link_gets_its_tags(gw: Harness) -> None:
    code, link = await gw.api("POST", "/api/v1/links", {
        "channel": "sms", "name": "Freshers' fair stall", "tags": ["freshers-fair", "Students"]})
    assert code == 201, link
    assert link["tags"] == ["freshers-fair", "students"]
    async with gw.session.post(f"{gw.url}/join/{link['id']}",
                               data={"address": ANN, "consent": "yes", "website": ""}) as r:
        assert r.status == 200
    # pending: no tags until the person confirms
    assert (await gw.api("GET", f"/api/v1/subscribers/sms/{ANN}"))[1]["tags"] == []
    assert (await gw.sms_in(ANN, "YES"))[0] == 200
    subscriber = (await gw.api("GET", f"/api/v1/subscribers/sms/{ANN}"))[1]
    assert subscriber["status"] == "subscribed"
    assert subscriber["tags"] == ["freshers-fair", "students"]
    code, dry = await broadcast(gw, dry_run=True, tags_any=["freshers-fair"])
    assert dry["audience"]["eligible"] == 1


async def test_an_import_tags_its_rows_and_rejects_bad_tags_by_line(gw: Harness) -> None:
    csv = ("channel,address,method,source,evidence,tags\n"
           f"sms,{ANN},import,fair sheet,row 1,volunteer;ward-north\n"
           f"sms,{BEN},import,fair sheet,row 2,\n"
           f"sms,{CAT},import,fair sheet,row 3,ward north\n"
           f"sms,{DAN},import,fair sheet,row 4,Ward-South\n")
    code, report = await gw.api("POST", "/api/v1/consents/import", raw=csv,
                                headers={"Content-Type": "text/csv"})
    assert code == 200, report
    assert report["imported"] == 3
    assert [(r["line"], r["code"]) for r in report["rejected"]] == [(4, "invalid_tag")]
    assert (await gw.api("GET", f"/api/v1/subscribers/sms/{CAT}"))[1]["status"] == "unknown"
    tags = {t["tag"]: t["subscribed"] for t in (await gw.api("GET", "/api/v1/tags"))[1]}
    assert tags == {"volunteer": 1, "ward-north": 1, "ward-south": 1}
    # The old header without tags still works.
    code, report = await gw.api("POST", "/api/v1/consents/import",
                                raw=f"channel,address,method,source,evidence\n"
                                    f"sms,{EVE},import,fair sheet,row 9\n",
                                headers={"Content-Type": "text/csv"})
    assert report == {"imported": 1, "rejected": []}


async def test_tags_are_exported_and_erased_with_the_person(gw: Harness) -> None:
    await consent(gw, ANN, ["volunteer", "ward-north"])
    await consent(gw, BEN, ["volunteer"])
    code, export = await gw.api("GET", f"/api/v1/subjects/sms/{ANN}")
    assert code == 200
    assert [t["tag"] for t in export["tags"]] == ["volunteer", "ward-north"]
    assert await tags_rows(gw) == 3
    code, _ = await gw.api("DELETE", f"/api/v1/subjects/sms/{ANN}")
    assert code == 200
    assert await tags_rows(gw) == 1  # Ben's
    assert (await gw.api("GET", "/api/v1/tags"))[1] == [
        {"tag": "volunteer", "channel": "sms", "subscribed": 1}]


# -- scheduled broadcasts ---------------------------------------------------------------------


async def test_a_scheduled_broadcast_waits_then_goes_when_due_skipping_who_opted_out(
        gw: Harness) -> None:
    await six_people(gw)
    code, scheduled = await broadcast(gw, tags_any=["volunteer", "ward-north"],
                                      send_at=at(timedelta(hours=1)))
    assert code == 202, scheduled
    assert scheduled["status"] == "scheduled"
    assert scheduled["audience"]["eligible"] == 3  # Ann, Ben, Cat: an estimate for now
    # Not due: the scheduler starts nothing, nothing is queued.
    assert await gw.gateway.scheduler.run_due() == []
    waiting = await view(gw, scheduled["id"])
    assert waiting["status"] == "scheduled" and waiting["started_at"] is None
    assert sum(waiting["counts"].values()) == 0
    # Cat asks to stop while it waits.
    assert (await gw.sms_in(CAT, "STOP"))[0] == 200

    advance_clock(gw, 3600 + 5)
    done = await wait_done(gw, scheduled["id"])
    assert sorted(m.to for m in gw.twilio.messages) == [ANN, BEN]
    assert done["counts"]["sent"] == 2
    assert done["excluded"] == {"opted_out": 2, "suppressed": 1}  # Cat and Dan; Eve
    assert done["started_at"] is not None and done["late"] is False
    code, audit = await gw.api("GET", "/api/v1/audit?action=broadcast.started")
    assert [e["actor"] for e in audit] == ["scheduler"]


async def test_a_scheduled_broadcast_can_be_cancelled_until_it_starts(gw: Harness) -> None:
    await six_people(gw)
    _, scheduled = await broadcast(gw, send_at=at(timedelta(minutes=30)))
    code, cancelled = await gw.api("POST", f"/api/v1/broadcasts/{scheduled['id']}/cancel")
    assert code == 200 and cancelled["status"] == "cancelled"
    gw.gateway.scheduler.clock = lambda: time.time() + 7200
    assert await gw.gateway.scheduler.run_due() == []
    after = await view(gw, scheduled["id"])
    assert after["status"] == "cancelled" and after["started_at"] is None
    assert sum(after["counts"].values()) == 0
    assert gw.twilio.messages == []


async def test_a_scheduled_broadcast_survives_a_restart_and_goes_late(
        sqlite_url: str) -> None:
    async with running_gateway(sqlite_url) as h:
        await consent(h, ANN, ["volunteer"])
        await consent(h, BEN)
        _, scheduled = await broadcast(h, tags_any=["volunteer"],
                                       send_at=at(timedelta(hours=1)))
        assert scheduled["status"] == "scheduled"
    # The gateway was down when it was due: back two hours later, it goes at once.
    async with running_gateway(sqlite_url) as h:
        assert (await view(h, scheduled["id"]))["status"] == "scheduled"
        advance_clock(h, 2 * 3600)
        done = await wait_done(h, scheduled["id"])
        assert [m.to for m in h.twilio.messages] == [ANN]
        assert done["late"] is True
        assert 3500 < done["late_seconds"] < 3700


async def test_quiet_hours_hold_a_scheduled_broadcast_that_comes_due_in_them(
        sqlite_url: str) -> None:
    now = datetime.now(UTC)
    window = f'{now - timedelta(hours=2):%H:%M}-{now + timedelta(hours=3):%H:%M}'
    async with running_gateway(sqlite_url,
                               extra_policy=f'quiet_hours = "{window}"\ntimezone = "UTC"') as h:
        await consent(h, ANN)
        _, scheduled = await broadcast(h, send_at=at(timedelta(minutes=10)))
        advance_clock(h, 11 * 60)

        async def held() -> bool:
            async with h.db.read() as conn:
                rows = (await conn.execute(select(messages.c.status, messages.c.not_before)
                                           .where(messages.c.broadcast_id == scheduled["id"])
                                           )).all()
            return len(rows) == 1 and rows[0].status == "queued" and (
                rows[0].not_before > time.time() + 3600)

        await eventually(held, "the gate to hold the message until quiet hours end")
        assert (await view(h, scheduled["id"]))["status"] == "queued"
        assert h.twilio.messages == []


async def test_a_telegram_sign_up_through_a_links_deep_link_gets_its_tags(
        sqlite_url: str) -> None:
    from consentgate.testing.fakes.telegram_api import FakeTelegram
    from tests.web.test_telegram import USER, start_and_say_yes

    async with FakeTelegram() as fake, running_gateway(sqlite_url, telegram=fake) as h:
        code, link = await h.api("POST", "/api/v1/links", {
            "channel": "telegram", "name": "Leeds hustings", "tags": ["hustings-leeds"]})
        assert code == 201, link
        await start_and_say_yes(h, fake, payload=link["id"], first_update=10)

        async def tagged() -> bool:
            code, subscriber = await h.api("GET", f"/api/v1/subscribers/telegram/{USER}")
            return bool(subscriber["status"] == "subscribed"
                        and subscriber["tags"] == ["hustings-leeds"])

        await eventually(tagged, "the Telegram subscriber to have the link's tag")
        code, tags = await h.api("GET", "/api/v1/tags")
        assert tags == [{"tag": "hustings-leeds", "channel": "telegram", "subscribed": 1}]


async def test_queueing_in_small_batches_queues_each_person_of_a_segment_once(
        gw: Harness) -> None:
    """Most of the list is queued in keyed-hash ranges, a narrow segment in id ranges read
    from its tag: either way, in many small transactions, each person exactly once."""
    people = [f"+4479111001{i:02d}" for i in range(24)]
    for i, number in enumerate(people):
        await consent(gw, number, ["volunteer"] + (["rare"] if i % 8 == 0 else []))
    await gw.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": people[1]})
    gw.gateway.broadcasts.batch = 5
    for segment, wanted in [({}, people[:1] + people[2:]),
                            ({"tags_any": ["volunteer"], "exclude_tags": ["rare"]},
                             [p for i, p in enumerate(people) if i % 8 and i != 1]),
                            ({"tags_all": ["rare", "volunteer"]}, people[::8])]:
        _, dry = await broadcast(gw, dry_run=True, **segment)
        code, sent = await broadcast(gw, **segment)
        assert code == 202 and sent["audience"] == dry["audience"], segment
        async with gw.db.read() as conn:
            queued = [r.address for r in await conn.execute(
                select(messages.c.address).where(messages.c.broadcast_id == sent["id"]))]
        assert sorted(queued) == sorted(wanted), segment


async def test_segments_and_schedules_on_postgres(pg_url: str) -> None:
    async with running_gateway(pg_url) as h:
        await six_people(h)
        segment = {"tags_any": ["volunteer"], "exclude_tags": ["ward-north"]}
        _, dry = await broadcast(h, dry_run=True, **segment)
        assert dry["audience"] == {"eligible": 1, "excluded": {"suppressed": 1}}
        _, scheduled = await broadcast(h, send_at=at(timedelta(hours=1)), **segment)
        assert scheduled["status"] == "scheduled"
        assert await h.gateway.scheduler.run_due() == []
        advance_clock(h, 3600 + 5)
        done = await wait_done(h, scheduled["id"])
        assert done["counts"]["sent"] == 1
        assert [m.to for m in h.twilio.messages] == [BEN]
        _, tags = await h.api("GET", "/api/v1/tags")
        assert {t["tag"]: t["subscribed"] for t in tags} == {"volunteer": 2, "ward-north": 2}
