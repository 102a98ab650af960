"""Requests are declared (contract version 2): unknown fields, wrong types and odd input are
refused with a clear 4xx and change nothing; bodies are read whole; the served OpenAPI
document, the registered routes and the models agree; the edge's headers."""

from __future__ import annotations

import ast
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from consentgate.bot.web.app import create_app
from consentgate.bot.web.openapi import document, render
from consentgate.bot.web.routes import API_ROUTES, Answer
from consentgate.testing.fakes.telegram_api import FakeTelegram
from consentgate.testing.harness import (
    JANE,
    JANE_AUDITOR,
    TELEGRAM_SECRET,
    Harness,
    running_gateway,
)
from tests.dbutil import counts, rows

ROOT = Path(__file__).resolve().parents[2]
NUMBER = "+447911123456"


@pytest.fixture
async def any_db(db_url: str) -> AsyncIterator[Harness]:
    """A running gateway on each database."""
    async with running_gateway(db_url) as h:
        yield h


# -- unknown fields, wrong types, odd text ---------------------------------------------------

@pytest.mark.parametrize("field", ["dryRun", "dryrun"])
async def test_a_misspelt_dry_run_is_refused_and_queues_no_broadcast(any_db: Harness,
                                                                     field: str) -> None:
    gw = any_db
    await gw.subscribe(NUMBER)
    before = await counts(gw.db)
    status, answer = await gw.api("POST", "/api/v1/broadcasts",
                                  {"channel": "sms", "text": "Polls open at 7", field: True})
    assert (status, answer["code"]) == (422, "unknown_field")
    assert answer["detail"] == f'{field}: unknown field (did you mean "dry_run"?)'
    assert await rows(gw.db, "broadcasts") == []
    assert await counts(gw.db) == before


async def test_a_misspelt_subject_names_the_known_field(any_db: Harness) -> None:
    gw = any_db
    await gw.subscribe(NUMBER)
    before = await counts(gw.db)
    status, answer = await gw.api("POST", "/api/v1/messages", {
        "channel": "sms", "to": NUMBER, "text": "hi", "subjcet": "Polling day"})
    assert (status, answer["code"]) == (422, "unknown_field")
    assert '"subject"' in answer["detail"] and answer["detail"].startswith("subjcet:")
    assert await counts(gw.db) == before


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/consents", {"channel": "sms", "address": NUMBER, "method": "verbal",
                          "source": "stall", "evidence": "form", "colour": "red"}),
    ("/api/v1/opt-outs", {"channel": "sms", "address": NUMBER, "why": "asked"}),
    ("/api/v1/links", {"channel": "sms", "name": "Hall", "expires": "2030-01-01"}),
])
async def test_every_body_refuses_an_unknown_field(gw: Harness, path: str,
                                                   body: dict[str, Any]) -> None:
    before = await counts(gw.db)
    status, answer = await gw.api("POST", path, body)
    assert (status, answer["code"]) == (422, "unknown_field"), answer
    assert await counts(gw.db) == before


@pytest.mark.parametrize(("body", "code"), [
    ({"channel": "sms", "text": "hi", "dry_run": "true"}, "invalid_dry_run"),
    ({"channel": "sms", "text": "hi", "dry_run": 1}, "invalid_dry_run"),
    ({"channel": "sms", "text": ["hi"]}, "invalid_text"),
    ({"channel": "sms"}, "invalid_text"),
    ({"channel": "email", "text": "hi", "subject": "Vote\r\nBcc: x@example.org"},
     "invalid_subject"),
    ({"channel": "email", "text": "hi", "subject": "Vote\nnow"}, "invalid_subject"),
])
async def test_wrong_types_are_refused_and_queue_nothing(gw: Harness, body: dict[str, Any],
                                                         code: str) -> None:
    before = await counts(gw.db)
    status, answer = await gw.api("POST", "/api/v1/broadcasts", body)
    assert (status, answer["code"]) == (422, code), answer
    assert await counts(gw.db) == before


