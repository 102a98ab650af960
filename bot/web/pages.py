"""Public pages and service endpoints: health, metrics, unsubscribe."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.web.common import gateway
from bot.web.problems import problem

__all__ = ["add_routes"]


async def healthz(request: web.Request) -> web.Response:
    try:
        await gateway(request).db.ping()
    except Exception:
        return problem(503, "database_unavailable", "the database does not answer")
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(gateway(request).metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
