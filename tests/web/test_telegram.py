"""The Telegram channel end to end: the whole gateway on loopback, the loopback Bot API, and
python-telegram-bot's real client between them.

Updates arrive as Telegram sends them (a POST to the webhook with the secret header, or
through getUpdates in polling mode); everything the bot says goes through the outbox, the
gate and the dispatcher, and is seen arriving at the fake Bot API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from consentgate.adapters.telegram import ALLOWED_UPDATES
from consentgate.bot import outbox
from consentgate.bot.versions import consent_text_version
from consentgate.storage.models import consent_events, messages
from consentgate.testing.fakes.telegram_api import (
    FakeTelegram,
    callback_update,
    join_request_update,
    message_update,
    my_chat_member_update,
)
from consentgate.testing.harness import (
    BOB,
    JANE,
    JANE_GROUP,
    PUBLIC_URL,
    SECRET,
    TELEGRAM_SECRET,
    Harness,
    running_gateway,
)
from consentgate.testing.waiting import eventually
from tests.procs import CONSENTGATE

# python-telegram-bot warns about RetryAfter.retry_after's coming type change from inside its
# own constructor; the adapter reads both types.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*attribute `retry_after` will be of type:telegram.warnings.PTBDeprecationWarning"
)

USER = 4242
OTHER_USER = 5151
FOREIGN_GROUP = -1009876543210
CONSENT_TEXT = "Yes, send me updates about Jane's campaign. Reply STOP at any time."


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as running:
        yield running


@pytest.fixture
async def tg(sqlite_url: str, fake: FakeTelegram) -> AsyncIterator[Harness]:
    async with running_gateway(sqlite_url, telegram=fake) as h:
        yield h


async def deliver(h: Harness, update: dict[str, Any], *, secret: str | None = TELEGRAM_SECRET,
                  campaign: str = JANE) -> int:
    """POST an Update to the webhook the way Telegram does."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    async with h.session.post(f"{h.url}/webhooks/telegram/{campaign}",
                              data=json.dumps(update), headers=headers) as r:
        await r.read()
        return r.status


async def status_of(h: Harness, user: int = USER) -> dict[str, Any]:
    code, body = await h.api("GET", f"/api/v1/subscribers/telegram/{user}")
    assert code == 200, body
    return body  # type: ignore[no-any-return]


async def message_rows(h: Harness, user: int = USER) -> list[Any]:
    async with h.db.read() as conn:
        return list(await conn.execute(
            select(messages).where(messages.c.campaign == JANE,
                                   messages.c.channel == "telegram",
                                   messages.c.address == str(user))
            .order_by(messages.c.id)))


async def message_status(h: Harness, message_id: int) -> dict[str, Any]:
    code, body = await h.api("GET", f"/api/v1/messages/{message_id}")
    assert code == 200, body
    return body  # type: ignore[no-any-return]


async def wait_for_status(h: Harness, message_id: int, wanted: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await message_status(h, message_id))
        return found["status"] == wanted

    await eventually(reached, what=f"message {message_id} to become {wanted}")
    return found


def buttons(sent: Any) -> list[tuple[str, str]]:
    assert sent.reply_markup is not None
    return [(row[0]["text"], row[0]["callback_data"])
            for row in sent.reply_markup["inline_keyboard"]]


async def start_and_say_yes(h: Harness, fake: FakeTelegram, user: int = USER,
                            payload: str | None = None, first_update: int = 100) -> None:
    already = len(fake.sent)
    text = "/start" if payload is None else f"/start {payload}"
    assert await deliver(h, message_update(first_update, user, text)) == 200
    prompt = (await fake.wait_for(already + 1))[-1]
    yes = next(data for label, data in buttons(prompt) if data.startswith("consent:yes"))
    assert await deliver(h, callback_update(first_update + 1, user, yes,
                                            message_id=prompt.message_id)) == 200


# -- consent --------------------------------------------------------------------------------


