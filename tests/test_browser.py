"""The join page in a real browser (Playwright driving the system's Chromium) at phone width:
a person fills the form with the keyboard, submits, and the page says to check their phone.
Saves the screenshot the README shows (docs/join-page.png).

Skipped where Playwright or Chromium is not installed (``.ci/run`` installs both).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from consentgate.testing.harness import PUBLIC_URL, running_gateway

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "join-page.png"
NUMBER = "+447911123456"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine (apt-get install chromium)")


async def test_a_person_joins_by_text_from_a_phone_sized_browser(sqlite_url: str) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    executable = _chromium()
    async with running_gateway(sqlite_url) as gw:
        code, link = await gw.api("POST", "/api/v1/links",
                                  {"channel": "sms", "name": "Town hall poster"})
        assert code == 201, link
        url = link["url"].replace(PUBLIC_URL, gw.url)
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(
                    viewport={"width": 390, "height": 844}, device_scale_factor=2,
                    is_mobile=True, has_touch=True, java_script_enabled=False)
                page = await context.new_page()
                response = await page.goto(url)
                assert response is not None and response.status == 200
                box = page.get_by_label("Yes, send me updates about Jane's campaign")
                assert not await box.is_checked()
                # Laid out for the phone: the button fits inside its width.
                button = page.get_by_role("button", name="Sign me up")
                bounds = await button.bounding_box()
                assert bounds is not None and bounds["x"] + bounds["width"] <= 390
                SCREENSHOT.parent.mkdir(exist_ok=True)
                await page.screenshot(path=str(SCREENSHOT), full_page=True)

                # Keyboard only: into the number, tab to the box, space, enter.
                await page.get_by_label("Mobile number").fill("07911 123456")
                await box.focus()
                await page.keyboard.press("Space")
                assert await box.is_checked()
                async with page.expect_navigation():
                    await button.press("Enter")
                heading = page.get_by_role("heading", level=1)
                assert await heading.inner_text() == "Check your phone"
            finally:
                await browser.close()
        code, body = await gw.api("GET", f"/api/v1/subscribers/sms/{NUMBER}")
        assert code == 200 and body["status"] == "pending" and body["can_send"] is False
        [sms] = await gw.twilio.wait_for(1)
        assert sms.to == NUMBER and "reply YES" in sms.body
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG")


AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
AXE_RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


async def test_every_page_a_person_is_asked_on_passes_axe_at_phone_width(
        sqlite_url: str, tmp_path: Path) -> None:
    """The join, confirmation and unsubscribe pages at 390 px, each checked with axe-core
    (WCAG 2.1 A and AA and best practice); a screenshot of each is kept in ``tmp_path``."""
    import re

    from consentgate.testing.fakes.smtp_server import SmtpSink
    from consentgate.testing.harness import smtp_section

    playwright_api = pytest.importorskip("playwright.async_api")
    executable = _chromium()
    axe = AXE.read_text(encoding="utf-8")
    email_text = "Yes, email me updates about Jane's campaign. Unsubscribe at any time."
    async with SmtpSink() as sink, running_gateway(
            sqlite_url, jane_email=smtp_section(sink.port, "Jane <jane@example.org>")
            + f'consent_text = "{email_text}"\n') as gw:
        _, sms = await gw.api("POST", "/api/v1/links", {"channel": "sms", "name": "Hall"})
        _, email = await gw.api("POST", "/api/v1/links", {"channel": "email", "name": "Web"})
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
            try:
                # The pages run no script; axe is injected past their CSP for the check only.
                context = await browser.new_context(
                    viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                    bypass_csp=True)
                page = await context.new_page()

                async def check(name: str) -> None:
                    await page.add_script_tag(content=axe)
                    violations = await page.evaluate(
                        "rules => axe.run(document, {runOnly: rules}).then(r => "
                        "r.violations.map(v => [v.id, v.help, v.nodes.length]))", AXE_RULES)
                    assert violations == [], (name, violations)
                    # Nothing wider than the phone.
                    width = await page.evaluate("document.documentElement.scrollWidth")
                    assert width <= 390, (name, width)
                    await page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)

                await page.goto(sms["url"].replace(PUBLIC_URL, gw.url))
                await check("join-sms")
                await page.goto(email["url"].replace(PUBLIC_URL, gw.url))
                await check("join-email")
                await page.get_by_label("Email address").fill("new.voter@example.com")
                await page.get_by_label(email_text).check()
                async with page.expect_navigation():
                    await page.get_by_role("button", name="Sign me up").click()
                await check("join-sent")

                [received] = await sink.wait_for(1)
                body = received.message.get_body(("plain",))
                assert body is not None
                found = re.search(r"https://gateway\.example\.org/confirm/\S+",
                                  body.get_content())
                assert found is not None
                await page.goto(found.group(0).replace(PUBLIC_URL, gw.url))
                await check("confirm")
                async with page.expect_navigation():
                    await page.get_by_role("button", name="Yes, confirm").click()
                assert await page.get_by_role("heading", level=1).inner_text() \
                    == "You are subscribed"
                await check("confirmed")

                code, _ = await gw.api("POST", "/api/v1/messages", {
                    "channel": "email", "to": "new.voter@example.com", "text": "Hello"})
                assert code == 202
                _, campaign_mail = await sink.wait_for(2)
                plain = campaign_mail.message.get_body(("plain",))
                assert plain is not None
                unsubscribe = re.search(r"https://gateway\.example\.org/u/\S+",
                                        plain.get_content())
                assert unsubscribe is not None
                await page.goto(unsubscribe.group(0).replace(PUBLIC_URL, gw.url))
                await check("unsubscribe")
                async with page.expect_navigation():
                    await page.get_by_role("button", name="Unsubscribe").click()
                await check("unsubscribed")
            finally:
                await browser.close()
        code, body = await gw.api("GET", "/api/v1/subscribers/email/new.voter@example.com")
        assert body["status"] == "opted_out"
