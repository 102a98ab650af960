"""TOML configuration -> frozen, validated settings.

Start-up must never run half-configured: every problem is a :class:`ConfigError` naming the
key, which the CLI prints on one line before exiting with status 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CampaignSettings",
    "ConfigError",
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

    def campaign(self, slug: str) -> CampaignSettings | None:
        for c in self.campaigns:
            if c.slug == slug:
                return c
        return None
