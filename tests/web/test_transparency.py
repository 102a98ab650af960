"""Transparency where people are asked (UK GDPR Article 13): who holds the data, how to reach
them and where the privacy notice is, shown on every page, message and reply that asks or
reminds a person, and each channel's own consent text. Over real HTTP, a real SMTP server,
the signed Twilio webhook and the Telegram fake."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from consentgate.bot.config import ConfigError, parse_config
from consentgate.testing.fakes.smtp_server import SmtpSink
from consentgate.testing.fakes.telegram_api import FakeTelegram, callback_update, message_update
from consentgate.testing.harness import (
    PUBLIC_URL,
    TELEGRAM_SECRET,
    Harness,
    config_text,
    running_gateway,
    smtp_section,
)

CONTROLLER = "Jane Doe campaign, 1 Example Road, London, privacy@jane.example.org"
PRIVACY = "https://jane.example.org/privacy"
SMS_TEXT = "Yes, send me updates about Jane's campaign. Reply STOP at any time."
EMAIL_TEXT = "Yes, email me updates about Jane's campaign. Unsubscribe at any time."
TELEGRAM_TEXT = "Yes, send me Jane's updates on Telegram. Send /stop at any time."
FROM = "Jane Doe <jane@example.org>"
EMAIL = "new.voter@example.com"
NUMBER = "+447911123456"


def _html(text: str) -> str:
    return text.replace("'", "&#39;")


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as server:
        yield server


@pytest.fixture
async def mail(sqlite_url: str, sink: SmtpSink) -> AsyncIterator[Harness]:
    section = smtp_section(sink.port, FROM) + f'consent_text = "{EMAIL_TEXT}"\n'
    async with running_gateway(sqlite_url, jane_email=section) as h:
        yield h


async def new_link(h: Harness, channel: str, name: str = "Leaflet") -> dict[str, Any]:
    code, link = await h.api("POST", "/api/v1/links", {"channel": channel, "name": name})
    assert code == 201, link
    return dict(link)


async def get(h: Harness, url: str) -> tuple[int, str]:
    async with h.session.get(url.replace(PUBLIC_URL, h.url)) as r:
        return r.status, await r.text()


def assert_transparent(html: str) -> None:
    assert CONTROLLER in html
    assert f'<a href="{PRIVACY}"' in html


# -- configuration -------------------------------------------------------------------------


def test_the_privacy_notice_controller_and_channel_consent_texts_are_read() -> None:
    text = config_text("sqlite+aiosqlite:///x.db", "http://127.0.0.1:1",
                       jane_email=f'provider = "log"\nconsent_text = "{EMAIL_TEXT}"')
    jane = parse_config(text, environ={}).campaigns[0]
    assert (jane.privacy_notice_url, jane.controller) == (PRIVACY, CONTROLLER)
    assert jane.consent_text_for("email") == EMAIL_TEXT
    assert jane.consent_text_for("sms") == SMS_TEXT  # no text of its own: the campaign's
    assert jane.consent_text_for("telegram") == SMS_TEXT

    bad = text.replace(f'privacy_notice_url = "{PRIVACY}"', 'privacy_notice_url = "privacy"')
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, environ={})
    assert caught.value.key == "campaigns[0].privacy_notice_url"


async def test_a_campaign_without_a_privacy_notice_cannot_make_a_join_link(
        sqlite_url: str) -> None:
    carol = """
