"""TOML configuration -> frozen, validated settings, declared once.

Every key of the file is declared exactly once, as a field of a frozen pydantic model (one model
per TOML table), with its type, default, description and rule. From that one declaration come
the parser (:func:`parse_config`, :func:`load_config`), the refusal of unknown keys, and the
configuration reference in docs/configuration.md (:func:`render_reference`; regenerate it with
``python -m consentgate.bot.config --markdown > docs/configuration.md``).

Start-up must never run half-configured: every problem is a :class:`ConfigError` naming the
key, which the CLI prints on one line before exiting with status 2. Pydantic's own messages are
not shown: they are rewritten here, without the offending value, so a secret written in the
wrong place is never echoed.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from consentgate.adapters.base import CHANNELS

__all__ = [
    "CampaignSettings",
    "ConfigError",
    "DispatchSettings",
    "EmailSettings",
    "InboundEmailSettings",
    "OperatorSettings",
    "PolicySettings",
    "SecuritySettings",
    "ServerSettings",
    "Settings",
    "SmsSettings",
    "StorageSettings",
    "TelegramSettings",
    "load_config",
    "parse_config",
    "render_reference",
]


class ConfigError(Exception):
    """A configuration problem; ``key`` is the dotted path of the offending key
    (``campaigns[0].sms.auth_token``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# --------------------------------------------------------------------------------------------
# Rules for single values. Each is written once and attached to fields with Annotated, so the
# field's declaration says everything about it. A rule refuses a value by raising _Refusal: a
# ValueError (so pydantic collects it) that carries our message, and optionally the names of
# keys below the field it was raised on (``join_keywords.HALL``).
# --------------------------------------------------------------------------------------------

MIN_SECRET_KEY_CHARS = 32
MIN_OPERATOR_TOKEN_CHARS = 16
STORAGE_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")

# Words the inbound SMS classifier already owns: a join keyword may not shadow them.
RESERVED_SMS_KEYWORDS = frozenset(
    {
        "STOP", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "STOPALL",
        "START", "UNSTOP", "YES", "JOIN", "HELP", "INFO",
    }
)  # fmt: skip

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_SLUG_RE = re.compile(r"[a-z0-9-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# "$${" is a literal "${"; "${NAME}" is a reference; a "${" with no closing brace is an error.
_ENV_REF_RE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\})?")
_QUIET_HOURS_RE = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
_WEBHOOK_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
_TELEGRAM_USERNAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{4,31}")
_KEYWORD_RE = re.compile(r"[A-Z0-9]+")
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")


class _Refusal(ValueError):
    """A value refused by one of our rules; ``below`` names keys under the field, if any."""

    def __init__(self, message: str, *below: str | int) -> None:
        super().__init__(message)
        self.message = message
        self.below = below


@dataclass(frozen=True)
class _Doc:
    """How the reference shows a type whose Python type says too little (``URL``)."""

    type: str


def _show(value: str) -> str:
    """A value quoted for an error message, escaped so the message stays on one line."""
    return json.dumps(value, ensure_ascii=False)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise _Refusal("must not be empty")
    return value


def _between(low: int, high: int | None = None) -> AfterValidator:
    def check(value: int) -> int:
        if value < low or (high is not None and value > high):
            upper = f"..{high}" if high is not None else " or more"
            raise _Refusal(f"must be {low}{upper}, got {value}")
        return value

    return AfterValidator(check)


def _positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise _Refusal(f"must be a number greater than 0, got {value}")
    return float(value)


def _at_least_chars(count: int) -> AfterValidator:
    # The value is a secret: only its length is shown.
    def check(value: str) -> str:
        if len(value) < count:
            raise _Refusal(f"must be at least {count} characters (got {len(value)})")
        return value

    return AfterValidator(check)


def _http_url(value: str) -> str:
    if any(ch.isspace() for ch in value):
        raise _Refusal("must be an http:// or https:// URL without spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _Refusal(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Refusal("must be an http:// or https:// URL with a host")
    return value


def _no_trailing_slash(value: str) -> str:
    return value.rstrip("/")


def _public_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        raise _Refusal("must not have a query or fragment")
    return value


def _storage_url(value: str, info: ValidationInfo) -> str:
    # The URL may carry a database password: never echo it back.
    if not any(value.startswith(s) and len(value) > len(s) for s in STORAGE_SCHEMES):
        raise _Refusal("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    base_dir = (info.context or {}).get("base_dir")
    return value if base_dir is None else _resolve_sqlite_path(value, Path(base_dir))


def _resolve_sqlite_path(url: str, base_dir: Path) -> str:
    """A relative SQLite file in ``url`` made absolute against ``base_dir``.

    ``sqlite+aiosqlite:///consentgate.db`` names a file relative to the current directory; read
    from a config file, it should mean next to that file, whatever directory a command runs in
    (otherwise ``consentgate explain`` run elsewhere silently opens a new, empty database).
    """
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):
        return url
    path, mark, query = url[len(prefix) :].partition("?")
    if not path or path.startswith("/") or path == ":memory:" or path.startswith("file:"):
        return url
    return f"{prefix}{(base_dir / path).resolve()}{mark}{query}"


def _quiet_hours(value: object) -> object:
    if not isinstance(value, str):
        return value  # a tuple when settings are built in code; anything else is refused
    match = _QUIET_HOURS_RE.fullmatch(value)
    if match is None:
        raise _Refusal(f'must be "HH:MM-HH:MM", got {_show(value)}')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise _Refusal(f"is not a valid time range: {_show(value)}")
    start, end = f"{h1:02d}:{m1:02d}", f"{h2:02d}:{m2:02d}"
    if start == end:
        raise _Refusal("start and end must differ")
    return (start, end)


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Refusal(f"unknown time zone {_show(value)}") from None
    return value


def _slug(value: str) -> str:
    if not _SLUG_RE.fullmatch(value):
        raise _Refusal(f"must match [a-z0-9-]+, got {_show(value)}")
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _phone_region(value: str) -> str:
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise _Refusal(f"unknown phone number region {_show(value)}")
    return value


def _e164(value: str) -> str:
    # "Possible" rather than "valid": numbers reserved for tests and drama (+44 7700 900xxx)
    # are not assigned, yet providers' test credentials and sandboxes use them.
    message = f'must be an E.164 number such as "+447700900000", got {_show(value)}'
    if not _E164_RE.fullmatch(value):
        raise _Refusal(message)
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise _Refusal(message) from None
    if not phonenumbers.is_possible_number(number):
        raise _Refusal(message)
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _mail_address(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise _Refusal("must not contain line breaks")
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise _Refusal('must be an email address such as "Name <name@example.org>"')
    return value


def _mail_domain(value: str) -> str:
    if "@" in value or any(ch.isspace() for ch in value):
        raise _Refusal('must be a domain name such as "reply.example.org"')
    return value


def _webhook_secret(value: str) -> str:
    if not _WEBHOOK_SECRET_RE.fullmatch(value):
        raise _Refusal("must be 1-256 characters of A-Z a-z 0-9 _ -")
    return value


def _telegram_username(value: str) -> str:
    value = value.removeprefix("@")
    if not _TELEGRAM_USERNAME_RE.fullmatch(value):
        raise _Refusal(f"is not a Telegram username: {_show(value)}")
    return value


def _argon2id_hash(value: str) -> str:
    # A password hash is as good as a password to someone guessing offline: never echoed.
    if not value.startswith("$argon2id$") or any(ch.isspace() for ch in value):
        raise _Refusal(
            'must be an argon2id hash ("$argon2id$...", as printed by consentgate hash-password)'
        )
    return value


def _if_set(rule: Callable[[str], str]) -> AfterValidator:
    """``rule`` applied to an optional string, passing "not set" (None) through."""
    return AfterValidator(lambda value: None if value is None else rule(value))


def _one_or_more(value: tuple[object, ...]) -> tuple[object, ...]:
    if not value:
        raise _Refusal("at least one operator is required")
    return value


def _join_keywords(value: object) -> object:
    """``{ hall = "link-id" }`` -> ``(("HALL", "link-id"),)``, each keyword checked."""
    if isinstance(value, tuple):
        return value  # already pairs: settings built in code
    if not isinstance(value, dict):
        raise _Refusal(f"expected a table, got {_type_name(value)}")
    seen: set[str] = set()
    pairs = []
    for word, link_id in value.items():
        keyword = word.strip().upper()
        if not _KEYWORD_RE.fullmatch(keyword):
            raise _Refusal("a keyword is one word of letters and digits", word)
        if keyword in RESERVED_SMS_KEYWORDS:
            raise _Refusal(f"{keyword} is reserved for opt-out, opt-in and help", word)
        if keyword in seen:
            raise _Refusal(f"keyword {keyword} is listed twice", word)
        if not isinstance(link_id, str):
            raise _Refusal(f"expected a link id string, got {_type_name(link_id)}", word)
        if not link_id.strip():
            raise _Refusal("must not be empty", word)
        seen.add(keyword)
        pairs.append((keyword, link_id))
    return tuple(pairs)


T = TypeVar("T")

# The value types of the file. TOML arrays arrive as lists and are kept as tuples; everything
# else is strict (no "8080" for 8080, no true for 1).
Array = Annotated[tuple[T, ...], Strict(False)]
Text = Annotated[str, AfterValidator(_not_blank)]
Port = Annotated[int, _between(1, 65535)]
Rate = Annotated[float, AfterValidator(_positive), _Doc("number")]
Url = Annotated[str, AfterValidator(_http_url), _Doc("URL")]
MailAddress = Annotated[str, AfterValidator(_mail_address)]
Secret = Annotated[str, _at_least_chars(MIN_SECRET_KEY_CHARS)]


# --------------------------------------------------------------------------------------------
# The tables. Field metadata used beyond pydantic (json_schema_extra):
#   provider_only  -- ignored, unchecked and left at its default under the "log" provider (†)
#   required_for   -- required when ``provider`` is one of these
#   default_doc    -- what the reference shows as the default when the value alone says too
#                     little
# --------------------------------------------------------------------------------------------


_PROVIDER_ONLY: dict[str, Any] = {"provider_only": True}


def _meta(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


class _Table(BaseModel):
    """One TOML table: frozen, strict, and refusing keys it does not declare."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data  # pydantic refuses it as "not a table"
        # Unknown keys first, so a misspelt key is reported rather than its consequence
        # (a required key "missing", a default silently used).
        known = list(cls.model_fields)
        for name in data:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise _Refusal(f"unknown key{hint}", name)
        provider = data.get("provider")
        if provider == "log":
            data = {
                k: v for k, v in data.items() if not _meta(cls.model_fields[k]).get("provider_only")
            }
        for name, field in cls.model_fields.items():
            if provider in _meta(field).get("required_for", ()) and name not in cls._optional(data):
                if name not in data:
                    raise _Refusal("required key is missing", name)
                if isinstance(data[name], str) and not data[name].strip():
                    raise _Refusal("must not be empty", name)
        return cls._derive(data)

    @classmethod
    def _optional(cls, data: dict[str, Any]) -> frozenset[str]:
        """Keys marked ``required_for`` that this particular table may leave out."""
        return frozenset()

    @classmethod
    def _derive(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Defaults that depend on other keys of the table."""
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object, info: ValidationInfo) -> object:
        # An optional string set to "" (or spaces) counts as not set: "${SMTP_USER}" with the
        # variable set empty turns the key off rather than sending an empty user name.
        if isinstance(value, str) and not value.strip() and info.field_name is not None:
            field = cls.model_fields[info.field_name]
            if not field.is_required():
                return field.get_default(call_default_factory=True)
        return value


class ServerSettings(_Table):
    """The HTTP server."""

    host: str = Field(default="127.0.0.1", description="address the HTTP server listens on")
    port: Port = Field(default=8080, description="1..65535")
    public_url: Annotated[Url, AfterValidator(_public_url), AfterValidator(_no_trailing_slash)] = (
        Field(
            default="http://127.0.0.1:8080",
            description="how providers and people reach this server; no query or fragment; a "
            "trailing `/` is removed. Webhook signatures are checked against it and links are "
            "built on it, so behind a proxy it is the proxy's address. A path is allowed "
            "(`https://example.org/gateway`).",
        )
    )
    max_body_bytes: Annotated[int, _between(1)] = Field(
        default=1_048_576, description=">= 1; larger request bodies get 413"
    )
    max_import_bytes: Annotated[int, _between(1)] = Field(
        default=64 * 1_048_576, description=">= 1; limit for CSV import bodies"
    )


class StorageSettings(_Table):
    """The database."""

    url: Annotated[str, AfterValidator(_storage_url)] = Field(
        default="sqlite+aiosqlite:///consentgate.db",
        description="must start with `sqlite+aiosqlite://` or `postgresql+asyncpg://` and name "
        "a database after it. `sqlite+aiosqlite:///relative.db`, "
        "`sqlite+aiosqlite:////absolute/path.db`, "
        "`postgresql+asyncpg://user:password@host:5432/db`. A relative SQLite path is taken "
        "from the folder of the configuration file, not from the directory a command is run "
        "in, so every command run with the same file opens the same database.",
    )
    pool_size: Annotated[int, _between(1, 1000)] = Field(
        default=10,
        description="1..1000; database connections kept per process (as many again may open "
        "under load). See [operations](operations.md#scale-out-on-postgresql) for sizing "
        "across processes.",
    )


class DispatchSettings(_Table):
    """How each process hands messages to the providers."""

    lease_seconds: Rate = Field(
        default=60.0,
        description=">= 1; how long a claimed or in-flight message stays reserved to its "
        "process. After a crash its queued rows return to the queue, and its in-flight rows "
        "become `failed` / `interrupted`, once this has passed. Keep it well above the "
        "provider call timeout (10 s).",
    )
    max_in_flight: Annotated[int, _between(1, 10000)] = Field(
        default=64,
        description="1 to 10000; provider calls one process keeps open at once, over all "
        "campaigns and channels. A sender needs about `rate_per_second` x the provider's "
        "answer time (Twilio: 0.2 to 0.5 s), so 64 carries some 150 to 300 SMS a second per "
        "process. Raise it only for a faster sender: every call in flight lengthens each turn "
        "of the process's event loop, and a STOP waits for those turns. Each sender is "
        "further capped at the connections its adapter holds (an SMTP relay at its "
        "`max_connections`).",
    )

    in_serve: bool = Field(
        default=True,
        description="whether `consentgate serve` dispatches too. On PostgreSQL, set it to "
        "false in the `serve` processes when `consentgate worker` processes send: then no "
        "provider call shares a process with the webhooks (STOPs, the API, the console). "
        "On SQLite `serve` is the only process, so it must dispatch (`serve` refuses false).",
    )
    own_thread: bool = Field(
        default=True,
        description="whether `consentgate serve` runs its dispatcher on an event loop in a "
        "thread of its own, so the web server's loop (webhooks, the API, the console) never "
        "waits behind provider calls. The dispatcher then has its own database connections "
        "(on PostgreSQL, up to `2 x pool_size` more per `serve`). `worker` has no web server "
        "and ignores it.",
    )

    @field_validator("lease_seconds")
    @classmethod
    def _a_second_or_more(cls, value: float) -> float:
        if value < 1:
            raise _Refusal("must be at least 1 (seconds)")
        return value


class SecuritySettings(_Table):
    """Keys that must stay secret."""

    secret_key: Secret = Field(
        description="at least 32 characters. Signs every link and unsubscribe token and keys "
        "the hashes kept for erased addresses: keep it secret, keep it stable (changing it "
        'invalidates links already sent). Use `"${CONSENTGATE_SECRET_KEY}"` in production; '
        'generate one with `python -c "import secrets; print(secrets.token_urlsafe(48))"`.'
    )


class PolicySettings(_Table):
    """Rules that hold for every campaign."""

    denied_sources: Array[Text] = Field(
        default=(),
        description="consent whose source contains one of these is refused with "
        "`denied_source`. Compared as a reader sees the text: case, accents, fullwidth forms, "
        "spacing of any kind (tabs, line breaks, no-break and zero-width spaces), hyphens, "
        "underscores, punctuation and look-alike letters of other scripts (a Cyrillic \"о\") "
        "make no difference (see [data-protection.md]"
        "(data-protection.md#purpose-limitation-and-provenance)). Empty entries are refused "
        "(they would match every source).",
    )
    quiet_hours: Annotated[
        tuple[str, str] | None, BeforeValidator(_quiet_hours), _Doc("string")
    ] = Field(
        default=None,
        description='`"HH:MM-HH:MM"`, 24-hour clock, in `timezone`; e.g. `"21:00-08:00"` (a '
        "window may cross midnight). Start and end must differ. Campaign messages due "
        "inside the window wait until it ends; they are never dropped. Not set: no quiet "
        "hours.",
    )
    timezone: Annotated[str, AfterValidator(_time_zone)] = Field(
        default="Europe/London", description="an IANA time zone name known to `zoneinfo`"
    )
    retention_days: Annotated[int, _between(1)] = Field(
        default=365, description=">= 1; see [data protection](data-protection.md)"
    )


class OperatorSettings(_Table):
    """A person (or tool) allowed to use the API and the console for one campaign.

    ```toml
    operators = [
      { name = "Jane Doe", token = "${JANE_TOKEN}", role = "organiser" },
      { name = "Returning Officer", token = "${RO_TOKEN}", role = "auditor" },
    ]
    ```

    TOML keeps an inline table on one line; an operator with more keys reads better as a table
    of its own, written after the campaign's other keys (and not mixed with `operators = [...]`):

    ```toml
    [[campaigns.operators]]
    name = "Jane Doe"
    token = "${JANE_TOKEN}"
    role = "organiser"
    password_hash = "${JANE_PASSWORD_HASH}"
    ```
    """

    name: Text = Field(
        description="not empty; written to the audit log for every change the operator makes; "
        "the name the operator signs in to the console with"
    )
    token: Annotated[str, _at_least_chars(MIN_OPERATOR_TOKEN_CHARS)] = Field(
        description="at least 16 characters, unique across the whole file (a token belongs to "
        "exactly one operator of one campaign). Sent as `Authorization: Bearer <token>`."
    )
    role: Literal["organiser", "auditor", "volunteer"] = Field(
        description="`organiser` (reads and changes), `volunteer` (may send, as an organiser) "
        "or `auditor` (read only: every change gets 403)"
    )
    password_hash: Annotated[str | None, _if_set(_argon2id_hash)] = Field(
        default=None,
        description='an argon2id hash (`"$argon2id$..."`) of the password the operator signs '
        "in to the console with; print one with `consentgate hash-password` (it reads the "
        "password from standard input). Not set: the operator cannot sign in to the console. "
        "Never shown in error messages.",
    )


class SmsSettings(_Table):
    """SMS through Twilio: numbers, webhooks and Advanced Opt-Out are set up as in
    [twilio.md](twilio.md)."""

    provider: Literal["twilio", "log"] = Field(description='`"twilio"` or `"log"`')
    account_sid: str | None = Field(
        default=None,
        description="the Twilio account SID (`AC...`)",
        json_schema_extra={**_PROVIDER_ONLY, "required_for": ["twilio"]},
    )
    auth_token: str | None = Field(
        default=None,
        description="also checks `X-Twilio-Signature` on webhooks",
        json_schema_extra={**_PROVIDER_ONLY, "required_for": ["twilio"]},
    )
    from_number: Annotated[str | None, _if_set(_e164)] = Field(
        default=None,
        description="E.164 (`+447700900000`): `+`, country code, number; checked with "
        "`phonenumbers` as a possible number, so numbers reserved for testing are accepted",
        json_schema_extra=_PROVIDER_ONLY,
    )
    messaging_service_sid: str | None = Field(
        default=None,
        description="for twilio, exactly one of `from_number` and `messaging_service_sid`",
        json_schema_extra=_PROVIDER_ONLY,
    )
    api_base_url: Annotated[Url, AfterValidator(_no_trailing_slash)] = Field(
        default="https://api.twilio.com",
        description="a test double or regional edge; a trailing `/` is removed",
        json_schema_extra=_PROVIDER_ONLY,
    )
    rate_per_second: Rate = Field(
        default=10.0,
        description="> 0. Pace sends at what the sender really delivers, so nothing waits in "
        "the provider's queue beyond the reach of a later STOP.",
    )
    opt_out_instruction: str = Field(
        default="Reply STOP to opt out",
        description="appended to campaign SMS that do not already say how to opt out",
    )
    consent_text: str | None = Field(
        default=None,
        description="what a person agrees to when joining by SMS; not set: the campaign's "
        "`consent_text`",
    )

    @model_validator(mode="after")
    def _one_sender(self) -> SmsSettings:
        if self.provider == "twilio" and (self.from_number is None) == (
            self.messaging_service_sid is None
        ):
            raise _Refusal("set exactly one of from_number or messaging_service_sid", "from_number")
        return self


class InboundEmailSettings(_Table):
    """An SMTP listener for mail sent to the campaign: `unsubscribe+TOKEN@domain` (the
    `mailto:` form of `List-Unsubscribe`) and `bounce+TOKEN@domain` (bounces). Without it,
    only the `https` unsubscribe link is offered."""

    host: str = Field(default="127.0.0.1", description="address the listener binds")
    port: Port = Field(default=2525, description="1..65535")
    domain: Annotated[Text, AfterValidator(_mail_domain)] = Field(
        description="the domain the MX record points at this listener, e.g. "
        '`"reply.example.org"`; no `@`, no spaces'
    )


class EmailSettings(_Table):
    """Email through an SMTP relay; unsubscribe headers, DKIM and bounces are described in
    [email.md](email.md)."""

    provider: Literal["smtp", "log"] = Field(description='`"smtp"` or `"log"`')
    host: str | None = Field(
        default=None,
        description="SMTP server",
        json_schema_extra={**_PROVIDER_ONLY, "required_for": ["smtp"]},
    )
    port: Port = Field(
        default=587,
        description="1..65535",
        json_schema_extra={
            **_PROVIDER_ONLY,
            "default_doc": "`587`, or `465` with `use_tls = true`",
        },
    )
    starttls: bool = Field(
        default=True,
        description="upgrade the connection with STARTTLS",
        json_schema_extra={
            **_PROVIDER_ONLY,
            "default_doc": "`true`, or `false` with `use_tls = true`",
        },
    )
    use_tls: bool = Field(
        default=False,
        description="implicit TLS from the first byte; `use_tls` and `starttls` may not both "
        "be `true`",
        json_schema_extra=_PROVIDER_ONLY,
    )
    username: str | None = Field(
        default=None, description="SMTP login; needs `password`", json_schema_extra=_PROVIDER_ONLY
    )
    password: str | None = Field(
        default=None, description="needs `username`", json_schema_extra=_PROVIDER_ONLY
    )
    from_address: MailAddress = Field(
        default="consentgate <noreply@localhost>",
        description="`Name <addr@domain>` or `addr@domain`; must contain an address with `@`; "
        "no line breaks",
        json_schema_extra={
            "required_for": ["smtp"],
            "default_doc": 'required for smtp; `"consentgate <noreply@localhost>"` for log',
        },
    )
    rate_per_second: Rate = Field(default=20.0, description="> 0")
    max_connections: Annotated[int, _between(1)] = Field(
        default=4,
        description=">= 1; concurrent SMTP connections",
        json_schema_extra=_PROVIDER_ONLY,
    )
    dkim_selector: str | None = Field(
        default=None,
        description="the three `dkim_*` keys are all set or all left out. Messages are then "
        "DKIM-signed, covering `List-Unsubscribe` and `List-Unsubscribe-Post`.",
        json_schema_extra=_PROVIDER_ONLY,
    )
    dkim_domain: str | None = Field(
        default=None, description="the signing domain (`d=`)", json_schema_extra=_PROVIDER_ONLY
    )
    dkim_private_key_file: str | None = Field(
        default=None, description="path to the PEM private key", json_schema_extra=_PROVIDER_ONLY
    )
    consent_text: str | None = Field(
        default=None,
        description="what a person agrees to when joining by email; not set: the campaign's "
        "`consent_text`",
    )
    inbound: InboundEmailSettings | None = Field(
        default=None, description="see `[campaigns.email.inbound]`"
    )

    @classmethod
    def _derive(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Implicit TLS implies no STARTTLS and, unless told otherwise, the submissions port.
        if data.get("use_tls") is True:
            data = {"port": 465, "starttls": False, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> EmailSettings:
        if self.use_tls and self.starttls:
            raise _Refusal("use_tls and starttls cannot both be true", "use_tls")
        if self.username is not None and self.password is None:
            raise _Refusal("required when username is set", "password")
        if self.password is not None and self.username is None:
            raise _Refusal("required when password is set", "username")
        dkim = {
            k: getattr(self, k) for k in ("dkim_selector", "dkim_domain", "dkim_private_key_file")
        }
        if any(v is not None for v in dkim.values()):
            for k, v in dkim.items():
                if v is None:
                    raise _Refusal("required when any dkim_* key is set", k)
        return self


class TelegramSettings(_Table):
    """A Telegram bot; creating it and its webhook are described in [telegram.md](telegram.md)."""

    provider: Literal["telegram", "log"] = Field(description='`"telegram"` or `"log"`')
    bot_token: str | None = Field(
        default=None,
        description="from @BotFather",
        json_schema_extra={**_PROVIDER_ONLY, "required_for": ["telegram"]},
    )
    api_base_url: Url = Field(
        default="https://api.telegram.org/bot",
        description="python-telegram-bot's `base_url`: the token is appended, or replaces "
        "`{token}` if present. Used exactly as written.",
        json_schema_extra=_PROVIDER_ONLY,
    )
    webhook_secret: Annotated[str | None, _if_set(_webhook_secret)] = Field(
        default=None,
        description="1-256 characters of `A-Z a-z 0-9 _ -`; Telegram echoes it in "
        "`X-Telegram-Bot-Api-Secret-Token` and any other value gets 403",
        json_schema_extra={
            **_PROVIDER_ONLY,
            "required_for": ["telegram"],
            "default_doc": "required for telegram (unless `polling = true`)",
        },
    )
    own_chats: Array[int] = Field(
        default=(),
        description="ids of the campaign's own groups and channels (e.g. `-1001234567890`); "
        "posting to any other group or channel is refused with `destination_not_allowed`",
    )
    rate_per_second: Rate = Field(default=25.0, description="> 0; Telegram allows about 30 per bot")
    bot_username: Annotated[str | None, _if_set(_telegram_username)] = Field(
        default=None,
        description="the bot's username, for `t.me/<bot>?start=...` links; a leading `@` is "
        "removed; 5-32 characters of letters, digits and `_`",
    )
    polling: bool = Field(
        default=False,
        description="`true`: `consentgate serve` fetches updates with getUpdates instead of "
        "receiving the webhook (no public URL needed; run it in one process only); "
        "`webhook_secret` is then optional. See [telegram.md](telegram.md)",
    )
    consent_text: str | None = Field(
        default=None,
        description="what a person agrees to when starting the bot; not set: the campaign's "
        "`consent_text`",
    )

    @classmethod
    def _optional(cls, data: dict[str, Any]) -> frozenset[str]:
        # Polling needs no webhook, so no secret; a webhook always does. A polling value that
        # is not a boolean is reported as itself, not as a missing secret.
        polling = data.get("polling", False)
        return frozenset() if polling is False else frozenset({"webhook_secret"})


class CampaignSettings(_Table):
    """Each `[[campaigns]]` block is one campaign. Its channel sections follow it:
    `[campaigns.sms]`, `[campaigns.email]`, `[campaigns.telegram]`. A channel whose section is
    left out is not configured for that campaign: messages on it are refused with
    `channel_disabled`. A file with no campaigns is valid.

    Each channel section has a required `provider`. `log` writes each message to the log
    instead of sending it: no account is needed. With `log`, the keys marked † are optional,
    are not checked, and are ignored (the settings keep their defaults); keys not listed are
    still refused, and `${NAME}` references in them must still be set."""

    slug: Annotated[Text, AfterValidator(_slug)] = Field(
        description="`[a-z0-9-]+`, unique in the file; used in webhook paths "
        "(`/webhooks/twilio/{slug}/sms`)"
    )
    name: Text = Field(description="not empty; shown on join pages and in HELP replies")
    imprint: Text = Field(
        description="not empty; the election imprint, added to every message footer and page"
    )
    consent_text: Text = Field(
        description="not empty; the text a person agrees to on the join page; a channel's own "
        "`consent_text` replaces it for that channel"
    )
    controller: str | None = Field(
        default=None,
        description="who is responsible for the personal data (the data controller), e.g. "
        '`"Jane Doe for President, 1 Example Road, London"`; shown with the consent text',
    )
    privacy_notice_url: Url | None = Field(
        default=None, description="the privacy notice, linked wherever consent is asked for"
    )
    default_region: Annotated[str, BeforeValidator(_upper), AfterValidator(_phone_region)] = Field(
        default="GB",
        description="a region code known to `phonenumbers` (ISO 3166 alpha-2; "
        "case-insensitive, stored upper-case); used for phone numbers written without "
        "`+country`",
    )
    operators: Annotated[Array[OperatorSettings], AfterValidator(_one_or_more)] = Field(
        default=(),
        validate_default=True,
        description="at least one; see `operators` below",
        json_schema_extra={"default_doc": "**required**"},
    )
    sms: SmsSettings | None = Field(default=None, description="see `[campaigns.sms]`")
    email: EmailSettings | None = Field(default=None, description="see `[campaigns.email]`")
    telegram: TelegramSettings | None = Field(
        default=None, description="see `[campaigns.telegram]`"
    )
    join_keywords: Annotated[
        tuple[tuple[str, str], ...], BeforeValidator(_join_keywords), _Doc("table of strings")
    ] = Field(
        default=(),
        description='`{ HALL = "link-id", doorstep = "other-link-id" }` maps an SMS keyword to '
        "the id of a join link (`POST /api/v1/links`). Keywords are compared upper-case and "
        "must be one word of letters and digits, must not repeat (after upper-casing), and "
        "must not be a word the inbound SMS handling already owns: "
        + ", ".join(f"`{w}`" for w in sorted(RESERVED_SMS_KEYWORDS))
        + ". The link id must be a non-empty string.",
        json_schema_extra={"default_doc": "`{}`"},
    )

    def channels(self) -> tuple[str, ...]:
        return tuple(c for c in CHANNELS if getattr(self, c) is not None)

    def consent_text_for(self, channel: str) -> str:
        """The consent text shown for ``channel``: the channel's own, else the campaign's."""
        section = getattr(self, channel, None) if channel in CHANNELS else None
        own: str | None = getattr(section, "consent_text", None)
        return own if own is not None else self.consent_text


class Settings(_Table):
    """The whole file."""

    server: ServerSettings = Field(default=ServerSettings(), description="see `[server]`")
    storage: StorageSettings = Field(default=StorageSettings(), description="see `[storage]`")
    dispatch: DispatchSettings = Field(default=DispatchSettings(), description="see `[dispatch]`")
    security: SecuritySettings = Field(description="see `[security]`")
    policy: PolicySettings = Field(default=PolicySettings(), description="see `[policy]`")
    campaigns: Array[CampaignSettings] = Field(default=(), description="see `[[campaigns]]`")

    @classmethod
    def _derive(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "security" not in data:
            raise _Refusal("required key is missing", "security", "secret_key")
        _check_unique_across_campaigns(data.get("campaigns"))
        return data

    def campaign(self, slug: str) -> CampaignSettings | None:
        for c in self.campaigns:
            if c.slug == slug:
                return c
        return None


def _check_unique_across_campaigns(campaigns: object) -> None:
    """Slugs and operator tokens are unique in the whole file.

    Checked on the file as read, before each campaign is, so a second campaign copied from the
    first is reported at its repeated slug rather than at whatever else it lacks.
    """
    if not isinstance(campaigns, list):
        return
    slugs: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for i, campaign in enumerate(campaigns):
        if not isinstance(campaign, dict):
            continue
        slug = campaign.get("slug")
        if isinstance(slug, str) and slug.strip():
            if slug in slugs:
                raise _Refusal(
                    f"{_show(slug)} is already used by {slugs[slug]}", "campaigns", i, "slug"
                )
            slugs[slug] = f"campaigns[{i}]"
        operators = campaign.get("operators")
        for j, operator in enumerate(operators if isinstance(operators, list) else []):
            token = operator.get("token") if isinstance(operator, dict) else None
            if isinstance(token, str) and token.strip():
                where = f"campaigns[{i}].operators[{j}].token"
                if token in tokens:
                    # A token identifies exactly one operator of one campaign. Named by
                    # position: the token itself is a secret.
                    raise _Refusal(
                        f"same token as {tokens[token]}", "campaigns", i, "operators", j, "token"
                    )
                tokens[token] = where


# --------------------------------------------------------------------------------------------
# Reading a file
#
# Error keys are dotted paths from the top of the file. Campaigns are named by their position in
# the file (``campaigns[1].email.host``), never by slug: the slug may itself be the broken value,
# and the position is what a reader counts in the file. List items are indexed the same way
# (``campaigns[0].operators[2].token``, ``policy.denied_sources[1]``).
# --------------------------------------------------------------------------------------------


def _join(path: str, name: str | int) -> str:
    """``path.name`` or ``path[i]``, quoting a name that is not a bare TOML key."""
    if isinstance(name, int):
        return f"{path}[{name}]"
    if not _BARE_KEY_RE.fullmatch(name):
        name = _show(name)
    return f"{path}.{name}" if path else name


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return "a date/time"


def _expand(value: object, path: str, environ: Mapping[str, str]) -> object:
    """Replace every ``${NAME}`` in every string of a parsed TOML tree, keeping the shape."""
    if isinstance(value, str):
        return _expand_string(value, path, environ)
    if isinstance(value, dict):
        return {k: _expand(v, _join(path, k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, _join(path, i), environ) for i, v in enumerate(value)]
    return value


def _expand_string(text: str, path: str, environ: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        body = match.group("body")
        if match.group("close") is None:
            raise ConfigError(path, "unclosed ${ (write $${ for a literal ${)")
        if not _ENV_NAME_RE.fullmatch(body):
            raise ConfigError(path, f"${{{body}}} is not a valid environment variable reference")
        if body not in environ:
            raise ConfigError(path, f"environment variable {body} is not set")
        return environ[body]

    return _ENV_REF_RE.sub(replace, text)


# What pydantic's error types mean in the words of a TOML file. The value itself is never
# shown, only its TOML type: it may be a secret written under the wrong key.
_EXPECTED = {
    "model_type": "expected a table",
    "dict_type": "expected a table",
    "model_attributes_type": "expected a table",
    "tuple_type": "expected an array",
    "list_type": "expected an array",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
}


def _config_error(exc: ValidationError) -> ConfigError:
    """The first problem pydantic found, as a one-line :class:`ConfigError`."""
    error = exc.errors(include_url=False)[0]
    loc: list[str | int] = list(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    refusal = ctx.get("error")
    if isinstance(refusal, _Refusal):
        loc.extend(refusal.below)
        message = refusal.message
    elif kind == "missing":
        message = "required key is missing"
    elif kind in _EXPECTED:
        message = f"{_EXPECTED[kind]}, got {_type_name(error['input'])}"
    elif kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        message = "must be one of " + ", ".join(f'"{a}"' for a in allowed)
    else:  # pydantic's own words; its messages name limits, never the value
        message = error["msg"]
    key = ""
    for part in loc:
        key = _join(key, part)
    return ConfigError(key or "config", message)


def parse_config(
    text: str,
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> Settings:
    """Parse and validate TOML text into :class:`Settings`.

    ``${NAME}`` anywhere in a string value is replaced by the environment variable ``NAME``
    (from ``environ``, default :data:`os.environ`); ``$${`` stands for a literal ``${``. Every
    reference must be set, even in keys that the chosen provider ignores.

    A relative SQLite path in ``storage.url`` is made absolute against ``base_dir`` when it is
    given; otherwise it is kept as written, and so follows the current directory.

    Raises :class:`ConfigError` on the first problem found. Its ``key`` is ``"config"`` for
    malformed TOML, otherwise the dotted path of the key, with campaigns and list items named
    by their position in the file: ``campaigns[1].email.host``,
    ``campaigns[0].operators[2].token``.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"malformed TOML: {exc}") from None
    context = {"base_dir": None if base_dir is None else Path(base_dir).resolve()}
    try:
        return Settings.model_validate(_expand(document, "", env), context=context)
    except ValidationError as exc:
        raise _config_error(exc) from None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read a UTF-8 TOML file and :func:`parse_config` it, relative SQLite paths taken from the
    file's folder; an unreadable file is a :class:`ConfigError` with key ``"config"``."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as exc:
        shown, reason = _show(os.fspath(path)), exc.strerror or str(exc)
        raise ConfigError("config", f"cannot read {shown}: {reason}") from None
    except UnicodeDecodeError as exc:
        shown = _show(os.fspath(path))
        raise ConfigError("config", f"{shown} is not UTF-8 text ({exc.reason})") from None
    return parse_config(text, environ, base_dir=Path(path).resolve().parent)


# --------------------------------------------------------------------------------------------
# The reference: docs/configuration.md rendered from the models above.
# --------------------------------------------------------------------------------------------

_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _inner_types(annotation: object) -> tuple[object, ...]:
    """The types inside ``X | None`` and ``Annotated[X, ...]``."""
    if typing.get_origin(annotation) is Annotated:
        return _inner_types(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(
            t for a in typing.get_args(annotation) if a is not type(None) for t in _inner_types(a)
        )
    return (annotation,)


def _doc_type(annotation: object, metadata: list[Any]) -> str:
    """The type column: a ``_Doc`` mark if there is one, else read from the annotation."""
    for item in metadata:
        if isinstance(item, _Doc):
            return item.type
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *marks = typing.get_args(annotation)
        return _doc_type(inner, marks)
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        (inner, *_) = (a for a in typing.get_args(annotation) if a is not type(None))
        return _doc_type(inner, [])
    if origin is Literal:
        return "string"
    if origin is tuple:
        name = _doc_type(typing.get_args(annotation)[0], [])
        return "array of " + ("tables" if name == "table" else f"{name}s")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    if isinstance(annotation, type) and annotation in _SCALARS:
        return _SCALARS[annotation]
    return "string"


def _doc_default(field: FieldInfo) -> str:
    meta = _meta(field)
    if "default_doc" in meta:
        return str(meta["default_doc"])
    required_for = meta.get("required_for")
    if required_for:
        return "required for " + " or ".join(required_for)
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, str):
        return f"`{_show(value)}`"
    if value == ():
        return "`[]`"
    return f"`{value}`"


def _table_section(title: str, level: int, model: type[_Table]) -> list[str]:
    lines = [f"{'#' * level} {title}", ""]
    doc = inspect.cleandoc(model.__doc__ or "")
    if doc:
        lines += [doc, ""]
    lines += ["| key | type | default | rule |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        mark = " †" if _meta(field).get("provider_only") else ""
        doc_type = _doc_type(field.annotation, list(field.metadata))
        rule = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}`{mark} | {doc_type} | {_doc_default(field)} | {rule} |")
    return [*lines, ""]


def _sections(model: type[_Table], path: str, level: int) -> list[str]:
    """Every table below ``model``, depth first, each after the table that holds it."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        for inner in _inner_types(field.annotation):
            array = typing.get_origin(inner) is tuple
            target = typing.get_args(inner)[0] if array else inner
            target = _inner_types(target)[0]
            if not (isinstance(target, type) and issubclass(target, _Table)):
                continue
            dotted = f"{path}.{name}" if path else name
            if array and level > 2:
                title = f"`{name}`"  # an array of inline tables inside a table
            elif array:
                title = f"`[[{dotted}]]` (zero or more)"
            else:
                state = "required" if field.is_required() else "optional"
                title = f"`[{dotted}]` ({state})"
            lines += _table_section(title, level, target)
            lines += _sections(target, dotted, level + 1)
    return lines


def render_reference() -> str:
    """docs/configuration.md: the prose below around a table per model, from the models."""
    body = "\n".join(_sections(Settings, "", 2)).rstrip("\n")
    return f"{_REFERENCE_HEAD.strip()}\n\n{body}\n\n{_REFERENCE_TAIL.strip()}\n"


_REFERENCE_HEAD = r"""
# Configuration reference

<!-- Generated from the settings models in bot/config.py; do not edit by hand. Regenerate with
     python -m consentgate.bot.config --markdown > docs/configuration.md
     (a test fails while this file differs from what the models say). -->

consentgate reads one TOML file, given with `--config FILE` to `consentgate serve`,
`consentgate worker` and the other commands. [`config.example.toml`](../config.example.toml) at
the top of the repository runs as is: SQLite next to the file and the `log` providers, which
write each message to the log instead of sending it.

This page is generated from the settings models in `bot/config.py`, where each key is declared
once; to change it, change the models and run
`python -m consentgate.bot.config --markdown > docs/configuration.md`.

## Bad configuration stops start-up

The whole file is read and checked before anything starts. If anything is wrong (a key that
is not listed below, a missing required key, a value of the wrong type or out of range, a bad
URL, malformed TOML, an unset environment variable, an unreadable file), the command prints
one line naming the key and exits with **status 2**. It never starts half-configured.

```text
server.prot: unknown key (did you mean "port"?)
security.secret_key: must be at least 32 characters (got 12)
campaigns[0].sms.auth_token: environment variable TWILIO_AUTH_TOKEN is not set
campaigns[1].email.host: required key is missing
config: malformed TOML: Expected '=' after a key in a key/value pair (at line 3, column 5)
```

Keys are dotted paths. Campaigns and other list items are named by their position in the file,
counting from 0: `campaigns[1]` is the second `[[campaigns]]` block,
`campaigns[0].operators[2].token` the third operator's token of the first. `config` stands for
the file itself (unreadable, not UTF-8, not valid TOML).

Values are never repeated in error messages, except where the value is plainly not a secret
(a slug, a phone number, a time zone): a secret written under the wrong key stays out of the
logs. Tokens, passwords, password hashes, the secret key and the database URL never appear.

## Environment variables: `${NAME}`

Any string value may contain `${NAME}`, replaced by the environment variable `NAME`:

```toml
secret_key = "${CONSENTGATE_SECRET_KEY}"
url = "postgresql+asyncpg://consentgate:${DB_PASSWORD}@db.internal/consentgate"
```

- `NAME` is letters, digits and `_`, not starting with a digit.
- An unset variable stops start-up (exit 2), naming the key. This holds for every string in
  the file, including keys that a `log` provider ignores. A variable set to the empty string
  is used as the empty string (see "Empty strings" below).
- Write `$${` for a literal `${`. A `${` without a closing `}` is an error.
- The substituted text is not expanded again.
- Only string values are expanded: `port = "${PORT}"` is a string where an integer is
  required, so it is refused.

## Types and general rules

- Every table refuses keys not listed here, at any depth, and suggests the nearest listed one.
- *integer* means a TOML integer (not `8080.0`, not `"8080"`, not `true`). *number* means an
  integer or a float; it must be finite.
- *URL* means an `http://` or `https://` URL with a host.
- **Empty strings**: an optional string key set to `""` (or only spaces) counts as not set.
  A required string key must not be empty.
- Sections marked *optional* may be left out entirely; their keys then take the defaults.
- A relative SQLite path in `storage.url` is relative to the configuration file's folder.
"""

_REFERENCE_TAIL = r"""
## A production example

```toml
[server]
host = "0.0.0.0"
port = 8080
public_url = "https://gateway.example.org"

[storage]
url = "postgresql+asyncpg://consentgate:${DB_PASSWORD}@db.internal/consentgate"

[security]
secret_key = "${CONSENTGATE_SECRET_KEY}"

[policy]
denied_sources = ["union mailing list", "society group chat"]
quiet_hours = "21:00-08:00"
timezone = "Europe/London"

[[campaigns]]
slug = "jane-2026"
name = "Jane Doe for President"
imprint = "Promoted by Jane Doe, 1 Example Road, London"
consent_text = "Yes, send me updates about Jane's campaign. Reply STOP at any time."
controller = "Jane Doe for President, 1 Example Road, London"
privacy_notice_url = "https://janedoe.example.org/privacy"

[[campaigns.operators]]
name = "Jane Doe"
token = "${JANE_TOKEN}"
role = "organiser"
password_hash = "${JANE_PASSWORD_HASH}"

[[campaigns.operators]]
name = "Returning Officer"
token = "${RO_TOKEN}"
role = "auditor"

[campaigns.sms]
provider = "twilio"
account_sid = "${TWILIO_ACCOUNT_SID}"
auth_token = "${TWILIO_AUTH_TOKEN}"
messaging_service_sid = "${TWILIO_MESSAGING_SERVICE_SID}"
rate_per_second = 3
consent_text = "Yes, text me updates about Jane's campaign. Reply STOP at any time."

[campaigns.email]
provider = "smtp"
host = "smtp.example.org"
port = 465
use_tls = true
username = "jane"
password = "${SMTP_PASSWORD}"
from_address = "Jane Doe <jane@example.org>"
dkim_selector = "cg1"
dkim_domain = "example.org"
dkim_private_key_file = "/etc/consentgate/dkim.pem"
consent_text = "Yes, email me updates about Jane's campaign. Unsubscribe at any time."

[campaigns.email.inbound]
host = "0.0.0.0"
port = 25
domain = "reply.example.org"

[campaigns.telegram]
provider = "telegram"
bot_token = "${TELEGRAM_BOT_TOKEN}"
webhook_secret = "${TELEGRAM_WEBHOOK_SECRET}"
own_chats = [-1001234567890]
bot_username = "JaneDoeCampaignBot"
```
"""


def _main(argv: list[str], write: Callable[[str], object]) -> int:
    if argv != ["--markdown"]:
        write("usage: python -m consentgate.bot.config --markdown > docs/configuration.md\n")
        return 2
    write(render_reference())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:], sys.stdout.write))
