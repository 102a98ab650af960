"""The email channel end to end: a whole gateway on loopback sending through a real SMTP
server (aiosmtpd), the unsubscribe page and RFC 8058 one-click POST over real HTTP, and the
inbound listener receiving unsubscribes, replies and bounces over real SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import dkim
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from consentgate.bot.broadcasts import HELD_UNTIL
from consentgate.storage.models import messages
from consentgate.testing.fakes.smtp_server import ReceivedMail, SmtpSink
from consentgate.testing.harness import JANE, PUBLIC_URL, Harness, running_gateway, smtp_section
from consentgate.testing.waiting import eventually

FROM = "Jane Doe <jane@example.org>"
DOMAIN = "reply.example.org"
IMPRINT = "Promoted by Jane Doe, 1 Example Road, London"
VOTER = "voter@example.com"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def email_section(sink: SmtpSink, *, rate: float, inbound_port: int | None) -> str:
    return smtp_section(sink.port, FROM, rate=rate, inbound_port=inbound_port,
                        inbound_domain=DOMAIN)


@contextlib.asynccontextmanager
async def email_gateway(db_url: str, sink: SmtpSink, *, rate: float = 500.0,
                        inbound: bool = True, dispatch: bool = True) -> AsyncIterator[Harness]:
    section = email_section(sink, rate=rate, inbound_port=free_port() if inbound else None)
    async with running_gateway(db_url, jane_email=section, dispatch=dispatch) as h:
        yield h


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as server:
        yield server


@pytest.fixture
async def mail(sqlite_url: str, sink: SmtpSink) -> AsyncIterator[Harness]:
    async with email_gateway(sqlite_url, sink) as h:
        yield h


async def send_email(h: Harness, to: str, text: str = "Polling day is Thursday.",
                     subject: str = "Polling day") -> int:
    status, body = await h.api("POST", "/api/v1/messages",
                               {"channel": "email", "to": to, "text": text, "subject": subject})
    assert status == 202, body
    return int(body["id"])


async def message(h: Harness, message_id: int) -> dict[str, Any]:
    status, body = await h.api("GET", f"/api/v1/messages/{message_id}")
    assert status == 200, body
    return dict(body)


async def message_settles(h: Harness, message_id: int) -> dict[str, Any]:
    async def settled() -> dict[str, Any] | None:
        view = await message(h, message_id)
        return None if view["status"] in ("queued", "sending") else view
    return await eventually(settled)


async def subscriber(h: Harness, address: str) -> dict[str, Any]:
    status, body = await h.api("GET", f"/api/v1/subscribers/email/{address}")
    assert status == 200, body
    return dict(body)


async def broadcast_done(h: Harness, broadcast_id: int,
                         statuses: tuple[str, ...] = ("done",)) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        status, body = await h.api("GET", f"/api/v1/broadcasts/{broadcast_id}")
        assert status == 200, body
        return dict(body) if body["status"] in statuses else None
    return await eventually(finished, timeout=20.0)


def one_click_url(mail: ReceivedMail) -> str:
    found = re.search(r"<(https://[^>]+)>", str(mail.message["List-Unsubscribe"]))
    assert found is not None
    return found[1]


def mailto_address(mail: ReceivedMail) -> str:
    found = re.search(r"<mailto:([^?>]+)", str(mail.message["List-Unsubscribe"]))
    assert found is not None
    return found[1]


def local_path(url: str) -> str:
    assert url.startswith(PUBLIC_URL + "/u/")
    return urlsplit(url).path


async def post_one_click(h: Harness, path: str) -> tuple[int, str, Any]:
    async with h.session.post(h.url + path, data="List-Unsubscribe=One-Click",
                              headers={"Content-Type": "application/x-www-form-urlencoded"},
                              allow_redirects=False) as r:
        return r.status, await r.text(), r.headers


async def get_page(h: Harness, path: str) -> tuple[int, str]:
    async with h.session.get(h.url + path, allow_redirects=False) as r:
        return r.status, await r.text()


def inbound_port(h: Harness) -> int:
    assert h.gateway.mail_listeners is not None
    [port] = h.gateway.mail_listeners.ports
    return port


async def deliver(h: Harness, message: EmailMessage | bytes, *, sender: str,
                  to: str) -> None:
    """Hand a mail to the gateway's inbound listener, as a mailbox provider's MTA would
    (``sender=""`` is the null sender of delivery reports)."""
    data = message if isinstance(message, bytes) else message.as_bytes()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=inbound_port(h), start_tls=False,
                               timeout=10) as client:
        await client.sendmail(sender, [to], data)


def person_mail(to: str, body: str, *, sender: str = VOTER,
                subject: str = "Re: Polling day") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content(body)
    return msg


def delivery_report(bounce_address: str, recipient: str, status: str, action: str) -> bytes:
    """A delivery status notification (RFC 3464) as a receiving MTA sends it."""
    text = (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\n"
        f"To: {bounce_address}\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Auto-Submitted: auto-replied\n"
        f"Message-ID: {make_msgid(domain='mx.example.com')}\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\n'
        "\n"
        "--B1\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "Your message could not be delivered.\n"
        "\n"
        "--B1\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; mx.example.com\n"
        "\n"
        f"Final-Recipient: rfc822; {recipient}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        f"Diagnostic-Code: smtp; 550 {status} user unknown\n"
        "\n"
        "--B1--\n"
    )
    return text.replace("\n", "\r\n").encode()


# -- what a recipient receives ---------------------------------------------------------------


async def test_campaign_email_carries_one_click_headers_list_id_and_the_footer(
    mail: Harness, sink: SmtpSink
) -> None:
    await mail.subscribe(VOTER, channel="email")
    await send_email(mail, VOTER, text="Polling day is <b>Thursday</b> & we need you.")

    [received] = await sink.wait_for(1)

    msg = received.message
    assert received.rcpt_tos == (VOTER,)
    assert msg["From"] == FROM and msg["Subject"] == "Polling day"
    assert msg["Message-ID"] and msg["Date"]
    url = one_click_url(received)
    assert url.startswith(f"{PUBLIC_URL}/u/")
    assert re.fullmatch(rf"unsubscribe\+[0-9a-f]{{48}}@{re.escape(DOMAIN)}",
                        mailto_address(received))
    assert str(msg["List-Unsubscribe"]).index("https:") < str(msg["List-Unsubscribe"]).index(
        "mailto:")  # the one-click form first
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == f"Jane Doe for President <{JANE}.gateway.example.org>"
    # VERP: bounces come back to an address naming this very message.
    assert re.fullmatch(rf"bounce\+[0-9a-z]+@{re.escape(DOMAIN)}", received.mail_from)
    assert "jane@example.org" in str(msg["Reply-To"]) and f"@{DOMAIN}" in str(msg["Reply-To"])

    text = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    for body in (text, html):
        assert IMPRINT in body
        assert "You get this because you asked for updates from Jane Doe for President" in body
        assert url in body
    assert "Polling day is <b>Thursday</b> & we need you." in text
    assert "Polling day is &lt;b&gt;Thursday&lt;/b&gt; &amp; we need you." in html


async def test_addresses_are_normalised_and_compared_case_insensitively(
    mail: Harness, sink: SmtpSink
) -> None:
    await mail.subscribe("  Voter@EXAMPLE.com ", channel="email")

    await send_email(mail, "VOTER@example.COM")

    [received] = await sink.wait_for(1)
    assert received.rcpt_tos == (VOTER,)
    assert (await subscriber(mail, "Voter@Example.Com"))["status"] == "subscribed"


async def test_without_inbound_mail_the_one_click_link_is_the_only_way_offered(
    sqlite_url: str, sink: SmtpSink
) -> None:
    async with email_gateway(sqlite_url, sink, inbound=False) as h:
        await h.subscribe(VOTER, channel="email")
        await send_email(h, VOTER)
        [received] = await sink.wait_for(1)

    assert str(received.message["List-Unsubscribe"]) == f"<{one_click_url(received)}>"
    assert received.mail_from == "jane@example.org"
    assert received.message["Reply-To"] is None


# -- the unsubscribe link ----------------------------------------------------------------------


async def test_get_shows_one_button_and_changes_nothing(mail: Harness, sink: SmtpSink) -> None:
    await mail.subscribe(VOTER, channel="email")
    await send_email(mail, VOTER)
    [received] = await sink.wait_for(1)
    path = local_path(one_click_url(received))

    for _ in range(3):  # a mail scanner, a preview, the person
        status, page = await get_page(mail, path)
        assert status == 200
    async with mail.session.head(mail.url + path) as r:
        assert r.status == 200

    assert page.count("<button") == 1 and '<form method="post">' in page
    assert "<script" not in page.lower()
    assert "Jane Doe for President" in page and IMPRINT in page
    assert "v***@example.com" in page and VOTER not in page
    assert (await subscriber(mail, VOTER))["status"] == "subscribed"


async def test_one_click_post_opts_out_at_once_and_cancels_queued_mail(
    sqlite_url: str, sink: SmtpSink
) -> None:
    async with email_gateway(sqlite_url, sink, dispatch=False) as h:
        await h.subscribe(VOTER, channel="email")
        queued = [await send_email(h, VOTER, text=f"Update {n}") for n in range(3)]
        url = h.gateway.composer.unsubscribe_url(JANE, "email",
                                                 h.gateway.ledger.hash("email", VOTER))

        status, page, headers = await post_one_click(h, local_path(url))

        assert status == 200 and "Location" not in headers
        assert "You are unsubscribed" in page
        assert headers["Cache-Control"] == "no-store"
        view = await subscriber(h, VOTER)
        assert view["status"] == "opted_out" and view["can_send"] is False
        assert view["history"][-1]["method"] == "one_click"
        assert view["history"][-1]["actor"] == "recipient"
        for message_id in queued:
            assert (await message(h, message_id))["status"] == "cancelled"

        # Pressing again, or the page's button after a scanner's POST, adds nothing.
        status, _, _ = await post_one_click(h, local_path(url))
        assert status == 200
        assert len((await subscriber(h, VOTER))["history"]) == len(view["history"])


async def test_the_page_button_opts_out_too(mail: Harness, sink: SmtpSink) -> None:
    await mail.subscribe(VOTER, channel="email")
    await send_email(mail, VOTER)
    [received] = await sink.wait_for(1)
    path = local_path(one_click_url(received))

    async with mail.session.post(mail.url + path, data={"confirm": "yes"},
                                 allow_redirects=False) as r:
        assert r.status == 200

    view = await subscriber(mail, VOTER)
    assert view["status"] == "opted_out"
    assert view["history"][-1]["method"] == "unsubscribe_page"
    status, page = await get_page(mail, path)
    assert status == 200 and "<button" not in page and "You are unsubscribed" in page


@pytest.mark.parametrize("tamper", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),   # signature altered
    lambda t: t[:10] + ("x" if t[10] != "x" else "y") + t[11:],  # payload altered
    lambda t: "made-up-token",
    lambda t: t + "extra",
])
async def test_a_tampered_or_made_up_token_is_404_and_changes_nothing(
    mail: Harness, sink: SmtpSink, tamper: Callable[[str], str]
) -> None:
    await mail.subscribe(VOTER, channel="email")
    await send_email(mail, VOTER)
    [received] = await sink.wait_for(1)
    token = local_path(one_click_url(received)).removeprefix("/u/")
    path = "/u/" + tamper(token)

    assert (await get_page(mail, path))[0] == 404
    status, page, _ = await post_one_click(mail, path)

    assert status == 404 and "This link does not work" in page
    view = await subscriber(mail, VOTER)
    assert view["status"] == "subscribed" and len(view["history"]) == 1


async def test_a_token_made_for_another_purpose_is_not_an_unsubscribe_link(
    mail: Harness
) -> None:
    from consentgate.bot.tokens import TokenSubject

    await mail.subscribe(VOTER, channel="email")
    ahash = mail.gateway.ledger.hash("email", VOTER)
    confirm = mail.gateway.tokens.make("confirm", TokenSubject(JANE, "email", ahash))

    status, _, _ = await post_one_click(mail, f"/u/{confirm}")

    assert status == 404
    assert (await subscriber(mail, VOTER))["status"] == "subscribed"


# -- bounces at RCPT, broadcasts ---------------------------------------------------------------


async def test_a_550_at_rcpt_suppresses_the_address(mail: Harness, sink: SmtpSink) -> None:
    sink.refuse.add(VOTER)
    await mail.subscribe(VOTER, channel="email")

    view = await message_settles(mail, await send_email(mail, VOTER))

    assert (view["status"], view["reason"]) == ("failed", "smtp_550")
    person = await subscriber(mail, VOTER)
    assert person["status"] == "suppressed" and person["reason"] == "suppressed"
    assert any(h["event"] == "suppressed" and h["source"] == "smtp_550"
               for h in person["history"])
    status, body = await mail.api("POST", "/api/v1/messages",
                                  {"channel": "email", "to": VOTER, "text": "Again?"})
    assert (status, body["code"]) == (403, "suppressed")


async def test_a_4xx_at_rcpt_is_retried_later_and_suppresses_nothing(
    mail: Harness, sink: SmtpSink
) -> None:
    sink.tempfail.add(VOTER)
    await mail.subscribe(VOTER, channel="email")
    message_id = await send_email(mail, VOTER)

    async def retried() -> bool:
        async with mail.db.read() as conn:
            row = (await conn.execute(select(messages.c.status, messages.c.last_error)
                                      .where(messages.c.id == message_id))).one()
        return row.status == "queued" and row.last_error == "smtp_451"
    await eventually(retried)

    assert (await subscriber(mail, VOTER))["status"] == "subscribed"
    sink.tempfail.clear()  # the relay recovers: the next try delivers
    [received] = await sink.wait_for(1, timeout=10)
    assert received.rcpt_tos == (VOTER,)
    assert (await message_settles(mail, message_id))["status"] == "sent"


async def test_a_broadcast_reaches_only_the_subscribed(mail: Harness, sink: SmtpSink) -> None:
    everyone = [f"person{n}@example.com" for n in range(7)]
    await mail.import_consents(everyone, "email")
    status, _ = await mail.api("POST", "/api/v1/opt-outs", {
        "channel": "email", "address": everyone[1], "reason": "asked at the door"})
    assert status == 201
    status, body = await mail.api(
        "POST", "/api/v1/suppressions/import",
        raw=f"channel,address,reason\nemail,{everyone[2]},unsubscribed on another platform\n",
        headers={"Content-Type": "text/csv"})
    assert status == 200, body
    # A one-click unsubscribe from an earlier email.
    url = mail.gateway.composer.unsubscribe_url(JANE, "email",
                                                mail.gateway.ledger.hash("email", everyone[3]))
    assert (await post_one_click(mail, local_path(url)))[0] == 200
    # A hard bounce on an earlier email.
    sink.refuse.add(everyone[4])
    assert (await message_settles(mail, await send_email(mail, everyone[4])))["status"] == (
        "failed")

    status, body = await mail.api("POST", "/api/v1/broadcasts",
                                  {"channel": "email", "text": "Polling day!",
                                   "subject": "Thursday"})
    assert status == 202, body
    assert body["audience"] == {"eligible": 3,
                                "excluded": {"opted_out": 3, "suppressed": 1}}
    view = await broadcast_done(mail, body["id"])

    assert view["counts"]["sent"] == 3
    received = await sink.wait_for(3)
    assert sorted(r for m in received for r in m.rcpt_tos) == [everyone[0], everyone[5],
                                                             everyone[6]]
    assert all(m.message["Subject"] == "Thursday" for m in received)
    assert len({one_click_url(m) for m in received}) == 3  # a token per recipient


class HoldingSink(SmtpSink):
    """A relay that takes its time answering DATA for one recipient: that message is on the
    wire (its permit already used) while the test acts."""

    def __init__(self, hold: str) -> None:
        super().__init__()
        self.hold = hold
        self.held: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.release = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold in envelope.rcpt_tos and not self.held.done():
            self.held.set_result(envelope.original_content or b"")
            await self.release.wait()
        return await super().handle_DATA(server, session, envelope)


async def test_an_unsubscribe_during_a_broadcast_stops_every_later_send(
    sqlite_url: str
) -> None:
    others = [f"person{n}@example.com" for n in range(30)]
    async with HoldingSink(hold=VOTER) as sink, email_gateway(sqlite_url, sink,
                                                              rate=20.0) as h:
        await h.import_consents([VOTER, *others], "email")  # VOTER's message goes first
        first = await h.api("POST", "/api/v1/broadcasts", {"channel": "email", "text": "One"})
        second = await h.api("POST", "/api/v1/broadcasts", {"channel": "email", "text": "Two"})
        single = await send_email(h, VOTER, text="Three")

        content = await asyncio.wait_for(sink.held, 10)
        header = re.search(rb"List-Unsubscribe: <([^>]+)>", content)
        assert header is not None
        status, _, _ = await post_one_click(h, local_path(header[1].decode()))
        assert status == 200
        sink.release.set()  # the message that was already on the wire completes

        one = await broadcast_done(h, first[1]["id"])
        two = await broadcast_done(h, second[1]["id"])
        assert (await message_settles(h, single))["status"] == "cancelled"

    to_voter = [m for m in sink.received if VOTER in m.rcpt_tos]
    assert len(to_voter) == 1 and b"One" in to_voter[0].content
    assert one["counts"]["sent"] == 31
    assert two["counts"]["sent"] == 30 and two["counts"]["cancelled"] == 1
    assert len(sink.received) == 61


async def test_too_many_failures_pause_a_broadcast_and_hold_the_rest(
    sqlite_url: str, sink: SmtpSink
) -> None:
    everyone = [f"person{n:03d}@example.com" for n in range(300)]
    sink.refuse.update(everyone[::10])  # 10% hard bounces: a stale list
    async with email_gateway(sqlite_url, sink, rate=100.0) as h:
        await h.import_consents(everyone, "email")
        status, body = await h.api("POST", "/api/v1/broadcasts",
                                   {"channel": "email", "text": "Polling day!"})
        assert status == 202, body

        view = await broadcast_done(h, body["id"], statuses=("paused", "done"))

        assert view["status"] == "paused"
        assert view["paused"]["reason"] == "too_many_failures"
        assert view["paused"]["attempted"] >= 200
        assert view["paused"]["failed"] > 0.05 * view["paused"]["attempted"]
        assert view["counts"]["queued"] > 0  # held, not sent
        async with h.db.read() as conn:
            held = (await conn.execute(select(messages.c.not_before).where(
                messages.c.broadcast_id == body["id"], messages.c.status == "queued"))).all()
        assert held and all(row.not_before == HELD_UNTIL for row in held)

        status, cancelled = await h.api("POST", f"/api/v1/broadcasts/{body['id']}/cancel")
        assert status == 200 and cancelled["cancelled"] == len(held)
        view = await broadcast_done(h, body["id"], statuses=("cancelled",))
        assert view["counts"]["queued"] == 0
        assert (await subscriber(h, everyone[0]))["status"] == "suppressed"
    assert len(sink.received) < 270


# -- inbound mail: mailto unsubscribe, replies, VERP bounces ----------------------------------


async def test_mailto_unsubscribe_through_the_inbound_listener(
    mail: Harness, sink: SmtpSink
) -> None:
    await mail.subscribe(VOTER, channel="email")
    await send_email(mail, VOTER)
    [received] = await sink.wait_for(1)
    # Mailbox providers may change the case of the local part.
    to = mailto_address(received).upper()

    await deliver(mail, person_mail(to, "", subject="unsubscribe"), sender=VOTER, to=to)

    view = await subscriber(mail, VOTER)  # the listener answered 250 after the commit
    assert view["status"] == "opted_out"
    assert view["history"][-1]["method"] == "mailto"


async def test_a_mailto_unsubscribe_with_an_altered_token_changes_nothing(
    mail: Harness, sink: SmtpSink
) -> None:
    await mail.subscribe(VOTER, channel="email")
    await send_email(mail, VOTER)
    [received] = await sink.wait_for(1)
    local, _, domain = mailto_address(received).partition("@")
    altered = f"{local[:-1]}{'0' if local[-1] != '0' else '1'}@{domain}"

    await deliver(mail, person_mail(altered, ""), sender=VOTER, to=altered)

    assert (await subscriber(mail, VOTER))["status"] == "subscribed"


async def test_a_hard_bounce_to_the_verp_address_suppresses_and_fails_the_message(
    mail: Harness, sink: SmtpSink
) -> None:
    await mail.subscribe(VOTER, channel="email")
    message_id = await send_email(mail, VOTER)
    [received] = await sink.wait_for(1)
    assert (await message_settles(mail, message_id))["status"] == "sent"

    report = delivery_report(received.mail_from, VOTER, "5.1.1", "failed")
    await deliver(mail, report, sender="", to=received.mail_from)
    await deliver(mail, report, sender="", to=received.mail_from)  # a retried delivery

    view = await message(mail, message_id)
    assert (view["status"], view["reason"]) == ("failed", "hard_bounce")
    person = await subscriber(mail, VOTER)
    assert person["status"] == "suppressed"
    assert [h["source"] for h in person["history"] if h["event"] == "suppressed"] == [
        "hard_bounce"]
    assert [h["method"] for h in person["history"]].count("bounce") == 1


async def test_a_soft_bounce_suppresses_nothing(mail: Harness, sink: SmtpSink) -> None:
    await mail.subscribe(VOTER, channel="email")
    message_id = await send_email(mail, VOTER)
    [received] = await sink.wait_for(1)
    await message_settles(mail, message_id)

    await deliver(mail, delivery_report(received.mail_from, VOTER, "4.2.2", "delayed"),
                  sender="", to=received.mail_from)

    assert (await message(mail, message_id))["status"] == "sent"
    assert (await subscriber(mail, VOTER))["status"] == "subscribed"


async def test_a_bounce_with_a_made_up_token_changes_nothing(
    mail: Harness, sink: SmtpSink
) -> None:
    await mail.subscribe(VOTER, channel="email")
    message_id = await send_email(mail, VOTER)
    await sink.wait_for(1)
    await message_settles(mail, message_id)
    forged = f"bounce+{message_id}0123456789abcdef@{DOMAIN}"

    await deliver(mail, delivery_report(forged, VOTER, "5.1.1", "failed"), sender="",
                  to=forged)

    assert (await message(mail, message_id))["status"] == "sent"
    assert (await subscriber(mail, VOTER))["status"] == "subscribed"


async def _subscribed_and_mailed(mail: Harness, sink: SmtpSink) -> str:
    """Subscribe the voter by email, send them one campaign email, and give back the
    campaign's reply address it carries (where their replies go)."""
    await mail.subscribe(VOTER, channel="email")
    await send_email(mail, VOTER)
    [received] = await sink.wait_for(1)
    [reply_to] = [a for a in re.findall(r"[\w.+-]+@[\w.-]+", str(received.message["Reply-To"]))
                  if a.endswith(DOMAIN)]
    return str(reply_to)