[[campaigns]]
slug = "carol"
name = "Carol for Mayor"
imprint = "Promoted by Carol"
consent_text = "Yes, send me Carol's news."
operators = [ { name = "Carol", token = "carol-organiser-token-01", role = "organiser" } ]
[campaigns.sms]
provider = "log"
"""
    async with running_gateway(sqlite_url, extra_config=carol) as h:
        code, answer = await h.api("POST", "/api/v1/links", {"channel": "sms", "name": "x"},
                                   token="carol-organiser-token-01")
        assert (code, answer["code"]) == (422, "privacy_notice_missing")
        assert "privacy_notice_url" in answer["detail"]
        _, listed = await h.api("GET", "/api/v1/links", token="carol-organiser-token-01")
        assert listed == []


# -- pages and messages --------------------------------------------------------------------


async def test_join_pages_name_the_controller_link_the_privacy_notice_and_speak_per_channel(
        mail: Harness) -> None:
    sms, email = await new_link(mail, "sms"), await new_link(mail, "email")
    code, html = await get(mail, sms["url"])
    assert code == 200
    assert_transparent(html)
    assert _html(SMS_TEXT) in html and "by replying STOP" in html

    code, html = await get(mail, email["url"])
    assert code == 200
    assert_transparent(html)
    assert _html(EMAIL_TEXT) in html and _html(SMS_TEXT) not in html
    assert "STOP" not in html and "unsubscribe link" in html

    # The page after submitting names them too.
    async with mail.session.post(f"{mail.url}/join/{email['id']}",
                                 data={"address": EMAIL, "consent": "yes"}) as r:
        assert r.status == 200
        assert_transparent(await r.text())
    # And the evidence of the pending consent records what the page told them.
    code, record = await mail.api("GET", f"/api/v1/subjects/email/{EMAIL}")
    assert code == 200, record
    evidence = json.loads(record["consent_history"][0]["evidence"])
    assert (evidence["controller"], evidence["privacy_notice_url"]) == (CONTROLLER, PRIVACY)


async def test_the_email_confirmation_its_page_footers_and_unsubscribe_page_name_them(
        mail: Harness, sink: SmtpSink) -> None:
    link = await new_link(mail, "email")
    async with mail.session.post(f"{mail.url}/join/{link['id']}",
                                 data={"address": EMAIL, "consent": "yes"}) as r:
        assert r.status == 200
    [confirmation] = await sink.wait_for(1)
    body = confirmation.message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert CONTROLLER in text and PRIVACY in text
    found = re.search(r"https://gateway\.example\.org/confirm/\S+", text)
    assert found is not None
    code, html = await get(mail, found.group(0))
    assert code == 200 and "Yes, confirm" in html
    assert_transparent(html)
    assert _html(EMAIL_TEXT) in html  # the words they agree to, once more
    async with mail.session.post(found.group(0).replace(PUBLIC_URL, mail.url)) as r:
        assert r.status == 200
        assert_transparent(await r.text())

    code, sent = await mail.api("POST", "/api/v1/messages",
                                {"channel": "email", "to": EMAIL, "text": "Polling day."})
    assert code == 202, sent
    _, campaign_mail = await sink.wait_for(2)
    for kind in ("plain", "html"):
        part = campaign_mail.message.get_body((kind,))
        assert part is not None
        content = part.get_content()
        assert CONTROLLER in content and PRIVACY in content, kind
    plain = campaign_mail.message.get_body(("plain",))
    assert plain is not None
    unsubscribe = re.search(r"https://gateway\.example\.org/u/\S+", plain.get_content())
    assert unsubscribe is not None
    code, html = await get(mail, unsubscribe.group(0))
    assert code == 200 and "Unsubscribe from Jane Doe for President" in html
    assert_transparent(html)
    async with mail.session.post(unsubscribe.group(0).replace(PUBLIC_URL, mail.url)) as r:
        assert r.status == 200
        page = await r.text()
    assert "You are unsubscribed" in page
    assert_transparent(page)


async def test_the_sms_help_reply_names_the_controller_and_the_privacy_notice(
        gw: Harness) -> None:
    code, twiml = await gw.sms_in(NUMBER, "HELP")
    assert code == 200
    assert CONTROLLER in twiml and PRIVACY in twiml and "STOP" in twiml
    # The confirmation of a subscription links the notice too.
    code, twiml = await gw.sms_in(NUMBER, "START")
    assert code == 200 and "You are subscribed" in twiml and PRIVACY in twiml


async def test_the_telegram_consent_prompt_shows_its_own_text_the_controller_and_notice(
        sqlite_url: str) -> None:
    async with FakeTelegram() as fake, running_gateway(
            sqlite_url, telegram=fake, telegram_extra=f'consent_text = "{TELEGRAM_TEXT}"') as h:
        async with h.session.post(f"{h.url}/webhooks/telegram/jane-2026",
                                  json=message_update(1, 4242, "/start"),
                                  headers={"X-Telegram-Bot-Api-Secret-Token":
                                           TELEGRAM_SECRET}) as r:
            assert r.status == 200
        [prompt] = await fake.wait_for(1)
        assert prompt.reply_markup is not None
        yes = prompt.reply_markup["inline_keyboard"][0][0]["callback_data"]
        assert yes.startswith("consent:yes")
        async with h.session.post(f"{h.url}/webhooks/telegram/jane-2026",
                                  json=callback_update(2, 4242, yes,
                                                       message_id=prompt.message_id),
                                  headers={"X-Telegram-Bot-Api-Secret-Token":
                                           TELEGRAM_SECRET}) as r:
            assert r.status == 200
        _, subscribed = await fake.wait_for(2)
    assert TELEGRAM_TEXT in prompt.text and SMS_TEXT not in prompt.text
    assert CONTROLLER in prompt.text and PRIVACY in prompt.text
    assert "subscribed" in subscribed.text and PRIVACY in subscribed.text
