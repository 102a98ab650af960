"""What the sender of an inbound SMS wants: out, in, help, or none of these.

Honouring an objection to direct marketing is a legal duty (PECR, UK GDPR art. 21), so the
rule that reads a reply is kept here, apart from every webhook, database and event loop:
a pure function that a table of real replies and property tests can pin down completely.

There are two tiers of "stop", and the asymmetry between them is deliberate:

* a clear request (the keyword alone, the keyword with courtesy around it, or a plain
  "stop texting me") is :attr:`Intent.OPT_OUT` and is acted on at once;
* an opt-out word used about something else ("we have got to stop this bill") is
  :attr:`Intent.POSSIBLE_OPT_OUT`: the reply is kept and flagged for a person to read.
  A false flag costs someone a minute; a missed opt-out is a breach. So whenever an opt-out
  word is present the answer is never :attr:`Intent.OTHER`.

Opting *in* is read strictly (only the keyword, with courtesy at most), because consent must
be a clear affirmative act; opting *out* is read generously.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Classification", "Intent", "classify", "normalise"]


class Intent(enum.StrEnum):
    """What a reply asks for."""

    OPT_OUT = "opt_out"  # opt out of this campaign
    OPT_OUT_ALL = "opt_out_all"  # STOPALL / STOP ALL: every campaign on the gateway
    OPT_IN = "opt_in"  # START, UNSTOP, YES, JOIN
    HELP = "help"  # HELP, INFO
    POSSIBLE_OPT_OUT = "possible_opt_out"  # an opt-out word used about something else
    OTHER = "other"


@dataclass(frozen=True)
class Classification:
    """The reading of one reply.

    ``keyword`` is what matched, upper-case ("STOP", "OPT OUT", "REMOVE ME", "JOIN");
    ``argument`` is the per-poster keyword of "JOIN HALL" ("HALL"), otherwise None.
    """

    intent: Intent
    keyword: str | None = None
    argument: str | None = None


_OTHER = Classification(Intent.OTHER)

# --------------------------------------------------------------------------------------------
# Normalising
# --------------------------------------------------------------------------------------------

# Phones autocorrect ' to a curly quote ("don’t"); all of these mean the same apostrophe.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2018\u2019\u02bc\u02b9\u0060\u00b4", "'"))


def _without_invisibles(text: str) -> str:
    """Drop format characters (zero-width space/joiner, BOM, direction marks): they are
    invisible on the handset but would stop "\u200bSTOP" from matching STOP."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def _strip_surroundings(text: str) -> str:
    """Cut everything before the first and after the last letter or digit: punctuation,
    quotes, emoji, "!!!", "..." and the leading "/" of a Telegram command all go."""
    start = 0
    end = len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]


def normalise(text: str) -> str:
    """Trim, case-fold, strip surrounding punctuation and emoji, collapse inner whitespace.

    Compatibility forms are folded too (full-width "ＳＴＯＰ" is "stop"), curly apostrophes
    become straight ones, and invisible format characters are removed. Idempotent:
    ``normalise(normalise(t)) == normalise(t)``.
    """
    # Apostrophes are mapped on both sides of NFKC: before, because NFKC splits the acute
    # accent in "don´t" into a space and a combining mark; after, because it turns the
    # full-width grave accent into a plain one.
    visible = _without_invisibles(text).translate(_APOSTROPHES)
    folded = unicodedata.normalize("NFKC", visible).casefold().translate(_APOSTROPHES)
    collapsed = " ".join(folded.split())
    return _strip_surroundings(collapsed)


# --------------------------------------------------------------------------------------------
# Words, clauses and courtesy
# --------------------------------------------------------------------------------------------

_Tokens = tuple[str, ...]

_WORD = re.compile(r"[^\W_]+")
# Sentence punctuation, dashes and line breaks separate clauses: "Who is this? Stop." is a
# question and a request, not one sentence. A hyphen inside a word ("opt-out") is no break.
_CLAUSE_BREAK = re.compile(r"[.,;:!?()\u2026\u2013\u2014]+|\s-+\s")


def _words(text: str) -> _Tokens:
    """Letters-and-digits words; apostrophes are dropped first so "don't" reads "dont" and
    hyphens split so "opt-out" reads "opt out"."""
    return tuple(_WORD.findall(text.replace("'", "")))