async def test_start_alone_answers_with_the_consent_prompt_and_subscribes_nobody(
        tg: Harness, fake: FakeTelegram) -> None:
    assert await deliver(tg, message_update(1, USER, "/start")) == 200

    [prompt] = await fake.wait_for(1)
    assert prompt.chat_id == USER
    assert "Jane Doe for President" in prompt.text
    assert "Promoted by Jane Doe, 1 Example Road, London" in prompt.text
    assert CONSENT_TEXT in prompt.text
    labels = buttons(prompt)
    assert len(labels) == 2
    assert labels[0][1].startswith("consent:yes:") and labels[1][1].startswith("consent:no:")
    assert consent_text_version(CONSENT_TEXT) in labels[0][1]

    subscriber = await status_of(tg)
    assert subscriber["status"] == "unknown"
    assert subscriber["can_send"] is False and subscriber["reason"] == "no_consent"
    [row] = await message_rows(tg)
    assert row.kind == "reply"  # it answers the person's own /start
    code, body = await tg.api("POST", "/api/v1/messages",
                              {"channel": "telegram", "to": str(USER), "text": "Vote Jane!"})
    assert (code, body["code"]) == (403, "no_consent")


async def test_start_then_yes_subscribes_with_evidence_and_counts_the_link(
        tg: Harness, fake: FakeTelegram) -> None:
    code, link = await tg.api("POST", "/api/v1/links",
                              {"channel": "telegram", "name": "Leeds hustings poster"})
    assert code == 201, link
    assert link["telegram_start_url"] == f"https://t.me/jane_campaign_bot?start={link['id']}"

    await start_and_say_yes(tg, fake, payload=link["id"], first_update=10)

    sent = await fake.wait_for(2)
    assert "subscribed" in sent[1].text and "/stop" in sent[1].text
    assert sent[1].reply_markup is None
    assert len(fake.answered_callbacks) == 1
    subscriber = await status_of(tg)
    assert subscriber["status"] == "subscribed" and subscriber["can_send"] is True
    assert subscriber["history"][-1]["method"] == "telegram_start"
    assert subscriber["history"][-1]["actor"] == "recipient"

    async with tg.db.read() as conn:
        event = (await conn.execute(select(consent_events).where(
            consent_events.c.event == "subscribed"))).one()
    evidence = json.loads(event.evidence)
    assert evidence["update_id"] == 11
    assert evidence["user_id"] == USER
    assert evidence["link"] == link["id"]
    assert evidence["consent_text_version"] == consent_text_version(CONSENT_TEXT)
    assert event.consent_text_version == consent_text_version(CONSENT_TEXT)
    assert event.link_id == link["id"]

    _, listed = await tg.api("GET", "/api/v1/links")
    assert [(x["id"], x["joins"]) for x in listed] == [(link["id"], 1)]

    code, body = await tg.api("POST", "/api/v1/messages",
                              {"channel": "telegram", "to": str(USER), "text": "Vote Jane!"})
    assert code == 202, body
    sent = await fake.wait_for(3)
    assert sent[2].text == "Vote Jane!" and sent[2].chat_id == USER


async def test_pressing_no_subscribes_nobody(tg: Harness, fake: FakeTelegram) -> None:
    assert await deliver(tg, message_update(1, USER, "/start")) == 200
    [prompt] = await fake.wait_for(1)
    no = buttons(prompt)[1][1]
    assert await deliver(tg, callback_update(2, USER, no)) == 200

    assert (await status_of(tg))["status"] == "unknown"
    assert len(fake.answered_callbacks) == 1
    assert len(await message_rows(tg)) == 1  # only the prompt


async def test_a_yes_from_a_redelivered_update_is_applied_once(
        tg: Harness, fake: FakeTelegram) -> None:
    await start_and_say_yes(tg, fake, first_update=20)
    data = buttons(fake.sent[0])[0][1]
    assert await deliver(tg, callback_update(21, USER, data)) == 200  # Telegram retried

    async with tg.db.read() as conn:
        events = (await conn.execute(select(consent_events))).all()
    assert [e.event for e in events] == ["subscribed"]
    assert len(await message_rows(tg)) == 2  # the prompt and one confirmation


