"""Turning a queued message into what goes on the wire, per channel.

Campaign SMS end with how to opt out; campaign email carries the one-click unsubscribe
headers, a List-Id and a visible footer with the imprint. Composition happens at dispatch, so
a broadcast's text is stored once and every recipient gets their own unsubscribe token.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from consentgate.adapters.base import OutboundMessage
from consentgate.bot.config import CampaignSettings
from consentgate.bot.outbox import Claimed
from consentgate.bot.telegram import consent_buttons
from consentgate.bot.templating import templates
from consentgate.bot.tokens import Tokens, TokenSubject

if TYPE_CHECKING:
    from consentgate.bot.unsubscribe import MailTokens

__all__ = ["Composer", "says_how_to_opt_out"]

_OPT_OUT_HINT = re.compile(
    r"\b(reply|text|txt|send)\b\W+(\w+\W+){0,3}?(stop|unsubscribe|opt\s?out)\b"
    r"|\bto\s+opt\s?out\b|\bunsubscribe\b",
    re.IGNORECASE,
)



@functools.lru_cache(maxsize=256)
def says_how_to_opt_out(text: str) -> bool:
    """Cached: a broadcast asks this of one text for every recipient."""
    return bool(_OPT_OUT_HINT.search(text))


class Composer:
    def __init__(self, campaigns: dict[str, CampaignSettings], public_url: str,
                 tokens: Tokens, mail_tokens: MailTokens | None = None) -> None:
        self.campaigns = campaigns
        self.public_url = public_url.rstrip("/")
        self.tokens = tokens
        self.mail_tokens = mail_tokens
        host = urlsplit(self.public_url).hostname or "localhost"
        self.list_domain = host

    def unsubscribe_url(self, campaign: str, channel: str, address_hash: str) -> str:
        token = self.tokens.make("unsubscribe", TokenSubject(campaign, channel, address_hash))
        return f"{self.public_url}/u/{token}"

    def compose(self, c: Claimed) -> OutboundMessage:
        settings = self.campaigns[c.campaign]
        if c.channel == "sms":
            return self._sms(c, settings)
        if c.channel == "email":
            return self._email(c, settings)
        return OutboundMessage(str(c.id), c.campaign, c.channel, c.address, c.text, kind=c.kind,
                               buttons=consent_buttons(c.kind, c.subject))

    def _sms(self, c: Claimed, settings: CampaignSettings) -> OutboundMessage:
        text = c.text
        if c.kind == "campaign" and not says_how_to_opt_out(text):
            instruction = settings.sms.opt_out_instruction if settings.sms else "Reply STOP"
            text = f"{text.rstrip()}\n{instruction}"
        return OutboundMessage(str(c.id), c.campaign, c.channel, c.address, text, kind=c.kind)

    def _email(self, c: Claimed, settings: CampaignSettings) -> OutboundMessage:
        subject = c.subject or settings.name
        mt = self.mail_tokens
        inbound = settings.email.inbound if settings.email and mt else None
        envelope_from = None
        if inbound is not None and mt is not None:
            # VERP: a bounce comes back to an address naming the very message it is about.
            token = mt.bounce_token(c.id, c.campaign, c.address_hash)
            envelope_from = f"bounce+{token}@{inbound.domain}"
        if c.kind != "campaign":
            return OutboundMessage(str(c.id), c.campaign, c.channel, c.address, c.text,
                                   kind=c.kind, subject=subject, envelope_from=envelope_from)
        url = self.unsubscribe_url(c.campaign, c.channel, c.address_hash)
        context = {"text": c.text, "campaign": settings, "unsubscribe_url": url}
        headers = {
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Id": f"{settings.name} <{c.campaign}.{self.list_domain}>",
        }
        if inbound is not None and mt is not None and settings.email is not None:
            unsubscribe = mt.address_token("unsubscribe", c.campaign, c.address_hash)
            headers["List-Unsubscribe"] += (f", <mailto:unsubscribe+{unsubscribe}@"
                                            f"{inbound.domain}?subject=unsubscribe>")
            # Replies reach the campaign's own mailbox and, for opt-out phrases, the gateway.
            reply = mt.address_token("reply", c.campaign, c.address_hash)
            headers["Reply-To"] = (f"{settings.email.from_address}, "
                                   f"reply+{reply}@{inbound.domain}")
        return OutboundMessage(
            str(c.id), c.campaign, c.channel, c.address,
            templates.get_template("email.txt").render(context),
            kind=c.kind, subject=subject,
            html=templates.get_template("email.html").render(context),
            headers=headers, envelope_from=envelope_from,
        )
