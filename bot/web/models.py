"""Every JSON body, query and answer of the API under ``/api/v1``, declared once.

The request models are what the edge decodes (``bot.web.common.decode_body`` /
``decode_query``): a field they do not know is refused, types are strict (``"true"`` is not
a boolean, ``5`` is not a string), and every text has a bounded length. A field may carry the
problem ``code`` the contract has always given for it (``invalid_address``,
``missing_evidence`` ...); any other refusal is ``invalid_input``. The answer models document
what the handlers return; the OpenAPI document (``bot.web.openapi``) is generated from both,
so the document and the code cannot drift apart.

Domain checks that need the campaign (is the address valid in its region, is the source
denied, is the channel configured) stay in the services: the models check shape only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from consentgate.adapters.base import Channel
from consentgate.bot.links import MAX_NAME
from consentgate.bot.messages import MAX_TEXT
from consentgate.bot.subscribers import MAX_REASON

__all__ = [
    "AuditEvent",
    "AuditQuery",
    "Broadcast",
    "BroadcastCancelled",
    "BroadcastCreated",
    "BroadcastIn",
    "ConsentAnswer",
    "ConsentIn",
    "Erasure",
    "ImportReport",
    "LinkIn",
    "LinkView",
    "Message",
    "MessageIn",
    "OptOutAnswer",
    "OptOutIn",
    "PosterQuery",
    "Problem",
    "Queued",
    "RepliesQuery",
    "Reply",
    "Segment",
    "SubscriberPatch",
    "SubscriberTags",
    "TagCount",
    "BroadcastsQuery",
    "ResolveIn",
    "ResolvedReply",
    "Report",
    "Request",
    "SubjectExport",
    "SubjectPatch",
    "SubjectPatched",
    "Subscriber",
    "code_of",
]


MAX_ADDRESS = 320
MAX_EVIDENCE = 1000
MAX_SUBJECT = 200
MAX_METHOD = 40
MAX_FILTER = 200

_CODE = "x-problem-code"

#: Tag names as a request gives them (checked and normalised by the tags service).
Tags = list[Annotated[str, StringConstraints(max_length=64)]] | None


def _field(code: str | None = None, **kwargs: Any) -> Any:
    """A request field; ``code`` is the problem code a bad value of it gets (documented in
    the OpenAPI document as ``x-problem-code``)."""
    extra: dict[str, JsonValue] | None = {_CODE: code} if code else None
    return Field(json_schema_extra=extra, **kwargs)


class Request(BaseModel):
    """A request body or query: unknown fields refused, types strict, nothing coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Query(BaseModel):
    """A query string: every value arrives as text, so numbers and booleans are read from
    their usual spellings (``limit=10``, ``flagged=true``); unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Answer(BaseModel):
    """An answer whose every field is known: the schema says ``additionalProperties: false``."""

    model_config = ConfigDict(extra="forbid")


class OpenAnswer(BaseModel):
    """An answer with the listed fields and possibly more (operator detail that grows)."""

    model_config = ConfigDict(extra="allow")


def code_of(model: type[BaseModel], field: str) -> str | None:
    """The problem code declared for a field of a request model, if any."""
    info = model.model_fields.get(field)
    extra = info.json_schema_extra if info is not None else None
    if isinstance(extra, dict):
        code = extra.get(_CODE)
        return code if isinstance(code, str) else None
    return None


# -- requests -------------------------------------------------------------------------------

class ConsentIn(Request):
    """Consent an operator records for a person, with its evidence."""

    channel: Channel = _field("invalid_channel")
    address: str = _field("invalid_address", min_length=1, max_length=MAX_ADDRESS)
    method: str = _field("invalid_method", min_length=1, max_length=MAX_METHOD,
                         description="web_form, paper_form, verbal, keyword, "
                                     "telegram_start or import")
    source: str = _field("missing_evidence", default="", max_length=MAX_EVIDENCE,
                         description="where the consent was given; must not be empty")
    evidence: str = _field("missing_evidence", default="", max_length=MAX_EVIDENCE,
                           description="what proves it (form number, recording ...); "
                                       "must not be empty")
    tags: Tags = _field("invalid_tag", default=None,
                        description="tags the person gets (added to any they have)")


class OptOutIn(Request):
    channel: Channel = _field("invalid_channel")
    address: str = _field("invalid_address", min_length=1, max_length=MAX_ADDRESS)
    reason: str | None = _field("invalid_reason", default=None, max_length=MAX_REASON)


class ResolveIn(Request):
    action: Literal["opt_out", "not_an_opt_out"] = _field("invalid_action")
    note: str | None = _field("invalid_note", default=None, max_length=1000)


class MessageIn(Request):
    channel: Channel = _field("invalid_channel")
    to: str = _field("invalid_address", min_length=1, max_length=MAX_ADDRESS)
    text: str = _field("invalid_text", min_length=1, max_length=MAX_TEXT)
    subject: str | None = _field("invalid_subject", default=None, max_length=MAX_SUBJECT,
                                 pattern=r"^[^\r\n]*$",
                                 description="email only; one line")


class BroadcastIn(Request):
    channel: Channel = _field("invalid_channel")
    text: str = _field("invalid_text", min_length=1, max_length=MAX_TEXT)
    subject: str | None = _field("invalid_subject", default=None, max_length=MAX_SUBJECT,
                                 pattern=r"^[^\r\n]*$",
                                 description="email only; one line")
    dry_run: bool = _field("invalid_dry_run", default=False,
                           description="count the audience; queue nothing (answer 200)")
    tags_any: Tags = _field("invalid_tag", default=None,
                            description="only people with at least one of these tags")
    tags_all: Tags = _field("invalid_tag", default=None,
                            description="only people with every one of these tags")
    exclude_tags: Tags = _field("invalid_tag", default=None,
                                description="leave out people with any of these tags")
    send_at: Annotated[str, StringConstraints(max_length=64)] | None = _field(
        "invalid_send_at", default=None,
        description="ISO 8601 with a UTC offset: schedule it (answer 202, status scheduled)")


class LinkIn(Request):
    channel: Channel = _field("invalid_channel")
    name: str = _field("invalid_name", min_length=1, max_length=MAX_NAME)
    telegram_chat_id: int | Annotated[str, StringConstraints(max_length=32)] | None = _field(
        "invalid_telegram_chat_id", default=None,
        description="one of the campaign's own_chats: a Telegram invite link asking to join")
    expires_at: Annotated[str, StringConstraints(max_length=64)] | float | None = _field(
        "invalid_expires_at", default=None,
        description="ISO 8601 date-time (naive means UTC) or UNIX seconds, in the future")
    member_limit: int | None = _field("invalid_member_limit", default=None,
                                      description="1-99999; not with telegram_chat_id")
    tags: Tags = _field("invalid_tag", default=None,
                        description="everyone who joins through the link gets these tags")


class SubscriberPatch(Request):
    """Tags added to and removed from one person (removal wins for a tag in both)."""

    add_tags: Tags = _field("invalid_tag", default=None)
    remove_tags: Tags = _field("invalid_tag", default=None)


class BroadcastsQuery(Query):
    limit: int = _field("invalid_query", default=20, ge=1, le=100,
                        description="how many, newest first (each is counted by status)")


class SubjectPatch(Request):
    """Rectification (``address``, the corrected one) and/or restriction of processing."""

    address: str | None = _field("invalid_address", default=None, min_length=1,
                                 max_length=MAX_ADDRESS)
    restricted: bool | None = _field("invalid_restricted", default=None)


class AuditQuery(Query):
    after: int = _field("invalid_query", default=0, ge=0, le=2**31 - 1,
                        description="only records after this seq")
    limit: int = _field("invalid_query", default=1000, ge=1, le=10000)
    action: str | None = _field("invalid_query", default=None, max_length=MAX_FILTER)
    actor: str | None = _field("invalid_query", default=None, max_length=MAX_FILTER)
    subject: str | None = _field("invalid_query", default=None, max_length=MAX_FILTER,
                                 description="e.g. sms#<hash>: everything done about one "
                                             "person")


class RepliesQuery(Query):
    flagged: bool = _field("invalid_query", default=False,
                           description="only replies flagged possible_opt_out")
    unresolved: bool = _field("invalid_query", default=False,
                              description="only replies no person has decided about yet")
    limit: int = _field("invalid_query", default=500, ge=1, le=10000)


class PosterQuery(Query):
    size: Literal["A4", "A5", "A6", "card", "a4", "a5", "a6", "CARD"] = _field(
        "invalid_size", default="A4")


# -- answers --------------------------------------------------------------------------------

class Problem(Answer):
    """RFC 9457 problem details, with the machine-readable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str