async def test_a_field_without_a_code_of_its_own_is_invalid_input(gw: Harness) -> None:
    status, answer = await gw.api("POST", "/api/v1/links",
                                  {"channel": "sms", "name": "Hall", "telegram_chat_id": 1.5})
    assert (status, answer["code"]) == (422, "invalid_telegram_chat_id")
    status, answer = await gw.api("GET", "/api/v1/replies?colour=red")
    assert (status, answer["code"]) == (422, "unknown_field")


@pytest.mark.parametrize("raw", [
    '{"channel": "sms", "address": "+447911123456", "method": "verbal", '
    '"source": "stall\\u0000", "evidence": "form"}',
    '{"channel": "sms", "address": "+447911123456", "method": "verbal", '
    '"source": "stall", "evidence": "\\ud800"}',
    '{"channel": "sms", "address": "+447911123456\\u0000", "method": "verbal", '
    '"source": "stall", "evidence": "form"}',
    '{"channel": "sms", "address": "+447911123456", "method": "verbal", '
    '"source": "stall", "evidence": "form", "\\udc00": 1}',
])
async def test_nul_and_lone_surrogates_are_invalid_input(any_db: Harness, raw: str) -> None:
    gw = any_db
    before = await counts(gw.db)
    status, answer = await gw.api("POST", "/api/v1/consents", raw=raw,
                                  headers={"Content-Type": "application/json"})
    assert (status, answer["code"]) == (422, "invalid_input"), answer
    assert await counts(gw.db) == before


async def test_odd_bytes_in_a_query_are_never_a_5xx(gw: Harness) -> None:
    status, answer = await gw.api("GET", "/api/v1/audit?actor=Jane%00")
    assert (status, answer["code"]) == (422, "invalid_input")
    # An encoded surrogate is not UTF-8: read as something else, never a fault.
    for query in ("action=%ED%A0%80", "actor=%FF%FE", "subject=%C0%80"):
        status, answer = await gw.api("GET", f"/api/v1/audit?{query}")
        assert status < 500, (query, answer)


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/consents", {"channel": "sms", "address": NUMBER, "method": "verbal",
                          "source": "s" * 1001, "evidence": "form"}),
    ("/api/v1/opt-outs", {"channel": "sms", "address": NUMBER, "reason": "r" * 501}),
    ("/api/v1/links", {"channel": "sms", "name": "n" * 201}),
    ("/api/v1/links", {"channel": "telegram", "name": "n", "telegram_chat_id": "1" * 40}),
    ("/api/v1/links", {"channel": "sms", "name": "n", "expires_at": "2030" + " " * 100}),
    ("/api/v1/messages", {"channel": "email", "to": "ann@example.org", "text": "hi",
                          "subject": "s" * 201}),
])
async def test_every_text_is_bounded(gw: Harness, path: str, body: dict[str, Any]) -> None:
    before = await counts(gw.db)
    status, _ = await gw.api("POST", path, body)
    assert status == 422
    assert await counts(gw.db) == before


# -- bodies read whole, deep nesting, ids ----------------------------------------------------

async def test_a_450_kb_body_sent_in_pieces_is_read_whole(any_db: Harness) -> None:
    gw = any_db
    await gw.subscribe(NUMBER)
    # Valid JSON of about 450 KB (the size is whitespace between tokens), sent in 16 KB
    # chunks, so the server sees it arrive in many pieces.
    body = ('{"channel": "sms",' + " " * 450_000 + '"to": "' + NUMBER
            + '", "text": "Polls close at 10pm"}').encode()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 16_384):
            yield body[i:i + 16_384]

    async with gw.session.post(f"{gw.url}/api/v1/messages", data=pieces(), headers={
            "Authorization": "Bearer jane-organiser-token-0001",
            "Content-Type": "application/json"}) as r:
        answer = await r.json()
        assert r.status == 202, answer
    assert answer["status"] == "queued"
    assert len(await rows(gw.db, "messages")) == 1


