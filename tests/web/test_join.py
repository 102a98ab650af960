"""The public join page over real HTTP: what it shows, double opt-in by email (a real SMTP
server receives the confirmation, the link in it is followed) and by SMS (YES through the
signed Twilio webhook), attribution counts, abuse limits, and withdrawn links (410)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update

from consentgate.adapters.pacing import SlidingWindow
from consentgate.storage.models import links, messages
from consentgate.testing.fakes.smtp_server import SmtpSink
from consentgate.testing.harness import (
    BOB_TOKEN,
    JANE,
    JANE_TOKEN,
    PUBLIC_URL,
    Harness,
    running_gateway,
)
from tests.web.test_email import email_gateway

NUMBER = "+447911123456"
NATIONAL = "07911 123456"
EMAIL = "new.voter@example.com"
AGENT = "JoinTest/1.0 (phone)"
CONSENT = "Yes, send me updates about Jane&#39;s campaign. Reply STOP at any time."
IMPRINT = "Promoted by Jane Doe, 1 Example Road, London"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as server:
        yield server


@pytest.fixture
async def mail(sqlite_url: str, sink: SmtpSink) -> AsyncIterator[Harness]:
    async with email_gateway(sqlite_url, sink, inbound=False) as h:
        yield h


async def new_link(h: Harness, channel: str, name: str = "Town hall poster",
                   **extra: Any) -> dict[str, Any]:
    code, link = await h.api("POST", "/api/v1/links", {"channel": channel, "name": name,
                                                       **extra})
    assert code == 201, link
    return dict(link)


async def page(h: Harness, link_id: str) -> tuple[int, str]:
    async with h.session.get(f"{h.url}/join/{link_id}") as r:
        return r.status, await r.text()


async def submit(h: Harness, link_id: str, address: str, *, consent: bool = True,
                 website: str = "", agent: str = AGENT) -> tuple[int, str]:
    form = {"address": address, "website": website}
    if consent:
        form["consent"] = "yes"
    async with h.session.post(f"{h.url}/join/{link_id}", data=form,
                              headers={"User-Agent": agent}) as r:
        return r.status, await r.text()


async def subject(h: Harness, channel: str, address: str) -> dict[str, Any]:
    code, body = await h.api("GET", f"/api/v1/subjects/{channel}/{address}")
    assert code == 200, body
    return dict(body)


async def status_of(h: Harness, channel: str, address: str) -> tuple[str, bool]:
    code, body = await h.api("GET", f"/api/v1/subscribers/{channel}/{address}")
    assert code == 200, body
    return body["status"], body["can_send"]


async def joins(h: Harness, link_id: str, token: str | None = None) -> int:
    _, listed = await h.api("GET", "/api/v1/links")
    return int(next(x["joins"] for x in listed if x["id"] == link_id))


async def confirm_messages(h: Harness, channel: str) -> list[Any]:
    async with h.db.read() as conn:
        return list((await conn.execute(select(messages).where(
            messages.c.channel == channel, messages.c.kind == "confirm"))).all())


# -- the page ------------------------------------------------------------------------------


async def test_the_join_page_shows_campaign_imprint_consent_text_and_an_unticked_box(
        gw: Harness) -> None:
    link = await new_link(gw, "sms")
    async with gw.session.get(f"{gw.url}/join/{link['id']}") as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert "script-src" not in r.headers["Content-Security-Policy"]
        html = await r.text()
    assert "<h1>Jane Doe for President</h1>" in html
    assert IMPRINT in html and CONSENT in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    box = re.search(r"<input type=\"checkbox\"[^>]*>", html)
    assert box is not None and "checked" not in box.group(0)
    assert '<label for="consent" id="consent-text">' in html
    assert '<label for="address">Mobile number</label>' in html and 'type="tel"' in html
    assert 'name="website"' in html  # the honeypot, hidden from people
    assert "<script" not in html.lower()

    email_link = await new_link(gw, "email", "Leaflet")
    _, html = await page(gw, email_link["id"])
    assert '<label for="address">Email address</label>' in html and 'type="email"' in html


async def test_a_telegram_link_shows_a_button_that_starts_the_bot_with_the_link(
        sqlite_url: str) -> None:
    from consentgate.testing.fakes.telegram_api import FakeTelegram

    async with FakeTelegram() as tg, running_gateway(sqlite_url, telegram=tg) as h:
        link = await new_link(h, "telegram", "Campus stall")
        code, html = await page(h, link["id"])
    assert code == 200
    assert f'href="https://t.me/jane_campaign_bot?start={link["id"]}"' in html
    assert CONSENT in html and 'type="checkbox"' not in html


async def test_unknown_links_are_404_and_revoked_or_expired_links_are_410(
        gw: Harness) -> None:
    assert (await page(gw, "NoSuchLink00"))[0] == 404
    assert (await submit(gw, "NoSuchLink00", NUMBER))[0] == 404

    revoked = await new_link(gw, "sms", "Old leaflet")
    code, _ = await gw.api("POST", f"/api/v1/links/{revoked['id']}/revoke")
    assert code == 200
    code, html = await page(gw, revoked["id"])
    assert code == 410 and "has ended" in html
    assert (await submit(gw, revoked["id"], NUMBER))[0] == 410

    expired = await new_link(gw, "email", "Hustings", expires_at="2099-01-01T00:00:00Z")
    async with gw.db.write() as conn:  # the clock moves past the expiry
        await conn.execute(update(links).where(links.c.id == expired["id"])
                           .values(expires_at=time.time() - 1))
    assert (await page(gw, expired["id"]))[0] == 410
    assert (await submit(gw, expired["id"], EMAIL))[0] == 410
    assert await status_of(gw, "sms", NUMBER) == ("unknown", False)
    assert await status_of(gw, "email", EMAIL) == ("unknown", False)


# -- double opt-in: email --------------------------------------------------------------------


async def test_email_double_opt_in_mails_a_confirmation_link_that_subscribes_once(
        mail: Harness, sink: SmtpSink) -> None:
    link = await new_link(mail, "email", "Leaflet, Ward 3")
    code, html = await submit(mail, link["id"], "New.Voter@Example.com")
    assert code == 200 and "Check your email" in html

    # Pending: evidenced, and nothing but the confirmation may reach it.
    assert await status_of(mail, "email", EMAIL) == ("pending", False)
    code, refused = await mail.api("POST", "/api/v1/messages",
                                   {"channel": "email", "to": EMAIL, "text": "Vote Jane"})
    assert (code, refused["code"]) == (403, "no_consent")
    [pending] = (await subject(mail, "email", EMAIL))["consent_history"]
    assert (pending["event"], pending["method"], pending["source"], pending["recorded_by"]) \
        == ("pending", "web_form", "join link Leaflet, Ward 3", "recipient")
    evidence = json.loads(pending["evidence"])
    assert evidence["ip"] == "127.0.0.1" and evidence["user_agent"] == AGENT
    assert evidence["link_id"] == link["id"] and evidence["at"]
    assert evidence["consent_text_version"] == pending["consent_text_version"]
    assert pending["link"] == {"id": link["id"], "name": "Leaflet, Ward 3"}

    [received] = await sink.wait_for(1)
    assert received.rcpt_tos == (EMAIL,)
    body = received.message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Jane Doe for President" in text and IMPRINT in text
    url = re.search(r"https://gateway\.example\.org/confirm/\S+", text)
    assert url is not None
    assert await joins(mail, link["id"]) == 0

    # Opening the link (a person, or a mail scanner fetching it) shows one button and
    # changes nothing.
    confirm_url = url.group(0).replace(PUBLIC_URL, mail.url)
    for _ in range(2):
        async with mail.session.get(confirm_url) as r:
            assert r.status == 200
            html = await r.text()
        assert "Confirm your sign-up" in html and '<form method="post">' in html
        assert "n***@example.com" in html and "Yes, confirm</button>" in html
    assert await status_of(mail, "email", EMAIL) == ("pending", False)
    assert await joins(mail, link["id"]) == 0

    async with mail.session.post(confirm_url, data={"confirm": "yes"}) as r:
        assert r.status == 200
        assert "You are subscribed" in await r.text()
    assert await status_of(mail, "email", EMAIL) == ("subscribed", True)
    history = (await subject(mail, "email", EMAIL))["consent_history"]
    assert [h["event"] for h in history] == ["pending", "subscribed"]
    confirmed = json.loads(history[1]["evidence"])
    assert confirmed["token_issued_at"] and confirmed["link_id"] == link["id"]
    assert history[1]["consent_text_version"] == pending["consent_text_version"]
    assert await joins(mail, link["id"]) == 1

    # Following it again (a mail client re-opening it, the button pressed twice) changes
    # nothing, counts nothing.
    async with mail.session.get(confirm_url) as r:
        assert r.status == 200 and "already subscribed" in await r.text()
    async with mail.session.post(confirm_url) as r:
        assert r.status == 200 and "already subscribed" in await r.text()
    assert await joins(mail, link["id"]) == 1
    assert len((await subject(mail, "email", EMAIL))["consent_history"]) == 2


async def test_a_changed_or_made_up_confirmation_token_is_404_and_changes_nothing(
        mail: Harness, sink: SmtpSink) -> None:
    link = await new_link(mail, "email")
    await submit(mail, link["id"], EMAIL)
    [received] = await sink.wait_for(1)
    body = received.message.get_body(("plain",))
    assert body is not None
    match = re.search(r"/confirm/(\S+)", body.get_content())
    assert match is not None
    token = match.group(1)
    for bad in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "made-up"):
        async with mail.session.get(f"{mail.url}/confirm/{bad}") as r:
            assert r.status == 404 and "does not work" in await r.text()
        async with mail.session.post(f"{mail.url}/confirm/{bad}") as r:
            assert r.status == 404 and "does not work" in await r.text()
    assert await status_of(mail, "email", EMAIL) == ("pending", False)


async def test_an_opt_out_after_joining_outranks_the_confirmation_link(
        mail: Harness, sink: SmtpSink) -> None:
    link = await new_link(mail, "email")
    await submit(mail, link["id"], EMAIL)
    [received] = await sink.wait_for(1)
    body = received.message.get_body(("plain",))
    assert body is not None
    match = re.search(r"/confirm/(\S+)", body.get_content())
    assert match is not None
    code, _ = await mail.api("POST", "/api/v1/opt-outs",
                             {"channel": "email", "address": EMAIL, "reason": "asked"})
    assert code == 201
    async with mail.session.get(f"{mail.url}/confirm/{match.group(1)}") as r:
        assert r.status == 404
    async with mail.session.post(f"{mail.url}/confirm/{match.group(1)}") as r:
        assert r.status == 404
    assert (await status_of(mail, "email", EMAIL))[0] == "opted_out"
    assert await joins(mail, link["id"]) == 0


# -- double opt-in: SMS --------------------------------------------------------------------


async def test_sms_double_opt_in_texts_reply_yes_and_yes_subscribes(gw: Harness) -> None:
    link = await new_link(gw, "sms")
    code, html = await submit(gw, link["id"], NATIONAL)
    assert code == 200 and "Check your phone" in html and "YES" in html
    assert await status_of(gw, "sms", NUMBER) == ("pending", False)

    [sms] = await gw.twilio.wait_for(1)
    assert sms.to == NUMBER
    assert sms.body == ("Jane Doe for President: reply YES to confirm you want campaign "
                        "texts. Privacy notice: https://jane.example.org/privacy "
                        "Not you? Ignore this and you will get nothing more.")
    code, refused = await gw.api("POST", "/api/v1/messages",
                                 {"channel": "sms", "to": NUMBER, "text": "Vote Jane"})
    assert (code, refused["code"]) == (403, "no_consent")

    code, twiml = await gw.sms_in(NUMBER, "Yes")
    assert code == 200 and "subscribed" in twiml
    assert await status_of(gw, "sms", NUMBER) == ("subscribed", True)
    events = [h["event"] for h in (await subject(gw, "sms", NUMBER))["consent_history"]]
    assert events == ["pending", "subscribed"]


async def test_sms_keyword_join_is_counted_on_the_poster_it_came_from(
        sqlite_url: str) -> None:
    async with running_gateway(sqlite_url) as h:
        hall = await new_link(h, "sms", "Town hall poster")
        other = await new_link(h, "sms", "Leaflet")
    config = f'join_keywords = {{ HALL = "{hall["id"]}" }}'
    async with running_gateway(sqlite_url, jane_extra=config) as h:
        code, _ = await h.sms_in(NUMBER, "JOIN HALL")
        assert code == 200
        assert await status_of(h, "sms", NUMBER) == ("subscribed", True)
        assert await joins(h, hall["id"]) == 1 and await joins(h, other["id"]) == 0
        [event] = (await subject(h, "sms", NUMBER))["consent_history"]
        assert event["link"] == {"id": hall["id"], "name": "Town hall poster"}
        assert event["method"] == "keyword"


# -- abuse ---------------------------------------------------------------------------------


async def test_an_unticked_box_or_a_bad_address_records_nothing(gw: Harness) -> None:
    link = await new_link(gw, "sms")
    code, html = await submit(gw, link["id"], NUMBER, consent=False)
    assert code == 422 and "Tick the box" in html and 'aria-invalid="true"' in html
    code, html = await submit(gw, link["id"], "not a number")
    assert code == 422 and "does not look like a mobile number" in html
    assert await status_of(gw, "sms", NUMBER) == ("unknown", False)
    assert await confirm_messages(gw, "sms") == []


async def test_a_filled_honeypot_gets_the_same_answer_and_records_nothing(
        gw: Harness) -> None:
    link = await new_link(gw, "sms")
    code, html = await submit(gw, link["id"], NUMBER, website="http://spam.example")
    assert code == 200 and "Check your phone" in html
    assert await status_of(gw, "sms", NUMBER) == ("unknown", False)
    assert await confirm_messages(gw, "sms") == []


async def test_one_confirmation_per_address_per_day_and_none_to_a_subscriber(
        gw: Harness) -> None:
    link = await new_link(gw, "sms")
    first = await submit(gw, link["id"], NUMBER)
    second = await submit(gw, link["id"], NATIONAL, agent="Someone else")
    assert first == second  # the same page: it tells a stranger nothing
    assert len(await confirm_messages(gw, "sms")) == 1
    assert len((await subject(gw, "sms", NUMBER))["consent_history"]) == 1

    await gw.subscribe("+447911123499")
    before = await subject(gw, "sms", "+447911123499")
    code, html = await submit(gw, link["id"], "+447911123499")
    assert code == 200 and "Check your phone" in html
    after = await subject(gw, "sms", "+447911123499")
    assert after["consent_history"] == before["consent_history"]
    assert after["status"] == "subscribed"
    assert len(await confirm_messages(gw, "sms")) == 1


async def test_the_confirmation_carries_no_user_supplied_text(
        mail: Harness, sink: SmtpSink) -> None:
    link = await new_link(mail, "email")
    async with mail.session.post(f"{mail.url}/join/{link['id']}", data={
            "address": EMAIL, "consent": "yes", "name": "BUY CHEAP PILLS",
            "message": "http://spam.example"},
            headers={"User-Agent": "BUY CHEAP PILLS"}) as r:
        assert r.status == 200
    [received] = await sink.wait_for(1)
    raw = received.content.decode(errors="replace")
    assert "PILLS" not in raw and "spam.example" not in raw


async def test_too_many_submissions_from_one_ip_get_429(gw: Harness) -> None:
    link = await new_link(gw, "sms")
    answers = [(await submit(gw, link["id"], f"+4479111234{i:02d}"))[0] for i in range(11)]
    assert answers == [200] * 10 + [429]
    assert await status_of(gw, "sms", "+447911123410") == ("unknown", False)
    # Another campaign's operators see nothing of it.
    _, bobs = await gw.api("GET", "/api/v1/links", token=BOB_TOKEN)
    assert bobs == []


EVIL = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}


async def post_form(h: Harness, path: str, form: dict[str, str],
                    headers: dict[str, str]) -> tuple[int, str, str]:
    async with h.session.post(f"{h.url}{path}", data=form, headers=headers) as r:
        return r.status, r.content_type, await r.text()


async def test_a_cross_site_join_post_is_403_and_changes_nothing(gw: Harness) -> None:
    link = await new_link(gw, "sms")
    form = {"address": NUMBER, "consent": "yes"}
    for headers in (EVIL, {"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site", "Origin": "https://www.example.org"}):
        status, kind, body = await post_form(gw, f"/join/{link['id']}", form, headers)
        assert (status, kind) == (403, "application/problem+json"), headers
        assert json.loads(body)["code"] == "cross_site_request"
    assert await status_of(gw, "sms", NUMBER) == ("unknown", False)
    assert await confirm_messages(gw, "sms") == []

    # Its own page (what a browser says of it), the public address, an old browser or
    # curl (no header), and "Origin: null" (a page with Referrer-Policy: no-referrer).
    for i, headers in enumerate(({"Origin": gw.url, "Sec-Fetch-Site": "same-origin"},
                                 {"Origin": PUBLIC_URL}, {}, {"Origin": "null"})):
        address = f"+4479111234{60 + i}"
        status, _, body = await post_form(gw, f"/join/{link['id']}",
                                          {"address": address, "consent": "yes"}, headers)
        assert status == 200 and "Check your phone" in body, headers
        assert (await status_of(gw, "sms", address))[0] == "pending"


async def test_a_cross_site_confirmation_is_403_and_leaves_it_pending(
        mail: Harness, sink: SmtpSink) -> None:
    link = await new_link(mail, "email")
    await submit(mail, link["id"], EMAIL)
    [received] = await sink.wait_for(1)
    body = received.message.get_body(("plain",))
    assert body is not None
    match = re.search(r"/confirm/(\S+)", body.get_content())
    assert match is not None
    path = f"/confirm/{match.group(1)}"
    status, kind, answer = await post_form(mail, path, {"confirm": "yes"}, EVIL)
    assert (status, json.loads(answer)["code"]) == (403, "cross_site_request")
    assert await status_of(mail, "email", EMAIL) == ("pending", False)
    status, _, answer = await post_form(mail, path, {"confirm": "yes"},
                                        {"Origin": mail.url, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and "You are subscribed" in answer
    assert await status_of(mail, "email", EMAIL) == ("subscribed", True)


async def test_one_link_and_the_whole_form_each_have_a_limit(gw: Harness) -> None:
    service = gw.gateway.joins
    service.by_ip = SlidingWindow(1000, 3600)  # a venue's Wi-Fi: one address for everyone
    service.by_link = SlidingWindow(3, 3600)
    poster, leaflet = await new_link(gw, "sms", "Poster"), await new_link(gw, "sms", "Leaflet")
    answers = [(await submit(gw, poster["id"], f"+4479111234{i:02d}"))[0] for i in range(4)]
    assert answers == [200, 200, 200, 429]
    assert await status_of(gw, "sms", "+447911123403") == ("unknown", False)
    assert (await submit(gw, leaflet["id"], "+447911123410"))[0] == 200  # its own count

    service.overall = SlidingWindow(2, 3600)
    answers = [(await submit(gw, leaflet["id"], f"+4479111234{i}"))[0] for i in (11, 12, 13)]
    assert answers == [200, 200, 429]
    assert await status_of(gw, "sms", "+447911123413") == ("unknown", False)


def _campaign(slug: str, token: str) -> str:
    return f"""
