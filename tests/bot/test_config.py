"""bot.config: TOML -> validated settings; every bad config names the key at fault."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from pydantic import BaseModel, ValidationError

from consentgate.bot.config import (
    CampaignSettings,
    ConfigError,
    DispatchSettings,
    EmailSettings,
    InboundEmailSettings,
    OperatorSettings,
    PolicySettings,
    SecuritySettings,
    ServerSettings,
    Settings,
    SmsSettings,
    StorageSettings,
    TelegramSettings,
    load_config,
    parse_config,
    render_reference,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "k" * 40
# argon2id of "demo-password-change-me", as config.example.toml carries it.
DEMO_PASSWORD = "demo-password-change-me"
DEMO_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$ZrSLiaVqHE58wlKaqMXL4Q$nm9GHpBLIkl86CzoVdHvN2jnuFk10gKYV4HCSgq7EZI"
)

# The contract's full example, verbatim.
CONTRACT_EXAMPLE = """
[server]
host = "127.0.0.1"
port = 8080
public_url = "http://127.0.0.1:8080"   # how providers and people reach this server; webhook
                                        # signatures are checked against it, links are built on it
[storage]
url = "sqlite+aiosqlite:///consentgate.db"   # or postgresql+asyncpg://user@host/db

[security]
secret_key = "${CONSENTGATE_SECRET_KEY}"     # at least 32 characters; signs every link token

[policy]                                     # all optional
denied_sources = ["union mailing list", "society group chat"]  # consent whose source contains one
                                             # of these (case-insensitive) is refused
quiet_hours = "21:00-08:00"                  # campaign messages wait outside this window
timezone = "Europe/London"
retention_days = 365                         # see Data rights

[[campaigns]]
slug = "jane-2026"                           # [a-z0-9-]+, unique
name = "Jane Doe for President"
imprint = "Promoted by Jane Doe, 1 Example Road, London"
consent_text = "Yes, send me updates about Jane's campaign. Reply STOP at any time."
default_region = "GB"                        # for phone numbers written without +country
operators = [
  { name = "Jane Doe", token = "${JANE_TOKEN}", role = "organiser" },
  { name = "Returning Officer", token = "${RO_TOKEN}", role = "auditor" },
]

[campaigns.sms]
provider = "twilio"                          # or "log"
account_sid = "AC..."
auth_token = "${TWILIO_AUTH_TOKEN}"
from_number = "+447700900000"                # or messaging_service_sid = "MG..."
api_base_url = "https://api.twilio.com"      # optional; a test double or regional edge
rate_per_second = 10                         # optional; pace sends at what the sender really
                                             # delivers, so nothing waits in the provider's
                                             # queue beyond the reach of a later STOP

[campaigns.email]
provider = "smtp"                            # or "log"
host = "smtp.example.org"
port = 587
starttls = true
username = "jane"
password = "${SMTP_PASSWORD}"
from_address = "Jane Doe <jane@example.org>"
rate_per_second = 20                         # optional

[campaigns.telegram]
provider = "telegram"                        # or "log"
bot_token = "${TELEGRAM_BOT_TOKEN}"
api_base_url = "https://api.telegram.org/bot"  # optional; python-telegram-bot's base_url
webhook_secret = "${TELEGRAM_WEBHOOK_SECRET}"
own_chats = [-1001234567890]                 # the campaign's own groups/channels; posting to
                                             # any other group or channel is refused