def _clauses(text: str) -> list[_Tokens]:
    """The words of each clause that has any."""
    pieces = (p for line in text.splitlines() for p in _CLAUSE_BREAK.split(normalise(line)))
    return [words for words in map(_words, pieces) if words]


def _phrases(*texts: str) -> frozenset[_Tokens]:
    return frozenset(tuple(t.split()) for t in texts)


# Words people wrap around a keyword without changing what it asks for.
_COURTESY = _phrases(
    "please", "pls", "plz", "plse", "pleas", "pleaseee", "kindly", "just",
    "thanks", "thank you", "thankyou", "thank u", "thanx", "thnx", "thx", "ty", "ta",
    "cheers", "many thanks", "thanks a lot", "thanks very much", "thank you very much",
    "thank you so much", "much appreciated", "appreciated",
    "ok", "okay", "k", "ok then", "right", "sorry", "hi", "hello", "hey",
    "now", "right now", "asap", "immediately", "x", "xx", "xxx", "mate", "sir", "madam",
    "no thanks", "no thank you", "not interested", "im not interested",
)  # fmt: skip
_LONGEST_COURTESY = max(len(p) for p in _COURTESY)


def _without_courtesy(words: _Tokens) -> _Tokens:
    """Peel courtesy phrases off both ends ("please stop, thank you" -> "stop"). Only the
    ends: inside a sentence the same word can carry meaning ("stop right there")."""
    changed = True
    while changed and words:
        changed = False
        for n in range(min(_LONGEST_COURTESY, len(words)), 0, -1):
            if words[:n] in _COURTESY:
                words, changed = words[n:], True
                break
            if words[-n:] in _COURTESY:
                words, changed = words[:-n], True
                break
    return words


def _without_repeats(words: _Tokens) -> _Tokens:
    """Repeating a word ("STOP STOP STOP") says it louder, not something else."""
    return tuple(w for i, w in enumerate(words) if i == 0 or w != words[i - 1])


def _core(words: _Tokens) -> _Tokens:
    return _without_repeats(_without_courtesy(words))


# --------------------------------------------------------------------------------------------
# Keywords: the whole message (courtesy aside) is one of them
# --------------------------------------------------------------------------------------------

_OPT_OUT_KEYWORDS = {
    ("stop",): "STOP",
    ("unsubscribe",): "UNSUBSCRIBE",
    ("unsub",): "UNSUB",
    ("cancel",): "CANCEL",
    ("end",): "END",
    ("quit",): "QUIT",
    ("revoke",): "REVOKE",
    ("optout",): "OPTOUT",
    ("opt", "out"): "OPT OUT",
}


def _keyword_table() -> dict[_Tokens, Classification]:
    table: dict[_Tokens, Classification] = {}
    for words, keyword in _OPT_OUT_KEYWORDS.items():
        table[words] = Classification(Intent.OPT_OUT, keyword)
        # "UNSUBSCRIBE ALL" asks for what STOP ALL does; widening an opt-out is always safe.
        table[(*words, "all")] = Classification(Intent.OPT_OUT_ALL, f"{keyword} ALL")
    table[("stopall",)] = Classification(Intent.OPT_OUT_ALL, "STOPALL")
    for word in ("start", "unstop", "yes", "join"):
        table[(word,)] = Classification(Intent.OPT_IN, word.upper())
    for word in ("help", "info"):
        table[(word,)] = Classification(Intent.HELP, word.upper())
    return table


_KEYWORDS = _keyword_table()
# These mean nothing else even inside a longer message, so a clause of its own is enough
# ("Who is this? STOP."); END, CANCEL, QUIT and REVOKE are ordinary words and are not.
_CLAUSE_KEYWORDS = {
    words: reading
    for words, reading in _KEYWORDS.items()
    if words[0] in {"stop", "stopall", "unsubscribe", "unsub", "optout", "opt"}
}


def _keyword(core: _Tokens) -> Classification | None:
    """The whole message is a keyword, or JOIN plus one per-poster word ("JOIN HALL")."""
    if core in _KEYWORDS:
        return _KEYWORDS[core]
    if len(core) == 2 and core[0] == "join" and _opt_out_word(core) is None:
        return Classification(Intent.OPT_IN, "JOIN", core[1].upper())
    return None