[[campaigns]]
slug = "{slug}"
name = "Campaign {slug}"
imprint = "Promoted by {slug}"
consent_text = "Yes, send me {slug} news."
privacy_notice_url = "https://{slug}.example.org/privacy"
operators = [ {{ name = "Organiser", token = "{token}", role = "organiser" }} ]
[campaigns.sms]
provider = "log"
"""


async def test_an_address_gets_at_most_three_confirmations_a_day_whatever_the_source(
        sqlite_url: str) -> None:
    more = _campaign("carol", "carol-organiser-token-01") + _campaign("dan",
                                                                      "dan-organiser-token-0001")
    async with running_gateway(sqlite_url, extra_config=more) as h:
        h.gateway.joins.by_ip = SlidingWindow(1000, 3600)
        h.gateway.joins.by_address = SlidingWindow(1000, 3600)
        found = []
        for token in (JANE_TOKEN, BOB_TOKEN, "carol-organiser-token-01",
                      "dan-organiser-token-0001"):
            code, link = await h.api("POST", "/api/v1/links",
                                     {"channel": "sms", "name": "Poster"}, token=token)
            assert code == 201, link
            found.append(link["id"])
        # 12 addresses, each submitted 7 times over the four campaigns' pages.
        addresses = [f"+4479111235{i:02d}" for i in range(12)]
        for address in addresses:
            for attempt in range(7):
                code, _ = await submit(h, found[attempt % 4], address)
                assert code == 200
        sent = await confirm_messages(h, "sms")
        per_address = {a: sum(1 for m in sent if m.address == a) for a in addresses}
        assert per_address == {a: 3 for a in addresses}  # not 7, not 4


def test_the_per_address_window_forgets_after_the_window() -> None:
    window = SlidingWindow(limit=2, window=60.0)
    assert [window.allow("a", now=t) for t in (0.0, 1.0, 2.0)] == [True, True, False]
    assert window.allow("b", now=2.0)
    assert window.allow("a", now=61.0)


# -- QR codes and posters ------------------------------------------------------------------


async def test_qr_codes_as_svg_and_png_and_a_printable_poster(gw: Harness) -> None:
    link = await new_link(gw, "sms", "Bus stop poster")
    auth = {"Authorization": "Bearer jane-organiser-token-0001"}
    async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/qr.png",
                              headers=auth) as r:
        assert r.status == 200 and r.content_type == "image/png"
        assert (await r.read()).startswith(b"\x89PNG\r\n\x1a\n")
    async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/qr.svg",
                              headers=auth) as r:
        assert r.status == 200 and "<svg" in await r.text()
    for size in ("A4", "a5", "A6"):
        async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/poster",
                                  params={"size": size}, headers=auth) as r:
            assert r.status == 200 and r.content_type == "text/html"
            html = await r.text()
        assert "<svg" in html and 'viewBox="0 0 ' in html and IMPRINT in html
        # The link's name is the team's own label: in the title, never on the paper.
        assert "Bus stop poster" not in html.split("</title>", 1)[1]
        assert f"gateway.example.org/join/{link['id']}" in html
    async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/poster") as r:
        assert r.status == 401
    async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/poster",
                              headers={"Authorization": f"Bearer {BOB_TOKEN}"}) as r:
        assert r.status == 404


async def test_the_join_form_works_without_cookies_or_script(gw: Harness) -> None:
    """A plain client (no cookie jar, no script) gets the whole flow."""
    link = await new_link(gw, "sms")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as plain:
        async with plain.post(f"{gw.url}/join/{link['id']}",
                              data={"address": NUMBER, "consent": "yes"}) as r:
            assert r.status == 200 and "Set-Cookie" not in r.headers
    assert (await status_of(gw, "sms", NUMBER))[0] == "pending"
    assert JANE in {m.campaign for m in await confirm_messages(gw, "sms")}


async def test_the_links_command_writes_a_png_qr_code(tmp_path: Path) -> None:
    from tests.web.test_links import _config, consentgate

    png = tmp_path / "poster.png"
    status, out, err = await consentgate("links", "create", "sms", "Market stall", "--qr",
                                         str(png), "--config", str(_config(tmp_path)))
    assert status == 0, err
    assert json.loads(out)["url"].startswith(f"{PUBLIC_URL}/join/")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- a join must not weaken an objection, and an SMS confirmation counts on its link ---------


async def test_an_sms_join_confirmed_by_yes_is_counted_on_its_link(gw: Harness) -> None:
    link = await new_link(gw, "sms")
    await submit(gw, link["id"], NUMBER)
    assert (await gw.sms_in(NUMBER, "YES"))[0] == 200
    assert await joins(gw, link["id"]) == 1


async def test_a_join_form_for_an_opted_out_number_does_not_let_operators_resubscribe_it(
        gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    code, _ = await gw.api("POST", "/api/v1/opt-outs",
                           {"channel": "sms", "address": NUMBER, "reason": "asked"})
    assert code == 201
    link = await new_link(gw, "sms")
    await submit(gw, link["id"], NUMBER)  # anyone can type a number into the form
    code, body = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": NUMBER, "method": "paper_form", "source": "stall",
        "evidence": "signed form"})
    assert (code, body.get("code")) == (409, "opted_out")


async def test_an_import_cannot_resubscribe_an_opted_out_number_that_used_the_form(
        gw: Harness) -> None:
    await gw.subscribe(NUMBER)
    await gw.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": NUMBER})
    link = await new_link(gw, "sms")
    await submit(gw, link["id"], NUMBER)
    csv = f"channel,address,method,source,evidence\nsms,{NUMBER},paper_form,stall,form 1\n"
    status, report = await gw.api("POST", "/api/v1/consents/import", raw=csv)
    assert status == 200
    assert (report["imported"], [r["code"] for r in report["rejected"]]) == (0, ["opted_out"])