rate_per_second = 25                         # optional; Telegram allows about 30 per bot
"""

CONTRACT_ENV = {
    "CONSENTGATE_SECRET_KEY": "s3cret-" * 6,
    "JANE_TOKEN": "jane-token-0123456789",
    "RO_TOKEN": "ro-token-0123456789abc",
    "TWILIO_AUTH_TOKEN": "twilio-auth-token",
    "SMTP_PASSWORD": "smtp-password",
    "TELEGRAM_BOT_TOKEN": "123456:ABC-DEF",
    "TELEGRAM_WEBHOOK_SECRET": "hook_secret-1",
}


# A valid config as {section: {key: TOML literal}}, rendered to text. Tests change one key
# ("campaigns[0].sms.from_number": '"x"'), remove one (None) or remove a whole section.
def _base() -> dict[str, dict[str, str]]:
    return {
        "": {},
        "server": {
            "host": '"127.0.0.1"',
            "port": "8080",
            "public_url": '"https://gateway.example.org/"',
        },
        "storage": {"url": '"sqlite+aiosqlite:///test.db"'},
        "security": {"secret_key": f'"{SECRET}"'},
        "policy": {"quiet_hours": '"21:00-08:00"', "timezone": '"Europe/London"'},
        "campaigns[0]": {
            "slug": '"jane-2026"',
            "name": '"Jane Doe for President"',
            "imprint": '"Promoted by Jane Doe, 1 Example Road, London"',
            "consent_text": '"Yes, send me updates. Reply STOP at any time."',
            "default_region": '"GB"',
            "operators": '[{ name = "Jane", token = "organiser-token-0001", role = "organiser" }]',
            "join_keywords": '{ hall = "link-hall" }',
        },
        "campaigns[0].sms": {
            "provider": '"twilio"',
            "account_sid": '"AC0123"',
            "auth_token": '"twilio-token"',
            "from_number": '"+447700900000"',
        },
        "campaigns[0].email": {
            "provider": '"smtp"',
            "host": '"smtp.example.org"',
            "from_address": '"Jane <jane@example.org>"',
        },
        "campaigns[0].telegram": {
            "provider": '"telegram"',
            "bot_token": '"123:ABC"',
            "webhook_secret": '"secret_1"',
            "own_chats": "[-1001]",
        },
    }


def _render(sections: dict[str, dict[str, str]]) -> str:
    lines: list[str] = []
    for section, keys in sections.items():
        if section.startswith("campaigns["):
            _, _, sub = section.partition("].")
            lines.append(f"[campaigns.{sub}]" if sub else "[[campaigns]]")
        elif section:
            lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in keys.items())
        lines.append("")
    return "\n".join(lines)


def make(overrides: dict[str, str | None] | None = None) -> str:
    sections = _base()
    for dotted, literal in (overrides or {}).items():
        if dotted in sections:
            assert literal is None
            del sections[dotted]
            continue
        section, _, key = dotted.rpartition(".")
        if literal is None:
            del sections[section][key]
        else:
            sections.setdefault(section, {})[key] = literal
    return _render(sections)


def error_of(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {} if environ is None else environ)
    return caught.value


# --- valid configs -------------------------------------------------------------------------


def test_example_config_runs_with_no_environment_variables() -> None:
    settings = load_config(REPO / "config.example.toml", environ={})
    # The relative SQLite file lies next to the config file, wherever the command runs.
    assert settings.storage.url == f"sqlite+aiosqlite:///{REPO / 'consentgate.db'}"
    assert len(settings.security.secret_key) >= 32
    (campaign,) = settings.campaigns
    assert campaign.slug == "jane-2026"
    assert campaign.name == "Jane Doe for President"
    assert campaign.imprint == "Promoted by Jane Doe, 1 Example Road, London"
    assert campaign.channels() == ("sms", "email", "telegram")
    assert {c.provider for c in (campaign.sms, campaign.email, campaign.telegram) if c} == {"log"}
    assert [(o.token, o.role) for o in campaign.operators] == [
        ("demo-organiser-token-change-me", "organiser"),
        ("demo-auditor-token-change-me", "auditor"),
    ]


def test_contract_example_parses_to_expected_settings() -> None:
    settings = parse_config(CONTRACT_EXAMPLE, CONTRACT_ENV)
    assert settings == Settings(
        security=SecuritySettings(secret_key=CONTRACT_ENV["CONSENTGATE_SECRET_KEY"]),
        server=ServerSettings(host="127.0.0.1", port=8080, public_url="http://127.0.0.1:8080"),
        storage=StorageSettings(url="sqlite+aiosqlite:///consentgate.db"),
        policy=PolicySettings(
            denied_sources=("union mailing list", "society group chat"),
            quiet_hours=("21:00", "08:00"),
            timezone="Europe/London",
            retention_days=365,
        ),
        campaigns=(
            CampaignSettings(
                slug="jane-2026",
                name="Jane Doe for President",
                imprint="Promoted by Jane Doe, 1 Example Road, London",
                consent_text=(
                    "Yes, send me updates about Jane's campaign. Reply STOP at any time."
                ),
                default_region="GB",
                operators=(
                    OperatorSettings(
                        name="Jane Doe", token=CONTRACT_ENV["JANE_TOKEN"], role="organiser"
                    ),
                    OperatorSettings(
                        name="Returning Officer", token=CONTRACT_ENV["RO_TOKEN"], role="auditor"
                    ),
                ),
                sms=SmsSettings(
                    provider="twilio",
                    account_sid="AC...",
                    auth_token="twilio-auth-token",
                    from_number="+447700900000",
                    api_base_url="https://api.twilio.com",
                    rate_per_second=10.0,
                ),
                email=EmailSettings(
                    provider="smtp",
                    host="smtp.example.org",
                    port=587,
                    starttls=True,
                    use_tls=False,
                    username="jane",
                    password="smtp-password",
                    from_address="Jane Doe <jane@example.org>",
                    rate_per_second=20.0,
                ),
                telegram=TelegramSettings(
                    provider="telegram",
                    bot_token="123456:ABC-DEF",
                    api_base_url="https://api.telegram.org/bot",
                    webhook_secret="hook_secret-1",
                    own_chats=(-1001234567890,),
                    rate_per_second=25.0,
                ),
            ),
        ),
    )


def test_only_the_secret_is_required_and_everything_else_has_defaults() -> None:
    settings = parse_config(f'[security]\nsecret_key = "{SECRET}"\n', {})
    assert settings == Settings(security=SecuritySettings(secret_key=SECRET))
    assert settings.campaigns == ()


def test_an_empty_campaign_list_is_allowed() -> None:
    text = f'campaigns = []\n[security]\nsecret_key = "{SECRET}"\n'
    assert parse_config(text, {}).campaigns == ()


def test_values_are_normalised() -> None:
    settings = parse_config(
        make(
            {
                "policy.quiet_hours": '"9:30 - 7:05"',
                "campaigns[0].default_region": '"ie"',
                "campaigns[0].sms.api_base_url": '"http://127.0.0.1:9000/"',
                "campaigns[0].telegram.bot_username": '"@JaneDoeBot"',
                "campaigns[0].telegram.api_base_url": '"http://127.0.0.1:9001/bot{token}/"',
            }
        ),
        {},
    )
    campaign = settings.campaigns[0]
    assert settings.server.public_url == "https://gateway.example.org"  # trailing slash gone
    assert settings.policy.quiet_hours == ("09:30", "07:05")
    assert campaign.default_region == "IE"
    assert campaign.join_keywords == (("HALL", "link-hall"),)
    assert campaign.sms is not None and campaign.sms.api_base_url == "http://127.0.0.1:9000"
    assert campaign.telegram is not None
    assert campaign.telegram.bot_username == "JaneDoeBot"
    # The Telegram base URL is handed to python-telegram-bot exactly as written.
    assert campaign.telegram.api_base_url == "http://127.0.0.1:9001/bot{token}/"


def test_messaging_service_can_replace_the_from_number() -> None:
    text = make(
        {
            "campaigns[0].sms.from_number": None,
            "campaigns[0].sms.messaging_service_sid": '"MG0123"',
        }
    )
    sms = parse_config(text, {}).campaigns[0].sms
    assert sms is not None
    assert (sms.from_number, sms.messaging_service_sid) == (None, "MG0123")


def test_implicit_tls_turns_off_starttls_and_defaults_to_port_465() -> None:
    email = parse_config(make({"campaigns[0].email.use_tls": "true"}), {}).campaigns[0].email
    assert email is not None
    assert (email.use_tls, email.starttls, email.port) == (True, False, 465)


def test_full_email_section_with_dkim_and_inbound() -> None:
    text = make(
        {
            "campaigns[0].email.port": "2525",
            "campaigns[0].email.starttls": "false",
            "campaigns[0].email.max_connections": "2",
            "campaigns[0].email.rate_per_second": "2.5",
            "campaigns[0].email.dkim_selector": '"s1"',
            "campaigns[0].email.dkim_domain": '"example.org"',
            "campaigns[0].email.dkim_private_key_file": '"/etc/consentgate/dkim.pem"',
            "campaigns[0].email.inbound.domain": '"reply.example.org"',
            "campaigns[0].email.inbound.port": "2526",
        }
    )
    email = parse_config(text, {}).campaigns[0].email
    assert email is not None
    assert (email.port, email.starttls, email.max_connections) == (2525, False, 2)
    assert email.rate_per_second == 2.5
    assert (email.dkim_selector, email.dkim_domain) == ("s1", "example.org")
    assert email.inbound == InboundEmailSettings(
        host="127.0.0.1", port=2526, domain="reply.example.org"
    )


def test_log_providers_ignore_provider_keys_but_still_refuse_unknown_ones() -> None:
    text = make(
        {
            "campaigns[0].sms.provider": '"log"',
            "campaigns[0].sms.from_number": '"not a number"',
            "campaigns[0].email.provider": '"log"',
            "campaigns[0].email.host": "42",
            "campaigns[0].email.use_tls": "true",
            "campaigns[0].email.starttls": "true",
            "campaigns[0].telegram.provider": '"log"',
            "campaigns[0].telegram.webhook_secret": '"not valid!"',
        }
    )
    campaign = parse_config(text, {}).campaigns[0]
    assert campaign.sms == SmsSettings(provider="log")
    assert campaign.email == EmailSettings(provider="log", from_address="Jane <jane@example.org>")
    assert campaign.telegram == TelegramSettings(provider="log", own_chats=(-1001,))

    bad = make({"campaigns[0].sms.provider": '"log"', "campaigns[0].sms.from_nubmer": '"x"'})
    assert error_of(bad).key == "campaigns[0].sms.from_nubmer"


def test_a_channel_left_out_is_not_configured() -> None:
    campaign = parse_config(make({"campaigns[0].telegram": None}), {}).campaigns[0]
    assert campaign.telegram is None
    assert campaign.channels() == ("sms", "email")


# --- ${NAME} -------------------------------------------------------------------------------


def test_whole_and_embedded_references_are_expanded() -> None:
    text = make(
        {
            "storage.url": '"postgresql+asyncpg://${DB_USER}@db/${DB_NAME}"',
            "campaigns[0].sms.auth_token": '"${TWILIO_AUTH_TOKEN}"',
        }
    )
    env = {"DB_USER": "gate", "DB_NAME": "consent", "TWILIO_AUTH_TOKEN": "tok"}
    settings = parse_config(text, env)
    assert settings.storage.url == "postgresql+asyncpg://gate@db/consent"
    assert settings.campaigns[0].sms is not None
    assert settings.campaigns[0].sms.auth_token == "tok"


def test_expansion_reaches_into_lists_and_inline_tables() -> None:
    text = make(
        {
            "policy.denied_sources": '["${SOURCE}"]',
            "campaigns[0].operators": '[{ name = "Jane", token = "${TOK}", role = "organiser" }]',
        }
    )
    settings = parse_config(text, {"SOURCE": "society list", "TOK": "t" * 20})
    assert settings.policy.denied_sources == ("society list",)
    assert settings.campaigns[0].operators[0].token == "t" * 20


def test_dollar_dollar_brace_is_a_literal_and_values_are_not_expanded_twice() -> None:
    text = make(
        {
            "campaigns[0].email.username": '"u"',
            "campaigns[0].email.password": '"p$${NOT_A_VAR}-${PW}"',
        }
    )
    email = parse_config(text, {"PW": "${OTHER}"}).campaigns[0].email
    assert email is not None and email.password == "p${NOT_A_VAR}-${OTHER}"


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CG_TEST_SECRET", SECRET)
    settings = parse_config('[security]\nsecret_key = "${CG_TEST_SECRET}"\n')
    assert settings.security.secret_key == SECRET


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        (
            {"campaigns[0].sms.auth_token": '"${TWILIO_AUTH_TOKEN}"'},
            "campaigns[0].sms.auth_token",
            "environment variable TWILIO_AUTH_TOKEN is not set",
        ),
        (
            {"security.secret_key": '"prefix-${CONSENTGATE_SECRET_KEY}"'},
            "security.secret_key",
            "CONSENTGATE_SECRET_KEY is not set",
        ),
        (
            {"campaigns[0].operators": '[{ name = "J", token = "${T}", role = "organiser" }]'},
            "campaigns[0].operators[0].token",
            "T is not set",
        ),
        ({"policy.denied_sources": '["a", "${X}"]'}, "policy.denied_sources[1]", "X is not set"),
        ({"server.host": '"${1BAD}"'}, "server.host", "not a valid environment variable"),
        ({"server.host": '"${UNCLOSED"'}, "server.host", "unclosed"),
    ],
)
def test_bad_references_name_the_key(
    overrides: dict[str, str | None], key: str, fragment: str
) -> None:
    err = error_of(make(overrides))
    assert err.key == key
    assert fragment in err.message
    assert str(err) == f"{key}: {err.message}"


def test_an_unset_reference_fails_even_under_a_log_provider() -> None:
    text = make({"campaigns[0].sms.provider": '"log"', "campaigns[0].sms.auth_token": '"${T}"'})
    assert error_of(text).key == "campaigns[0].sms.auth_token"


# --- failures name the key -----------------------------------------------------------------

FAILURES: list[tuple[str, dict[str, str | None], str, str]] = [
    # unknown keys
    ("unknown root key", {"prot": "1"}, "prot", "unknown key"),
    ("unknown server key", {"server.prot": "8080"}, "server.prot", 'did you mean "port"'),
    ("unknown policy key", {"policy.quiet": '"x"'}, "policy.quiet", "unknown key"),
    ("unknown campaign key", {"campaigns[0].colour": '"red"'}, "campaigns[0].colour", "unknown"),
    (
        "unknown sms key",
        {"campaigns[0].sms.from_nubmer": '"+447700900000"'},
        "campaigns[0].sms.from_nubmer",
        "unknown key",
    ),
    (
        "unknown operator key",
        {"campaigns[0].operators": '[{ name = "J", token = "t0123456789abcdef", role = '
         '"organiser", email = "x" }]'},
        "campaigns[0].operators[0].email",
        "unknown key",
    ),
    (
        "unknown inbound key",
        {"campaigns[0].email.inbound.domain": '"r.example.org"',
         "campaigns[0].email.inbound.tls": "true"},
        "campaigns[0].email.inbound.tls",
        "unknown key",
    ),
    # security
    ("secret missing", {"security.secret_key": None}, "security.secret_key", "missing"),
    ("security section missing", {"security": None}, "security.secret_key", "missing"),
    ("secret too short", {"security.secret_key": '"short"'}, "security.secret_key", "32"),
    ("secret not a string", {"security.secret_key": "12"}, "security.secret_key", "string"),
    # server
    ("port zero", {"server.port": "0"}, "server.port", "1..65535"),
    ("port too high", {"server.port": "65536"}, "server.port", "1..65535"),
    ("port a string", {"server.port": '"8080"'}, "server.port", "expected an integer"),
    ("port a boolean", {"server.port": "true"}, "server.port", "expected an integer"),
    ("public_url ftp", {"server.public_url": '"ftp://x.org"'}, "server.public_url", "http"),
    ("public_url no host", {"server.public_url": '"https://"'}, "server.public_url", "host"),
    ("public_url no scheme", {"server.public_url": '"example.org"'}, "server.public_url", "http"),
    ("public_url query", {"server.public_url": '"http://x.org/?a=1"'}, "server.public_url",
     "query"),
    ("public_url bad port", {"server.public_url": '"http://x:99999"'}, "server.public_url", "URL"),
    ("body limit", {"server.max_body_bytes": "0"}, "server.max_body_bytes", "1 or more"),
    # storage
    ("sync sqlite", {"storage.url": '"sqlite:///x.db"'}, "storage.url", "sqlite+aiosqlite://"),
    ("mysql", {"storage.url": '"mysql+aiomysql://u@h/db"'}, "storage.url", "postgresql+asyncpg"),
    # policy
    ("quiet words", {"policy.quiet_hours": '"9pm-8am"'}, "policy.quiet_hours", "HH:MM-HH:MM"),
    ("quiet hour 25", {"policy.quiet_hours": '"25:00-08:00"'}, "policy.quiet_hours", "valid"),
    ("quiet empty", {"policy.quiet_hours": '"21:00-21:00"'}, "policy.quiet_hours", "differ"),
    ("timezone", {"policy.timezone": '"Mars/Olympus"'}, "policy.timezone", "unknown time zone"),
    ("retention 0", {"policy.retention_days": "0"}, "policy.retention_days", "1 or more"),
    ("retention float", {"policy.retention_days": "1.5"}, "policy.retention_days", "integer"),
    ("denied not list", {"policy.denied_sources": '"x"'}, "policy.denied_sources", "array"),
    ("denied int", {"policy.denied_sources": '["a", 1]'}, "policy.denied_sources[1]", "string"),
    ("denied empty", {"policy.denied_sources": '[" "]'}, "policy.denied_sources[0]", "empty"),
    # campaign
    ("slug missing", {"campaigns[0].slug": None}, "campaigns[0].slug", "missing"),
    ("slug upper", {"campaigns[0].slug": '"Jane"'}, "campaigns[0].slug", "[a-z0-9-]+"),
    ("slug underscore", {"campaigns[0].slug": '"jane_2026"'}, "campaigns[0].slug", "[a-z0-9-]+"),
    ("name empty", {"campaigns[0].name": '"  "'}, "campaigns[0].name", "empty"),
    ("imprint missing", {"campaigns[0].imprint": None}, "campaigns[0].imprint", "missing"),
    ("consent missing", {"campaigns[0].consent_text": None}, "campaigns[0].consent_text", "miss"),
    ("region", {"campaigns[0].default_region": '"XX"'}, "campaigns[0].default_region", "region"),
    ("no operators key", {"campaigns[0].operators": None}, "campaigns[0].operators", "at least"),
    ("no operators", {"campaigns[0].operators": "[]"}, "campaigns[0].operators", "at least one"),
    ("operators table", {"campaigns[0].operators": '{ a = 1 }'}, "campaigns[0].operators", "array"),
    (
        "operator not a table",
        {"campaigns[0].operators": '["jane"]'},
        "campaigns[0].operators[0]",
        "expected a table",
    ),
    (
        "role",
        {"campaigns[0].operators": '[{ name = "J", token = "t0123456789abcdef", role = "admin" }]'},
        "campaigns[0].operators[0].role",
        '"organiser", "auditor", "volunteer"',
    ),
    (
        "short token",
        {"campaigns[0].operators": '[{ name = "J", token = "short", role = "organiser" }]'},
        "campaigns[0].operators[0].token",
        "16",
    ),
    (
        "operator name missing",
        {"campaigns[0].operators": '[{ token = "t0123456789abcdef", role = "organiser" }]'},
        "campaigns[0].operators[0].name",
        "missing",
    ),
    (
        "token reused in one campaign",
        {"campaigns[0].operators": '[{ name = "A", token = "t0123456789abcdef", role = '
         '"organiser" }, { name = "B", token = "t0123456789abcdef", role = "auditor" }]'},
        "campaigns[0].operators[1].token",
        "campaigns[0].operators[0].token",
    ),
    # join keywords
    ("keyword reserved", {"campaigns[0].join_keywords": '{ stop = "l" }'},
     "campaigns[0].join_keywords.stop", "reserved"),
    ("keyword two words", {"campaigns[0].join_keywords": '{ "two words" = "l" }'},
     'campaigns[0].join_keywords."two words"', "one word"),
    ("keyword twice", {"campaigns[0].join_keywords": '{ hall = "a", HALL = "b" }'},
     "campaigns[0].join_keywords.HALL", "twice"),
    ("keyword link id", {"campaigns[0].join_keywords": '{ hall = 3 }'},
     "campaigns[0].join_keywords.hall", "link id"),
    ("keywords not table", {"campaigns[0].join_keywords": '["hall"]'},
     "campaigns[0].join_keywords", "table"),
    # sms
    ("sms provider", {"campaigns[0].sms.provider": '"nexmo"'}, "campaigns[0].sms.provider",
     '"twilio", "log"'),
    ("sms provider missing", {"campaigns[0].sms.provider": None}, "campaigns[0].sms.provider",
     "missing"),
    ("twilio token", {"campaigns[0].sms.auth_token": None}, "campaigns[0].sms.auth_token",
     "missing"),
    ("twilio sid", {"campaigns[0].sms.account_sid": '""'}, "campaigns[0].sms.account_sid",
     "empty"),
    ("sender both", {"campaigns[0].sms.messaging_service_sid": '"MG1"'},
     "campaigns[0].sms.from_number", "exactly one"),
    ("sender neither", {"campaigns[0].sms.from_number": None}, "campaigns[0].sms.from_number",
     "exactly one"),
    ("from national", {"campaigns[0].sms.from_number": '"07700900000"'},
     "campaigns[0].sms.from_number", "E.164"),
    ("from too short", {"campaigns[0].sms.from_number": '"+4477"'},
     "campaigns[0].sms.from_number", "E.164"),
    ("from impossible", {"campaigns[0].sms.from_number": '"+4477009000001234"'},
     "campaigns[0].sms.from_number", "E.164"),
    ("twilio base url", {"campaigns[0].sms.api_base_url": '"api.twilio.com"'},
     "campaigns[0].sms.api_base_url", "http"),
    ("sms rate 0", {"campaigns[0].sms.rate_per_second": "0"},
     "campaigns[0].sms.rate_per_second", "greater than 0"),
    ("sms rate negative", {"campaigns[0].sms.rate_per_second": "-1.5"},
     "campaigns[0].sms.rate_per_second", "greater than 0"),
    ("sms rate nan", {"campaigns[0].sms.rate_per_second": "nan"},
     "campaigns[0].sms.rate_per_second", "greater than 0"),
    ("sms rate string", {"campaigns[0].sms.rate_per_second": '"fast"'},
     "campaigns[0].sms.rate_per_second", "number"),
    # email
    ("email provider", {"campaigns[0].email.provider": '"sendgrid"'},
     "campaigns[0].email.provider", '"smtp", "log"'),
    ("smtp host", {"campaigns[0].email.host": None}, "campaigns[0].email.host", "missing"),
    ("smtp port", {"campaigns[0].email.port": "0"}, "campaigns[0].email.port", "1..65535"),
    ("tls twice", {"campaigns[0].email.use_tls": "true", "campaigns[0].email.starttls": "true"},
     "campaigns[0].email.use_tls", "both"),
    ("starttls string", {"campaigns[0].email.starttls": '"yes"'}, "campaigns[0].email.starttls",
     "true or false"),
    ("user no password", {"campaigns[0].email.username": '"jane"'},
     "campaigns[0].email.password", "username"),
    ("password no user", {"campaigns[0].email.password": '"pw"'},
     "campaigns[0].email.username", "password"),
    ("from missing", {"campaigns[0].email.from_address": None},
     "campaigns[0].email.from_address", "missing"),
    ("from no at", {"campaigns[0].email.from_address": '"Jane Doe"'},
     "campaigns[0].email.from_address", "email address"),
    ("from header injection", {"campaigns[0].email.from_address": '"a@b.org\\r\\nBcc: x@y.org"'},
     "campaigns[0].email.from_address", "line breaks"),
    ("dkim partial", {"campaigns[0].email.dkim_selector": '"s1"'},
     "campaigns[0].email.dkim_domain", "dkim"),
    ("dkim partial 2", {"campaigns[0].email.dkim_selector": '"s1"',
                        "campaigns[0].email.dkim_domain": '"example.org"'},
     "campaigns[0].email.dkim_private_key_file", "dkim"),
    ("max connections", {"campaigns[0].email.max_connections": "0"},
     "campaigns[0].email.max_connections", "1 or more"),
    ("email rate", {"campaigns[0].email.rate_per_second": "0"},
     "campaigns[0].email.rate_per_second", "greater than 0"),
    ("inbound domain", {"campaigns[0].email.inbound.port": "25"},
     "campaigns[0].email.inbound.domain", "missing"),
    ("inbound domain @", {"campaigns[0].email.inbound.domain": '"a@b.org"'},
     "campaigns[0].email.inbound.domain", "domain name"),
    ("inbound port", {"campaigns[0].email.inbound.domain": '"r.example.org"',
                      "campaigns[0].email.inbound.port": "0"},
     "campaigns[0].email.inbound.port", "1..65535"),
    # telegram
    ("telegram provider", {"campaigns[0].telegram.provider": '"whatsapp"'},
     "campaigns[0].telegram.provider", '"telegram", "log"'),
    ("bot token", {"campaigns[0].telegram.bot_token": None}, "campaigns[0].telegram.bot_token",
     "missing"),
    ("webhook secret missing", {"campaigns[0].telegram.webhook_secret": None},
     "campaigns[0].telegram.webhook_secret", "missing"),
    ("webhook secret chars", {"campaigns[0].telegram.webhook_secret": '"not valid!"'},
     "campaigns[0].telegram.webhook_secret", "A-Z a-z 0-9 _ -"),
    ("webhook secret long", {"campaigns[0].telegram.webhook_secret": '"' + "a" * 257 + '"'},
     "campaigns[0].telegram.webhook_secret", "1-256"),
    ("own chats string", {"campaigns[0].telegram.own_chats": '["@janechat"]'},
     "campaigns[0].telegram.own_chats[0]", "integer"),
    ("own chats bool", {"campaigns[0].telegram.own_chats": "[1, true]"},
     "campaigns[0].telegram.own_chats[1]", "integer"),
    ("own chats not list", {"campaigns[0].telegram.own_chats": "-1001"},
     "campaigns[0].telegram.own_chats", "array"),
    ("telegram base url", {"campaigns[0].telegram.api_base_url": '"file:///tmp/x"'},
     "campaigns[0].telegram.api_base_url", "http"),
    ("telegram rate", {"campaigns[0].telegram.rate_per_second": "-1"},
     "campaigns[0].telegram.rate_per_second", "greater than 0"),
    ("bot username", {"campaigns[0].telegram.bot_username": '"no spaces allowed"'},
     "campaigns[0].telegram.bot_username", "Telegram username"),
    ("polling not a boolean", {"campaigns[0].telegram.webhook_secret": None,
                               "campaigns[0].telegram.polling": '"yes"'},
     "campaigns[0].telegram.polling", "true or false"),
    # contract version 2
    ("privacy notice not a URL", {"campaigns[0].privacy_notice_url": '"janedoe.example.org"'},
     "campaigns[0].privacy_notice_url", "http"),
    ("controller not a string", {"campaigns[0].controller": "1"},
     "campaigns[0].controller", "expected a string"),
    ("sms consent text not a string", {"campaigns[0].sms.consent_text": "true"},
     "campaigns[0].sms.consent_text", "expected a string"),
    ("telegram consent text typo", {"campaigns[0].telegram.consent_txt": '"x"'},
     "campaigns[0].telegram.consent_txt", 'did you mean "consent_text"'),
    (
        "password hash not argon2id",
        {"campaigns[0].operators": '[{ name = "J", token = "t0123456789abcdef", role = '
         '"organiser", password_hash = "$2b$12$abcdefghijklmnopqrstuv" }]'},
        "campaigns[0].operators[0].password_hash",
        "argon2id",
    ),
    (
        "password hash argon2i",
        {"campaigns[0].operators": '[{ name = "J", token = "t0123456789abcdef", role = '
         '"organiser", password_hash = "$argon2i$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA" }]'},
        "campaigns[0].operators[0].password_hash",
        "argon2id",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [pytest.param(o, k, f, id=name) for name, o, k, f in FAILURES],
)
def test_failure_names_the_key(overrides: dict[str, str | None], key: str, fragment: str) -> None:
    err = error_of(make(overrides))
    assert err.key == key
    assert fragment in err.message
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        pytest.param(
            f'server = "x"\n[security]\nsecret_key = "{SECRET}"\n', "server", "expected a table",
            id="server-not-a-table",
        ),
        pytest.param(
            f'campaigns = {{ slug = "x" }}\n[security]\nsecret_key = "{SECRET}"\n',
            "campaigns", "expected an array", id="campaigns-not-a-list",
        ),
        pytest.param(
            make({"campaigns[0].sms": None}).replace("[[campaigns]]", '[[campaigns]]\nsms = "x"'),
            "campaigns[0].sms", "expected a table", id="sms-not-a-table",
        ),
    ],
)  # fmt: skip
def test_wrong_shapes_name_the_key(text: str, key: str, fragment: str) -> None:
    err = error_of(text)
    assert err.key == key
    assert fragment in err.message


def test_second_campaign_errors_use_its_position() -> None:
    sections = _base()
    sections["campaigns[1]"] = dict(sections["campaigns[0]"])
    sections["campaigns[1]"]["operators"] = (
        '[{ name = "Bob", token = "second-campaign-token", role = "organiser" }]'
    )
    sections["campaigns[1].email"] = {"provider": '"smtp"', "from_address": '"b@example.org"'}
    assert error_of(_render(sections)).key == "campaigns[1].slug"  # same slug as campaigns[0]

    sections["campaigns[1]"]["slug"] = '"bob-2026"'
    err = error_of(_render(sections))
    assert (err.key, err.message) == ("campaigns[1].email.host", "required key is missing")


def test_operator_tokens_are_unique_across_campaigns() -> None:
    sections = _base()
    sections["campaigns[1]"] = dict(sections["campaigns[0]"])
    sections["campaigns[1]"]["slug"] = '"bob-2026"'
    err = error_of(_render(sections))
    assert err.key == "campaigns[1].operators[0].token"
    assert "campaigns[0].operators[0].token" in err.message
    assert "organiser-token-0001" not in str(err)  # secrets are never echoed


def test_storage_url_password_is_not_echoed() -> None:
    err = error_of(make({"storage.url": '"mysql://user:hunter2@db/x"'}))
    assert err.key == "storage.url"
    assert "hunter2" not in str(err)


# --- files and TOML syntax -----------------------------------------------------------------


def test_malformed_toml_reports_line_and_column() -> None:
    err = error_of(f'[security]\nsecret_key = "{SECRET}"\n[server\nport = 1\n')
    assert err.key == "config"
    assert "line 3" in err.message


def test_duplicate_toml_key_is_malformed() -> None:
    err = error_of(f'[security]\nsecret_key = "{SECRET}"\nsecret_key = "{SECRET}"\n')
    assert err.key == "config"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml", environ={})
    assert caught.value.key == "config"
    assert "nope.toml" in caught.value.message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})
    assert caught.value.key == "config"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[security]\nsecret_key = "caf\xe9-0123456789012345678901234567890"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.key == "config"
    assert "UTF-8" in caught.value.message


def test_load_config_reads_a_file_and_expands_from_environ(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(make({"security.secret_key": '"${SECRET}"'}), encoding="utf-8")
    settings = load_config(str(path), environ={"SECRET": SECRET})
    assert settings.security.secret_key == SECRET
    assert settings.campaigns[0].slug == "jane-2026"


class _AnyEnv(dict[str, str]):
    """An environment in which every variable is set, to parse documentation examples."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        if key.endswith("_HASH"):
            return DEMO_HASH
        return f"value-of-{key}-0123456789abcdef0123456789"


