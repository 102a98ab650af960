"""TOML configuration -> frozen, validated settings.

Start-up must never run half-configured: every problem is a :class:`ConfigError` naming the
key, which the CLI prints on one line before exiting with status 2.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parseaddr
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

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
]


class ConfigError(Exception):
    """A configuration problem; ``key`` is the dotted path of the offending key
    (``campaigns[0].sms.auth_token``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"  # no trailing slash
    max_body_bytes: int = 1_048_576  # requests above this get 413
    max_import_bytes: int = 64 * 1_048_576  # CSV import bodies


@dataclass(frozen=True)
class StorageSettings:
    url: str = "sqlite+aiosqlite:///consentgate.db"
    pool_size: int = 10  # connections kept per process (as many again may open under load)


@dataclass(frozen=True)
class DispatchSettings:
    # How long a claimed or in-flight message stays reserved to its process. Keep it above
    # the provider call timeout: a lease that expires mid-call turns the message `interrupted`.
    lease_seconds: float = 60.0
    # Provider calls one process keeps open at once. Enough for rate x provider latency;
    # more only makes every turn of the event loop (a STOP's too) longer.
    max_in_flight: int = 64


@dataclass(frozen=True)
class SecuritySettings:
    secret_key: str  # >= 32 characters


@dataclass(frozen=True)
class PolicySettings:
    denied_sources: tuple[str, ...] = ()
    quiet_hours: tuple[str, str] | None = None  # ("21:00", "08:00"), validated HH:MM
    timezone: str = "Europe/London"  # validated with zoneinfo
    retention_days: int = 365


@dataclass(frozen=True)
class OperatorSettings:
    name: str
    token: str
    role: str  # "organiser" | "auditor"  (also accept "volunteer": may send, as organiser)
    password_hash: str | None = None  # argon2id; needed to sign in to the console


@dataclass(frozen=True)
class SmsSettings:
    provider: str  # "twilio" | "log"
    account_sid: str | None = None
    auth_token: str | None = None
    from_number: str | None = None
    messaging_service_sid: str | None = None
    api_base_url: str = "https://api.twilio.com"
    rate_per_second: float = 10.0
    opt_out_instruction: str = "Reply STOP to opt out"


@dataclass(frozen=True)
class InboundEmailSettings:
    host: str = "127.0.0.1"
    port: int = 2525
    domain: str = ""  # e.g. "reply.example.org": unsubscribe+TOKEN@, bounce+TOKEN@


@dataclass(frozen=True)
class EmailSettings:
    provider: str  # "smtp" | "log"
    host: str | None = None
    port: int = 587
    starttls: bool = True
    use_tls: bool = False
    username: str | None = None
    password: str | None = None
    from_address: str = "consentgate <noreply@localhost>"
    rate_per_second: float = 20.0
    max_connections: int = 4
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key_file: str | None = None
    inbound: InboundEmailSettings | None = None


@dataclass(frozen=True)
class TelegramSettings:
    provider: str  # "telegram" | "log"
    bot_token: str | None = None
    api_base_url: str = "https://api.telegram.org/bot"
    webhook_secret: str | None = None
    own_chats: tuple[int, ...] = ()
    rate_per_second: float = 25.0
    bot_username: str | None = None
    polling: bool = False  # getUpdates instead of a webhook (no public URL needed)


@dataclass(frozen=True)
class CampaignSettings:
    slug: str
    name: str
    imprint: str
    consent_text: str
    default_region: str = "GB"
    operators: tuple[OperatorSettings, ...] = ()
    sms: SmsSettings | None = None
    email: EmailSettings | None = None
    telegram: TelegramSettings | None = None
    join_keywords: tuple[tuple[str, str], ...] = ()  # (keyword, link id) e.g. ("HALL", "...")

    def channels(self) -> tuple[str, ...]:
        return tuple(c for c in ("sms", "email", "telegram") if getattr(self, c) is not None)


@dataclass(frozen=True)
class Settings:
    security: SecuritySettings
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    campaigns: tuple[CampaignSettings, ...] = ()
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)

    def campaign(self, slug: str) -> CampaignSettings | None:
        for c in self.campaigns:
            if c.slug == slug:
                return c
        return None