class ConsentAnswer(Answer):
    channel: Channel
    address: str
    status: Literal["subscribed", "pending", "opted_out", "suppressed", "unknown"]


class Rejected(Answer):
    line: int
    code: str
    detail: str


class ImportReport(OpenAnswer):
    imported: int
    rejected: list[Rejected]


class OptOutAnswer(Answer):
    channel: Channel
    address: str
    status: Literal["opted_out"]
    cancelled: int = Field(description="queued messages to this address now cancelled")


class HistoryEntry(Answer):
    at: str | None
    event: str
    method: str | None
    source: str | None
    actor: str | None


class Subscriber(Answer):
    channel: Channel
    address: str
    status: Literal["subscribed", "pending", "opted_out", "suppressed", "unknown"]
    can_send: bool
    reason: str | None
    history: list[HistoryEntry]
    tags: list[str] = Field(default_factory=list, description="this person's tags")


class SubscriberTags(Answer):
    channel: Channel
    address: str
    tags: list[str]


class TagCount(Answer):
    tag: str
    channel: Channel
    subscribed: int = Field(description="holders a broadcast could reach now")


class Queued(Answer):
    id: int
    status: Literal["queued"]


MessageStatus = Literal["queued", "sending", "sent", "delivered", "failed", "blocked",
                        "cancelled"]