def test_the_production_example_in_the_docs_parses() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in doc.split("```toml\n")[1:]]
    full = [b for b in blocks if "[security]" in b]
    assert full, "docs/configuration.md has no complete example"
    for block in full:
        settings = parse_config(block, _AnyEnv())
        assert settings.campaigns[0].email is not None
        assert settings.campaigns[0].email.inbound is not None


def test_dispatch_settings_are_read_and_checked() -> None:
    base = f'[security]\nsecret_key = "{SECRET}"\n[dispatch]\n'
    settings = parse_config(base + "lease_seconds = 30\nmax_in_flight = 16\n", {})
    assert (settings.dispatch.lease_seconds, settings.dispatch.max_in_flight) == (30, 16)
    # serve dispatches, on a thread of its own, unless told otherwise
    assert (settings.dispatch.in_serve, settings.dispatch.own_thread) == (True, True)
    settings = parse_config(base + "in_serve = false\nown_thread = false\n", {})
    assert (settings.dispatch.in_serve, settings.dispatch.own_thread) == (False, False)
    err = error_of(base + "max_in_flight = 0\n")
    assert err.key == "dispatch.max_in_flight"


# --- contract version 2: privacy notice, controller, consent text per channel ----------------


def test_privacy_notice_controller_and_channel_consent_texts_are_read() -> None:
    text = make(
        {
            "campaigns[0].privacy_notice_url": '"https://janedoe.example.org/privacy"',
            "campaigns[0].controller": '"Jane Doe for President, 1 Example Road, London"',
            "campaigns[0].sms.consent_text": '"Text me. Reply STOP at any time."',
            "campaigns[0].telegram.consent_text": '"Message me here. Send /stop at any time."',
        }
    )
    campaign = parse_config(text, {}).campaigns[0]
    assert campaign.privacy_notice_url == "https://janedoe.example.org/privacy"
    assert campaign.controller == "Jane Doe for President, 1 Example Road, London"
    assert campaign.sms is not None and campaign.email is not None
    assert campaign.sms.consent_text == "Text me. Reply STOP at any time."
    assert campaign.email.consent_text is None
    assert campaign.consent_text_for("sms") == "Text me. Reply STOP at any time."
    assert campaign.consent_text_for("telegram") == "Message me here. Send /stop at any time."
    # A channel without its own text shows the campaign's.
    assert campaign.consent_text_for("email") == campaign.consent_text


