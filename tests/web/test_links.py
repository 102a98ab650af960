"""Join links through the API and the CLI: join page links for every channel, their QR codes,
the per-campaign view, revocation, and the checks on what may be asked for.

(Telegram invite links and join requests are in test_telegram.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from consentgate.testing.harness import (
    BOB_TOKEN,
    JANE,
    JANE_AUDITOR,
    PUBLIC_URL,
    SECRET,
    Harness,
)
from tests.procs import CONSENTGATE


async def create(gw: Harness, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    if token is None:
        return await gw.api("POST", "/api/v1/links", body)
    return await gw.api("POST", "/api/v1/links", body, token=token)


async def test_a_join_page_link_points_at_the_public_join_page_with_a_qr_code(
        gw: Harness) -> None:
    code, link = await create(gw, {"channel": "sms", "name": "Leaflet, Ward 3"})
    assert code == 201, link
    assert link["name"] == "Leaflet, Ward 3"
    assert link["url"] == f"{PUBLIC_URL}/join/{link['id']}"
    assert link["id"].isalnum() and len(link["id"]) >= 12
    assert link["qr_svg"].lstrip().startswith("<svg") and "</svg>" in link["qr_svg"]
    assert link["joins"] == 0 and link["active"] is True

    code, listed = await gw.api("GET", "/api/v1/links")
    assert code == 200
    assert [{k: x[k] for k in ("id", "name", "channel", "url", "joins")} for x in listed] == [
        {"id": link["id"], "name": "Leaflet, Ward 3", "channel": "sms", "url": link["url"],
         "joins": 0}]

    code, one = await gw.api("GET", f"/api/v1/links/{link['id']}")
    assert code == 200 and one["qr_svg"] == link["qr_svg"]
    async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/qr.svg",
                              headers={"Authorization": "Bearer jane-organiser-token-0001"}
                              ) as r:
        assert r.status == 200 and r.content_type == "image/svg+xml"
        assert "<svg" in await r.text()


async def test_links_are_audited_and_seen_only_by_their_campaign(gw: Harness) -> None:
    code, link = await create(gw, {"channel": "email", "name": "Website footer",
                                   "member_limit": 500,
                                   "expires_at": "2099-05-07T22:00:00+01:00"})
    assert code == 201, link
    assert link["member_limit"] == 500
    assert link["expires_at"].startswith("2099-05-07T21:00:00")

    _, bobs = await gw.api("GET", "/api/v1/links", token=BOB_TOKEN)
    assert bobs == []
    code, body = await gw.api("GET", f"/api/v1/links/{link['id']}", token=BOB_TOKEN)
    assert (code, body["code"]) == (404, "link_not_found")
    code, body = await gw.api("POST", f"/api/v1/links/{link['id']}/revoke", token=BOB_TOKEN)
    assert code == 404

    code, body = await create(gw, {"channel": "sms", "name": "x"}, token=JANE_AUDITOR)
    assert code == 403
    code, listed = await gw.api("GET", "/api/v1/links", token=JANE_AUDITOR)
    assert code == 200 and len(listed) == 1
    code, body = await gw.api("GET", "/api/v1/links", token=None)
    assert code == 401

    _, audit = await gw.api("GET", "/api/v1/audit")
    created = [a for a in audit if a["action"] == "link.created"]
    assert created and created[-1]["actor"] == "Jane Doe"
    assert created[-1]["subject"] == f"link#{link['id']}"


async def test_revoking_a_link_stops_it_once(gw: Harness) -> None:
    _, link = await create(gw, {"channel": "sms", "name": "Door knocking"})
    code, revoked = await gw.api("POST", f"/api/v1/links/{link['id']}/revoke")
    assert code == 200
    assert revoked["active"] is False and revoked["revoked_at"]
    code, again = await gw.api("POST", f"/api/v1/links/{link['id']}/revoke")
    assert code == 200 and again["revoked_at"] == revoked["revoked_at"]
    _, audit = await gw.api("GET", "/api/v1/audit")
    assert [a["action"] for a in audit].count("link.revoked") == 1
    code, body = await gw.api("POST", "/api/v1/links/doesnotexist/revoke")
    assert (code, body["code"]) == (404, "link_not_found")


@pytest.mark.parametrize(("body", "code"), [
    ({"channel": "fax", "name": "x"}, "invalid_channel"),
    ({"channel": "sms"}, "invalid_name"),
    ({"channel": "sms", "name": "   "}, "invalid_name"),
    ({"channel": "sms", "name": "x" * 201}, "invalid_name"),
    ({"channel": "telegram", "name": "x"}, "channel_disabled"),
    ({"channel": "sms", "name": "x", "telegram_chat_id": -1001234567890},
     "invalid_telegram_chat_id"),
    ({"channel": "sms", "name": "x", "expires_at": "2001-01-01T00:00:00Z"},
     "invalid_expires_at"),
    ({"channel": "sms", "name": "x", "expires_at": "next tuesday"}, "invalid_expires_at"),
    ({"channel": "sms", "name": "x", "expires_at": 2.0e279}, "invalid_expires_at"),
    ({"channel": "sms", "name": "x", "expires_at": "9999-12-31T23:59:59Z"}, "invalid_expires_at"),
    ({"channel": "sms", "name": "x", "member_limit": 0}, "invalid_member_limit"),
    ({"channel": "sms", "name": "x", "member_limit": "ten"}, "invalid_member_limit"),
])
async def test_a_bad_link_request_is_422_and_creates_nothing(
        gw: Harness, body: dict[str, Any], code: str) -> None:
    status, answer = await create(gw, body)
    assert (status, answer["code"]) == (422, code), answer
    _, listed = await gw.api("GET", "/api/v1/links")
    assert listed == []


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "consentgate.toml"
    path.write_text(f"""
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
consent_text = "Yes, send me Jane's news."
privacy_notice_url = "https://jane.example.org/privacy"
operators = [{{ name = "Jane Doe", token = "jane-organiser-token-0001", role = "organiser" }}]
[campaigns.sms]
provider = "log"
""")
    return path


async def consentgate(*args: str) -> tuple[int, str, str]:
    """Run the ``consentgate`` command as a user would."""
    proc = await asyncio.create_subprocess_exec(
        CONSENTGATE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_links_commands_create_list_and_revoke(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    qr = tmp_path / "poster.svg"

    status, out, err = await consentgate("links", "create", "sms", "Market stall",
                                         "--qr", str(qr), "--config", config)
    assert status == 0, err
    link = json.loads(out)
    assert link["url"] == f"{PUBLIC_URL}/join/{link['id']}"
    assert qr.read_text().lstrip().startswith("<svg")

    status, out, err = await consentgate("links", "list", "--config", config)
    assert status == 0, err
    assert [x["id"] for x in json.loads(out)] == [link["id"]]

    status, out, err = await consentgate("links", "revoke", link["id"], "--config", config)
    assert status == 0, err
    assert json.loads(out)["active"] is False

    status, out, err = await consentgate("links", "create", "sms", "Bad", "--member-limit",
                                         "0", "--config", config)
    assert status == 1
    assert "invalid_member_limit" in err