async def test_a_reply_whose_first_line_asks_to_stop_opts_out(
    mail: Harness, sink: SmtpSink
) -> None:
    reply_to = await _subscribed_and_mailed(mail, sink)

    await deliver(mail, person_mail(reply_to, "Please remove me from your list.\n\n"
                                              "On Mon, Jane Doe wrote:\n> Polling day"),
                  sender=VOTER, to=reply_to)

    view = await subscriber(mail, VOTER)
    assert view["status"] == "opted_out" and view["history"][-1]["method"] == "email_reply"
    status, replies = await mail.api("GET", "/api/v1/replies")
    assert status == 200
    assert replies[0]["channel"] == "email" and replies[0]["from"] == VOTER
    assert replies[0]["text"] == "Please remove me from your list."


async def test_a_reply_that_only_mentions_stop_is_flagged_not_applied(
    mail: Harness, sink: SmtpSink
) -> None:
    reply_to = await _subscribed_and_mailed(mail, sink)

    await deliver(mail, person_mail(reply_to, "We have got to STOP this terrible bill!"),
                  sender=VOTER, to=reply_to)

    assert (await subscriber(mail, VOTER))["status"] == "subscribed"
    status, flagged = await mail.api("GET", "/api/v1/replies?flagged=true")
    assert status == 200 and [r["flag"] for r in flagged] == ["possible_opt_out"]