def test_new_campaign_keys_are_optional_and_blank_means_not_set() -> None:
    campaign = parse_config(make(), {}).campaigns[0]
    assert (campaign.privacy_notice_url, campaign.controller) == (None, None)
    assert campaign.consent_text_for("sms") == campaign.consent_text
    blank = make({"campaigns[0].controller": '" "', "campaigns[0].sms.consent_text": '""'})
    campaign = parse_config(blank, {}).campaigns[0]
    assert campaign.controller is None
    assert campaign.consent_text_for("sms") == campaign.consent_text


def test_channel_consent_text_is_kept_under_the_log_provider() -> None:
    text = make({"campaigns[0].sms.provider": '"log"', "campaigns[0].sms.consent_text": '"Text"'})
    assert parse_config(text, {}).campaigns[0].consent_text_for("sms") == "Text"


# --- operators' console passwords ------------------------------------------------------------


def test_operator_password_hash_is_read_from_the_environment_and_verifies() -> None:
    hashed = PasswordHasher().hash("correct horse battery staple")
    text = make(
        {
            "campaigns[0].operators": '[{ name = "Jane", token = "organiser-token-0001", '
            'role = "organiser", password_hash = "${JANE_HASH}" }, { name = "RO", '
            'token = "auditor-token-00001", role = "auditor" }]'
        }
    )
    jane, ro = parse_config(text, {"JANE_HASH": hashed}).campaigns[0].operators
    assert jane.password_hash == hashed
    assert PasswordHasher().verify(jane.password_hash, "correct horse battery staple")
    assert ro.password_hash is None  # cannot sign in to the console


