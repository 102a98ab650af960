"""The inbound keyword classifier, as the contract's "Inbound SMS" section describes it.

A table of real-world replies pins the two tiers of "stop" (a clear request is acted on; the
same word used about something else is flagged for a person), and property tests check that
the things handsets and people add around a keyword never change what it means.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from consentgate.bot.keywords import Classification, Intent, classify, normalise

OPT_OUT = Intent.OPT_OUT
OPT_OUT_ALL = Intent.OPT_OUT_ALL
OPT_IN = Intent.OPT_IN
HELP = Intent.HELP
POSSIBLE = Intent.POSSIBLE_OPT_OUT
OTHER = Intent.OTHER

REPLIES: list[tuple[str, Intent]] = [
    # --- the contract's keywords, alone ---------------------------------------------------
    ("STOP", OPT_OUT),
    ("UNSUBSCRIBE", OPT_OUT),
    ("CANCEL", OPT_OUT),
    ("END", OPT_OUT),
    ("QUIT", OPT_OUT),
    ("REVOKE", OPT_OUT),
    ("OPTOUT", OPT_OUT),
    ("OPT OUT", OPT_OUT),
    ("Opt-out", OPT_OUT),
    ("stop", OPT_OUT),
    ("Stop.", OPT_OUT),
    ("STOP!!", OPT_OUT),
    ("Stop!!!!!", OPT_OUT),
    ("STOP STOP STOP", OPT_OUT),
    ("/stop", OPT_OUT),
    ("ＳＴＯＰ", OPT_OUT),
    ("\u200bSTOP\u200b", OPT_OUT),
    ("S\u200bTOP", OPT_OUT),
    ("'Stop'", OPT_OUT),
    ("Stop 🛑", OPT_OUT),
    ("Unsubscribe 😡😡", OPT_OUT),
    # --- with courtesy around it (contract examples first) ------------------------------------
    ("Stop please", OPT_OUT),
    ("Stop. Thank you", OPT_OUT),
    ("please unsubscribe", OPT_OUT),
    ("stop thanks", OPT_OUT),
    ("Stop pls", OPT_OUT),
    ("ok stop", OPT_OUT),
    ("Please stop, thank you 🙏", OPT_OUT),
    ("Cancel please", OPT_OUT),
    ("End, thanks", OPT_OUT),
    ("Just stop", OPT_OUT),
    ("stop now", OPT_OUT),
    ("Hi, please opt out. Thanks", OPT_OUT),
    ("not interested, stop", OPT_OUT),
    ("No thanks. STOP", OPT_OUT),
    ("Stop thank you very much x", OPT_OUT),
    # --- plain requests not to be contacted ---------------------------------------------------
    ("stop texting me", OPT_OUT),
    ("Stop messaging me", OPT_OUT),
    ("stop sending me these", OPT_OUT),
    ("remove me from your list", OPT_OUT),
    ("Remove me", OPT_OUT),
    ("take me off", OPT_OUT),
    ("Take me off your list please", OPT_OUT),
    ("don't text me", OPT_OUT),
    ("don\u2019t text me", OPT_OUT),
    ("dont text me", OPT_OUT),
    ("do not contact me", OPT_OUT),
    ("Don't contact me again", OPT_OUT),
    ("never text me again", OPT_OUT),
    ("leave me alone", OPT_OUT),
    ("wrong number", OPT_OUT),
    ("You've got the wrong number mate", OPT_OUT),
    ("unsubscribe me", OPT_OUT),
    ("Please unsubscribe me from this list", OPT_OUT),
    ("no more texts", OPT_OUT),
    ("No more messages please", OPT_OUT),
    ("Stop these bloody texts", OPT_OUT),
    ("Can you please stop sending these", OPT_OUT),
    ("Who is this? STOP", OPT_OUT),
    ("Who is this\nSTOP", OPT_OUT),
    ("I'm voting for the other lot. Stop texting me", OPT_OUT),
    ("I am not interested stop texting me", OPT_OUT),
    ("Please delete my number", OPT_OUT),
    ("I'd like to opt out", OPT_OUT),
    ("I want to unsubscribe", OPT_OUT),
    ("How do I unsubscribe?", OPT_OUT),
    ("how do i stop getting these", OPT_OUT),
    ("I don't want any more texts from you", OPT_OUT),
    ("Why don't you just remove me", OPT_OUT),
    ("Stop it", OPT_OUT),
    ("Go away", OPT_OUT),
    ("Fuck off", OPT_OUT),
    ("cancel my subscription", OPT_OUT),
    ("Stop calling me", OPT_OUT),
    ("Don't ring me again", OPT_OUT),
    # --- every campaign on the gateway --------------------------------------------------------
    ("STOPALL", OPT_OUT_ALL),
    ("STOP ALL", OPT_OUT_ALL),
    ("Stop all please", OPT_OUT_ALL),
    ("stop all!!", OPT_OUT_ALL),
    ("Unsubscribe all", OPT_OUT_ALL),
    ("Stop all messages", OPT_OUT_ALL),
    ("Who is this? Stop all.", OPT_OUT_ALL),
    ("Who is this\nStop all", OPT_OUT_ALL),
    ("Stop. Stop all!", OPT_OUT_ALL),
    ("stop texting me. STOP ALL", OPT_OUT_ALL),
    # --- opt-in -------------------------------------------------------------------------------
    ("START", OPT_IN),
    ("UNSTOP", OPT_IN),
    ("YES", OPT_IN),
    ("JOIN", OPT_IN),
    ("yes please", OPT_IN),
    ("Yes!", OPT_IN),
    ("Start please", OPT_IN),
    ("JOIN HALL", OPT_IN),
    ("join hall please", OPT_IN),
    # --- help ---------------------------------------------------------------------------------
    ("HELP", HELP),
    ("INFO", HELP),
    ("help?", HELP),
    ("Info please", HELP),
    # --- an opt-out word about something else: kept and flagged for a person ------------------
    ("We have got to STOP this terrible bill", POSSIBLE),
    ("Can you stop the bus at the end of my road?", POSSIBLE),
    ("I'll cancel my membership if you vote for that", POSSIBLE),
    ("The end of austerity", POSSIBLE),
    ("The end", POSSIBLE),
    ("Please don't stop texting me, I love the updates", POSSIBLE),
    ("Don't remove me!", POSSIBLE),
    ("I can't stop laughing at your leaflet", POSSIBLE),
    ("Is the canvass on Saturday cancelled?", POSSIBLE),
    ("I quit smoking thanks to the NHS", POSSIBLE),
    ("Stop the boats", POSSIBLE),
    ("When does the consultation end", POSSIBLE),
    ("Can you remove the bins from outside no. 4", POSSIBLE),
    ("I unsubscribed from the Tories, so you're next", POSSIBLE),
    ("join stop", POSSIBLE),
    ("yes stop", POSSIBLE),
    ("not interested", POSSIBLE),
    ("How do I cancel my postal vote?", POSSIBLE),
    ("Stop calling people racist", POSSIBLE),
    ("We need to stop sending troops abroad", POSSIBLE),
    ("The end of the messaging from the council is welcome", POSSIBLE),
    # --- anything else --------------------------------------------------------------------
    ("Thanks, see you Saturday", OTHER),
    ("Who is this?", OTHER),
    ("", OTHER),
    ("   ", OTHER),
    ("🙏🙏", OTHER),
    ("ok", OTHER),
    ("thanks!", OTHER),
    ("start the car", OTHER),
    ("Yes but what about the bins", OTHER),
    ("join the campaign", OTHER),
    ("I need help with my postal vote", OTHER),
    ("Count me in for Saturday", OTHER),
    ("friends of mine are voting for Jane this weekend", OTHER),
    ("Don't call us racist", OTHER),
]


@pytest.mark.parametrize(("text", "intent"), REPLIES, ids=[repr(t) for t, _ in REPLIES])
def test_real_world_reply_is_read_as_its_sender_meant(text: str, intent: Intent) -> None:
    assert classify(text).intent is intent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STOP", Classification(OPT_OUT, "STOP")),
        ("opt-out!", Classification(OPT_OUT, "OPT OUT")),
        ("optout", Classification(OPT_OUT, "OPTOUT")),
        ("STOP ALL please", Classification(OPT_OUT_ALL, "STOP ALL")),
        ("stopall", Classification(OPT_OUT_ALL, "STOPALL")),
        ("yes please", Classification(OPT_IN, "YES")),
        ("JOIN", Classification(OPT_IN, "JOIN")),
        ("JOIN HALL", Classification(OPT_IN, "JOIN", "HALL")),
        ("join hall2026!", Classification(OPT_IN, "JOIN", "HALL2026")),
        ("Join Market, thanks", Classification(OPT_IN, "JOIN", "MARKET")),
        ("info", Classification(HELP, "INFO")),
        ("remove me from your list", Classification(OPT_OUT, "REMOVE ME")),
        ("don\u2019t text me", Classification(OPT_OUT, "DONT TEXT ME")),
        ("don\u00b4t text me", Classification(OPT_OUT, "DONT TEXT ME")),
        ("The end of austerity", Classification(POSSIBLE, "END")),
        ("Thanks, see you Saturday", Classification(OTHER)),
    ],
)
def test_classification_names_the_keyword_and_the_poster_word(
    text: str, expected: Classification
) -> None:
    assert classify(text) == expected


def test_table_covers_every_intent_with_enough_real_replies() -> None:
    assert len(REPLIES) >= 60
    assert {intent for _, intent in REPLIES} == set(Intent)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Stop please!!! ", "stop please"),
        ("\u201cSTOP\u201d \U0001f64f", "stop"),
        ("...Don\u2019t   text\n me...", "don't text me"),
        ("rock \uff40n\uff40 roll", "rock 'n' roll"),
        ("\u200b\ufeffＳＴＯＰ", "stop"),
        ("st\u200bop\u200d all", "stop all"),
        ("!!!", ""),
    ],
)
def test_normalise_trims_folds_and_strips_surroundings(text: str, expected: str) -> None:
    assert normalise(text) == expected


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

KEYWORDS: list[tuple[str, Intent]] = [
    ("STOP", OPT_OUT),
    ("UNSUBSCRIBE", OPT_OUT),
    ("CANCEL", OPT_OUT),
    ("END", OPT_OUT),
    ("QUIT", OPT_OUT),
    ("REVOKE", OPT_OUT),
    ("OPTOUT", OPT_OUT),
    ("OPT OUT", OPT_OUT),
    ("OPT-OUT", OPT_OUT),
    ("STOP TEXTING ME", OPT_OUT),
    ("REMOVE ME FROM YOUR LIST", OPT_OUT),
    ("DON'T TEXT ME", OPT_OUT),
    ("WRONG NUMBER", OPT_OUT),
    ("STOPALL", OPT_OUT_ALL),
    ("STOP ALL", OPT_OUT_ALL),
    ("START", OPT_IN),
    ("UNSTOP", OPT_IN),
    ("YES", OPT_IN),
    ("JOIN", OPT_IN),
    ("JOIN HALL", OPT_IN),
    ("HELP", HELP),
    ("INFO", HELP),
]

WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u200b", "\ufeff"]
PUNCTUATION = list("!?.,;:'\"()*-~#/\\") + ["...", "\u2026", "\u201c", "\u201d", "\u2019"]
EMOJI = [
    "\U0001f64f",  # folded hands
    "\U0001f6d1",  # stop sign
    "\U0001f621",  # angry face
    "\U0001f44d\U0001f3fd",  # thumbs up, skin tone
    "\u2764\ufe0f",  # red heart with variation selector
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: zero-width-joined
    "\U0001f1ec\U0001f1e7",  # flag: United Kingdom
]
COURTESY = ["please", "pls", "thanks", "thank you", "ok", "cheers", "thx", "please, thank you"]


def surroundings(pieces: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), max_size=6).map("".join)


@st.composite
def recased(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=True))


@given(
    case=st.sampled_from(KEYWORDS),
    data=st.data(),
    before=surroundings(WHITESPACE + PUNCTUATION + EMOJI),
    after=surroundings(WHITESPACE + PUNCTUATION + EMOJI),
)
@example(case=("STOP", OPT_OUT), data=None, before="\U0001f64f ", after="!!! \u2764\ufe0f")
def test_case_whitespace_punctuation_and_emoji_never_change_a_keywords_class(
    case: tuple[str, Intent], data: st.DataObject | None, before: str, after: str
) -> None:
    text, intent = case
    plain = classify(text)
    word = data.draw(recased(text)) if data is not None else text
    noisy = classify(before + word + after)
    assert plain.intent is intent
    assert noisy == plain


@given(
    case=st.sampled_from([(t, i) for t, i in KEYWORDS if i is not OPT_IN or t != "JOIN HALL"]),
    before=st.sampled_from(["", *COURTESY]),
    after=st.sampled_from(["", *COURTESY]),
    separator=st.sampled_from([" ", ", ", ". ", "! "]),
)
def test_courtesy_around_a_keyword_never_changes_its_class(
    case: tuple[str, Intent], before: str, after: str, separator: str
) -> None:
    text, intent = case
    message = separator.join(part for part in (before, text, after) if part)
    assert classify(message).intent is intent


ORDINARY_WORDS = [
    "the", "bus", "we", "have", "got", "to", "this", "bill", "council", "vote", "saturday",
    "road", "my", "of", "and", "i", "will", "if", "you", "can", "when", "is", "jane", "leaflet",
]  # fmt: skip
OPT_OUT_WORDS = [
    "stop", "stopped", "stopping", "unsubscribe", "unsubscribed", "cancel", "cancelled",
    "end", "ending", "quit", "revoke", "remove", "removed", "opt out", "optout", "stopall",
]  # fmt: skip


@given(
    before=st.lists(st.sampled_from(ORDINARY_WORDS), max_size=8),
    word=st.sampled_from(OPT_OUT_WORDS),
    after=st.lists(st.sampled_from(ORDINARY_WORDS), max_size=8),
)
def test_an_opt_out_word_is_never_silently_ignored(
    before: list[str], word: str, after: list[str]
) -> None:
    message = " ".join([*before, word, *after])
    assert classify(message).intent in {OPT_OUT, OPT_OUT_ALL, POSSIBLE}


@given(
    before=st.lists(st.sampled_from(ORDINARY_WORDS), min_size=1, max_size=8),
    request=st.sampled_from(
        ["stop texting me", "remove me from your list", "do not contact me", "STOP"]
    ),
    after=st.lists(st.sampled_from(ORDINARY_WORDS), min_size=1, max_size=8),
)
def test_a_clear_request_wins_over_the_chatter_around_it(
    before: list[str], request: str, after: list[str]
) -> None:
    message = f"{' '.join(before)}. {request}. {' '.join(after)}"
    assert classify(message).intent is OPT_OUT


@given(st.text())
@example("\u0130STOP")
@example("\u01f0\u0323")
def test_classify_never_raises_and_answers_consistently(text: str) -> None:
    result = classify(text)
    assert isinstance(result.intent, Intent)
    assert (result.keyword is None) == (result.intent is OTHER)
    if result.keyword is not None:
        assert result.keyword == result.keyword.upper()
    if result.argument is not None:
        assert result.intent is OPT_IN
        assert result.keyword == "JOIN"


@given(st.text())
@example("\u01f0")
@example("e\u200b\u0301")
@example("\ufdfa")
def test_normalise_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


@given(st.text())
def test_normalise_leaves_no_surrounding_junk_or_runs_of_whitespace(text: str) -> None:
    result = normalise(text)
    if result:
        assert result[0].isalnum()
        assert result[-1].isalnum()
    assert "  " not in result
    assert all(not c.isspace() or c == " " for c in result)