# --------------------------------------------------------------------------------------------
# Plain requests not to be contacted
# --------------------------------------------------------------------------------------------

_ME = r"(?:me|us|this number|this phone|my (?:number|phone|mobile|details|data|name|email|info))"
_MESSAGES = (
    r"(?:texts?|txts?|messages?|msgs?|sms|emails?|e ?mails?|mails?|spam|calls?|updates?"
    r"|notifications?|alerts?|reminders?|newsletters?|subscriptions?|messaging|texting)"
)
_DETERMINERS = r"(?:(?:all|of|the|these|this|those|your|ur|my|any|more|such|them) )*"
_TEXTING = r"(?:texting|txting|texing|messaging|msging|emailing|spamming|contacting|whatsapping)"
_BOTHERING = (
    r"(?:sending|bothering|pestering|harassing|hassling|writing to"
    r"|text|txt|message|msg|email|contact|spam)"
)
_CONTACT = (
    r"(?:text|txt|message|msg|email|e mail|contact|bother|write to|whatsapp|spam|pester|harass)"
)
# "Call me" is also "call me a liar", so a phone call is only meant when the clause ends there.
_CALLING = r"(?:calling|ringing|phoning|call|ring|phone)"
_UNTIL_END = r"(?: again| anymore| any more| ever again)?$"


def _pattern(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(rf"\b(?:{a})\b" for a in alternatives))


# "stop all texts" widens like STOP ALL does.
_STOP_ALL_MESSAGES = _pattern(rf"stop ?all {_DETERMINERS}(?:\w+ )?{_MESSAGES}")

# Requests in the affirmative: a negation just before them ("please don't remove me")
# turns them around, so they are checked against :data:`_NEGATED`.
_AFFIRMATIVE_REQUESTS = _pattern(
    # "stop texting me", "quit messaging", "stop sending me these", "stop calling me"
    rf"(?:stop|quit|cease) {_TEXTING}",
    rf"(?:stop|quit|cease) {_BOTHERING} (?:{_ME}|these|those|them|this|my|any)",
    rf"(?:stop|quit|cease) {_CALLING} {_ME}{_UNTIL_END}",
    # "stop these texts", "no more messages", "cancel my subscription"; not "end": "the end
    # of the messaging from the council" is news, not a request.
    rf"(?:stop|cancel|quit|no more|unsubscribe from|opt out of) {_DETERMINERS}"
    rf"(?:\w+ )?{_MESSAGES}",
    # "remove me from your list", "take me off", "unsubscribe me", "delete my number"
    rf"(?:remove|delete|erase|unsubscribe|unsub|deregister|unregister) {_ME}",
    rf"(?:take|get|cross|strike|scratch) {_ME} off",
    rf"opt {_ME} out",
    r"remove (?:from|off) (?:your|ur|the|this) (?:\w+ )?list",
    # "I want to unsubscribe", "I'd like to opt out", "how do I stop these"
    r"(?:want|wish|like|need|wanna|trying|asking|asked you|told you) to (?:unsubscribe|unsub"
    r"|opt out|optout|be removed|be taken off|come off|stop (?:receiving|getting))",
    r"how (?:do|can|would|should) (?:i|we) (?:unsubscribe|unsub|opt out|optout|get off"
    r"|be removed|stop (?:these|this|them|it|receiving|getting))",
    r"leave (?:me|us|my \w+) alone",
    r"wrong (?:number|person|phone|mobile)",
    r"wrong no$",
)
# Requests that carry their own negation: "don't text me", "do not contact me again".
_NEGATIVE_REQUESTS = _pattern(
    rf"(?:dont|do not|never|no longer) (?:ever )?{_CONTACT} (?:{_ME}|to me|anything)",
    rf"^(?:dont|do not|never) (?:ever )?{_CONTACT}{_UNTIL_END}",
    rf"(?:dont|do not|never) (?:ever )?{_CALLING} {_ME}{_UNTIL_END}",
    rf"(?:dont|do not|never) (?:ever )?send (?:me|us|this number) {_DETERMINERS}"
    rf"(?:anything|these|this|them|(?:\w+ )?{_MESSAGES})",
    rf"(?:dont|do not|no longer) want (?:to (?:receive|get) )?{_DETERMINERS}(?:\w+ )?{_MESSAGES}",
    r"(?:dont|do not|no longer) want to (?:be contacted|hear from you)",
)
# A whole clause that only tells the sender to go away.
_DISMISSALS = _phrases(
    "go away", "get lost", "fuck off", "f off", "piss off", "sod off", "bugger off",
    "jog on", "do one", "no more", "stop it",
)  # fmt: skip
# A negation shortly before a request reverses it; "why don't you remove me" does not,
# and "not interested" is no negation of what follows.
_NEGATED = re.compile(
    r"(?<!why )\b(?:dont|do not|did not|didnt|never|wont|will not|cant|cannot|can not"
    r"|shouldnt|should not|doesnt|does not|wouldnt|would not|isnt|is not|not(?! interested))"
    r"(?: \w+){0,3} ?$"
)