def test_a_bad_password_hash_is_never_echoed() -> None:
    leaked = "hunter2-typed-where-the-hash-goes"
    text = make(
        {
            "campaigns[0].operators": '[{ name = "J", token = "t0123456789abcdef", role = '
            f'"organiser", password_hash = "{leaked}" }}]'
        }
    )
    err = error_of(text)
    assert err.key == "campaigns[0].operators[0].password_hash"
    assert leaked not in str(err)


@pytest.mark.parametrize(
    ("overrides", "secret"),
    [
        pytest.param({"server.port": '"s3cret-in-the-wrong-place"'}, "s3cret-in-the-wrong-place",
                     id="wrong-type"),
        pytest.param({"campaigns[0].operators": '[{ name = "J", token = "t0123456789abcdef", '
                      'role = "s3cret-in-the-wrong-place" }]'}, "s3cret-in-the-wrong-place",
                     id="not-a-choice"),
        pytest.param({"campaigns[0].telegram.webhook_secret": '"s3cret in the wrong place"'},
                     "s3cret in the wrong place", id="bad-webhook-secret"),
        pytest.param({"security.secret_key": '"s3cret-too-short"'}, "s3cret-too-short",
                     id="short-secret-key"),
        pytest.param({"campaigns[0].sms.auth_token": "[\"s3cret-in-an-array\"]"},
                     "s3cret-in-an-array", id="array-for-a-string"),
    ],
)  # fmt: skip
def test_refused_values_are_not_repeated_in_the_error(
    overrides: dict[str, str | None], secret: str
) -> None:
    err = error_of(make(overrides))
    assert secret not in str(err)
    assert "Input should" not in err.message  # our words, not pydantic's