# --------------------------------------------------------------------------------------------
# Parsing
#
# Error keys are dotted paths from the top of the file. Campaigns are named by their position in
# the file (``campaigns[1].email.host``), never by slug: the slug may itself be the broken value,
# and the position is what a reader counts in the file. List items are indexed the same way
# (``campaigns[0].operators[2].token``, ``policy.denied_sources[1]``).
# --------------------------------------------------------------------------------------------

_SERVER_KEYS = ("host", "port", "public_url", "max_body_bytes", "max_import_bytes")
_STORAGE_KEYS = ("url", "pool_size")
_DISPATCH_KEYS = ("lease_seconds", "max_in_flight")
_SECURITY_KEYS = ("secret_key",)
_POLICY_KEYS = ("denied_sources", "quiet_hours", "timezone", "retention_days")
_CAMPAIGN_KEYS = (
    "slug",
    "name",
    "imprint",
    "consent_text",
    "default_region",
    "operators",
    "sms",
    "email",
    "telegram",
    "join_keywords",
)
_OPERATOR_KEYS = ("name", "token", "role", "password_hash")
_SMS_KEYS = (
    "provider",
    "account_sid",
    "auth_token",
    "from_number",
    "messaging_service_sid",
    "api_base_url",
    "rate_per_second",
    "opt_out_instruction",
)
_EMAIL_KEYS = (
    "provider",
    "host",
    "port",
    "starttls",
    "use_tls",
    "username",
    "password",
    "from_address",
    "rate_per_second",
    "max_connections",
    "dkim_selector",
    "dkim_domain",
    "dkim_private_key_file",
    "inbound",
)
_INBOUND_KEYS = ("host", "port", "domain")
_TELEGRAM_KEYS = (
    "provider",
    "bot_token",
    "api_base_url",
    "webhook_secret",
    "own_chats",
    "rate_per_second",
    "bot_username",
    "polling",
)

SMS_PROVIDERS = ("twilio", "log")
EMAIL_PROVIDERS = ("smtp", "log")
TELEGRAM_PROVIDERS = ("telegram", "log")
OPERATOR_ROLES = ("organiser", "auditor", "volunteer")
STORAGE_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")
MIN_SECRET_KEY_CHARS = 32
MIN_OPERATOR_TOKEN_CHARS = 16

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


def _show(value: str) -> str:
    """A value quoted for an error message, escaped so the message stays on one line."""
    return json.dumps(value, ensure_ascii=False)


