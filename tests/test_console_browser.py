"""The organiser console in a real browser (Playwright driving the system's Chromium), as a
campaign team uses it: sign in, make a join link and its poster, watch a person join through
it from their own phone, compose and send a broadcast while the preview follows the
choices, see a STOP arrive, and check that an auditor can look but not touch. axe-core
checks every page for serious or critical accessibility faults, and the screenshots for
docs/console.md are taken here, at phone width (390 px) and at desktop width.

Skipped where Playwright or Chromium is not installed (``.ci/run`` installs both).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from consentgate.testing.harness import PUBLIC_URL
from tests.web.test_console import PASSWORDS, console_gateway

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "console"
AXE = (Path(__file__).resolve().parent / "vendor" / "axe.min.js").read_text()
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
RECIPIENT = "+447911123456"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine (apt-get install chromium)")


async def _axe(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it stands."""
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.evaluate(AXE)
    found = await page.evaluate(
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => r.violations.filter(v => v.impact === 'serious' || "
        "v.impact === 'critical').map(v => v.id + ': ' + v.help + ' ' + "
        "v.nodes.map(n => n.target.join(' ')).join(', ')))")
    return list(found)


async def _check(page: Any, name: str | None = None, *, full: bool = True) -> None:
    """No serious or critical accessibility fault, nothing wider than the screen, and
    (``name``) a screenshot for the docs."""
    problems = await _axe(page)
    assert problems == [], (page.url, problems)
    width = await page.evaluate("document.documentElement.scrollWidth")
    viewport = page.viewport_size["width"]
    assert width <= viewport, (page.url, width, viewport)
    if name:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


async def _nav(page: Any, label: str) -> None:
    async with page.expect_navigation():
        await page.get_by_role("navigation").get_by_role("link", name=label,
                                                         exact=True).click()


async def _sign_in(page: Any, base: str, name: str) -> None:
    await page.goto(base + "/console/")
    assert page.url.endswith("/console/sign-in")
    await page.get_by_label("Campaign").select_option("jane-2026")
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(PASSWORDS[name])
    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign in").click()
    assert page.url.endswith("/console/")


async def test_a_campaign_team_runs_a_campaign_from_the_console(sqlite_url: str) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    executable = _chromium()
    async with console_gateway(sqlite_url) as gw, playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, headless=True,
                                          args=CHROMIUM_ARGS)
        try:
            for n in range(4):
                await gw.subscribe(f"+4479111231{n:02d}")
            await gw.api("POST", "/api/v1/opt-outs",
                         {"channel": "sms", "address": "+447911123100"})
            await gw.subscribe("organiser@example.org", channel="email")
            status, _ = await gw.api("PATCH", "/api/v1/subscribers/sms/+447911123102",
                                     {"add_tags": ["volunteer"]})
            assert status == 200

            desk = await browser.new_context(**DESKTOP)
            page = await desk.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            # The sign-in page, and a signed-in console.
            await page.goto(gw.url + "/console/sign-in")
            await _check(page, "sign-in")
            await _sign_in(page, gw.url, "Jane Doe")
            await expect(page.get_by_text("Jane Doe (organiser)")).to_be_visible()

            # A join link for the stall, its QR code and its poster.
            await _nav(page, "Join links")
            await page.get_by_label("Name (where it will be used)").fill("Freshers' fair")
            await page.get_by_label("Channel").select_option("sms")
            async with page.expect_navigation():
                await page.get_by_role("button", name="Create link").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Freshers' fair")
            qr_loaded = await page.locator("img.qr").evaluate("i => i.naturalWidth > 0")
            assert qr_loaded
            join_url = await page.locator("dd a").first.inner_text()
            await _check(page, "link")
            poster = await desk.new_page()
            await poster.goto(page.url + "/poster?size=A4")
            await expect(poster.get_by_text("Jane Doe for President").first).to_be_visible()
            await poster.close()

            # A person at the stall joins from their own phone, then confirms by text.
            phone = await browser.new_context(**PHONE, java_script_enabled=False)
            them = await phone.new_page()
            await them.goto(join_url.replace(PUBLIC_URL, gw.url))
            await them.get_by_label("Mobile number").fill("07911 123456")
            await them.get_by_label("Yes, send me updates about Jane's campaign").check()
            async with them.expect_navigation():
                await them.get_by_role("button", name="Sign me up").click()
            await expect(them.get_by_role("heading", level=1)).to_have_text("Check your phone")
            await phone.close()
            invite = [m for m in await gw.twilio.wait_for(1) if m.to == RECIPIENT]
            assert invite and "reply YES" in invite[0].body
            status, _ = await gw.sms_in(RECIPIENT, "YES")
            assert status == 200
            await page.reload()
            await expect(page.locator("#joins")).to_have_text("1")

            # Home counts them.
            await _nav(page, "Home")
            row = page.get_by_role("row", name="sms")
            await expect(row.get_by_role("cell").first).to_have_text("4")  # subscribed
            await _check(page, "home")

            # Compose: the preview follows the channel and the text without a reload.
            await _nav(page, "Broadcasts")
            await page.get_by_label("Message").fill("Rally at the library, noon Saturday")
            preview = page.locator("#preview")
            await expect(preview).to_contain_text("Reaches 4 people")
            await expect(preview).to_contain_text("1 not reached: opted out")
            await expect(preview).to_contain_text("Reply STOP to opt out")
            await page.get_by_label("Channel").select_option("email")
            await expect(preview).to_contain_text("Reaches 1 person")
            await expect(preview).to_contain_text("Promoted by Jane Doe")
            await page.get_by_label("Channel").select_option("sms")
            await expect(preview).to_contain_text("Reaches 4 people")
            # A segment: the preview follows the ticked tags too.
            await page.locator("#b-tags_any-volunteer").check()
            await expect(preview).to_contain_text("Reaches 1 person")
            await page.locator("#b-exclude_tags-volunteer").check()
            await expect(preview).to_contain_text("Reaches 0 people")
            await page.locator("#b-tags_any-volunteer").uncheck()
            await expect(preview).to_contain_text("Reaches 3 people")
            await page.locator("#b-exclude_tags-volunteer").uncheck()
            await expect(preview).to_contain_text("Reaches 4 people")
            await _check(page, "compose")
            async with page.expect_navigation():
                await page.get_by_role("button", name="Review and send").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text(
                "Send to 4 people?")
            await _check(page, "confirm")
            async with page.expect_navigation():
                await page.get_by_role("button", name="Send to 4 people").click()
            # Progress updates by itself until the broadcast is done.
            await expect(page.locator("#status")).to_have_text("done", timeout=15_000)
            await expect(page.locator("#count-sent")).not_to_have_text("0")
            await _check(page, "broadcast")

            # A STOP through the signed Twilio webhook, and an ambiguous reply.
            await gw.sms_in("+447911123101", "Stop texting me please")
            await gw.sms_in("+447911123102", "We have got to STOP this terrible bill")
            await _nav(page, "Replies")
            await expect(page.locator(".reply.flagged")).to_contain_text("terrible bill")
            await expect(page.locator(".reply").first).to_contain_text("terrible bill")
            stop = page.locator(".reply:not(.flagged)", has_text="Stop texting me")
            await expect(stop).to_contain_text("Read as: opt out")
            await _check(page, "replies")
            await page.get_by_role("link", name="+447911123101").click()
            await expect(page.locator("#verdict")).to_contain_text("opted out")
            await expect(page.locator("#status")).to_have_text("opted out")
            await _check(page, "person")

            # The flagged reply is resolved in one click: its sender is opted out.
            await _nav(page, "Replies")
            flagged = page.locator(".reply.flagged", has_text="terrible bill")
            await expect(flagged).to_contain_text("Waiting for a decision")
            async with page.expect_navigation():
                await flagged.get_by_role("button", name="It is an opt-out").click()
            await expect(page.get_by_role("status")).to_contain_text("resolved")
            await expect(flagged).to_contain_text("Resolved: opted out by Jane Doe")
            assert await flagged.get_by_role("button").count() == 0
            await _check(page)
            await page.get_by_role("link", name="+447911123102").first.click()
            await expect(page.locator("#status")).to_have_text("opted out")
            await expect(page.locator("main")).to_contain_text("reviewed_reply")
            await _nav(page, "Home")
            await expect(page.locator(".stats")).to_contain_text("0 flagged replies waiting")

            # Opt-outs, audit and report pages.
            for label, shot in (("Opt-outs", "opt-outs"), ("Audit", "audit"),
                                ("Report", "report")):
                await _nav(page, label)
                await _check(page, shot)
            await _nav(page, "Audit")
            async with page.expect_navigation():
                await page.get_by_role("button", name="Check the chain").click()
            await expect(page.locator("#chain")).to_contain_text("The chain is intact")
            assert errors == [], errors  # no script or CSP error on any page

            # The same pages at phone width.
            mobile = await browser.new_context(**PHONE)
            small = await mobile.new_page()
            await _sign_in(small, gw.url, "Jane Doe")
            await _check(small, "home-phone")
            await small.goto(gw.url + "/console/broadcasts")
            await small.get_by_label("Message").fill("Canvassing tonight, 6pm")
            await expect(small.locator("#preview")).to_contain_text("Reaches")
            await _check(small, "compose-phone")
            await small.goto(gw.url + "/console/replies")
            await _check(small, "replies-phone")
            await mobile.close()

            # An auditor sees everything and no change control.
            audit_ctx = await browser.new_context(**DESKTOP)
            ro = await audit_ctx.new_page()
            await _sign_in(ro, gw.url, "Returning Officer")
            for path in ("/console/broadcasts", "/console/links", "/console/opt-outs",
                         "/console/people?channel=sms&address=%2B447911123101"):
                await ro.goto(gw.url + path)
                await _check(ro)
                for control in ("Review and send", "Create link", "Record opt-out", "Erase"):
                    assert await ro.get_by_role("button", name=control).count() == 0
            await audit_ctx.close()

            # Signing out ends it.
            async with page.expect_navigation():
                await page.get_by_role("button", name="Sign out").click()
            assert page.url.endswith("/console/sign-in")
            await page.goto(gw.url + "/console/")
            assert page.url.endswith("/console/sign-in")
        finally:
            await browser.close()
    for name in ("home", "compose", "broadcast", "replies", "person", "home-phone"):
        assert (SHOTS / f"{name}.png").read_bytes().startswith(b"\x89PNG")