def test_settings_are_frozen() -> None:
    settings = parse_config(make(), {})
    with pytest.raises(ValidationError):
        settings.server.port = 1  # type: ignore[misc]
    assert isinstance(settings.campaigns, tuple)
    assert isinstance(settings.campaigns[0].operators, tuple)
    assert isinstance(settings.campaigns[0].telegram.own_chats, tuple)  # type: ignore[union-attr]


# --- the SQLite file lies next to the config file ---------------------------------------------


def _write_config(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "consentgate.toml"
    path.write_text(make({"storage.url": f'"{url}"'}), encoding="utf-8")
    return path


def test_load_config_takes_a_relative_sqlite_path_from_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_config(tmp_path / "campaign", "sqlite+aiosqlite:///data/gate.db")
    monkeypatch.chdir(tmp_path)  # anywhere but the config's folder
    expected = f"sqlite+aiosqlite:///{tmp_path / 'campaign' / 'data' / 'gate.db'}"
    assert load_config(path, {}).storage.url == expected
    assert load_config(Path("campaign") / "consentgate.toml", {}).storage.url == expected


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////var/lib/consentgate/gate.db",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://gate@db.internal/consentgate",
    ],
)
def test_absolute_memory_and_server_urls_are_left_alone(tmp_path: Path, url: str) -> None:
    assert load_config(_write_config(tmp_path, url), {}).storage.url == url


