"""The API as its OpenAPI document describes it: schemathesis generates requests (valid ones
and deliberately invalid ones) for every operation of the generated document
(``docs/openapi.json``, the same as the served one) and sends them to a running gateway; no
answer is a 5xx.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from consentgate.bot.web.app import create_app
from consentgate.testing.harness import JANE_TOKEN, Harness

schemathesis = pytest.importorskip("schemathesis")

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
EXAMPLES = 12  # per operation and generation mode: 20 operations x 2 modes


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
                response = case.call(base_url=base_url, timeout=10,
                                     headers={"Authorization": f"Bearer {JANE_TOKEN}"})
                seen.append((case.method, case.path, response.status_code))
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} "
                                    f"{case.body!r:.200} -> {response.status_code} "
                                    f"{response.text[:300]}")

            try:
                check()
            except Unsatisfiable:
                continue  # nothing to make invalid (an operation without inputs)
    assert not failures, "\n".join(failures[:10])
    return seen


async def test_no_generated_request_gets_a_5xx(gw: Harness) -> None:
    # schemathesis calls synchronously: it runs in a thread while this loop serves it.
    seen = await asyncio.to_thread(_run, gw.url)
    operations = {(m, p) for m, p, _ in seen}
    assert len(operations) >= 20, sorted(operations)
    assert any(200 <= s < 300 for _, _, s in seen)  # some of it got through, not only 4xx
