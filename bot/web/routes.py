"""The API's route table: every call under ``/api/v1``, declared once.

Each :class:`Route` names its method and path, the handler, the request model it takes (a
JSON body or a query), what it answers, the role it needs (``read``: any operator,
``change``: not an auditor) and a one-line summary. :func:`add_routes` registers them with
aiohttp, wrapping each handler so the operator is checked and the request decoded before the
handler runs; :mod:`bot.web.openapi` builds the OpenAPI document from the same table, so
the document and what the server does cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from consentgate.bot.web import api, links_api, privacy_api
from consentgate.bot.web.common import Call, decode_body, decode_query, gateway, operator
from consentgate.bot.web.models import (
    AuditEvent,
    AuditQuery,
    Broadcast,
    BroadcastCancelled,
    BroadcastCreated,
    BroadcastIn,
    BroadcastsQuery,
    ConsentAnswer,
    ConsentIn,
    Erasure,
    ImportReport,
    LinkIn,
    LinkView,
    Message,
    MessageIn,
    OptOutAnswer,
    OptOutIn,
    PosterQuery,
    Queued,
    RepliesQuery,
    Reply,
    Report,
    ResolvedReply,
    ResolveIn,
    SubjectExport,
    SubjectPatch,
    SubjectPatched,
    Subscriber,
    SubscriberPatch,
    SubscriberTags,
    TagCount,
)

__all__ = ["API_ROUTES", "Answer", "Route", "add_routes"]

Handler = Callable[..., Awaitable[web.StreamResponse]]


class Empty(BaseModel):
    """No query parameters: any given is refused as an unknown field."""

    model_config = {"extra": "forbid", "frozen": True}


@dataclass(frozen=True)
class Answer:
    """One documented answer: a model (``many``: a JSON array of it), or a media type
    that is not JSON (CSV, an image, a page)."""

    model: type[BaseModel] | None = None
    many: bool = False
    media: str = "application/json"
    description: str = "ok"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    role: Literal["read", "change"]
    answers: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    #: a request body that is not JSON (``text/csv``); the handler reads it itself
    body_media: str | None = None
    query: type[BaseModel] = Empty
    #: problem answers this call may give beyond those every call of its kind gives
    problems: tuple[int, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


_CSV_IMPORT = "text/csv"
_CHANNEL = "/{channel}/{address}"

API_ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/consents", api.post_consent, "Record consent", "change",
          {201: Answer(ConsentAnswer)}, body=ConsentIn, problems=(409,)),
    Route("POST", "/api/v1/consents/import", api.post_consent_import,
          "Import consents from CSV (header channel,address,method,source,evidence)",
          "change", {200: Answer(ImportReport)}, body_media=_CSV_IMPORT),
    Route("POST", "/api/v1/opt-outs", api.post_opt_out, "Record an opt-out for a recipient",
          "change", {201: Answer(OptOutAnswer)}, body=OptOutIn),
    Route("GET", "/api/v1/subscribers" + _CHANNEL, api.get_subscriber,
          "A subscriber's state and history", "read", {200: Answer(Subscriber)}),
    Route("PATCH", "/api/v1/subscribers" + _CHANNEL, api.patch_subscriber,
          "Add and remove a person's tags", "change", {200: Answer(SubscriberTags)},
          body=SubscriberPatch),
    Route("GET", "/api/v1/tags", api.get_tags, "The campaign's tags with how many each reaches",
          "read", {200: Answer(TagCount, many=True)}),
    Route("POST", "/api/v1/messages", api.post_message, "Queue one message", "change",
          {202: Answer(Queued)}, body=MessageIn,
          headers={"Idempotency-Key": "repeat the first answer; send nothing twice "
                                      "(1-200 characters)"}),
    Route("GET", "/api/v1/messages/{id}", api.get_message, "One message", "read",
          {200: Answer(Message)}),
    Route("POST", "/api/v1/broadcasts", api.post_broadcast,
          "Create a broadcast (a dry run answers 200 and queues nothing)", "change",
          {202: Answer(BroadcastCreated),
           200: Answer(BroadcastCreated, description="dry run: nothing queued")},
          body=BroadcastIn),
    Route("GET", "/api/v1/broadcasts", api.get_broadcasts, "Broadcasts, newest first", "read",
          {200: Answer(Broadcast, many=True)}, query=BroadcastsQuery),
    Route("GET", "/api/v1/broadcasts/{id}", api.get_broadcast, "A broadcast's progress",
          "read", {200: Answer(Broadcast)}),
    Route("POST", "/api/v1/broadcasts/{id}/cancel", api.cancel_broadcast,
          "Cancel a broadcast", "change", {200: Answer(BroadcastCancelled)}),
    Route("POST", "/api/v1/broadcasts/{id}/resume", api.resume_broadcast,
          "Resume a paused broadcast", "change", {200: Answer(Broadcast)}, problems=(409,)),
    Route("POST", "/api/v1/links", links_api.post_link, "Create a join link", "change",
          {201: Answer(LinkView)}, body=LinkIn, problems=(502, 503)),
    Route("GET", "/api/v1/links", links_api.get_links, "Join links", "read",
          {200: Answer(LinkView, many=True)}),
    Route("GET", "/api/v1/links/{id}", links_api.get_link, "One join link", "read",
          {200: Answer(LinkView)}),
    Route("GET", "/api/v1/links/{id}/qr.svg", links_api.get_link_qr,
          "A join link's QR code (SVG)", "read", {200: Answer(media="image/svg+xml")}),
    Route("GET", "/api/v1/links/{id}/qr.png", links_api.get_link_qr_png,
          "A join link's QR code (PNG)", "read", {200: Answer(media="image/png")}),
    Route("GET", "/api/v1/links/{id}/poster", links_api.get_link_poster,
          "A printable poster for a join link", "read", {200: Answer(media="text/html")},
          query=PosterQuery),
    Route("POST", "/api/v1/links/{id}/revoke", links_api.revoke_link, "Revoke a join link",
          "change", {200: Answer(LinkView)}, problems=(502, 503)),
    Route("GET", "/api/v1/subjects" + _CHANNEL, privacy_api.get_subject,
          "Subject access export", "read", {200: Answer(SubjectExport)}),
    Route("DELETE", "/api/v1/subjects" + _CHANNEL, privacy_api.delete_subject,
          "Erase a data subject", "change", {200: Answer(Erasure)}),
    Route("PATCH", "/api/v1/subjects" + _CHANNEL, privacy_api.patch_subject,
          "Correct an address and/or restrict processing", "change",
          {200: Answer(SubjectPatched)}, body=SubjectPatch, problems=(409,)),
    Route("GET", "/api/v1/report", privacy_api.get_report, "The campaign's compliance report",
          "read", {200: Answer(Report)}),
    Route("GET", "/api/v1/audit", api.get_audit, "The audit log, oldest first", "read",
          {200: Answer(AuditEvent, many=True)}, query=AuditQuery),
    Route("GET", "/api/v1/replies", api.get_replies, "Inbound replies, newest first", "read",
          {200: Answer(Reply, many=True)}, query=RepliesQuery),
    Route("POST", "/api/v1/replies/{id}/resolve", api.resolve_reply,
          "Resolve a reply: opt its sender out, or mark it as not an opt-out", "change",
          {200: Answer(ResolvedReply)}, body=ResolveIn, problems=(404, 409)),
    Route("POST", "/api/v1/suppressions/import", api.post_suppression_import,
          "Import opt-outs from another platform (CSV header channel,address,reason)",
          "change", {200: Answer(ImportReport)}, body_media=_CSV_IMPORT),
    Route("GET", "/api/v1/suppressions", privacy_api.get_suppressions,
          "Opt-outs and suppressions as CSV (channel,address,reason,at)", "read",
          {200: Answer(media="text/csv")}),
)


def _endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        op = operator(request, change=route.role == "change")
        call = Call(request, op, gateway(request))
        args: list[Any] = []
        if route.body is not None:
            args.append(await decode_body(request, route.body))
        query = decode_query(request, route.query)
        if route.query is not Empty:
            args.append(query)
        return await route.handler(call, *args)

    endpoint.__name__ = route.handler.__name__
    endpoint.__doc__ = route.summary
    return endpoint


def add_routes(app: web.Application, routes: tuple[Route, ...] = API_ROUTES) -> None:
    for route in routes:
        if route.method == "GET":  # and HEAD, as aiohttp does for every GET
            app.router.add_get(route.path, _endpoint(route))
        else:
            app.router.add_route(route.method, route.path, _endpoint(route))