# -- DKIM --------------------------------------------------------------------------------------


@pytest.fixture
def dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    """A fresh RSA key: (PEM private key file, base64 public key as DNS publishes it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to make a key with")
    private = subprocess.run([openssl, "genrsa", "2048"], check=True,
                             capture_output=True).stdout
    public_pem = subprocess.run([openssl, "rsa", "-pubout"], input=private, check=True,
                                capture_output=True).stdout
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(private)
    return key_file, b"".join(x for x in public_pem.splitlines() if not x.startswith(b"-----"))


async def test_dkim_signs_the_campaign_email_over_both_unsubscribe_headers(
    sqlite_url: str, sink: SmtpSink, dkim_key: tuple[Path, bytes]
) -> None:
    key_file, public = dkim_key
    section = email_section(sink, rate=100.0, inbound_port=free_port()).replace(
        "rate_per_second", f'dkim_selector = "cg1"\ndkim_domain = "example.org"\n'
                           f'dkim_private_key_file = "{key_file}"\nrate_per_second', 1)

    async with running_gateway(sqlite_url, jane_email=section) as h:
        await h.subscribe(VOTER, channel="email")
        await send_email(h, VOTER)
        [received] = await sink.wait_for(1)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return b"v=DKIM1; k=rsa; p=" + public if name == b"cg1._domainkey.example.org." else None

    assert dkim.verify(received.content, dnsfunc=dns)
    signature = " ".join(str(received.message["DKIM-Signature"]).split())
    h_tag = re.search(r"\bh=([^;]+);", signature)
    assert h_tag is not None
    signed = {name.strip().lower() for name in h_tag[1].split(":")}
    assert {"list-unsubscribe", "list-unsubscribe-post", "list-id"} <= signed
    assert "mailto:" in str(received.message["List-Unsubscribe"])


# -- configuration ---------------------------------------------------------------------------


def test_campaigns_share_an_inbound_listener_only_with_its_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from consentgate.bot.cli import main

    def campaign(slug: str, domain: str) -> str:
        return f"""