@pytest.mark.parametrize("text", ["/stop", "STOP"])
async def test_stop_opts_out_cancels_queued_messages_and_confirms_once(
        tg: Harness, fake: FakeTelegram, text: str) -> None:
    await start_and_say_yes(tg, fake)
    await fake.wait_for(2)  # prompt + subscription confirmation
    async with tg.db.write() as conn:
        later = await outbox.enqueue(
            conn, campaign=JANE, channel="telegram", address=str(USER),
            address_hash=tg.gateway.ledger.hash("telegram", str(USER)),
            text="Polling day tomorrow!", created_by="Jane Doe",
            not_before=time.time() + 3600)

    stop = message_update(200, USER, text)
    assert await deliver(tg, stop) == 200
    assert await deliver(tg, stop) == 200  # Telegram redelivers: still one confirmation

    # The webhook answered after the opt-out committed.
    subscriber = await status_of(tg)
    assert subscriber["status"] == "opted_out" and subscriber["reason"] == "opted_out"
    assert (await message_status(tg, later))["status"] == "cancelled"

    sent = await fake.wait_for(3)
    assert "unsubscribed" in sent[2].text and sent[2].chat_id == USER
    rows = await message_rows(tg)
    replies_after_stop = [r for r in rows if r.kind == "reply" and r.id > later]
    assert len(replies_after_stop) == 1
    await wait_for_status(tg, replies_after_stop[0].id, "sent")
    assert not [r for r in rows if r.status in ("queued", "sending")
                and r.id != replies_after_stop[0].id]
    code, body = await tg.api("POST", "/api/v1/messages",
                              {"channel": "telegram", "to": str(USER), "text": "Vote Jane!"})
    assert (code, body["code"]) == (403, "opted_out")


async def test_start_again_after_stop_only_offers_and_yes_resubscribes(
        tg: Harness, fake: FakeTelegram) -> None:
    await start_and_say_yes(tg, fake, first_update=1)
    assert await deliver(tg, message_update(3, USER, "/stop")) == 200
    assert (await status_of(tg))["status"] == "opted_out"

    assert await deliver(tg, message_update(4, USER, "/start")) == 200
    prompt = (await fake.wait_for(4))[3]
    assert (await status_of(tg))["status"] == "opted_out"  # /start alone changes nothing
    assert await deliver(tg, callback_update(5, USER, buttons(prompt)[0][1])) == 200
    assert (await status_of(tg))["status"] == "subscribed"


# -- blocking -------------------------------------------------------------------------------


async def test_blocking_the_bot_suppresses_without_a_confirmation(
        tg: Harness, fake: FakeTelegram) -> None:
    await start_and_say_yes(tg, fake)
    await fake.wait_for(2)

    assert await deliver(tg, my_chat_member_update(300, USER, "kicked", "member")) == 200

    subscriber = await status_of(tg)
    assert subscriber["status"] == "suppressed" and subscriber["reason"] == "suppressed"
    assert len(await message_rows(tg)) == 2  # nothing new queued: they cannot be reached
    code, body = await tg.api("POST", "/api/v1/messages",
                              {"channel": "telegram", "to": str(USER), "text": "Vote Jane!"})
    assert (code, body["code"]) == (403, "suppressed")


async def test_403_blocked_on_send_suppresses(tg: Harness, fake: FakeTelegram) -> None:
    await start_and_say_yes(tg, fake)
    await fake.wait_for(2)
    fake.blocked.add(USER)

    code, body = await tg.api("POST", "/api/v1/messages",
                              {"channel": "telegram", "to": str(USER), "text": "Vote Jane!"})
    assert code == 202, body
    failed = await wait_for_status(tg, body["id"], "failed")
    assert failed["reason"] == "telegram_blocked"

    subscriber = await status_of(tg)
    assert subscriber["status"] == "suppressed" and subscriber["can_send"] is False
    assert len(fake.sent) == 2
    assert len(await message_rows(tg)) == 3  # no confirmation queued


# -- webhook authentication ----------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "wrong-secret", TELEGRAM_SECRET + "x"])
async def test_a_missing_or_wrong_secret_gets_403_and_changes_nothing(
        tg: Harness, fake: FakeTelegram, secret: str | None) -> None:
    await start_and_say_yes(tg, fake)
    await fake.wait_for(2)
    before = await message_rows(tg)

    assert await deliver(tg, message_update(400, USER, "STOP"), secret=secret) == 403
    assert await deliver(tg, my_chat_member_update(401, USER, "kicked", "member"),
                         secret=secret) == 403
    assert await deliver(tg, message_update(402, OTHER_USER, "/start"), secret=secret) == 403

    assert (await status_of(tg))["status"] == "subscribed"
    assert len(await message_rows(tg)) == len(before)
    assert await message_rows(tg, OTHER_USER) == []
    # The same updates with the right secret are new to the gateway: nothing was recorded.
    assert await deliver(tg, message_update(400, USER, "STOP")) == 200
    assert (await status_of(tg))["status"] == "opted_out"


