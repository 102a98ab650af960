"""The organiser console over real HTTP: sign-in, sessions, forgery checks, roles, and each
page's actions reaching the same services as the API (and the audit log, by name).

The gateway runs on loopback with the Twilio fake, as in every web test; the operators get
argon2id password hashes, as ``consentgate hash-password`` prints them.
"""

from __future__ import annotations

import contextlib
import html
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update
from structlog.testing import capture_logs

from consentgate.bot.web.console.preview import sms_preview, sms_segments
from consentgate.storage.models import audit_events, console_sessions, links
from consentgate.testing.harness import (
    JANE,
    Harness,
    running_gateway,
)

PASSWORDS = {"Jane Doe": "correct horse battery staple",
             "Returning Officer": "auditor passphrase 2026",
             "Bob Roe": "bob's own passphrase"}
_hasher = PasswordHasher()
HASHES = {name: _hasher.hash(pw) for name, pw in PASSWORDS.items()}


def console_gateway(db_url: str, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[
        Harness]:
    """The test gateway (as ``running_gateway``) with a console password for every
    operator."""
    return running_gateway(db_url, password_hashes=HASHES, **kwargs)


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    """A signed-in (or not) console user over plain HTTP, sending what a browser sends."""

    def __init__(self, gw: Harness) -> None:
        self.gw = gw
        jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[gw.url])
        self.session = aiohttp.ClientSession(cookie_jar=jar)
        self.csrf = ""

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with self.session.get(self.gw.url + path, allow_redirects=False, **kw) as r:
            text = await r.text()
            found = _CSRF.search(text)
            if found:
                self.csrf = html.unescape(found.group(1))
            return r.status, text, r.headers

    async def post(self, path: str, data: Any = None, *, csrf: bool = True,
                   origin: str | None = "self", **kw: Any) -> tuple[int, str, Any]:
        # A list of pairs sends a field more than once (ticked checkboxes).
        form: Any = list(data) if isinstance(data, list) else dict(data or {})
        if csrf and isinstance(form, dict):
            form.setdefault("csrf", self.csrf)
        elif csrf and not any(k == "csrf" for k, _ in form):
            form.append(("csrf", self.csrf))
        headers = dict(kw.pop("headers", {}))
        if origin is not None:
            headers["Origin"] = self.gw.url if origin == "self" else origin
        async with self.session.post(self.gw.url + path, data=form, headers=headers,
                                     allow_redirects=False, **kw) as r:
            return r.status, await r.text(), r.headers

    async def sign_in(self, name: str = "Jane Doe", password: str | None = None,
                      campaign: str = JANE) -> tuple[int, str, Any]:
        await self.get("/console/sign-in")
        return await self.post("/console/sign-in", {
            "campaign": campaign, "name": name,
            "password": PASSWORDS[name] if password is None else password})


@pytest.fixture
async def console(sqlite_url: str) -> AsyncIterator[Harness]:
    async with console_gateway(sqlite_url) as h:
        yield h


@pytest.fixture
async def jane(console: Harness) -> AsyncIterator[Browser]:
    b = Browser(console)
    status, _, headers = await b.sign_in()
    assert status == 303 and headers["Location"] == "/console/"
    await b.get("/console/")
    yield b
    await b.close()


@pytest.fixture
async def auditor(console: Harness) -> AsyncIterator[Browser]:
    b = Browser(console)
    status, _, _ = await b.sign_in("Returning Officer")
    assert status == 303
    await b.get("/console/")
    yield b
    await b.close()


async def _audit(gw: Harness, action: str) -> list[Any]:
    async with gw.db.read() as conn:
        return list((await conn.execute(select(audit_events).where(
            audit_events.c.action == action).order_by(audit_events.c.seq))).all())


# -- sign-in and sessions -----------------------------------------------------------------


async def test_the_server_root_and_the_console_send_a_signed_out_person_to_sign_in(
        console: Harness) -> None:
    b = Browser(console)
    try:
        status, _, headers = await b.get("/")
        assert status == 303 and headers["Location"] == "/console/"
        status, _, headers = await b.get("/console/")
        assert status == 303 and headers["Location"] == "/console/sign-in"
        status, text, headers = await b.get("/console/sign-in")
        assert status == 200
        assert '<label for="name">Name</label>' in text
        assert '<label for="password">Password</label>' in text
        assert '<label for="campaign">Campaign</label>' in text  # two campaigns here
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
    finally:
        await b.close()


async def test_signing_in_opens_the_console_and_is_audited_under_the_name(
        console: Harness, jane: Browser) -> None:
    status, text, _ = await jane.get("/console/")
    assert status == 200 and "Jane Doe (organiser)" in text
    [signed_in] = await _audit(console, "console.signed_in")
    assert signed_in.actor == "Jane Doe" and signed_in.campaign == JANE
    async with console.db.read() as conn:
        [row] = (await conn.execute(select(console_sessions))).all()
    cookie = next(iter(jane.session.cookie_jar)).value
    assert row.id_hash != cookie and cookie not in row.id_hash  # only a hash is kept


async def test_the_session_cookie_is_httponly_samesite_and_secure_behind_https(
        console: Harness) -> None:
    b = Browser(console)
    try:
        status, _, headers = await b.sign_in()
        assert status == 303
        cookie = next(v for v in headers.getall("Set-Cookie")
                      if v.startswith("consentgate_console="))
        lowered = cookie.lower()
        assert "httponly" in lowered and "samesite=lax" in lowered
        assert "secure" in lowered  # the harness's public_url is https
        assert "path=/console" in lowered
    finally:
        await b.close()