def test_a_relative_sqlite_path_keeps_its_query(tmp_path: Path) -> None:
    path = _write_config(tmp_path, "sqlite+aiosqlite:///gate.db?timeout=5")
    url = load_config(path, {}).storage.url
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}?timeout=5"


def test_parse_config_keeps_the_path_as_written_unless_given_a_base_dir(tmp_path: Path) -> None:
    text = make({"storage.url": '"sqlite+aiosqlite:///gate.db"'})
    assert parse_config(text, {}).storage.url == "sqlite+aiosqlite:///gate.db"
    resolved = parse_config(text, {}, base_dir=tmp_path).storage.url
    assert resolved == f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}"


def test_a_command_run_from_another_folder_uses_the_database_next_to_the_config(
    tmp_path: Path,
) -> None:
    config = _write_config(tmp_path / "campaign", "sqlite+aiosqlite:///gate.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cli = Path(sys.executable).with_name("consentgate")
    done = subprocess.run(
        [str(cli), "migrate", "--config", str(config)],
        cwd=elsewhere, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "campaign" / "gate.db").is_file()
    assert list(elsewhere.iterdir()) == []


# --- the example config and the reference -----------------------------------------------------


def test_example_config_carries_the_privacy_keys_and_a_demo_console_password() -> None:
    (campaign,) = load_config(REPO / "config.example.toml", environ={}).campaigns
    assert campaign.controller and campaign.privacy_notice_url
    assert {campaign.consent_text_for(c) for c in campaign.channels()} - {campaign.consent_text}
    organiser, auditor = campaign.operators
    assert organiser.password_hash is not None and organiser.password_hash.startswith(
        "$argon2id$"
    )
    assert PasswordHasher().verify(organiser.password_hash, DEMO_PASSWORD)
    assert auditor.password_hash is None


def test_configuration_reference_is_what_the_models_say() -> None:
    written = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == render_reference(), (
        "docs/configuration.md is out of date; regenerate it with "
        "python -m consentgate.bot.config --markdown > docs/configuration.md"
    )


def test_the_regenerate_command_prints_the_reference() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "consentgate.bot.config", "--markdown"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout == render_reference()
    assert "python -m consentgate.bot.config --markdown" in done.stdout


@pytest.mark.parametrize(
    "model",
    [ServerSettings, StorageSettings, DispatchSettings, SecuritySettings, PolicySettings,
     CampaignSettings, OperatorSettings, SmsSettings, EmailSettings, InboundEmailSettings,
     TelegramSettings],
)  # fmt: skip
def test_every_key_is_described_in_the_reference(model: type[BaseModel]) -> None:
    reference = render_reference()
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
        assert f"| `{name}`" in reference