async def test_webhook_of_a_campaign_without_a_bot_is_404(tg: Harness) -> None:
    assert await deliver(tg, message_update(1, USER, "/start"), campaign=BOB) == 404
    assert await deliver(tg, message_update(1, USER, "/start"), campaign="nobody") == 404


async def test_an_update_that_is_not_json_is_refused(tg: Harness) -> None:
    async with tg.session.post(f"{tg.url}/webhooks/telegram/{JANE}", data="not json",
                               headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}) as r:
        assert r.status == 400


async def test_group_chatter_and_unknown_update_types_are_ignored(
        tg: Harness, fake: FakeTelegram) -> None:
    from consentgate.testing.fakes.telegram_api import chat_member_update, group_message_update

    assert await deliver(tg, group_message_update(1, USER, JANE_GROUP, "STOP")) == 200
    assert await deliver(tg, chat_member_update(2, USER, JANE_GROUP, "member", "left")) == 200
    assert await deliver(tg, {"update_id": 3, "edited_message": {"weird": True}}) == 200
    assert (await status_of(tg))["status"] == "unknown"
    assert await message_rows(tg) == []


# -- groups and invite links ----------------------------------------------------------------


async def test_a_post_to_a_foreign_group_is_refused_and_own_group_is_allowed(
        tg: Harness, fake: FakeTelegram) -> None:
    code, body = await tg.api("POST", "/api/v1/messages", {
        "channel": "telegram", "to": str(FOREIGN_GROUP), "text": "Vote Jane!"})
    assert (code, body["code"]) == (403, "destination_not_allowed")

    # Decided again at dispatch: a foreign group queued by any route is blocked there.
    async with tg.db.write() as conn:
        queued = await outbox.enqueue(
            conn, campaign=JANE, channel="telegram", address=str(FOREIGN_GROUP),
            address_hash=tg.gateway.ledger.hash("telegram", str(FOREIGN_GROUP)),
            text="Vote Jane!", created_by="Jane Doe")
    tg.gateway.dispatcher.wake(JANE, "telegram")
    blocked = await wait_for_status(tg, queued, "blocked")
    assert blocked["reason"] == "destination_not_allowed"

    code, body = await tg.api("POST", "/api/v1/messages", {
        "channel": "telegram", "to": str(JANE_GROUP), "text": "Meet us at the hall"})
    assert code == 202, body
    [sent] = await fake.wait_for(1)
    assert sent.chat_id == JANE_GROUP
    assert all(s.chat_id != FOREIGN_GROUP for s in fake.sent)


async def test_a_join_request_through_a_campaign_link_is_approved_and_counted(
        tg: Harness, fake: FakeTelegram) -> None:
    code, link = await tg.api("POST", "/api/v1/links", {
        "channel": "telegram", "name": "Hustings QR", "telegram_chat_id": JANE_GROUP,
        "expires_at": "2099-01-01T00:00:00Z"})
    assert code == 201, link
    assert link["url"].startswith("https://t.me/+")
    assert link["qr_svg"].lstrip().startswith("<svg")
    [created] = fake.calls_to("createChatInviteLink")
    assert int(created["chat_id"]) == JANE_GROUP
    assert str(created["creates_join_request"]).lower() == "true"
    assert created["name"] == "Hustings QR"
    assert "expire_date" in created and "member_limit" not in created

    request = join_request_update(500, USER, JANE_GROUP, link["url"], "Hustings QR")
    assert await deliver(tg, request) == 200
    assert fake.approved == [(JANE_GROUP, USER)]
    assert await deliver(tg, request) == 200  # redelivered: approved and counted once
    assert fake.approved == [(JANE_GROUP, USER)]
    _, listed = await tg.api("GET", "/api/v1/links")
    assert [(x["id"], x["joins"]) for x in listed] == [(link["id"], 1)]

    # Joining the group is not consent to messages.
    assert (await status_of(tg))["status"] == "unknown"
    assert fake.sent == []

    # A link some admin made by hand is left to the admins.
    stranger = join_request_update(501, OTHER_USER, JANE_GROUP, "https://t.me/+byhand",
                                   "door")
    assert await deliver(tg, stranger) == 200
    assert fake.approved == [(JANE_GROUP, USER)]

    # A revoked link lets nobody in.
    code, revoked = await tg.api("POST", f"/api/v1/links/{link['id']}/revoke")
    assert code == 200 and revoked["active"] is False and revoked["revoked_at"]
    [call] = fake.calls_to("revokeChatInviteLink")
    assert call["invite_link"] == link["url"]
    late = join_request_update(502, OTHER_USER, JANE_GROUP, link["url"], "Hustings QR")
    assert await deliver(tg, late) == 200
    assert fake.approved == [(JANE_GROUP, USER)]
    _, listed = await tg.api("GET", "/api/v1/links")
    assert listed[0]["joins"] == 1