def _join(path: str, name: str) -> str:
    """``path.name``, quoting a name that is not a bare TOML key (``keywords."two words"``)."""
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
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def _expand(value: object, path: str, environ: Mapping[str, str]) -> object:
    """Replace every ``${NAME}`` in every string of a parsed TOML tree, keeping the shape."""
    if isinstance(value, str):
        return _expand_string(value, path, environ)
    if isinstance(value, dict):
        return {k: _expand(v, _join(path, k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", environ) for i, v in enumerate(value)]
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


class _Table:
    """One TOML table being read: typed getters that name the offending key on failure.

    Unknown keys are refused as soon as the table is opened, so a misspelt key is reported
    rather than silently replaced by its default.
    """

    def __init__(self, data: object, path: str, allowed: Sequence[str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {_type_name(data)}")
        for name in data:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise ConfigError(_join(path, name), f"unknown key{hint}")
        self.data: dict[str, object] = data
        self.path = path

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def has(self, name: str) -> bool:
        return name in self.data

    def _required(self, name: str) -> object:
        if name not in self.data:
            raise ConfigError(self.key(name), "required key is missing")
        return self.data[name]

    def _check_str(self, name: str, value: object) -> str:
        if not isinstance(value, str):
            raise ConfigError(self.key(name), f"expected a string, got {_type_name(value)}")
        return value

    def req_str(self, name: str) -> str:
        """A string that must be present and not blank."""
        value = self._check_str(name, self._required(name))
        if not value.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return value

    def opt_str(self, name: str) -> str | None:
        """A string that may be absent; a blank value counts as absent."""
        if name not in self.data:
            return None
        value = self._check_str(name, self.data[name])
        return value if value.strip() else None

    def str_or(self, name: str, default: str) -> str:
        value = self.opt_str(name)
        return default if value is None else value

    def int_or(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        if name not in self.data:
            return default
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"expected an integer, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f"..{maximum}" if maximum is not None else " or more"
            raise ConfigError(self.key(name), f"must be {minimum}{upper}, got {value}")
        return value

    def port_or(self, name: str, default: int) -> int:
        return self.int_or(name, default, minimum=1, maximum=65535)

    def positive_number_or(self, name: str, default: float) -> float:
        if name not in self.data:
            return default
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"expected a number, got {_type_name(value)}")
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(self.key(name), f"must be a number greater than 0, got {value}")
        return float(value)

    def opt_bool(self, name: str) -> bool | None:
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {_type_name(value)}")
        return value

    def opt_list(self, name: str) -> list[object] | None:
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"expected an array, got {_type_name(value)}")
        return value

    def choice(self, name: str, choices: Sequence[str]) -> str:
        value = self.req_str(name)
        if value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            raise ConfigError(self.key(name), f"must be one of {allowed}, got {_show(value)}")
        return value

    def http_url_or(self, name: str, default: str, *, strip_slash: bool) -> str:
        value = self.opt_str(name)
        if value is None:
            return default
        _check_http_url(self.key(name), value)
        return value.rstrip("/") if strip_slash else value


def _check_http_url(key: str, value: str) -> None:
    if any(ch.isspace() for ch in value):
        raise ConfigError(key, "must be an http:// or https:// URL without spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(key, f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "must be an http:// or https:// URL with a host")


def _parse_server(raw: object) -> ServerSettings:
    t = _Table(raw, "server", _SERVER_KEYS)
    d = ServerSettings()
    public_url = t.str_or("public_url", d.public_url)
    _check_http_url(t.key("public_url"), public_url)
    parts = urlsplit(public_url)
    if parts.query or parts.fragment:
        raise ConfigError(t.key("public_url"), "must not have a query or fragment")
    return ServerSettings(
        host=t.str_or("host", d.host),
        port=t.port_or("port", d.port),
        public_url=public_url.rstrip("/"),
        max_body_bytes=t.int_or("max_body_bytes", d.max_body_bytes, minimum=1),
        max_import_bytes=t.int_or("max_import_bytes", d.max_import_bytes, minimum=1),
    )


def _parse_storage(raw: object) -> StorageSettings:
    t = _Table(raw, "storage", _STORAGE_KEYS)
    url = t.str_or("url", StorageSettings().url)
    # The URL may carry a database password: never echo it back.
    if not any(url.startswith(s) and len(url) > len(s) for s in STORAGE_SCHEMES):
        raise ConfigError(
            t.key("url"), "must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    return StorageSettings(url=url, pool_size=t.int_or("pool_size", StorageSettings().pool_size,
                                                       minimum=1, maximum=1000))


def _parse_dispatch(raw: object) -> DispatchSettings:
    t = _Table(raw, "dispatch", _DISPATCH_KEYS)
    lease = t.positive_number_or("lease_seconds", DispatchSettings().lease_seconds)
    if lease < 1:
        raise ConfigError(t.key("lease_seconds"), "must be at least 1 (seconds)")
    return DispatchSettings(lease_seconds=lease, max_in_flight=t.int_or(
        "max_in_flight", DispatchSettings().max_in_flight, minimum=1, maximum=10000))


def _parse_security(raw: object) -> SecuritySettings:
    t = _Table(raw, "security", _SECURITY_KEYS)
    secret = t.req_str("secret_key")
    if len(secret) < MIN_SECRET_KEY_CHARS:
        raise ConfigError(
            t.key("secret_key"),
            f"must be at least {MIN_SECRET_KEY_CHARS} characters (got {len(secret)})",
        )
    return SecuritySettings(secret_key=secret)


def _parse_quiet_hours(key: str, value: str) -> tuple[str, str]:
    match = _QUIET_HOURS_RE.fullmatch(value)
    if match is None:
        raise ConfigError(key, f'must be "HH:MM-HH:MM", got {_show(value)}')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ConfigError(key, f"is not a valid time range: {_show(value)}")
    start, end = f"{h1:02d}:{m1:02d}", f"{h2:02d}:{m2:02d}"
    if start == end:
        raise ConfigError(key, "start and end must differ")
    return (start, end)


def _parse_policy(raw: object) -> PolicySettings:
    t = _Table(raw, "policy", _POLICY_KEYS)
    d = PolicySettings()
    denied: list[str] = []
    for i, item in enumerate(t.opt_list("denied_sources") or []):
        key = f"{t.key('denied_sources')}[{i}]"
        if not isinstance(item, str):
            raise ConfigError(key, f"expected a string, got {_type_name(item)}")
        if not item.strip():
            # An empty pattern is contained in every source and would refuse all consent.
            raise ConfigError(key, "must not be empty")
        denied.append(item)
    quiet = t.opt_str("quiet_hours")
    timezone = t.str_or("timezone", d.timezone)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(t.key("timezone"), f"unknown time zone {_show(timezone)}") from None
    return PolicySettings(
        denied_sources=tuple(denied),
        quiet_hours=None if quiet is None else _parse_quiet_hours(t.key("quiet_hours"), quiet),
        timezone=timezone,
        retention_days=t.int_or("retention_days", d.retention_days, minimum=1),
    )


def _parse_operators(t: _Table, tokens: dict[str, str]) -> tuple[OperatorSettings, ...]:
    items = t.opt_list("operators")
    if not items:
        raise ConfigError(t.key("operators"), "at least one operator is required")
    operators = []
    for i, item in enumerate(items):
        op = _Table(item, f"{t.key('operators')}[{i}]", _OPERATOR_KEYS)
        name = op.req_str("name")
        token = op.req_str("token")
        if len(token) < MIN_OPERATOR_TOKEN_CHARS:
            raise ConfigError(
                op.key("token"),
                f"must be at least {MIN_OPERATOR_TOKEN_CHARS} characters (got {len(token)})",
            )
        if token in tokens:
            # A token identifies exactly one operator of one campaign.
            raise ConfigError(op.key("token"), f"same token as {tokens[token]}")
        tokens[token] = op.key("token")
        operators.append(
            OperatorSettings(name=name, token=token, role=op.choice("role", OPERATOR_ROLES),
                             password_hash=op.opt_str("password_hash"))
        )
    return tuple(operators)


def _parse_sms(raw: object, path: str) -> SmsSettings:
    t = _Table(raw, path, _SMS_KEYS)
    d = SmsSettings(provider="log")
    provider = t.choice("provider", SMS_PROVIDERS)
    rate = t.positive_number_or("rate_per_second", d.rate_per_second)
    instruction = t.str_or("opt_out_instruction", d.opt_out_instruction)
    if provider == "log":
        return SmsSettings(provider=provider, rate_per_second=rate, opt_out_instruction=instruction)
    from_number = t.opt_str("from_number")
    service_sid = t.opt_str("messaging_service_sid")
    if (from_number is None) == (service_sid is None):
        raise ConfigError(
            t.key("from_number"), "set exactly one of from_number or messaging_service_sid"
        )
    if from_number is not None:
        from_number = _parse_e164(t.key("from_number"), from_number)
    return SmsSettings(
        provider=provider,
        account_sid=t.req_str("account_sid"),
        auth_token=t.req_str("auth_token"),
        from_number=from_number,
        messaging_service_sid=service_sid,
        api_base_url=t.http_url_or("api_base_url", d.api_base_url, strip_slash=True),
        rate_per_second=rate,
        opt_out_instruction=instruction,
    )


def _parse_e164(key: str, value: str) -> str:
    # "Possible" rather than "valid": numbers reserved for tests and drama (+44 7700 900xxx)
    # are not assigned, yet providers' test credentials and sandboxes use them.
    message = f'must be an E.164 number such as "+447700900000", got {_show(value)}'
    if not _E164_RE.fullmatch(value):
        raise ConfigError(key, message)
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ConfigError(key, message) from None
    if not phonenumbers.is_possible_number(number):
        raise ConfigError(key, message)
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _check_mail_address(key: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ConfigError(key, "must not contain line breaks")
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ConfigError(key, 'must be an email address such as "Name <name@example.org>"')


def _parse_inbound(raw: object, path: str) -> InboundEmailSettings:
    t = _Table(raw, path, _INBOUND_KEYS)
    d = InboundEmailSettings()
    domain = t.req_str("domain")
    if "@" in domain or any(ch.isspace() for ch in domain):
        raise ConfigError(t.key("domain"), 'must be a domain name such as "reply.example.org"')
    return InboundEmailSettings(
        host=t.str_or("host", d.host), port=t.port_or("port", d.port), domain=domain
    )


def _parse_email(raw: object, path: str) -> EmailSettings:
    t = _Table(raw, path, _EMAIL_KEYS)
    d = EmailSettings(provider="log")
    provider = t.choice("provider", EMAIL_PROVIDERS)
    if provider == "smtp":
        from_address = t.req_str("from_address")
    else:
        from_address = t.str_or("from_address", d.from_address)
    _check_mail_address(t.key("from_address"), from_address)
    inbound = None
    if t.has("inbound"):
        inbound = _parse_inbound(t.data["inbound"], t.key("inbound"))
    rate = t.positive_number_or("rate_per_second", d.rate_per_second)
    if provider == "log":
        return EmailSettings(
            provider=provider, from_address=from_address, rate_per_second=rate, inbound=inbound
        )
    use_tls = t.opt_bool("use_tls")
    starttls = t.opt_bool("starttls")
    if use_tls and starttls:
        raise ConfigError(t.key("use_tls"), "use_tls and starttls cannot both be true")
    use_tls = bool(use_tls)
    # Implicit TLS implies no STARTTLS and, unless told otherwise, the submissions port.
    starttls = (not use_tls) if starttls is None else starttls
    username = t.opt_str("username")
    password = t.opt_str("password")
    if username is not None and password is None:
        raise ConfigError(t.key("password"), "required when username is set")
    if password is not None and username is None:
        raise ConfigError(t.key("username"), "required when password is set")
    dkim_keys = ("dkim_selector", "dkim_domain", "dkim_private_key_file")
    dkim = {k: t.opt_str(k) for k in dkim_keys}
    if any(v is not None for v in dkim.values()):
        for k in dkim_keys:
            if dkim[k] is None:
                raise ConfigError(t.key(k), "required when any dkim_* key is set")
    return EmailSettings(
        provider=provider,
        host=t.req_str("host"),
        port=t.port_or("port", 465 if use_tls else d.port),
        starttls=starttls,
        use_tls=use_tls,
        username=username,
        password=password,
        from_address=from_address,
        rate_per_second=rate,
        max_connections=t.int_or("max_connections", d.max_connections, minimum=1),
        dkim_selector=dkim["dkim_selector"],
        dkim_domain=dkim["dkim_domain"],
        dkim_private_key_file=dkim["dkim_private_key_file"],
        inbound=inbound,
    )


def _parse_telegram(raw: object, path: str) -> TelegramSettings:
    t = _Table(raw, path, _TELEGRAM_KEYS)
    d = TelegramSettings(provider="log")
    provider = t.choice("provider", TELEGRAM_PROVIDERS)
    own_chats: list[int] = []
    for i, item in enumerate(t.opt_list("own_chats") or []):
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(
                f"{t.key('own_chats')}[{i}]", f"expected an integer chat id, got {_type_name(item)}"
            )
        own_chats.append(item)
    bot_username = t.opt_str("bot_username")
    if bot_username is not None:
        bot_username = bot_username.removeprefix("@")
        if not _TELEGRAM_USERNAME_RE.fullmatch(bot_username):
            raise ConfigError(
                t.key("bot_username"), f"is not a Telegram username: {_show(bot_username)}"
            )
    rate = t.positive_number_or("rate_per_second", d.rate_per_second)
    polling = bool(t.opt_bool("polling"))
    if provider == "log":
        return TelegramSettings(
            provider=provider,
            own_chats=tuple(own_chats),
            rate_per_second=rate,
            bot_username=bot_username,
        )
    # Polling needs no webhook, so no secret; a webhook always does.
    secret = t.opt_str("webhook_secret") if polling else t.req_str("webhook_secret")
    if secret is not None and not _WEBHOOK_SECRET_RE.fullmatch(secret):
        raise ConfigError(t.key("webhook_secret"), "must be 1-256 characters of A-Z a-z 0-9 _ -")
    return TelegramSettings(
        provider=provider,
        bot_token=t.req_str("bot_token"),
        # Kept verbatim: python-telegram-bot appends the token, or fills in "{token}".
        api_base_url=t.http_url_or("api_base_url", d.api_base_url, strip_slash=False),
        webhook_secret=secret,
        own_chats=tuple(own_chats),
        rate_per_second=rate,
        bot_username=bot_username,
        polling=polling,
    )


def _parse_join_keywords(raw: object, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a table, got {_type_name(raw)}")
    seen: set[str] = set()
    keywords = []
    for word, link_id in raw.items():
        key = _join(path, word)
        keyword = word.strip().upper()
        if not _KEYWORD_RE.fullmatch(keyword):
            raise ConfigError(key, "a keyword is one word of letters and digits")
        if keyword in RESERVED_SMS_KEYWORDS:
            raise ConfigError(key, f"{keyword} is reserved for opt-out, opt-in and help")
        if keyword in seen:
            raise ConfigError(key, f"keyword {keyword} is listed twice")
        if not isinstance(link_id, str):
            raise ConfigError(key, f"expected a link id string, got {_type_name(link_id)}")
        if not link_id.strip():
            raise ConfigError(key, "must not be empty")
        seen.add(keyword)
        keywords.append((keyword, link_id))
    return tuple(keywords)


def _parse_campaign(
    raw: object, path: str, slugs: dict[str, str], tokens: dict[str, str]
) -> CampaignSettings:
    t = _Table(raw, path, _CAMPAIGN_KEYS)
    slug = t.req_str("slug")
    if not _SLUG_RE.fullmatch(slug):
        raise ConfigError(t.key("slug"), f"must match [a-z0-9-]+, got {_show(slug)}")
    if slug in slugs:
        raise ConfigError(t.key("slug"), f"{_show(slug)} is already used by {slugs[slug]}")
    slugs[slug] = path
    region = t.str_or("default_region", "GB").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(t.key("default_region"), f"unknown phone number region {_show(region)}")
    return CampaignSettings(
        slug=slug,
        name=t.req_str("name"),
        imprint=t.req_str("imprint"),
        consent_text=t.req_str("consent_text"),
        default_region=region,
        operators=_parse_operators(t, tokens),
        sms=_parse_sms(t.data["sms"], t.key("sms")) if t.has("sms") else None,
        email=_parse_email(t.data["email"], t.key("email")) if t.has("email") else None,
        telegram=(
            _parse_telegram(t.data["telegram"], t.key("telegram")) if t.has("telegram") else None
        ),
        join_keywords=(
            _parse_join_keywords(t.data["join_keywords"], t.key("join_keywords"))
            if t.has("join_keywords")
            else ()
        ),
    )


def parse_config(text: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate TOML text into :class:`Settings`.

    ``${NAME}`` anywhere in a string value is replaced by the environment variable ``NAME``
    (from ``environ``, default :data:`os.environ`); ``$${`` stands for a literal ``${``. Every
    reference must be set, even in keys that the chosen provider ignores.

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
    root = _Table(
        _expand(document, "", env), "", ("server", "storage", "security", "policy", "campaigns",
                                "dispatch")
    )
    server = _parse_server(root.data.get("server", {}))
    storage = _parse_storage(root.data.get("storage", {}))
    if not root.has("security"):
        raise ConfigError("security.secret_key", "required key is missing")
    security = _parse_security(root.data["security"])
    policy = _parse_policy(root.data.get("policy", {}))
    dispatch = _parse_dispatch(root.data.get("dispatch", {}))
    slugs: dict[str, str] = {}
    tokens: dict[str, str] = {}
    campaigns = tuple(
        _parse_campaign(item, f"campaigns[{i}]", slugs, tokens)
        for i, item in enumerate(root.opt_list("campaigns") or [])
    )
    return Settings(
        security=security, server=server, storage=storage, policy=policy, campaigns=campaigns,
        dispatch=dispatch,
    )


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read a UTF-8 TOML file and :func:`parse_config` it; an unreadable file is a
    :class:`ConfigError` with key ``"config"``."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as exc:
        shown, reason = _show(os.fspath(path)), exc.strerror or str(exc)
        raise ConfigError("config", f"cannot read {shown}: {reason}") from None
    except UnicodeDecodeError as exc:
        shown = _show(os.fspath(path))
        raise ConfigError("config", f"{shown} is not UTF-8 text ({exc.reason})") from None
    return parse_config(text, environ)