async def test_a_wrong_name_and_a_wrong_password_get_the_same_answer_and_nothing_logs_it(
        console: Harness) -> None:
    b = Browser(console)
    try:
        with capture_logs() as logs:
            s1, wrong_password, _ = await b.sign_in("Jane Doe", "not the password")
            s2, wrong_name, _ = await b.sign_in("Nobody Here", "correct horse battery staple")
        assert s1 == s2 == 401
        message = "That name and password do not match"
        assert message in wrong_password and message in wrong_name
        assert not any(c.key == "consentgate_console" for c in b.session.cookie_jar)
        dumped = repr(logs)
        assert "not the password" not in dumped and "correct horse" not in dumped
        status, _, headers = await b.get("/console/")
        assert status == 303 and headers["Location"] == "/console/sign-in"
    finally:
        await b.close()


async def test_sign_in_attempts_are_limited_per_name_even_with_the_right_password(
        console: Harness) -> None:
    b = Browser(console)
    try:
        for _ in range(5):
            status, _, _ = await b.sign_in("Jane Doe", "guess")
            assert status == 401
        status, text, headers = await b.sign_in("Jane Doe")
        assert status == 429 and "Too many attempts" in text
        assert int(headers["Retry-After"]) > 0
        assert await _audit(console, "console.signed_in") == []
        # Another operator is not locked out by Jane's name being tried.
        other = Browser(console)
        try:
            status, _, _ = await other.sign_in("Returning Officer")
            assert status == 303
        finally:
            await other.close()
    finally:
        await b.close()


async def test_an_operator_without_a_password_hash_cannot_sign_in(sqlite_url: str) -> None:
    async with console_gateway(sqlite_url) as gw:
        ops = gw.gateway.settings.campaigns[0].operators
        assert all(op.password_hash for op in ops)
    # With the plain harness config (no password_hash), nobody signs in.
    from consentgate.testing.harness import running_gateway

    async with running_gateway(sqlite_url) as gw:
        b = Browser(gw)
        try:
            status, _, _ = await b.sign_in("Jane Doe")
            assert status == 401
        finally:
            await b.close()


async def test_signing_out_ends_the_session_and_is_audited(console: Harness,
                                                           jane: Browser) -> None:
    old = next(c.value for c in jane.session.cookie_jar if c.key == "consentgate_console")
    status, _, headers = await jane.post("/console/sign-out")
    assert status == 303 and headers["Location"] == "/console/sign-in"
    [out] = await _audit(console, "console.signed_out")
    assert out.actor == "Jane Doe"
    # The old session id no longer opens anything, even if it was copied.
    replay = aiohttp.ClientSession()
    try:
        async with replay.get(console.url + "/console/", allow_redirects=False,
                              headers={"Cookie": f"consentgate_console={old}"}) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/sign-in"
    finally:
        await replay.close()


async def test_an_idle_session_expires(console: Harness, jane: Browser) -> None:
    async with console.db.write() as conn:
        await conn.execute(update(console_sessions).values(last_seen_at=time.time() - 31 * 60))
    status, _, headers = await jane.get("/console/links")
    assert status == 303 and headers["Location"] == "/console/sign-in"


async def test_expiry_removes_only_idle_or_too_old_sessions(console: Harness) -> None:
    sessions = console.gateway.sessions
    kept = await sessions.start(JANE, "Jane Doe")
    idle = await sessions.start(JANE, "Bob Roe")
    now = time.time()
    async with console.db.write() as conn:
        await conn.execute(update(console_sessions).where(
            console_sessions.c.operator == "Bob Roe").values(last_seen_at=now - 31 * 60))
    assert await sessions.find(idle) is None
    assert await sessions.expire() == 1
    found = await sessions.find(kept)
    assert found is not None and (found.campaign, found.operator) == (JANE, "Jane Doe")
    assert await sessions.expire(now + 13 * 3600) == 1  # past the longest a session lives
    assert await sessions.find(kept) is None


# -- forgery ------------------------------------------------------------------------------


async def _link_count(gw: Harness) -> int:
    async with gw.db.read() as conn:
        return len((await conn.execute(select(links.c.id))).all())