async def test_100000_nested_brackets_are_a_4xx_not_a_crash(any_db: Harness) -> None:
    gw = any_db
    before = await counts(gw.db)
    for raw in ("[" * 100_000, '{"a":' * 100_000, '{"channel": ' + "[" * 100_000,
                '{"channel": "sms", "x": ' + "[" * 70 + "]" * 70 + "}"):
        status, answer = await gw.api("POST", "/api/v1/broadcasts", raw=raw)
        assert 400 <= status < 500, answer
        assert answer["code"] in ("malformed_json", "invalid_body"), answer
    assert await counts(gw.db) == before


async def test_the_telegram_webhook_refuses_deep_nesting_with_a_4xx(sqlite_url: str) -> None:
    async with FakeTelegram() as fake, running_gateway(sqlite_url, telegram=fake) as h:
        for raw in ("[" * 100_000, '{"update_id": 1, "message": ' + "[" * 100_000,
                    '{"update_id": 1, "x": ' + "{\"a\": " * 100 + "1" + "}" * 101):
            async with h.session.post(
                    f"{h.url}/webhooks/telegram/{JANE}", data=raw,
                    headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET,
                             "Content-Type": "application/json"}) as r:
                assert 400 <= r.status < 500, await r.text()


@pytest.mark.parametrize("digits", ["²", "１", "١", "𝟏"])
async def test_ids_are_ascii_digits_only(any_db: Harness, digits: str) -> None:
    gw = any_db
    await gw.subscribe(NUMBER)
    status, sent = await gw.api("POST", "/api/v1/messages",
                                {"channel": "sms", "to": NUMBER, "text": "hi"})
    assert (status, sent["id"]) == (202, 1)  # an id 1 exists: none of these may read as it
    before = await rows(gw.db, "broadcasts")
    for method, path in (("GET", f"/api/v1/messages/{digits}"),
                         ("GET", f"/api/v1/broadcasts/{digits}"),
                         ("POST", f"/api/v1/broadcasts/{digits}/cancel"),
                         ("POST", f"/api/v1/broadcasts/{digits}/resume")):
        status, answer = await gw.api(method, path)
        assert status == 404, (path, answer)
    for query in (f"limit={digits}", f"after={digits}"):
        status, answer = await gw.api("GET", f"/api/v1/audit?{query}")
        assert (status, answer["code"]) == (422, "invalid_query")
    assert await rows(gw.db, "broadcasts") == before == []


# -- the document, the routes and the models agree -------------------------------------------

def test_the_committed_document_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "openapi.json").read_text(encoding="utf-8")
    assert committed == render(), ("docs/openapi.json is stale: run "
                                   "python -m consentgate.bot.web.openapi > docs/openapi.json")


def _api_routes(app: web.Application) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.resource is not None and r.resource.canonical.startswith("/api/")
            and r.method != "HEAD"}


