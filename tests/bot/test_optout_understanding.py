"""How people really say stop: each kind of reply the classifier understands, the traps it
must not fall into, its policy for hostile replies, the rule every reading names, and the
figures on the project's corpus of real replies (the goals of bench.optout)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.optout import DEFAULT_FILES, load, score
from consentgate.bot.keywords import Intent, classify

OPT_OUT = Intent.OPT_OUT
OPT_OUT_ALL = Intent.OPT_OUT_ALL
OPT_IN = Intent.OPT_IN
HELP = Intent.HELP
POSSIBLE = Intent.POSSIBLE_OPT_OUT
OTHER = Intent.OTHER
OUT = {OPT_OUT, OPT_OUT_ALL}


def _reads(cases: list[tuple[str, Intent, str]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(("text", "intent", "rule"), cases,
                                   ids=[repr(t) for t, _, _ in cases])


@_reads([
    ("I no longer wish to receive messages from this campaign", OPT_OUT,
     "request: doesn't want messages"),
    ("I don't want these", OPT_OUT, "request: doesn't want messages"),
    ("Please take me off your mailing list", OPT_OUT, "request: remove me"),
    ("lose my number", OPT_OUT, "request: remove me"),
    ("Get me off this list!", OPT_OUT, "request: remove me"),
    ("unsubscribe me from this campaign", OPT_OUT, "request: remove me"),
    ("I revoke my consent", OPT_OUT, "request: withdraws consent"),
    ("I told you to stop", OPT_OUT, "request: wants to opt out"),
    ("I'm opting out", OPT_OUT, "request: wants to opt out"),
    ("Stop sending", OPT_OUT, "request: stop contacting"),
    ("do not call", OPT_OUT, "request: whole message"),
    ("please take me off", OPT_OUT, "request: whole message"),
    ("leave my family alone", OPT_OUT, "request: leave me alone"),
    ("Who is this? You have the wrong person", OPT_OUT, "wrong number"),
])
def test_plain_language_requests_opt_out(text: str, intent: Intent, rule: str) -> None:
    reading = classify(text)
    assert (reading.intent, reading.rule) == (intent, rule)


@_reads([
    ("Remove", OPT_OUT, "opt-out words only"),
    ("please remove", OPT_OUT, "opt-out words only"),
    ("delete quit", OPT_OUT, "opt-out words only"),
    ("end remove", OPT_OUT, "opt-out words only"),
    ("I quit", OPT_OUT, "opt-out words only"),
    ("opting out", OPT_OUT, "opt-out words only"),
    ("stop this", OPT_OUT, "opt-out words only"),
    ("STOP ads", OPT_OUT, "request: no more messages"),
    ("remove idiots", OPT_OUT, "opt-out words only"),
    ("Remove and fu", OPT_OUT, "opt-out words only"),
    ("stop it you morons", OPT_OUT, "opt-out words only"),
    ("Stop please, thank you", OPT_OUT, "keyword STOP with courtesy"),
    ("I said STOP", OPT_OUT, "keyword STOP with courtesy"),
    ("STOP", OPT_OUT, "keyword STOP"),
    ("ENDALL", OPT_OUT_ALL, "opt-out words only, all"),
    ("end these texts", OPT_OUT, "opt-out words only"),
])
def test_keywords_with_courtesy_insults_or_each_other_opt_out(
    text: str, intent: Intent, rule: str
) -> None:
    reading = classify(text)
    assert (reading.intent, reading.rule) == (intent, rule)


@_reads([
    ("optut", OPT_OUT, "misspelt OPTOUT"),
    ("opout", OPT_OUT, "misspelt OPTOUT"),
    ("Unsubcribe", OPT_OUT, "misspelt UNSUBSCRIBE"),
    ("stpo", OPT_OUT, "misspelt STOP"),
    ("Cancell please", OPT_OUT, "misspelt CANCEL"),
    ("removea", OPT_OUT, "misspelt REMOVE"),
    ("ARRETT", OPT_OUT, "misspelt ARRET"),
    ("Please stopppp", OPT_OUT, "keyword STOP with courtesy"),
    ("quitremove", OPT_OUT, "opt-out words only"),
    ("Stop2Stop", OPT_OUT, "opt-out words only"),
])
def test_misspelt_keywords_in_short_replies_opt_out(text: str, intent: Intent, rule: str) -> None:
    reading = classify(text)
    assert (reading.intent, reading.rule) == (intent, rule)


@pytest.mark.parametrize("text", ["shop", "quite", "step", "subscribe", "remote", "cancer",
                                  "Top!", "quiet please", "spot on"])
def test_real_words_a_slip_from_a_keyword_are_not_opt_outs(text: str) -> None:
    assert classify(text).intent not in OUT


@pytest.mark.parametrize(
    "text", ["I think u should quitt your job and join us", "cancell the meeting at 5"])
def test_misspellings_are_only_guessed_in_short_replies(text: str) -> None:
    assert classify(text).intent not in OUT


@_reads([
    # Spanish
    ("BAJA", OPT_OUT, "keyword BAJA (es)"),
    ("Parar", OPT_OUT, "keyword PARAR (es)"),
    ("No más", OPT_OUT, "keyword NO MAS (es)"),
    ("no me manden mas mensajes", OPT_OUT, "request (es)"),
    ("Quiero darme de baja", OPT_OUT, "request (es)"),
    ("Sí", OPT_IN, "keyword SI (es)"),
    ("Ayuda", HELP, "keyword AYUDA (es)"),
    # French
    ("ARRÊT", OPT_OUT, "keyword ARRET (fr)"),
    ("Arrêtez de m'envoyer des messages", OPT_OUT, "request (fr)"),
    ("désabonner svp", OPT_OUT, "keyword DESABONNER (fr) with courtesy"),
    ("Oui", OPT_IN, "keyword OUI (fr)"),
    ("AIDE", HELP, "keyword AIDE (fr)"),
    # Portuguese
    ("Sair", OPT_OUT, "keyword SAIR (pt)"),
    ("obrigado, pode parar", OPT_OUT, "keyword PARAR (es) with courtesy"),
    ("Não quero mais receber mensagens", OPT_OUT, "request (pt)"),
    ("Sim", OPT_IN, "keyword SIM (pt)"),
    ("Ajuda", HELP, "keyword AJUDA (pt)"),
    # Welsh
    ("Stopio", OPT_OUT, "keyword STOPIO (cy)"),
    ("Dad-danysgrifio", OPT_OUT, "keyword DAD DANYSGRIFIO (cy)"),
    ("Peidiwch ag anfon negeseuon ataf", OPT_OUT, "request (cy)"),
    ("Tynnwch fi oddi ar y rhestr, diolch", OPT_OUT, "request (cy)"),
    ("Dim mwy", OPT_OUT, "keyword DIM MWY (cy)"),
    ("Ie", OPT_IN, "keyword IE (cy)"),
    ("Dechrau", OPT_IN, "keyword DECHRAU (cy)"),
    ("Cymorth", HELP, "keyword CYMORTH (cy)"),
    # German
    ("STOPP", OPT_OUT, "keyword STOPP (de)"),
    ("Abmelden bitte", OPT_OUT, "keyword ABMELDEN (de) with courtesy"),
    ("Hilfe", HELP, "keyword HILFE (de)"),
])
def test_each_language_opts_out_in_and_asks_for_help(
    text: str, intent: Intent, rule: str
) -> None:
    reading = classify(text)
    assert (reading.intent, reading.rule) == (intent, rule)


@pytest.mark.parametrize("text", [
    "We have got to STOP this terrible bill",
    "Count me in! We have got to STOP this terrible bill from passing!!",
    "Can you stop by the office tomorrow?",
    "It rained non stop all weekend",
    "I can't stop laughing at your leaflet",
    "I'll pay you at the end of the month",
    "Stop the war",
    "I told you to stop by at 6",
    "Can you take me off the rota for Saturday?",
    "Please remove my name from the volunteer rota",
    "Quero sair hoje",
    "Doy de baja la pauta?",
    "Just quit. You always work",
    "not interested",
    "Count me out",
    "who gave you my number?",
    # an ordinary verb with a pointer is about something else; a named message is not
    "Cancel it", "Delete this", "Remove all", "End it", "Stop me",
    "Stop calling me names",
])
def test_traps_are_kept_and_flagged_for_a_person_never_opted_out(text: str) -> None:
    reading = classify(text)
    assert reading.intent is POSSIBLE, reading


@pytest.mark.parametrize("text", ["Fuck off", "go away", "get lost", "shut up", "f off",
                                  "please fuckoff", "Piss off!!"])
def test_a_reply_that_only_tells_us_to_go_away_is_an_objection_and_opts_out(
    text: str,
) -> None:
    reading = classify(text)
    assert (reading.intent, reading.rule) == (OPT_OUT, "dismissal")


@pytest.mark.parametrize("text", ["fuck you", "f**k you", "You idiots", "scam", "\U0001f6d1",
                                  "\u270b\u270b", "this is harassment"])
def test_hostility_without_a_request_is_flagged_never_left_unseen(text: str) -> None:
    reading = classify(text)
    assert reading.intent is POSSIBLE
    assert reading.rule in {"hostile, no request", "symbols only"}


@pytest.mark.parametrize("text", ["No thanks", "no", "Nope!", "Dim diolch", "Na", "no gracias"])
def test_a_bare_refusal_is_flagged_for_a_person(text: str) -> None:
    reading = classify(text)
    assert (reading.intent, reading.rule) == (POSSIBLE, "refusal, no request")


@pytest.mark.parametrize("text", ["Yes, I do!", "Thanks, see you Saturday", "About what?",
                                  "I'm making the call right now.", "Fin de semana en la playa",
                                  "Para mi esta bien", "ok", "Thanks!",
                                  "Drop me a text when you are free"])
def test_ordinary_replies_stay_ordinary(text: str) -> None:
    reading = classify(text)
    assert (reading.intent, reading.rule) == (OTHER, "no rule matched")


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@st.composite
def one_slip(draw: st.DrawFn, word: str) -> str:
    """``word`` with one letter dropped, changed, doubled-in or two neighbours swapped."""
    i = draw(st.integers(0, len(word) - 2))
    kind = draw(st.sampled_from(["drop", "change", "insert", "swap"]))
    letter = draw(st.sampled_from(ALPHABET))
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "change":
        return word[:i] + letter + word[i + 1:]
    if kind == "insert":
        return word[:i] + letter + word[i:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


@given(data=st.data(), word=st.sampled_from(["unsubscribe", "optout", "desabonner"]),
       courtesy=st.sampled_from(["", "please ", "pls "]))
def test_one_slip_of_a_long_keyword_in_a_short_reply_still_opts_out(
    data: st.DataObject, word: str, courtesy: str
) -> None:
    slip = data.draw(one_slip(word))
    assert classify(courtesy + slip).intent in OUT


FILLER = ["the", "bus", "we", "have", "got", "to", "bill", "council", "vote", "saturday",
          "road", "will", "if", "jane", "leaflet", "tomorrow", "office", "really"]
TRAPS = ["stop by", "non stop", "end of the month", "cant stop laughing", "stop this terrible",
         "quit smoking", "cancel the meeting", "the end"]


@given(before=st.lists(st.sampled_from(FILLER), max_size=6), trap=st.sampled_from(TRAPS),
       after=st.lists(st.sampled_from(FILLER), max_size=6))
def test_a_trap_inside_ordinary_words_is_flagged_never_opted_out(
    before: list[str], trap: str, after: list[str]
) -> None:
    reading = classify(" ".join([*before, trap, *after]))
    assert reading.intent is POSSIBLE


@given(st.text())
def test_every_reading_names_a_short_rule_that_never_quotes_the_message(text: str) -> None:
    reading = classify(text)
    assert reading.rule and len(reading.rule) <= 60
    assert reading.rule == reading.rule.strip()
    # Rules come from a fixed vocabulary: keyword names in capitals, rule names in lower case.
    assert all(w.isupper() or w.islower() or w.startswith("(") for w in reading.rule.split())


# --------------------------------------------------------------------------------------------
# The corpus of real replies (bench.optout) meets the goals
# --------------------------------------------------------------------------------------------


def test_the_corpus_files_name_a_source_for_every_reply() -> None:
    replies = load(DEFAULT_FILES)
    assert len(replies) >= 180
    assert all(r.source.strip() for r in replies)
    assert {r.expected for r in replies} == {
        "opt_out", "opt_out_all", "opt_in", "help", "flag", "dismiss", "other"}


def test_the_corpus_meets_the_goals() -> None:
    overall, by_tag, misses = score(load(DEFAULT_FILES))
    figures = overall.figures()
    assert figures["opt_out_recall"] is not None and figures["opt_out_recall"] >= 0.95
    assert figures["false_opt_out_rate"] is not None and figures["false_opt_out_rate"] <= 0.02
    assert figures["flag_recall"] == 1.0, misses
    assert figures["keyword_accuracy"] == 1.0, misses
    for tag in ("keyword-doc", "lang=es", "lang=fr", "lang=pt", "lang=cy", "typo"):
        assert by_tag[tag].figures()["opt_out_recall"] == 1.0, (tag, misses)