async def test_a_cross_site_post_is_refused_and_changes_nothing(console: Harness,
                                                                jane: Browser) -> None:
    await jane.get("/console/links")
    form = {"name": "Forged", "channel": "sms"}
    status, text, _ = await jane.post("/console/links", form, origin="https://evil.example")
    assert status == 403 and "another site" in text
    status, _, _ = await jane.post("/console/links", form, origin=None,
                                   headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert await _link_count(console) == 0


async def test_a_post_without_the_form_token_is_refused_and_changes_nothing(
        console: Harness, jane: Browser) -> None:
    await jane.get("/console/links")
    status, text, _ = await jane.post("/console/links", {"name": "No token", "channel": "sms"},
                                      csrf=False)
    assert status == 403 and "Reload the page" in text
    status, _, _ = await jane.post("/console/links", {"name": "Bad", "channel": "sms",
                                                      "csrf": "0" * 64})
    assert status == 403
    assert await _link_count(console) == 0
    # The same form with its token goes through.
    status, _, headers = await jane.post("/console/links", {"name": "Stall", "channel": "sms"})
    assert status == 303 and headers["Location"].startswith("/console/links/")


async def test_another_sessions_token_does_not_pass(console: Harness, jane: Browser,
                                                    auditor: Browser) -> None:
    await jane.get("/console/links")
    status, _, _ = await jane.post("/console/opt-outs", {
        "channel": "sms", "address": "+447911123123", "csrf": auditor.csrf})
    assert status == 403


# -- roles --------------------------------------------------------------------------------


async def test_an_auditor_sees_every_page_without_change_controls_and_is_refused_changes(
        console: Harness, jane: Browser, auditor: Browser) -> None:
    status, _, headers = await jane.post("/console/links", {"name": "Stall", "channel": "sms"})
    link_path = headers["Location"]
    for path in ("/console/", "/console/links", link_path, "/console/broadcasts",
                 "/console/replies", "/console/people", "/console/opt-outs",
                 "/console/audit", "/console/report"):
        status, text, _ = await auditor.get(path)
        assert status == 200, path
        for control in ("Create link", "Revoke this link", "Review and send",
                        "Record opt-out", "Import opt-outs"):
            assert control not in text, (path, control)
    await auditor.get("/console/links")
    for path, form in (("/console/links", {"name": "Auditor's", "channel": "sms"}),
                       (link_path + "/revoke", {}),
                       ("/console/opt-outs", {"channel": "sms", "address": "+447911123123"}),
                       ("/console/broadcasts/confirm", {"channel": "sms", "text": "Hi"})):
        status, text, _ = await auditor.post(path, form)
        assert status == 403 and "auditor" in text, path
    assert await _link_count(console) == 1
    status, body = await console.api("GET", "/api/v1/subscribers/sms/+447911123123")
    assert body["status"] == "unknown"


# -- pages and their actions --------------------------------------------------------------


async def test_a_link_is_created_with_its_qr_code_and_poster_and_revoked_by_name(
        console: Harness, jane: Browser) -> None:
    await jane.get("/console/links")
    status, _, headers = await jane.post("/console/links", {
        "name": "Freshers' fair", "channel": "sms", "expires_at": "2099-01-01T00:00:00Z"})
    assert status == 303
    path = headers["Location"]
    status, text, _ = await jane.get(path)
    assert status == 200 and "Freshers&#39; fair" in text and "/join/" in text
    async with jane.session.get(console.url + path + "/qr.png") as r:
        assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")
    async with jane.session.get(console.url + path + "/qr.svg") as r:
        assert r.status == 200 and "<svg" in await r.text()
    status, poster, _ = await jane.get(path + "/poster?size=A5")
    assert status == 200 and "Jane Doe for President" in poster
    status, _, _ = await jane.post(path + "/revoke")
    assert status == 303
    status, text, _ = await jane.get(path)
    assert "revoked" in text
    [created] = await _audit(console, "link.created")
    [revoked] = await _audit(console, "link.revoked")
    assert created.actor == revoked.actor == "Jane Doe"


async def test_a_bad_link_form_gets_a_clear_4xx_and_creates_nothing(
        console: Harness, jane: Browser) -> None:
    await jane.get("/console/links")
    status, text, _ = await jane.post("/console/links", {
        "name": "Old", "channel": "sms", "expires_at": "2001-01-01T00:00:00Z"})
    assert status == 422 and "in the future" in text
    status, _, _ = await jane.post("/console/links", {"name": "X", "channel": "fax"})
    assert status == 422
    assert await _link_count(console) == 0


async def test_compose_preview_confirm_and_send_a_broadcast_to_the_exact_number(
        console: Harness, jane: Browser) -> None:
    for n in range(3):
        await console.subscribe(f"+4479111231{n:02d}")
    await console.api("POST", "/api/v1/opt-outs", {"channel": "sms",
                                                   "address": "+447911123100"})
    status, text, _ = await jane.get(
        "/console/broadcasts/preview?channel=sms&text=Rally+at+noon",
        headers={"HX-Request": "true"})
    assert status == 200 and "<html" not in text  # a fragment for htmx
    assert "Reaches <strong>2</strong> people" in text
    assert "1 not reached: opted out" in text
    assert "Reply STOP to opt out" in text and "1 SMS segment" in text
    status, text, _ = await jane.post("/console/broadcasts/confirm",
                                      {"channel": "sms", "text": "Rally at noon"})
    assert status == 200 and "Send to 2 people" in text
    assert await _audit(console, "broadcast.created") == []  # nothing queued yet
    # Someone joins between review and send: the operator confirms the new number.
    await console.subscribe("+447911123199")
    status, text, _ = await jane.post("/console/broadcasts", {
        "channel": "sms", "text": "Rally at noon", "expected": "2"})
    assert status == 409 and "Send to 3 people" in text
    assert await _audit(console, "broadcast.created") == []
    status, _, headers = await jane.post("/console/broadcasts", {
        "channel": "sms", "text": "Rally at noon", "expected": "3"})
    assert status == 303
    path = headers["Location"]
    [created] = await _audit(console, "broadcast.created")
    assert created.actor == "Jane Doe"
    sent = await console.twilio.wait_for(3)
    assert {m.to for m in sent} == {"+447911123101", "+447911123102", "+447911123199"}
    deadline = time.monotonic() + 10
    while True:
        status, text, _ = await jane.get(path, headers={"HX-Request": "true"})
        if '<span id="status">done</span>' in text:
            break
        assert time.monotonic() < deadline, text
        await console.twilio.wait_for(3)
    assert "hx-trigger" not in text  # a finished broadcast stops polling


async def test_a_broadcast_is_cancelled_from_its_page(console: Harness,
                                                      jane: Browser) -> None:
    await console.subscribe("+447911123101")
    code, body = await console.api("POST", "/api/v1/broadcasts",
                                   {"channel": "sms", "text": "Hello"})
    assert code == 202
    await jane.get(f"/console/broadcasts/{body['id']}")
    status, _, _ = await jane.post(f"/console/broadcasts/{body['id']}/cancel")
    assert status == 303
    [cancelled] = await _audit(console, "broadcast.cancelled")
    assert cancelled.actor == "Jane Doe"
    status, text, _ = await jane.get(f"/console/broadcasts/{body['id']}")
    assert '<span id="status">cancelled</span>' in text


async def test_a_person_is_looked_up_opted_out_exported_and_erased_with_confirmation(
        console: Harness, jane: Browser) -> None:
    number = "+447911123150"
    await console.subscribe(number)
    status, text, _ = await jane.get("/console/people?channel=sms&address=07911+123150")
    assert status == 200 and "We can message them" in text and "street stall" in text
    status, _, headers = await jane.post("/console/opt-outs", {
        "channel": "sms", "address": number, "reason": "asked at the stall"})
    assert status == 303
    status, text, _ = await jane.get(headers["Location"])
    assert "We cannot message them" in text and "opted out" in text
    async with jane.session.post(console.url + "/console/people/export", data={
            "csrf": jane.csrf, "channel": "sms", "address": number},
            headers={"Origin": console.url}) as r:
        assert r.status == 200
        export = await r.json()
    assert number in str(export)
    status, text, _ = await jane.post("/console/people/erase",
                                      {"channel": "sms", "address": number})
    assert status == 422 and "tick the box" in text
    status, text, _ = await jane.post("/console/people/erase", {
        "channel": "sms", "address": number, "confirm": "yes"})
    assert status == 200 and "Erased" in text
    for action in ("opt_out.recorded", "subject.exported", "subject.erased"):
        [record] = await _audit(console, action)
        assert record.actor == "Jane Doe", action


async def test_a_bad_address_gets_a_clear_4xx(jane: Browser) -> None:
    status, text, _ = await jane.get("/console/people?channel=sms&address=not-a-number")
    assert status == 422
    status, _, _ = await jane.get("/console/people?channel=fax&address=1")
    assert status == 422


async def test_csv_imports_answer_line_by_line(console: Harness, jane: Browser) -> None:
    await jane.get("/console/opt-outs")
    consents = ("channel,address,method,source,evidence\n"
                "sms,+447911123160,paper_form,stall,signed sheet 4\n"
                "sms,not-a-number,paper_form,stall,signed sheet 4\n")
    form = aiohttp.FormData()
    form.add_field("csrf", jane.csrf)
    form.add_field("file", consents.encode(), filename="consents.csv",
                   content_type="text/csv")
    async with jane.session.post(console.url + "/console/consents/import", data=form,
                                 headers={"Origin": console.url}) as r:
        text = await r.text()
        assert r.status == 200
    assert "<strong>1</strong> consents imported" in text and "invalid_address" in text
    opt_outs = "channel,address,reason\nsms,+447911123160,old platform\n"
    form = aiohttp.FormData()
    form.add_field("csrf", jane.csrf)
    form.add_field("file", opt_outs.encode(), filename="s.csv", content_type="text/csv")
    async with jane.session.post(console.url + "/console/opt-outs/import", data=form,
                                 headers={"Origin": console.url}) as r:
        assert r.status == 200 and "<strong>1</strong> opt-outs imported" in await r.text()
    async with jane.session.get(console.url + "/console/opt-outs/export.csv") as r:
        assert r.status == 200 and "+447911123160" in await r.text()


async def test_replies_show_flagged_first_with_what_the_classifier_read(
        console: Harness, jane: Browser) -> None:
    await console.subscribe("+447911123170")
    await console.sms_in("+447911123170", "See you Saturday")
    await console.sms_in("+447911123170", "We have got to STOP this terrible bill")
    status, text, _ = await jane.get("/console/replies")
    assert status == 200
    flagged_at = text.index("We have got to STOP")
    assert flagged_at < text.index("See you Saturday")
    assert "flagged: possible opt out" in text


_RESOLVE = re.compile(r'action="/console/replies/(\d+)/resolve"')


async def _flagged_reply(console: Harness, jane: Browser, address: str) -> int:
    """A reply the classifier flags, arrived through the signed webhook; its id as the
    replies page offers it for resolution."""
    await console.subscribe(address)
    await console.sms_in(address, "We have got to STOP this terrible bill")
    status, text, _ = await jane.get("/console/replies?unresolved=1")
    assert status == 200
    [reply_id] = _RESOLVE.findall(text)
    return int(reply_id)


async def test_a_flagged_reply_is_resolved_as_an_opt_out_in_one_click(
        console: Harness, jane: Browser) -> None:
    reply_id = await _flagged_reply(console, jane, "+447911123171")
    status, text, _ = await jane.get("/console/")
    assert "<strong>1</strong> flagged replies waiting" in text
    status, _, headers = await jane.post(f"/console/replies/{reply_id}/resolve",
                                         {"action": "opt_out"})
    assert status == 303 and headers["Location"] == f"/console/replies?resolved={reply_id}"
    code, body = await console.api("GET", "/api/v1/subscribers/sms/+447911123171")
    assert code == 200 and body["status"] == "opted_out"
    assert body["history"][-1]["method"] == "reviewed_reply"
    assert body["history"][-1]["actor"] == "Jane Doe"
    [resolved] = await _audit(console, "reply.resolved")
    assert resolved.actor == "Jane Doe" and '"resolution":"opted_out"' in resolved.detail
    status, text, _ = await jane.get(f"/console/replies?resolved={reply_id}")
    assert f"Reply {reply_id} resolved." in text
    assert "Resolved: <strong>opted out</strong> by Jane Doe" in text
    assert _RESOLVE.findall(text) == []  # no buttons on a resolved reply
    status, text, _ = await jane.get("/console/replies?unresolved=1")
    assert "terrible bill" not in text and "No flagged reply is waiting" in text
    status, text, _ = await jane.get("/console/")
    assert "<strong>0</strong> flagged replies waiting" in text


async def test_a_flagged_reply_is_resolved_as_not_an_opt_out(console: Harness,
                                                              jane: Browser) -> None:
    reply_id = await _flagged_reply(console, jane, "+447911123172")
    status, _, _ = await jane.post(f"/console/replies/{reply_id}/resolve",
                                   {"action": "not_an_opt_out"})
    assert status == 303
    code, body = await console.api("GET", "/api/v1/subscribers/sms/+447911123172")
    assert code == 200 and body["status"] == "subscribed" and body["can_send"] is True
    status, text, _ = await jane.get("/console/replies")
    assert "Resolved: <strong>not an opt-out</strong> by Jane Doe" in text
    assert "terrible bill" in text  # still listed, without the unresolved filter


async def test_an_auditor_may_not_resolve_a_reply_nor_sees_the_buttons(
        console: Harness, jane: Browser, auditor: Browser) -> None:
    reply_id = await _flagged_reply(console, jane, "+447911123173")
    status, text, _ = await auditor.get("/console/replies")
    assert status == 200 and "terrible bill" in text and _RESOLVE.findall(text) == []
    status, text, _ = await auditor.post(f"/console/replies/{reply_id}/resolve",
                                         {"action": "opt_out"})
    assert status == 403 and "auditor" in text
    code, body = await console.api("GET", "/api/v1/subscribers/sms/+447911123173")
    assert body["status"] == "subscribed"
    assert await _audit(console, "reply.resolved") == []


async def test_a_second_resolution_is_refused_with_a_clear_message(
        console: Harness, jane: Browser) -> None:
    reply_id = await _flagged_reply(console, jane, "+447911123174")
    status, _, _ = await jane.post(f"/console/replies/{reply_id}/resolve",
                                   {"action": "not_an_opt_out"})
    assert status == 303
    status, text, _ = await jane.post(f"/console/replies/{reply_id}/resolve",
                                      {"action": "opt_out"})
    assert status == 409 and "already_resolved" in text
    assert "already resolved (not_an_opt_out)" in text
    code, body = await console.api("GET", "/api/v1/subscribers/sms/+447911123174")
    assert body["status"] == "subscribed"
    assert len(await _audit(console, "reply.resolved")) == 1


async def test_the_report_verifies_the_chain_only_when_asked(console: Harness,
                                                             jane: Browser) -> None:
    status, text, _ = await jane.get("/console/report")
    assert status == 200 and "Audit chain: not verified since the gateway started" in text
    status, text, _ = await jane.get("/console/report?verify=1")
    assert status == 200 and "Audit chain: intact" in text and "verified " in text
    await jane.post("/console/sign-out")  # one more record after the verification
    b = Browser(console)
    try:
        await b.sign_in()
        status, text, _ = await b.get("/console/report")
        assert "Audit chain: intact" in text and "added since" in text
        # A broken chain shows as broken once verified again.
        async with console.db.write() as conn:
            await conn.execute(update(audit_events).where(audit_events.c.seq == 1)
                               .values(actor="someone else"))
        status, text, _ = await b.get("/console/report?verify=1")
        assert status == 200 and "Audit chain: broken at record 1" in text
    finally:
        await b.close()


async def test_the_person_page_shows_state_history_and_replies_as_the_ledger_does(
        console: Harness, jane: Browser) -> None:
    address = "+447911123175"
    await console.subscribe(address)
    await console.sms_in(address, "See you Saturday")
    gw = console.gateway
    record = await gw.subscribers.record(JANE, "sms", address)
    view = await gw.subscribers.view(gw.settings.campaigns[0], "sms", address)
    assert (record.status, record.can_send, record.reason) == (
        view["status"], view["can_send"], view["reason"])
    assert [h.event for h in record.history] == [h["event"] for h in view["history"]]
    assert [r["text"] for r in record.replies] == ["See you Saturday"]
    await console.api("POST", "/api/v1/opt-outs", {"channel": "sms", "address": address})
    record = await gw.subscribers.record(JANE, "sms", address)
    view = await gw.subscribers.view(gw.settings.campaigns[0], "sms", address)
    assert (record.status, record.can_send, record.reason) == (
        view["status"], view["can_send"], view["reason"]) == ("opted_out", False,
                                                             "opted_out")
    status, text, _ = await jane.get(f"/console/people?channel=sms&address={address}")
    assert status == 200 and "See you Saturday" in text and "opted out" in text


async def test_the_audit_page_filters_and_verifies_the_chain(console: Harness,
                                                             jane: Browser) -> None:
    status, text, _ = await jane.get("/console/audit?action=console.signed_in&verify=1")
    assert status == 200 and "console.signed_in" in text
    assert "The chain is intact" in text
    status, text, _ = await jane.get("/console/report")
    assert status == 200 and "Audit chain: intact" in text


async def test_an_unknown_console_page_is_a_404_page(jane: Browser) -> None:
    status, text, _ = await jane.get("/console/nowhere")
    assert status == 404 and "no such page" in text
    status, _, _ = await jane.get("/console/broadcasts/99999")
    assert status == 404


# -- the preview's rules ------------------------------------------------------------------


def test_sms_segments_follow_gsm7_and_ucs2_limits() -> None:
    assert sms_segments("a" * 160) == ("GSM-7", 160, 1)
    assert sms_segments("a" * 161) == ("GSM-7", 161, 2)
    assert sms_segments("€" * 80) == ("GSM-7", 160, 1)  # extended characters count twice
    assert sms_segments("ő" * 70) == ("UCS-2", 70, 1)
    assert sms_segments("ő" * 71) == ("UCS-2", 71, 2)
    assert sms_segments("😀" * 35) == ("UCS-2", 70, 1)


def test_the_sms_preview_adds_the_opt_out_line_only_when_the_text_lacks_one() -> None:
    added = sms_preview("Rally at noon", "Reply STOP to opt out")
    assert added.text == "Rally at noon\nReply STOP to opt out"
    assert added.added_line == "Reply STOP to opt out"
    kept = sms_preview("Rally at noon. Reply STOP to opt out", "Reply STOP to opt out")
    assert kept.added_line is None and kept.text.endswith("opt out")


async def test_only_slow_counts_are_reused_and_only_for_a_while() -> None:
    from consentgate.bot.web.console.counts import SlowCounts

    calls = 0

    async def count() -> int:
        nonlocal calls
        calls += 1
        return calls

    slow = SlowCounts(slow_after=0.0, keep_for=60.0)  # every count counts as slow
    first = await slow.get("k", count)
    again = await slow.get("k", count)
    assert (first.value, first.reused) == (1, False)
    assert (again.value, again.reused, again.at) == (1, True, first.at)
    expired = SlowCounts(slow_after=0.0, keep_for=0.0)
    await expired.get("k", count)
    assert (await expired.get("k", count)).reused is False
    fast = SlowCounts(slow_after=3600.0)  # nothing is that slow: always counted afresh
    a = await fast.get("k", count)
    b = await fast.get("k", count)
    assert b.value == a.value + 1 and not b.reused


@pytest.mark.postgres
async def test_sessions_and_a_console_change_work_on_postgresql(pg_url: str) -> None:
    async with console_gateway(pg_url) as gw:
        b = Browser(gw)
        try:
            status, _, _ = await b.sign_in()
            assert status == 303
            await b.get("/console/links")
            status, _, headers = await b.post("/console/links",
                                              {"name": "Stall", "channel": "sms"})
            assert status == 303
            [created] = await _audit(gw, "link.created")
            assert created.actor == "Jane Doe"
            # The person page's two queries and a reply's resolution, on PostgreSQL too.
            await gw.subscribe("+447911123176")
            await gw.sms_in("+447911123176", "We have got to STOP this terrible bill")
            status, text, _ = await b.get("/console/people?channel=sms&address=%2B447911123176")
            assert status == 200 and "We can message them" in text and "terrible bill" in text
            status, text, _ = await b.get("/console/replies?unresolved=1")
            [reply_id] = _RESOLVE.findall(text)
            status, _, _ = await b.post(f"/console/replies/{reply_id}/resolve",
                                        {"action": "opt_out"})
            assert status == 303
            status, text, _ = await b.get("/console/people?channel=sms&address=%2B447911123176")
            assert "We cannot message them" in text and "reviewed_reply" in text
            status, _, _ = await b.post("/console/sign-out")
            assert status == 303
            async with gw.db.read() as conn:
                assert (await conn.execute(select(console_sessions))).all() == []
        finally:
            await b.close()


async def test_restriction_and_rectification_ask_for_confirmation_and_are_audited(
        console: Harness, jane: Browser) -> None:
    old, new = "+447911123180", "+447911123181"
    await console.subscribe(old)
    await jane.get(f"/console/people?channel=sms&address={old}")
    form = {"channel": "sms", "address": old, "restricted": "true"}
    status, _, _ = await jane.post("/console/people/restrict", form)
    assert status == 422
    status, _, headers = await jane.post("/console/people/restrict", {**form, "confirm": "yes"})
    assert status == 303
    status, text, _ = await jane.get(headers["Location"])
    assert "processing restricted" in text and "We cannot message them" in text
    status, _, headers = await jane.post("/console/people/rectify", {
        "channel": "sms", "address": old, "new_address": "07911 123181", "confirm": "yes"})
    assert status == 303 and "%2B447911123181" in headers["Location"]
    code, body = await console.api("GET", f"/api/v1/subscribers/sms/{new}")
    assert code == 200 and body["history"]
    for action in ("subject.restricted", "subject.rectified"):
        records = await _audit(console, action)
        assert [r.actor for r in records] == ["Jane Doe"], action


async def test_no_session_id_reaches_the_log(console: Harness) -> None:
    b = Browser(console)
    try:
        with capture_logs() as logs:
            await b.sign_in()
            await b.get("/console/links")
            await b.post("/console/links", {"name": "Stall", "channel": "sms"})
            sid = next(c.value for c in b.session.cookie_jar
                       if c.key == "consentgate_console")
            await b.post("/console/sign-out")
        assert logs and sid and sid not in repr(logs) and b.csrf not in repr(logs)
    finally:
        await b.close()


# -- segments and scheduling in compose ---------------------------------------------------


async def _tagged(h: Harness, number: str, tags: list[str]) -> None:
    body: dict[str, Any] = {"channel": "sms", "address": number, "method": "paper_form",
                            "source": "street stall", "evidence": "signed form"}
    if tags:
        body["tags"] = tags
    status, answer = await h.api("POST", "/api/v1/consents", body)
    assert status == 201, answer


async def _five_people(h: Harness) -> None:
    """Ann (volunteer, ward-north), Ben (volunteer), Cat (ward-north), Dan (volunteer;
    opted out), Fay (no tags)."""
    await _tagged(h, "+447911123201", ["volunteer", "ward-north"])
    await _tagged(h, "+447911123202", ["volunteer"])
    await _tagged(h, "+447911123203", ["ward-north"])
    await _tagged(h, "+447911123204", ["volunteer"])
    await _tagged(h, "+447911123205", [])
    status, _ = await h.api("POST", "/api/v1/opt-outs", {"channel": "sms",
                                                        "address": "+447911123204"})
    assert status == 201


def _checkbox(text: str, kind: str, tag: str) -> str:
    found = re.search(rf'<input type="checkbox" id="b-{kind}-{tag}"[^>]*>\s*'
                      rf'<label for="b-{kind}-{tag}">([^<]*)<span class="note">([^<]*)</span>',
                      text)
    assert found, (kind, tag)
    return found.group(2)


async def test_compose_lists_the_tags_and_the_preview_counts_match_the_api_dry_run(
        console: Harness, jane: Browser) -> None:
    await _five_people(console)
    status, text, _ = await jane.get("/console/broadcasts")
    assert status == 200
    # Each tag under each kind, with how many the channel can reach (Dan opted out).
    for kind in ("tags_any", "tags_all", "exclude_tags"):
        assert _checkbox(text, kind, "volunteer") == "(2 sms)"
        assert _checkbox(text, kind, "ward-north") == "(2 sms)"
    assert 'type="datetime-local"' in text and 'for="b-send-at"' in text
    for segment in ({"tags_any": ["volunteer", "ward-north"]},
                    {"tags_all": ["volunteer", "ward-north"]},
                    {"tags_any": ["ward-north"], "exclude_tags": ["volunteer"]},
                    {"exclude_tags": ["ward-north"]},
                    {}):
        query = [("channel", "sms"), ("text", "Canvass")] + [
            (kind, tag) for kind, tags in segment.items() for tag in tags]
        status, text, _ = await jane.get("/console/broadcasts/preview", params=query,
                                         headers={"HX-Request": "true"})
        assert status == 200
        code, dry = await console.api("POST", "/api/v1/broadcasts", {
            "channel": "sms", "text": "Canvass", "dry_run": True, **segment})
        assert code == 200
        eligible = dry["audience"]["eligible"]
        assert f"Reaches <strong>{eligible}</strong> " in text, segment
        for reason, n in dry["audience"]["excluded"].items():
            assert f"{n} not reached: {reason.replace('_', ' ')}" in text, segment
    # Without JavaScript, the Preview button keeps the ticked boxes ticked.
    status, text, _ = await jane.get("/console/broadcasts/preview", params=[
        ("channel", "sms"), ("text", "Canvass"), ("tags_all", "ward-north")])
    assert status == 200 and "<html" in text
    assert re.search(r'id="b-tags_all-ward-north"[^>]*checked', text)
    assert not re.search(r'id="b-tags_any-ward-north"[^>]*checked', text)
    # A tag that is not a tag name is a clear 4xx.
    status, text, _ = await jane.get("/console/broadcasts/preview", params=[
        ("channel", "sms"), ("tags_any", "Ward North")])
    assert status == 422 and "not a tag name" in text


async def test_a_segmented_send_from_the_console_reaches_exactly_the_tagged_people(
        console: Harness, jane: Browser) -> None:
    await _five_people(console)
    await jane.get("/console/broadcasts")
    form = [("channel", "sms"), ("text", "Canvass on Saturday"),
            ("tags_any", "volunteer"), ("tags_any", "ward-north"),
            ("exclude_tags", "ward-north"), ("send_at", "")]
    status, text, _ = await jane.post("/console/broadcasts/confirm",
                                      form)
    assert status == 200, text
    assert "Send to 1 person" in text  # Ben: Ann and Cat are left out, Dan opted out
    assert ("Goes to people tagged volunteer or ward-north, leaving out those tagged "
            "ward-north on sms.") in text
    assert "Goes now." in text
    # The confirmation carries the segment on to the send.
    for kind, tag in (("tags_any", "volunteer"), ("tags_any", "ward-north"),
                      ("exclude_tags", "ward-north")):
        assert f'<input type="hidden" name="{kind}" value="{tag}">' in text
    status, _, headers = await jane.post("/console/broadcasts", form + [
        ("expected", "1")])
    assert status == 303
    [created] = await _audit(console, "broadcast.created")
    assert created.actor == "Jane Doe"
    sent = await console.twilio.wait_for(1)
    assert [m.to for m in sent] == ["+447911123202"]
    status, text, _ = await jane.get(headers["Location"])
    assert "To people tagged volunteer or ward-north, leaving out" in text
    code, listed = await console.api("GET", "/api/v1/broadcasts")
    assert listed[0]["segment"] == {"tags_any": ["volunteer", "ward-north"], "tags_all": [],
                                    "exclude_tags": ["ward-north"]}


async def test_a_scheduled_broadcast_shows_its_time_can_be_cancelled_and_late_starts_show(
        console: Harness, jane: Browser) -> None:
    from zoneinfo import ZoneInfo

    await _five_people(console)
    zone = ZoneInfo(console.gateway.settings.policy.timezone)
    later = (datetime.now(zone) + timedelta(days=2)).replace(second=0, microsecond=0)
    local = later.strftime("%Y-%m-%dT%H:%M")
    await jane.get("/console/broadcasts")
    form = [("channel", "sms"), ("text", "Polls open at 7"), ("tags_all", "volunteer"),
            ("send_at", local)]
    status, text, _ = await jane.post("/console/broadcasts/confirm",
                                      form)
    assert status == 200, text
    assert "Schedule for 2 people" in text
    assert f"Scheduled for <strong>{later.strftime('%a %d %b %Y, %H:%M')}" in text
    status, _, headers = await jane.post("/console/broadcasts", form + [
        ("expected", "2")])
    assert status == 303
    broadcast_id = int(headers["Location"].rsplit("/", 1)[1])
    code, body = await console.api("GET", f"/api/v1/broadcasts/{broadcast_id}")
    assert body["status"] == "scheduled"
    assert datetime.fromisoformat(body["send_at"]) == later  # the campaign's wall clock
    status, text, _ = await jane.get("/console/broadcasts")
    assert f"Scheduled for {later.strftime('%a %d %b %Y, %H:%M')}" in text
    assert f'action="/console/broadcasts/{broadcast_id}/cancel"' in text
    status, text, _ = await jane.get(f"/console/broadcasts/{broadcast_id}")
    assert '<span id="status">scheduled</span>' in text and "Cancel it" in text
    status, _, _ = await jane.post(f"/console/broadcasts/{broadcast_id}/cancel")
    assert status == 303
    [cancelled] = await _audit(console, "broadcast.cancelled")
    assert cancelled.actor == "Jane Doe"
    code, body = await console.api("GET", f"/api/v1/broadcasts/{broadcast_id}")
    assert body["status"] == "cancelled"
    # Another one starts three days late (the gateway was down at the time): it shows so.
    await jane.get("/console/broadcasts")
    status, _, headers = await jane.post("/console/broadcasts", form + [
        ("expected", "2")])
    assert status == 303
    late_id = int(headers["Location"].rsplit("/", 1)[1])
    scheduler = console.gateway.scheduler
    scheduler.clock = lambda: time.time() + 5 * 86400
    scheduler.wake()
    sent = await console.twilio.wait_for(2)  # it started, and reached the two volunteers
    assert {m.to for m in sent} == {"+447911123201", "+447911123202"}
    status, text, _ = await jane.get("/console/broadcasts")
    assert "(started late)" in text and "min late" in text
    status, text, _ = await jane.get(f"/console/broadcasts/{late_id}")
    assert 'id="late"' in text and "Started late" in text


async def test_a_send_at_in_the_past_or_malformed_is_refused_and_queues_nothing(
        console: Harness, jane: Browser) -> None:
    await _five_people(console)
    await jane.get("/console/broadcasts")
    for value, words in (("2001-01-01T09:00", "in the past"),
                         ("next tuesday", "give a date and time"),
                         ("２０２６-01-01T09:00", "give a date and time")):
        status, text, _ = await jane.post("/console/broadcasts/confirm", {
            "channel": "sms", "text": "Hi", "send_at": value})
        assert status == 422 and words in text, value
        status, text, _ = await jane.post("/console/broadcasts", {
            "channel": "sms", "text": "Hi", "send_at": value, "expected": "4"})
        assert status == 422, value
    assert await _audit(console, "broadcast.created") == []
    assert await _audit(console, "broadcast.scheduled") == []


async def test_an_auditor_sees_no_compose_or_cancel_controls_for_a_scheduled_broadcast(
        console: Harness, auditor: Browser) -> None:
    await _five_people(console)
    code, body = await console.api("POST", "/api/v1/broadcasts", {
        "channel": "sms", "text": "Later", "tags_any": ["volunteer"],
        "send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
    assert code == 202 and body["status"] == "scheduled"
    status, text, _ = await auditor.get("/console/broadcasts")
    assert status == 200 and "Scheduled for" in text
    for control in ('name="tags_any"', 'name="send_at"', "Review and send",
                    f"/console/broadcasts/{body['id']}/cancel"):
        assert control not in text, control
    status, text, _ = await auditor.get(f"/console/broadcasts/{body['id']}")
    assert "Cancel it" not in text
    for path, form in (("/console/broadcasts/confirm",
                        {"channel": "sms", "text": "Hi", "tags_any": "volunteer"}),
                       ("/console/broadcasts", {"channel": "sms", "text": "Hi",
                                                "tags_any": "volunteer", "expected": "2"}),
                       (f"/console/broadcasts/{body['id']}/cancel", {})):
        status, text, _ = await auditor.post(path, form)
        assert status == 403 and "auditor" in text, path
    code, body = await console.api("GET", f"/api/v1/broadcasts/{body['id']}")
    assert body["status"] == "scheduled"


def test_segments_in_words_and_send_at_on_the_campaigns_clock() -> None:
    from consentgate.bot.errors import InvalidInput
    from consentgate.bot.tags import Segment
    from consentgate.bot.web.console.pages import segment_words, send_at_of

    assert segment_words(Segment()) == "everyone"
    assert segment_words(Segment(("a", "b"), ("c",), ("d", "e"))) == (
        "people tagged a or b, with c, leaving out those tagged d or e")
    assert segment_words(Segment(exclude_tags=("staff",))) == (
        "everyone except those tagged staff")
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert send_at_of("", "Europe/London", now) is None
    # Summer and winter time on the same clock, and another zone.
    assert send_at_of("2026-05-07T07:00", "Europe/London", now) == "2026-05-07T07:00:00+01:00"
    assert send_at_of("2026-11-07T07:00", "Europe/London", now) == "2026-11-07T07:00:00+00:00"
    assert send_at_of("2026-05-07T07:00", "America/New_York", now) == (
        "2026-05-07T07:00:00-04:00")
    for bad in ("2025-12-31T07:00", "7am", "2026-05-07T07:00" + "0" * 40):
        with pytest.raises(InvalidInput) as refused:
            send_at_of(bad, "Europe/London", now)
        assert refused.value.code == "invalid_send_at"