async def test_invite_links_only_to_own_chats_and_never_with_a_member_limit(
        tg: Harness, fake: FakeTelegram) -> None:
    code, body = await tg.api("POST", "/api/v1/links", {
        "channel": "telegram", "name": "x", "telegram_chat_id": FOREIGN_GROUP})
    assert (code, body["code"]) == (422, "destination_not_allowed")
    code, body = await tg.api("POST", "/api/v1/links", {
        "channel": "telegram", "name": "x", "telegram_chat_id": JANE_GROUP,
        "member_limit": 50})
    assert (code, body["code"]) == (422, "member_limit_with_join_request")
    assert fake.calls_to("createChatInviteLink") == []

    fake.fail_next(403, description="Forbidden: not enough rights to manage chat invite links")
    code, body = await tg.api("POST", "/api/v1/links", {
        "channel": "telegram", "name": "x", "telegram_chat_id": JANE_GROUP})
    assert (code, body["code"]) == (502, "telegram_refused")
    _, listed = await tg.api("GET", "/api/v1/links")
    assert listed == []


# -- sending --------------------------------------------------------------------------------


async def test_429_retry_after_is_waited_out_and_the_message_goes_once(
        tg: Harness, fake: FakeTelegram) -> None:
    await tg.subscribe(str(USER), channel="telegram")
    fake.retry_after_next(2, method="sendMessage")

    code, body = await tg.api("POST", "/api/v1/messages",
                              {"channel": "telegram", "to": str(USER), "text": "Vote Jane!"})
    assert code == 202, body
    await fake.wait_for_call("sendMessage", 1)
    refused_at = time.monotonic()  # just after the 429 arrived, before it was answered
    await wait_for_status(tg, body["id"], "sent")

    [sent] = await fake.wait_for(1)
    assert sent.text == "Vote Jane!"
    assert len(fake.calls_to("sendMessage")) == 2  # the 429, then the one that went
    assert sent.at - refused_at >= 2.0


# -- polling and set-webhook ----------------------------------------------------------------


async def test_polling_mode_handles_updates_like_the_webhook(
        sqlite_url: str, fake: FakeTelegram) -> None:
    async with running_gateway(sqlite_url, telegram=fake,
                               telegram_extra="polling = true") as h:
        assert h.gateway.telegram.polling_campaigns() == [JANE]
        h.gateway.telegram.start_polling(timeout=1)
        try:
            fake.queue_update(message_update(1, USER, "/start"))
            [prompt] = await fake.wait_for(1)
            assert fake.calls_to("deleteWebhook")
            assert (await status_of(h))["status"] == "unknown"
            fake.queue_update(callback_update(2, USER, buttons(prompt)[0][1]))
            await fake.wait_for(2)
            assert (await status_of(h))["status"] == "subscribed"
            fake.queue_update(message_update(3, USER, "Stop please"))
            await fake.wait_for(3)
            assert (await status_of(h))["status"] == "opted_out"
            polls = fake.calls_to("getUpdates")
            assert json.loads(polls[-1]["allowed_updates"]) == list(ALLOWED_UPDATES)
        finally:
            await h.gateway.telegram.stop_polling()