[[campaigns]]
slug = "{slug}"
name = "{slug}"
imprint = "Promoted by {slug}"
consent_text = "Yes"
operators = [ {{ name = "Op", token = "{slug}-token-0123456789", role = "organiser" }} ]

[campaigns.email]
provider = "log"

[campaigns.email.inbound]
port = 2526
domain = "{domain}"
"""
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
public_url = "https://gateway.example.org"

[storage]
url = "sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"

[security]
secret_key = "0123456789abcdef0123456789abcdef"
{campaign("jane-2026", "reply.jane.example.org")}
{campaign("bob-2026", "reply.bob.example.org")}
""")

    assert main(["serve", "--config", str(config)]) == 2

    error = capsys.readouterr().err
    assert "configuration error: campaigns[1].email.inbound.port" in error


async def test_an_email_reply_is_read_by_the_same_classifier_as_sms(
    mail: Harness, sink: SmtpSink
) -> None:
    reply_to = await _subscribed_and_mailed(mail, sink)

    await deliver(mail, person_mail(reply_to, "I no longer wish to receive these emails"),
                  sender=VOTER, to=reply_to)

    assert (await subscriber(mail, VOTER))["status"] == "opted_out"
    status, replies = await mail.api("GET", "/api/v1/replies")
    assert status == 200
    assert (replies[0]["intent"], replies[0]["rule"]) == (
        "opt_out", "request: doesn't want messages")
