"""The README's quick start, as a new user runs it: ``consentgate serve`` on the example
configuration (SQLite, every channel on the ``log`` provider), a join through the email
join page, the confirmation read on ``/dev/outbox`` and confirmed with its button, a campaign
email, and an unsubscribe, without reading the database and with no link token in the log.
Also: ``serve`` warns when ``public_url`` leads nowhere, and ``/dev/outbox`` exists only on
the ``log`` providers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consentgate.bot.cli import consent_text_problems, public_url_problem
from consentgate.bot.config import ServerSettings, parse_config
from consentgate.testing.harness import Harness
from tests.procs import Launcher, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
DEMO_TOKEN = "demo-organiser-token-change-me"
PERSON = "new.voter@example.com"


def example_config(tmp_path: Path, port: int, public_port: int | None = None) -> Path:
    """config.example.toml as shipped, on a free port and a database in ``tmp_path``."""
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    replaced = (text.replace("port = 8080", f"port = {port}", 1)
                .replace('public_url = "http://127.0.0.1:8080"',
                         f'public_url = "http://127.0.0.1:{public_port or port}"', 1)
                .replace('url = "sqlite+aiosqlite:///consentgate.db"',
                         f'url = "sqlite+aiosqlite:///{tmp_path / "quickstart.db"}"', 1))
    assert f"port = {port}" in replaced and "quickstart.db" in replaced
    path = tmp_path / "consentgate.toml"
    path.write_text(replaced, encoding="utf-8")
    return path


async def _text(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, str]:
    async with s.request(method, url, **kw) as r:
        return r.status, await r.text()


async def test_the_quick_start_joins_confirms_and_unsubscribes_on_the_defaults(
        tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {DEMO_TOKEN}"}
    async with Launcher(tmp_path) as launch, aiohttp.ClientSession() as s:
        serve = await launch.serve(example_config(tmp_path, port), port)

        # The organiser makes a join link for email.
        async with s.post(f"{base}/api/v1/links", json={"channel": "email",
                                                        "name": "Quick start"},
                          headers=auth) as r:
            assert r.status == 201
            link = await r.json()
        assert link["url"].startswith(f"{base}/join/")

        # A person opens it and signs up.
        status, page = await _text(s, "GET", link["url"])
        assert status == 200 and "https://example.org/privacy" in page
        status, page = await _text(s, "POST", link["url"],
                                   data={"address": PERSON, "consent": "yes"})
        assert status == 200 and "Check your email" in page

        # The confirmation the log provider would have mailed, on /dev/outbox.
        async def link_in_outbox(path: str) -> str | None:
            status, html = await _text(s, "GET", f"{base}/dev/outbox")
            assert status == 200
            found = re.search(rf'href="({re.escape(base)}{path}[^"]+)"', html)
            return found.group(1) if found else None

        confirm_url = await eventually(lambda: link_in_outbox("/confirm/"),
                                       what="the confirmation on /dev/outbox")
        status, page = await _text(s, "GET", confirm_url)
        assert status == 200 and "Yes, confirm" in page
        status, page = await _text(s, "POST", confirm_url, data={"confirm": "yes"})
        assert status == 200 and "You are subscribed" in page
        async with s.get(f"{base}/api/v1/subscribers/email/{PERSON}", headers=auth) as r:
            assert (await r.json())["status"] == "subscribed"

        # A campaign email, then its unsubscribe link.
        async with s.post(f"{base}/api/v1/messages", headers=auth,
                          json={"channel": "email", "to": PERSON, "text": "Polling day."}) as r:
            assert r.status == 202
        unsubscribe_url = await eventually(lambda: link_in_outbox("/u/"),
                                           what="the campaign email on /dev/outbox")
        status, page = await _text(s, "GET", unsubscribe_url)
        assert status == 200 and "Unsubscribe from" in page
        status, page = await _text(s, "POST", unsubscribe_url, data={"confirm": "yes"})
        assert status == 200 and "You are unsubscribed" in page
        async with s.get(f"{base}/api/v1/subscribers/email/{PERSON}", headers=auth) as r:
            assert (await r.json())["status"] == "opted_out"

        rc, _ = await serve.stop()
        assert rc == 0
        log = serve.log()
    # Requests to both links were logged, without their tokens; nothing warned about the URL.
    assert '"path": "/confirm/***"' in log and '"path": "/u/***"' in log
    for url in (confirm_url, unsubscribe_url):
        assert url.rsplit("/", 1)[1] not in log
    assert "public_url_unreachable" not in log


async def test_serve_warns_when_public_url_is_not_this_servers_port(tmp_path: Path) -> None:
    port = free_port()
    async with Launcher(tmp_path) as launch:
        serve = await launch.serve(example_config(tmp_path, port, public_port=8080), port)
        rc, _ = await serve.stop()
    assert rc == 0
    [line] = [x for x in serve.log().splitlines() if "public_url_unreachable" in x]
    assert '"level": "warning"' in line and f"port {port}" in line


@pytest.mark.parametrize(("public_url", "port", "warns"), [
    ("http://127.0.0.1:8080", 8080, False),
    ("http://localhost:8080", 8080, False),
    ("http://127.0.0.1:8080", 9000, True),
    ("http://localhost", 8080, True),          # port 80
    ("https://127.0.0.1:8080", 8080, True),    # the server speaks plain HTTP
    ("https://gateway.example.org", 8080, False),  # a proxy in front: not ours to check
])
def test_public_url_problem(public_url: str, port: int, warns: bool) -> None:
    problem = public_url_problem(ServerSettings(port=port, public_url=public_url))
    assert (problem is not None) == warns, problem


async def test_the_outbox_page_is_404_when_messages_are_really_sent(gw: Harness) -> None:
    async with gw.session.get(f"{gw.url}/dev/outbox") as r:
        assert r.status == 404 and r.content_type == "application/problem+json"


def test_an_email_consent_text_that_says_reply_stop_is_warned_about() -> None:
    from consentgate.testing.harness import config_text

    base = config_text("sqlite+aiosqlite:///x.db", "http://127.0.0.1:1", bob=False)
    # Jane's campaign text says "Reply STOP" and her email channel has no text of its own.
    [problem] = consent_text_problems(parse_config(base, environ={}))
    assert problem.startswith("campaigns[0]:") and "unsubscrib" in problem
    own = config_text("sqlite+aiosqlite:///x.db", "http://127.0.0.1:1", bob=False,
                      jane_email='provider = "log"\nconsent_text = "Yes, email me. '
                                 'Unsubscribe at any time."')
    assert consent_text_problems(parse_config(own, environ={})) == []