async def test_set_webhook_command_registers_the_webhook_with_its_secret(
        tmp_path: Path, fake: FakeTelegram) -> None:
    config = tmp_path / "consentgate.toml"
    config.write_text(f"""
[server]
public_url = "{PUBLIC_URL}"
[storage]
url = "sqlite+aiosqlite:///{tmp_path / 'cg.db'}"
[security]
secret_key = "{SECRET}"
[[campaigns]]
slug = "{JANE}"
name = "Jane Doe for President"
imprint = "Promoted by Jane Doe"
consent_text = "{CONSENT_TEXT}"
operators = [{{ name = "Jane Doe", token = "jane-organiser-token-0001", role = "organiser" }}]
[campaigns.telegram]
provider = "telegram"
bot_token = "{fake.token}"
api_base_url = "{fake.base_url}"
webhook_secret = "{TELEGRAM_SECRET}"
""")
    proc = await asyncio.create_subprocess_exec(
        CONSENTGATE, "telegram", "set-webhook", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert f"{PUBLIC_URL}/webhooks/telegram/{JANE}" in out.decode()
    assert fake.webhook is not None
    assert fake.webhook.url == f"{PUBLIC_URL}/webhooks/telegram/{JANE}"
    assert fake.webhook.secret_token == TELEGRAM_SECRET
    assert fake.webhook.allowed_updates == [
        "message", "callback_query", "my_chat_member", "chat_join_request", "chat_member"]


async def test_a_telegram_server_error_is_retried_and_the_message_goes_once(
        tg: Harness, fake: FakeTelegram) -> None:
    await tg.subscribe(str(USER), channel="telegram")
    fake.fail_next(502, method="sendMessage")

    code, body = await tg.api("POST", "/api/v1/messages",
                              {"channel": "telegram", "to": str(USER), "text": "Vote Jane!"})
    assert code == 202, body
    await wait_for_status(tg, body["id"], "sent")
    assert [s.text for s in fake.sent] == ["Vote Jane!"]
    assert len(fake.calls_to("sendMessage")) == 2


def test_polling_needs_no_webhook_secret_but_a_webhook_does() -> None:
    from consentgate.bot.config import ConfigError, parse_config

    def config(telegram: str) -> str:
        return f"""
[security]
secret_key = "{SECRET}"
[[campaigns]]
slug = "{JANE}"
name = "Jane"
imprint = "Promoted by Jane"
consent_text = "Yes."
operators = [{{ name = "Jane Doe", token = "jane-organiser-token-0001", role = "organiser" }}]
[campaigns.telegram]
provider = "telegram"
bot_token = "123:abc"
{telegram}
"""

    settings = parse_config(config("polling = true"), environ={})
    telegram = settings.campaigns[0].telegram
    assert telegram is not None and telegram.polling and telegram.webhook_secret is None
    with pytest.raises(ConfigError) as refused:
        parse_config(config(""), environ={})
    assert refused.value.key == "campaigns[0].telegram.webhook_secret"
    with pytest.raises(ConfigError) as refused:
        parse_config(config('polling = "yes"'), environ={})
    assert refused.value.key == "campaigns[0].telegram.polling"


@pytest.mark.slow
async def test_serve_polls_when_configured_and_stops_cleanly_on_sigterm(
        tmp_path: Path, fake: FakeTelegram) -> None:
    from tests.procs import Launcher, free_port, write_config

    port = free_port()
    config = write_config(tmp_path / "consentgate.toml", db_path=tmp_path / "cg.db",
                          twilio_url="http://127.0.0.1:9", port=port)
    with config.open("a", encoding="utf-8") as fh:
        fh.write(f"""
[campaigns.telegram]
provider = "telegram"
bot_token = "{fake.token}"
api_base_url = "{fake.base_url}"
polling = true
""")
    async with Launcher(tmp_path) as launch:
        serve = await launch.serve(config, port)
        fake.queue_update(message_update(1, USER, "/start"))
        [prompt] = await fake.wait_for(1, timeout=30)
        assert prompt.chat_id == USER and len(buttons(prompt)) == 2
        status, took = await serve.stop()
        assert status == 0, serve.log()
        assert took < 10


@pytest.mark.parametrize(
    ("text", "status", "rule"),
    [("please take me off", "opted_out", "request: whole message"),
     ("Peidiwch ag anfon negeseuon", "opted_out", "request (cy)"),
     ("optut", "opted_out", "misspelt OPTOUT"),
     ("Can you stop by the stall on Saturday?", "subscribed",
      "opt-out word about something else")])
async def test_telegram_messages_are_read_by_the_same_classifier_as_sms(
        tg: Harness, fake: FakeTelegram, text: str, status: str, rule: str) -> None:
    await start_and_say_yes(tg, fake)
    assert await deliver(tg, message_update(300, USER, text)) == 200
    assert (await status_of(tg))["status"] == status
    code, replies = await tg.api("GET", "/api/v1/replies")
    assert code == 200
    assert (replies[0]["channel"], replies[0]["rule"]) == ("telegram", rule)
    assert (replies[0]["flag"] is None) == (status == "opted_out")
