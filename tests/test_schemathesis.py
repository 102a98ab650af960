"""The API as its OpenAPI document describes it: schemathesis generates requests (valid ones
and deliberately invalid ones) for every operation of the generated document
(``docs/openapi.json``, the same as the served one), one at a time and as stateful sequences
(create a link, then read, revoke and print it; create a broadcast, then read, cancel and
resume it ...), and sends them to a running gateway on SQLite and on PostgreSQL: no answer is
a 5xx, and every documented answer matches its declared schema.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import run_state_machine_as_test

from consentgate.bot.web.app import create_app
from consentgate.testing.harness import JANE_TOKEN, Harness, running_gateway

schemathesis = pytest.importorskip("schemathesis")

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
EXAMPLES = 12  # per operation and generation mode: about 25 operations x 2 modes
STEPS = 25  # stateful sequences run, each of a few linked calls
AUTH = {"Authorization": f"Bearer {JANE_TOKEN}"}


def _problems(case: Any, response: Any) -> str | None:
    """What is wrong with an answer: a 5xx, or a documented answer off its schema."""
    from schemathesis.specs.openapi.checks import response_schema_conformance

    if response.status_code >= 500:
        return f"{response.status_code} {response.text[:300]}"
    try:
        case.validate_response(response, checks=[response_schema_conformance])
    except Exception as exc:  # schemathesis reports a violation as a failure group
        return f"schema violation: {str(exc)[:400]}"
    return None


async def test_served_openapi_document_is_the_shipped_one(gw: Harness) -> None:
    status, served = await gw.api("GET", "/api/v1/openapi.json", token=None)
    assert status == 200
    assert served == json.loads(SPEC.read_text(encoding="utf-8"))
    assert served["openapi"].startswith("3.1")
    # Every JSON route of the API is described (the QR images and poster are not JSON).
    routes = {r.resource.canonical for r in create_app(gw.gateway).router.routes()
              if r.resource is not None}
    described = {p for p in routes if p.startswith("/api/v1/")
                 and not p.endswith(("/qr.svg", "/qr.png", "/poster"))}
    assert described - set(served["paths"]) == set()


def _run(base_url: str) -> list[tuple[str, str, int]]:
    schema = schemathesis.openapi.from_path(str(SPEC))
    seen: list[tuple[str, str, int]] = []
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                response = case.call(base_url=base_url, timeout=10, headers=AUTH)
                seen.append((case.method, case.path, response.status_code))
                problem = _problems(case, response)
                if problem:
                    failures.append(f"{case.method} {case.formatted_path} "
                                    f"{case.body!r:.200} -> {problem}")

            try:
                check()
            except Unsatisfiable:
                continue  # nothing to make invalid (an operation without inputs)
    assert not failures, "\n".join(failures[:10])
    return seen


async def test_no_generated_request_gets_a_5xx_or_an_answer_off_its_schema(
        db_url: str) -> None:
    async with running_gateway(db_url) as gw:
        await gw.subscribe("+447911123456")
        # schemathesis calls synchronously: it runs in a thread while this loop serves it.
        seen = await asyncio.to_thread(_run, gw.url)
    operations = {(m, p) for m, p, _ in seen}
    assert len(operations) >= 20, sorted(operations)
    assert any(200 <= s < 300 for _, _, s in seen)  # some of it got through, not only 4xx


def _run_stateful(base_url: str) -> list[tuple[str, str, int]]:
    """Sequences of calls that feed each other (links inferred from the document: an id
    that one answer returns is the path parameter of the next call)."""
    schema = schemathesis.openapi.from_path(str(SPEC))
    seen: list[tuple[str, str, int]] = []
    failures: list[str] = []

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base_url, "headers": AUTH, "timeout": 10}

        def validate_response(self, response: Any, case: Any, *args: Any,
                              **kwargs: Any) -> None:
            seen.append((case.method, case.path, response.status_code))
            problem = _problems(case, response)
            if problem:
                failures.append(f"{case.method} {case.formatted_path} -> {problem}")

    run_state_machine_as_test(Workflow, settings=settings(
        max_examples=STEPS, stateful_step_count=6, deadline=None, database=None,
        suppress_health_check=list(HealthCheck)))
    assert not failures, "\n".join(failures[:10])
    return seen


async def test_stateful_sequences_get_no_5xx_and_no_answer_off_its_schema(
        db_url: str) -> None:
    async with running_gateway(db_url) as gw:
        await gw.subscribe("+447911123456")
        seen = await asyncio.to_thread(_run_stateful, gw.url)
    assert len({(m, p) for m, p, _ in seen}) >= 5, sorted(set(seen))
    assert any(200 <= s < 300 for _, _, s in seen)