async def test_forms_from_another_site_or_without_the_token_change_nothing(
        sqlite_url: str) -> None:
    """A signed-in organiser visits another site whose form posts to the console, and a
    script on a console page posts without the form token: both are refused with 403."""
    playwright_api = pytest.importorskip("playwright.async_api")
    from aiohttp import web

    executable = _chromium()
    victim = "+447911123177"

    async with console_gateway(sqlite_url) as gw:
        forged = (f'<!doctype html><html lang="en"><title>Win a prize</title>'
                  f'<form method="post" action="{gw.url}/console/opt-outs">'
                  f'<input type="hidden" name="channel" value="sms">'
                  f'<input type="hidden" name="address" value="{victim}">'
                  f'<input type="hidden" name="csrf" value="guessed">'
                  f'<button type="submit">Claim</button></form></html>')

        async def evil_page(_request: web.Request) -> web.Response:
            return web.Response(text=forged, content_type="text/html")

        evil = web.Application()
        evil.router.add_get("/", evil_page)
        runner = web.AppRunner(evil, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "localhost", 0)
        await site.start()
        evil_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await gw.subscribe(victim)
        try:
            async with playwright_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=executable, headless=True,
                                                  args=CHROMIUM_ARGS)
                try:
                    context = await browser.new_context(**DESKTOP)
                    page = await context.new_page()
                    await _sign_in(page, gw.url, "Jane Doe")
                    other = await context.new_page()
                    await other.goto(f"http://localhost:{evil_port}/")
                    async with other.expect_navigation() as nav:
                        await other.get_by_role("button", name="Claim").click()
                    response = await nav.value
                    assert response is not None and response.status == 403
                    status = await page.evaluate(
                        "fetch('/console/opt-outs', {method: 'POST', body: new URLSearchParams("
                        f"{{channel: 'sms', address: '{victim}'}})}}).then(r => r.status)")
                    assert status == 403
                finally:
                    await browser.close()
        finally:
            await runner.cleanup()
        code, body = await gw.api("GET", f"/api/v1/subscribers/sms/{victim}")
        assert code == 200 and body["status"] == "subscribed", body