class Message(Answer):
    id: int
    channel: Channel
    to: str
    status: MessageStatus
    reason: str | None
    provider_id: str | None
    created_at: str | None
    sent_at: str | None
    attempts: int
    broadcast_id: int | None


class Audience(Answer):
    eligible: int
    excluded: dict[str, int] = Field(description="how many were left out, by reason")


class Segment(Answer):
    tags_any: list[str]
    tags_all: list[str]
    exclude_tags: list[str]


class BroadcastCreated(Answer):
    id: int | None = Field(description="null for a dry run")
    status: Literal["queued", "scheduled", "dry_run"]
    audience: Audience = Field(description="for a scheduled broadcast, an estimate: it is "
                                           "resolved again when it starts")
    segment: Segment
    send_at: str | None


class Paused(Answer):
    reason: str
    failed: int
    attempted: int
    detail: str


class Broadcast(Answer):
    id: int
    channel: Channel
    status: Literal["scheduled", "queued", "sending", "done", "cancelled", "paused"]
    counts: dict[MessageStatus, int] = Field(
        description="its messages by status; while it is still being queued (in batches "
                    "as it sends), those not queued yet count as queued (as cancelled once "
                    "it is cancelled)")
    eligible: int = Field(description="whom it reaches: the count it started from until "
                                      "all are queued, then the number queued")
    excluded: dict[str, int]
    segment: Segment
    send_at: str | None
    started_at: str | None
    late: bool = Field(description="started more than a minute after send_at")
    late_seconds: float | None
    created_at: str | None
    created_by: str | None
    resumed_at: str | None = Field(description="when an operator last resumed it")
    paused: Paused | None = Field(default=None,
                                  description="only while paused: why, and the figures the "
                                              "failure rule judged")


class BroadcastCancelled(Answer):
    id: int
    status: Literal["cancelled"]
    cancelled: int


class LinkView(Answer):
    id: str
    name: str
    channel: Channel
    url: str
    joins: int
    kind: Literal["join_page", "telegram_invite"]
    telegram_chat_id: int | None
    telegram_start_url: str | None
    expires_at: str | None
    member_limit: int | None
    revoked_at: str | None
    active: bool
    created_by: str
    created_at: str | None
    tags: list[str]
    qr_svg: str | None = Field(default=None, description="on create and on GET of one link")


class AuditEvent(Answer):
    seq: int
    at: str | None
    actor: str
    action: str
    subject: str
    detail: str | None
    prev_hash: str
    hash: str = Field(description="covers the previous record's hash")


class Reply(OpenAnswer):
    id: int
    channel: Channel
    from_: str | None = Field(alias="from", description="null once the sender is erased")
    text: str | None
    at: str | None
    flag: Literal["possible_opt_out"] | None
    intent: str | None
    rule: str | None = Field(description="why the classifier read it so, in a few words")
    resolution: Literal["opted_out", "not_an_opt_out"] | None
    resolved_by: str | None
    resolved_at: str | None
    note: str | None = Field(description="the note given when it was resolved")


class ResolvedReply(Reply):
    cancelled: int = Field(description="queued messages cancelled by an opt_out")


class SubjectExport(OpenAnswer):
    """Everything the campaign holds about one address (subject access)."""

    channel: Channel
    address: str


class Erasure(OpenAnswer):
    channel: Channel
    erased: bool
    suppressed: bool


class SubjectPatched(OpenAnswer):
    channel: Channel
    address: str


class Report(OpenAnswer):
    """The campaign's compliance report."""

    campaign: str
    generated_at: str | None