async def test_served_document_routes_and_models_agree(gw: Harness) -> None:
    status, served = await gw.api("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and served == document()
    documented = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    registered = _api_routes(create_app(gw.gateway))
    assert documented == registered
    schemas = served["components"]["schemas"]
    for route in API_ROUTES:
        op = served["paths"][route.path][route.method.lower()]
        assert op["x-role"] == route.role
        if route.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert schemas[ref.rsplit("/", 1)[1]]["additionalProperties"] is False
        for code, answer in route.answers.items():
            assert str(code) in op["responses"], (route.path, code)
            assert answer.media in op["responses"][str(code)]["content"]
    # Answers whose every field is known say so.
    for name in ("ConsentAnswer", "Subscriber", "Queued", "Message", "BroadcastCreated",
                 "Broadcast", "LinkView", "AuditEvent"):
        assert schemas[name]["additionalProperties"] is False, name


def _answer_for(method: str, path: str, status: int) -> Answer:
    for route in API_ROUTES:
        if route.method == method and route.path == path:
            return route.answers[status]
    raise AssertionError(f"{method} {path} is not in the route table")


async def test_real_answers_match_their_declared_models(gw: Harness) -> None:
    def check(method: str, path: str, status: int, body: Any) -> None:
        declared = _answer_for(method, path, status)
        assert declared.model is not None
        for item in body if declared.many else [body]:
            declared.model.model_validate(item)  # raises on a field it does not declare

    status, body = await gw.api("POST", "/api/v1/consents", {
        "channel": "sms", "address": NUMBER, "method": "paper_form", "source": "stall",
        "evidence": "form 1"})
    check("POST", "/api/v1/consents", status, body)
    status, body = await gw.api("GET", f"/api/v1/subscribers/sms/{NUMBER}")
    check("GET", "/api/v1/subscribers/{channel}/{address}", status, body)
    status, body = await gw.api("POST", "/api/v1/messages",
                                {"channel": "sms", "to": NUMBER, "text": "hi"})
    check("POST", "/api/v1/messages", status, body)
    status, body = await gw.api("GET", f"/api/v1/messages/{body['id']}")
    check("GET", "/api/v1/messages/{id}", status, body)
    status, body = await gw.api("POST", "/api/v1/broadcasts",
                                {"channel": "sms", "text": "hi", "dry_run": True})
    assert status == 200
    check("POST", "/api/v1/broadcasts", status, body)
    status, body = await gw.api("POST", "/api/v1/broadcasts", {"channel": "sms", "text": "hi"})
    check("POST", "/api/v1/broadcasts", status, body)
    status, body = await gw.api("GET", f"/api/v1/broadcasts/{body['id']}")
    check("GET", "/api/v1/broadcasts/{id}", status, body)
    status, body = await gw.api("POST", "/api/v1/links", {"channel": "sms", "name": "Hall"})
    check("POST", "/api/v1/links", status, body)
    status, body = await gw.api("GET", "/api/v1/links")
    check("GET", "/api/v1/links", status, body)
    status, body = await gw.api("POST", "/api/v1/opt-outs",
                                {"channel": "sms", "address": NUMBER, "reason": "asked"})
    check("POST", "/api/v1/opt-outs", status, body)
    status, body = await gw.api("GET", "/api/v1/audit")
    assert body
    check("GET", "/api/v1/audit", status, body)
    await gw.sms_in("+447911123457", "We have got to STOP this terrible bill")
    status, body = await gw.api("GET", "/api/v1/replies")
    assert body
    check("GET", "/api/v1/replies", status, body)


# -- no SQL at the edge ----------------------------------------------------------------------

def test_no_web_module_imports_storage() -> None:
    offenders = []
    for path in sorted((ROOT / "bot" / "web").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith(("consentgate.storage", "storage", "sqlalchemy")):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


# -- headers at the edge ---------------------------------------------------------------------

async def test_a_405_says_which_methods_are_allowed(gw: Harness) -> None:
    async with gw.session.delete(f"{gw.url}/api/v1/messages",
                                 headers={"Authorization": "Bearer x"}) as r:
        assert r.status == 405
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert set(r.headers["Allow"].split(",")) == {"POST"}
    async with gw.session.put(f"{gw.url}/api/v1/links") as r:
        assert r.status == 405
        assert set(r.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}


async def test_api_answers_are_never_cached(gw: Harness) -> None:
    for path, token in (("/api/v1/audit", "jane-organiser-token-0001"),
                        ("/api/v1/replies", None), ("/api/v1/openapi.json", None),
                        ("/api/v1/messages/999", JANE_AUDITOR)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with gw.session.get(gw.url + path, headers=headers) as r:
            assert r.headers.get("Cache-Control") == "no-store", path


async def test_html_pages_are_not_sniffed(gw: Harness) -> None:
    for path in ("/u/made-up-token", "/join/nosuchlink"):
        async with gw.session.get(gw.url + path) as r:
            assert r.headers["Content-Type"].startswith("text/html"), path
            assert r.headers.get("X-Content-Type-Options") == "nosniff", path
    status, link = await gw.api("POST", "/api/v1/links", {"channel": "sms", "name": "Hall"})
    async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/poster", headers={
            "Authorization": "Bearer jane-organiser-token-0001"}) as r:
        assert r.status == 200
        assert r.headers.get("X-Content-Type-Options") == "nosniff"


def test_the_document_is_json_serialisable_and_stable() -> None:
    assert json.loads(render()) == document()
