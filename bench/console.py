"""Console page timings at scale: each page of the organiser console fetched over HTTP by a
signed-in organiser, with ``--n`` subscribers (1,000,000 by default) seeded straight into
the database, and the p50 / p95 / max time to the whole answer per page. The goal is
p95 < 100 ms for every page.

    .venv/bin/python -m bench.console [--n 1000000] [--requests 40] [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import re
import time
from urllib.parse import quote

import aiohttp
from aiohttp import web
from argon2 import PasswordHasher

from bench._common import (
    add_backend_option,
    bench_database,
    configure_quiet_logging,
    numbers,
    percentile,
    run_main,
    seed_subscribers,
    write_report,
)
from consentgate.bot.gateway import Gateway
from consentgate.bot.runtime import tune_garbage_collector
from consentgate.bot.web.app import create_app
from consentgate.testing.fakes.twilio_api import FakeTwilio
from consentgate.testing.harness import JANE, JANE_AUTH, JANE_SID, JANE_TOKEN, settings_for

PASSWORD = "bench console password"
GOAL_MS = 100.0


async def _signed_in(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(base + "/console/sign-in") as r:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert csrf is not None
    async with session.post(base + "/console/sign-in", headers={"Origin": base}, data={
            "csrf": csrf.group(1), "campaign": JANE, "name": "Jane Doe",
            "password": PASSWORD}, allow_redirects=False) as r:
        assert r.status == 303, await r.text()
    return base


async def _time(session: aiohttp.ClientSession, url: str, n: int,
                headers: dict[str, str] | None = None) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url, headers=headers, allow_redirects=False) as r:
            await r.read()
            assert r.status == 200, (url, r.status)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


async def run(args: argparse.Namespace) -> None:
    configure_quiet_logging("console")
    hashed = PasswordHasher().hash(PASSWORD)
    async with bench_database(args.backend) as url, \
            FakeTwilio(account_sid=JANE_SID, auth_token=JANE_AUTH) as twilio:
        settings = settings_for(url, twilio.base_url)
        settings = settings.model_copy(update={"campaigns": tuple(
            c.model_copy(update={"operators": tuple(
                op.model_copy(update={"password_hash": hashed}) for op in c.operators)})
            for c in settings.campaigns)})
        gw = Gateway(settings)
        await gw.start()
        runner = web.AppRunner(create_app(gw), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        try:
            started = time.perf_counter()
            await seed_subscribers(gw.db, args.n)
            seeded = time.perf_counter() - started
            tune_garbage_collector()  # as serve does
            auth = {"Authorization": f"Bearer {JANE_TOKEN}"}
            async with aiohttp.ClientSession() as api:
                async with api.post(base + "/api/v1/links", headers=auth,
                                    json={"channel": "sms", "name": "Stall"}) as r:
                    link = (await r.json())["id"]
            person = quote(numbers(1)[0])
            jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[base])
            async with aiohttp.ClientSession(cookie_jar=jar) as session:
                await _signed_in(session, base)
                pages = [
                    ("home", "/console/", None),
                    ("broadcasts + preview", "/console/broadcasts?channel=sms&text=Hello",
                     None),
                    ("preview fragment (htmx)",
                     "/console/broadcasts/preview?channel=sms&text=Hello",
                     {"HX-Request": "true"}),
                    ("join links", "/console/links", None),
                    ("one link", f"/console/links/{link}", None),
                    ("replies", "/console/replies", None),
                    ("replies (unresolved only)", "/console/replies?unresolved=1", None),
                    ("a person", f"/console/people?channel=sms&address={person}", None),
                    ("opt-outs", "/console/opt-outs", None),
                    ("audit", "/console/audit", None),
                    ("report", "/console/report", None),
                    # Verifying the chain reads every audit record: asked for, not on a view.
                    ("report + chain verified (on request)", "/console/report?verify=1",
                     None),
                ]
                rows: list[tuple[str, object, str]] = [
                    ("seed subscribers s", seeded, f"{args.n:,} rows, bulk insert")]
                for name, path, headers in pages:
                    # the first fetch (a fresh count where a page counts), then warm ones
                    first = (await _time(session, base + path, 1, headers))[0]
                    times = await _time(session, base + path, args.requests, headers)
                    p95 = percentile(times, 95)
                    met = "met" if p95 < GOAL_MS else "NOT met"
                    rows.append((f"{name} p95 ms", p95,
                                 f"first {first:.0f}, p50 {percentile(times, 50):.1f}, "
                                 f"max {max(times):.1f}; "
                                 f"goal < {GOAL_MS:g} ms ({met})"))
        finally:
            await runner.cleanup()
            await gw.close()
    write_report("console", {"backend": args.backend, "n": args.n,
                             "requests": args.requests}, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description="console page timings at scale")
    parser.add_argument("--n", type=int, default=1_000_000, help="subscribers")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    add_backend_option(parser)
    return run_main(run, parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