def _request(clause: str) -> Classification | None:
    """A plain request not to be contacted somewhere in one clause, or None."""
    for match in _STOP_ALL_MESSAGES.finditer(clause):
        if not _NEGATED.search(clause[: match.start()]):
            return Classification(Intent.OPT_OUT_ALL, "STOP ALL")
    for match in _AFFIRMATIVE_REQUESTS.finditer(clause):
        if not _NEGATED.search(clause[: match.start()]):
            return Classification(Intent.OPT_OUT, match.group().upper())
    negative = _NEGATIVE_REQUESTS.search(clause)
    if negative is not None:
        return Classification(Intent.OPT_OUT, negative.group().upper())
    return None


def _clause_reading(core: _Tokens) -> Classification | None:
    """One clause (courtesy aside) as a stand-alone STOP / STOP ALL, a dismissal or a plain
    request not to be contacted; None if it is none of these."""
    if core in _CLAUSE_KEYWORDS:
        return _CLAUSE_KEYWORDS[core]
    if core in _DISMISSALS:
        return Classification(Intent.OPT_OUT, " ".join(core).upper())
    return _request(" ".join(core))


def _clause_request(clauses: Iterable[_Tokens]) -> Classification | None:
    """The first clause that asks to opt out; STOP ALL in any clause beats STOP in another."""
    first: Classification | None = None
    for clause in clauses:
        reading = _clause_reading(_core(clause))
        if reading is not None and reading.intent is Intent.OPT_OUT_ALL:
            return reading
        first = first or reading
    return first


# --------------------------------------------------------------------------------------------
# Opt-out words used about something else
# --------------------------------------------------------------------------------------------

_OPT_OUT_WORDS = frozenset(
    """
    stop stops stopped stopping stopall unsubscribe unsubscribed unsubscribing unsub
    cancel cancels cancelled canceled cancelling canceling cancellation end ends ended ending
    quit quits quitting revoke revoked revoking optout optedout remove removed removing removal
    """.split()
)
_OPT_OUT_PHRASES = _phrases("opt out", "opted out", "opting out", "not interested")


def _opt_out_word(words: _Tokens) -> str | None:
    """The first opt-out word or phrase in the message, upper-case, or None."""
    for i, word in enumerate(words):
        if word in _OPT_OUT_WORDS:
            return word.upper()
        if words[i : i + 2] in _OPT_OUT_PHRASES:
            return " ".join(words[i : i + 2]).upper()
    return None


# --------------------------------------------------------------------------------------------
# Classifying
# --------------------------------------------------------------------------------------------


def classify(text: str) -> Classification:
    """Read one inbound message.

    Precedence, first match wins:

    1. the whole message, courtesy aside, is a keyword (STOP ALL before STOP, JOIN HALL);
    2. some clause is a stand-alone STOP / STOP ALL or a plain request not to be contacted
       ("stop texting me", "remove me", "wrong number"): OPT_OUT or OPT_OUT_ALL;
    3. an opt-out word appears anyway: POSSIBLE_OPT_OUT, for a person to read;
    4. anything else: OTHER.
    """
    words = _words(normalise(text))
    if not words:
        return _OTHER
    keyword = _keyword(_core(words))
    if keyword is not None:
        return keyword
    request = _clause_request(_clauses(text))
    if request is not None:
        return request
    word = _opt_out_word(words)
    if word is not None:
        return Classification(Intent.POSSIBLE_OPT_OUT, word)
    return _OTHER
