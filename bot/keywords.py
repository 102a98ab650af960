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
be a clear affirmative act; opting *out* is read generously: besides the keywords it
understands plain-language requests, every FCC / CTIA word used as a request (alone, with
courtesy or insults, or several together: "delete quit"), misspellings of the keywords in
short replies ("optut", "ARRETT"), and Spanish, French, Portuguese, Welsh and German keywords
and requests.

Hostile or dismissive replies: a reply that only tells the sender to go away ("fuck off",
"go away", "get lost", "shut up") is an objection in its own words and is opted out (UK GDPR
art. 21: an objection to direct marketing can be made in any words); an insult that asks for
nothing ("fuck you", "idiots", "scam") is flagged for a person. Neither is ever left as an
ordinary reply.

Every reading carries the ``rule`` that produced it, a few words stored with the reply, so an
operator can see why a reply was (or was not) acted on.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

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
    ``argument`` is the per-poster keyword of "JOIN HALL" ("HALL"), otherwise None;
    ``rule`` says in a few words why ("keyword STOP with courtesy", "request: remove me",
    "misspelt OPTOUT"). It never quotes the message and is left out of equality, so two
    readings are equal when they mean the same.
    """

    intent: Intent
    keyword: str | None = None
    argument: str | None = None
    rule: str = field(default="no rule matched", compare=False)



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
# "stopppp", "pleaseeee": a letter held down says the word louder, not another word.
_HELD_LETTER = re.compile(r"(.)\1{2,}")
# "Wrong #" is "wrong number"; the "#" would otherwise be dropped with the punctuation.
_WRONG_HASH = re.compile(r"\bwrong\s*#", re.IGNORECASE)


def _without_accents(text: str) -> str:
    """"arrêt" reads "arret", "não" reads "nao": people type with and without accents."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


def _words(text: str) -> _Tokens:
    """Letters-and-digits words; apostrophes are dropped first so "don't" reads "dont" and
    hyphens split so "opt-out" reads "opt out"; accents go and held letters collapse."""
    plain = _without_accents(text.replace("'", ""))
    return tuple(_HELD_LETTER.sub(r"\1", w) for w in _WORD.findall(plain))


def _clauses(text: str) -> list[_Tokens]:
    """The words of each clause that has any."""
    pieces = (p for line in text.splitlines() for p in _CLAUSE_BREAK.split(normalise(line)))
    return [words for words in map(_words, pieces) if words]


def _phrases(*texts: str) -> frozenset[_Tokens]:
    return frozenset(tuple(t.split()) for t in texts)


# Words people wrap around a keyword without changing what it asks for: courtesy, emphasis
# and impatience, in the languages below.
_COURTESY = _phrases(
    "please", "pls", "plz", "plse", "pleas", "plea", "kindly", "just", "pretty please",
    "thanks", "thank you", "thankyou", "thank u", "thanx", "thnx", "thx", "ty", "ta",
    "cheers", "many thanks", "thanks a lot", "thanks very much", "thank you very much",
    "thank you so much", "much appreciated", "appreciated",
    "ok", "okay", "k", "ok then", "right", "sorry", "hi", "hello", "hey",
    "now", "right now", "asap", "immediately", "x", "xx", "mate", "sir", "madam",
    "no thanks", "no thank you", "not interested", "im not interested",
    "can you", "could you", "would you", "will you", "can u", "could u",
    "i said", "i already said", "already", "again", "seriously", "ffs", "omg", "ugh",
    "for the last time", "for gods sake",
    # es / pt / fr / cy / de
    "por favor", "porfa", "porfavor", "gracias", "muchas gracias", "no gracias", "favor",
    "obrigado", "obrigada", "muito obrigado", "nao obrigado", "pode", "podem", "puede",
    "merci", "non merci", "svp", "sil vous plait", "sil te plait", "merci beaucoup",
    "diolch", "diolch yn fawr", "dim diolch", "plis", "os gwelwch yn dda", "os gwelwch",
    "danke", "bitte", "nein danke", "ya",
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

# Keywords in the languages providers document them for (Twilio, AWS, Telnyx, the Canadian
# carriers' ARRET / AIDE) and in Welsh, for campaigns in Wales. Each reads exactly like its
# English counterpart.
_FOREIGN_OPT_OUT = {
    "es": ("baja", "darme de baja", "dar de baja", "alto", "parar", "para", "paren", "cancelar",
           "detener", "detengase", "detente", "fin", "no mas", "desuscribir", "desuscribirme",
           "anular", "basta", "eliminar", "borrar"),
    "fr": ("arret", "arrete", "arretez", "arreter", "desabonner", "me desabonner",
           "desabonnement", "desinscrire", "me desinscrire", "desinscription", "annuler",
           "stop svp", "td", "retirer", "supprimer"),
    "pt": ("sair", "parar", "pare", "parem", "cancelar", "descadastrar", "me descadastrar",
           "excluir", "descadastro", "remover", "chega", "nao quero mais", "quero sair"),
    "cy": ("stopio", "stopiwch", "dad danysgrifio", "daddanysgrifio", "datdanysgrifio",
           "dad tanysgrifio", "diddymu", "canslo", "dim mwy", "gadael", "peidiwch"),
    "de": ("stopp", "abmelden", "austragen", "abbestellen", "kundigen", "ende"),
}
_FOREIGN_OPT_IN = {
    "es": ("alta", "si", "iniciar", "comenzar", "suscribir", "unirme"),
    "fr": ("oui", "commencer", "abonner", "inscrire"),
    "pt": ("sim", "iniciar", "comecar", "assinar"),
    "cy": ("ie", "dechrau", "ymuno", "ydw"),
    "de": ("ja", "anmelden"),
}
_FOREIGN_HELP = {
    "es": ("ayuda", "informacion"),
    "fr": ("aide",),
    "pt": ("ajuda",),
    "cy": ("cymorth", "gwybodaeth"),
    "de": ("hilfe",),
}


def _keyword_table() -> dict[_Tokens, Classification]:
    table: dict[_Tokens, Classification] = {}
    for words, keyword in _OPT_OUT_KEYWORDS.items():
        table[words] = Classification(Intent.OPT_OUT, keyword, rule=f"keyword {keyword}")
        # "UNSUBSCRIBE ALL" asks for what STOP ALL does; widening an opt-out is always safe.
        table[(*words, "all")] = Classification(Intent.OPT_OUT_ALL, f"{keyword} ALL",
                                                rule=f"keyword {keyword} ALL")
    table[("stopall",)] = Classification(Intent.OPT_OUT_ALL, "STOPALL", rule="keyword STOPALL")
    for word in ("start", "unstop", "yes", "join"):
        table[(word,)] = Classification(Intent.OPT_IN, word.upper(),
                                        rule=f"keyword {word.upper()}")
    for word in ("help", "info"):
        table[(word,)] = Classification(Intent.HELP, word.upper(), rule=f"keyword {word.upper()}")
    for groups, intent in ((_FOREIGN_OPT_OUT, Intent.OPT_OUT), (_FOREIGN_OPT_IN, Intent.OPT_IN),
                           (_FOREIGN_HELP, Intent.HELP)):
        for lang, texts in groups.items():
            for text in texts:
                words = tuple(text.split())
                keyword = text.upper()
                table.setdefault(words, Classification(intent, keyword,
                                                       rule=f"keyword {keyword} ({lang})"))
    return table


_KEYWORDS = _keyword_table()
# These mean nothing else even inside a longer message, so a clause of its own is enough
# ("Who is this? STOP."); END, CANCEL, QUIT and REVOKE are ordinary words and are not.
_CLAUSE_KEYWORDS = {
    words: reading
    for words, reading in _KEYWORDS.items()
    if words[0] in {"stop", "stopall", "unsubscribe", "unsub", "optout", "opt"}
}


def _with_courtesy(reading: Classification, words: _Tokens, core: _Tokens) -> Classification:
    if words == core:
        return reading
    return Classification(reading.intent, reading.keyword, reading.argument,
                          rule=f"{reading.rule} with courtesy")


def _keyword(words: _Tokens) -> Classification | None:
    """The whole message is a keyword, or JOIN plus one per-poster word ("JOIN HALL")."""
    core = _core(words)
    if core in _KEYWORDS:
        return _with_courtesy(_KEYWORDS[core], words, core)
    if len(core) == 2 and core[0] == "join" and _opt_out_word(core) is None:
        return Classification(Intent.OPT_IN, "JOIN", core[1].upper(), rule="keyword JOIN")
    return None


# --------------------------------------------------------------------------------------------
# Plain requests not to be contacted
# --------------------------------------------------------------------------------------------

_ME = (
    r"(?:me|us|this number|this phone|my (?:number|phone|mobile|details|data|name|email|info"
    r"|contact|address|cell|no))"
)
_MESSAGES = (
    r"(?:texts?|txts?|messages?|msgs?|sms|emails?|e ?mails?|mails?|spam|calls?|updates?"
    r"|notifications?|alerts?|reminders?|newsletters?|subscriptions?|messaging|texting"
    r"|ads|adverts?|promos?|promotions?|marketing|solicitations?|requests?)"
)
_DETERMINERS = r"(?:(?:all|of|the|these|this|those|your|ur|my|any|more|such|them) )*"
_TEXTING = (
    r"(?:texting|txting|texing|textin|textng|txtin|txtng|textting|messaging|msging|messagin"
    r"|msgin|emailing|spamming|contacting|whatsapping"
    r"|harassing|pestering|hassling|bothering)"
)
_BOTHERING = (
    r"(?:sending|bothering|pestering|harassing|hassling|writing to"
    r"|text|txt|message|msg|email|contact|spam)"
)
_CONTACT = (
    r"(?:text|txt|message|msg|email|e mail|contact|bother|write to|whatsapp|spam|pester|harass"
    r"|send)"
)
# "Call me" is also "call me a liar", so a phone call is only meant when the clause ends there.
_CALLING = r"(?:calling|ringing|phoning|call|ring|phone)"
_UNTIL_END = r"(?: again| anymore| any more| ever again)?$"
_LIST = (
    r"(?:list|lists|database|system|contacts?|register|campaign|campaigns|groups?|thread"
    r"|texts?|messages?|emails?|updates|everything|all|numbers?|records?|mailings?)"
)
# "remove me from the rota" is about the rota: a removal names a list (or nothing) to count.
_NOT_FROM_ELSEWHERE = (
    rf"(?! (?:from|off|of) (?!(?:\w+ ){{0,3}}{_LIST}\b|(?:this|here|there|it|them|you)$))"
)


def _pattern(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(rf"\b(?:{a})\b" for a in alternatives))


# "stop all texts" widens like STOP ALL does.
_STOP_ALL_MESSAGES = _pattern(rf"stop ?all {_DETERMINERS}(?:\w+ )?{_MESSAGES}",
                              r"stop ?all (?:of )?(?:these|this|them|it)$")

# Requests in the affirmative, each with the rule it stands for: a negation just before
# them ("please don't remove me") turns them around, so they are checked against _NEGATED.
_AFFIRMATIVE_REQUESTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("request: stop contacting", _pattern(
        # "stop texting me", "quit messaging", "stop sending me these", "stop calling me"
        rf"(?:stop|quit|cease|desist) {_TEXTING}",
        rf"(?:stop|quit|cease) {_BOTHERING} (?:{_ME}|these|those|them|this|my|any)",
        r"(?:stop|quit|cease) (?:sending|bothering|pestering|harassing|hassling)$",
        rf"(?:stop|quit|cease) {_CALLING} {_ME}{_UNTIL_END}",
        r"cease and desist",
    )),
    ("request: no more messages", _pattern(
        # "stop these texts", "no more messages", "cancel my subscription"; not "end": "the
        # end of the messaging from the council" is news, not a request.
        rf"(?:stop|cancel|quit|no more|enough|unsubscribe from|opt out of|optout of)"
        rf" (?:with )?{_DETERMINERS}(?:\w+ )?{_MESSAGES}",
    )),
    ("request: remove me", _pattern(
        # "remove me from your list", "take me off", "unsubscribe me", "lose my number"
        rf"(?:remove|delete|erase|unsubscribe|unsub|deregister|unregister|scrub|cancel|purge)"
        rf" {_ME}{_NOT_FROM_ELSEWHERE}",
        # "lose my number", never "drop me a text"
        r"(?:lose|forget|drop|bin|ditch) (?:my|this) (?:number|phone number|details|mobile|no)",
        rf"(?:take|get|cross|strike|scratch|keep) {_ME} off(?:$| (?:of )?(?:your|ur|the|this"
        rf"|these|that|all|ye|my) (?:\w+ )?{_LIST}\b|{_NOT_FROM_ELSEWHERE} (?:now|please))",
        rf"opt {_ME} out",
        rf"(?:remove|take|delete|get) (?:from|off) (?:(?:your|ur|the|this|my|all|these) )?"
        rf"(?:\w+ )?{_LIST}\b",
        rf"leave (?:me|us|my \w+) (?:off|out of) (?:(?:your|ur|the|this|all|these) )?"
        rf"(?:\w+ )?{_LIST}\b",
        rf"(?:want|wanna|like|need|get|be) off (?:of )?(?:your|ur|the|this|these|all|ye)"
        rf" (?:\w+ )?{_LIST}",
        r"(?:i|we) (?:want|wanna|would like|d like|need) out$",
        rf"(?:unsubscribe|unsub|opt out|optout|opt me out|remove me|delete me) (?:from|of)"
        rf" {_DETERMINERS}(?:\w+ )?{_LIST}\b",
    )),
    ("request: withdraws consent", _pattern(
        r"(?:revoke|revoking|withdraw|withdrawing|cancel|retract) (?:my |all )?(?:consent"
        r"|permission|agreement|subscription)",
    )),
    ("request: wants to opt out", _pattern(
        # "I want to unsubscribe", "I'd like to opt out", "how do I stop these"
        r"(?:want|wish|like|need|wanna|trying|asking|asked you|asked|told you) to"
        r" (?:unsubscribe|unsub|opt out|optout|be removed|be taken off|come off|get off"
        r"|stop (?:receiving|getting|these|this|them|the|your))",
        r"(?:want|wish|like|need|wanna) to (?:revoke|cancel|quit|end|stop)(?: (?:this|these|it"
        r"|them|my consent|my subscription|the texts|texts|messages|the messages))?$",
        r"how (?:do|can|would|should) (?:i|we) (?:unsubscribe|unsub|opt out|optout|get off"
        r"|be removed|stop (?:these|this|them|it|receiving|getting|the|your))",
        r"(?:said|told you|asked you|asked) (?:to )?(?:stop|unsubscribe|opt out|remove me"
        r"|take me off)(?: (?:texting|messaging|contacting|it|this|now|already|me))*$",
        r"(?:i|im|we) (?:am |are )?(?:opting|opted|opt) out",
    )),
    ("request: leave me alone", _pattern(
        r"leave (?:me|us|my|my \w+) (?:the (?:hell|fuck|heck|f) )?(?:alone|be)",
    )),
    ("wrong number", _pattern(
        # not "wrong phone": "Wrong phone! This phone! I answer this one" is about handsets
        r"wrong (?:number|person|num|persons number)",
        r"wrong no$",
    )),
    # Spanish, Portuguese, French, Welsh, German: the same kinds of request.
    ("request (es)", _pattern(
        r"no (?:me |nos )?(?:manden|mandes|mande|envien|envies|envie|escriban|escribas"
        r"|contacten|contactes|llamen|molesten|molestes)(?: mas)?"
        r"(?: (?:mensajes|mensaje|sms|textos|nada|correos|promociones))?$",
        r"(?:dejen|deje|deja|dejar|dejenme|dejame) de (?:mandar|enviar|escribir|molestar|llamar)"
        r"(?:me|nos)?",
        r"(?:darme|dame|denme|deme|me doy) de baja",
        r"(?:quiero|quisiera|deseo) (?:salir|cancelar|desuscribirme|que me (?:borren|eliminen"
        r"|quiten|saquen))",
        r"(?:borren|borrar|eliminen|eliminar|quiten|quitar|saquen|sacar|sacame|saquenme"
        r"|borrenme|eliminenme|quitenme|borrame|eliminame|quitame) (?:mi numero"
        r"|de (?:la|su|tu|esta) lista)",
        r"no (?:quiero|deseo) (?:recibir )?(?:mas )?(?:mensajes|sms|textos|correos"
        r"|promociones)",
        r"no (?:quiero|deseo) (?:recibir )?mas$",
        r"no mas (?:mensajes|sms|textos|correos|promociones)",
    )),
    ("request (pt)", _pattern(
        r"(?:quero|queria|gostaria de|desejo) (?:sair|cancelar|descadastrar|parar de receber"
        r"|nao receber)(?: (?:da|desta|dessa) lista| disso| daqui)?$",
        r"(?:nao|pare de|parem de|para de) (?:me )?(?:mande|mandem|envie|enviem|mandar"
        r"|enviar) (?:mais )?(?:mensagens|mensagem|sms|msg|textos)",
        r"(?:pare|parem|para) de (?:me )?(?:mandar|enviar|ligar|incomodar)",
        r"(?:me )?(?:tira|tire|tirem|remova|removam|exclua|excluam|apague|apaguem)"
        r" (?:me|meu numero|da lista|dessa lista)",
        r"nao (?:quero|desejo) (?:mais )?receber",
        r"sair da (?:lista|sua lista)",
    )),
    ("request (fr)", _pattern(
        r"(?:arretez|arrete|arreter|cessez) de (?:menvoyer|me contacter|mecrire|envoyer"
        r"|me deranger|mappeler|me spammer)",
        r"ne (?:plus )?(?:menvoyez|me contactez|mecrivez|menvoyer|me contacter)(?: plus)?",
        r"(?:je ne veux|je veux) (?:plus|pas) (?:de )?(?:recevoir|messages|sms)",
        r"(?:retirez|supprimez|enlevez|desinscrivez|desabonnez) (?:moi|mon numero)",
    )),
    ("request (cy)", _pattern(
        r"peidiwch (?:a|ag|ac) (?:anfon|cysylltu|tecstio|ffonio|negesu)",
        r"(?:tynnwch|dilewch) (?:fi|fy rhif|ni)",
        r"dim mwy o (?:negeseuon|negeseuon testun|decstiau|tecstiau|negesuon)",
        r"stopiwch (?:anfon|tecstio|cysylltu)",
        r"(?:dwi ddim|dw i ddim|nid wyf) (?:eisiau|isio|moyn) (?:derbyn|negeseuon|rhagor|mwy)",
    )),
    ("request (de)", _pattern(
        r"(?:keine|nicht mehr) (?:sms|nachrichten|mehr nachrichten|mehr sms)",
        r"(?:bitte )?(?:abmelden|austragen|loschen sie meine nummer)",
    )),
)
# Requests that carry their own negation: "don't text me", "do not contact me again".
_NEGATIVE_REQUESTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("request: don't contact me", _pattern(
        rf"(?:dont|do not|never|no longer) (?:ever )?{_CONTACT} (?:{_ME}|to me|anything)",
        rf"^(?:dont|do not|never) (?:ever )?{_CONTACT}{_UNTIL_END}",
        rf"(?:dont|do not|never) (?:ever )?{_CALLING} {_ME}{_UNTIL_END}",
        rf"(?:dont|do not|never) (?:ever )?send (?:me|us|this number) {_DETERMINERS}"
        rf"(?:anything|these|this|them|(?:\w+ )?{_MESSAGES})",
    )),
    ("request: doesn't want messages", _pattern(
        rf"(?:dont|do not|no longer) (?:want|wish for|need) (?:to (?:receive|get) )?"
        rf"{_DETERMINERS}(?:\w+ )?{_MESSAGES}",
        r"(?:dont|do not|no longer) (?:want|wish|care) to (?:be contacted|hear from you"
        r"|receive|be texted|be messaged|be on|get these|get your|get any|be sent)",
        r"(?:dont|do not|no longer) (?:want|need) (?:these|them|any more|anymore|it anymore)$",
        r"not (?:want|wish) to (?:receive|be contacted|be texted)",
    )),
)
# A whole clause that only tells the sender to go away: an objection in its own words.
_DISMISSALS = _phrases(
    "go away", "get lost", "fuck off", "fuckoff", "fuk off", "fck off", "f off", "eff off",
    "piss off", "sod off", "bugger off", "naff off", "buzz off", "bog off", "back off",
    "jog on", "do one", "no more", "stop it", "shut up", "shut it", "shutup", "go to hell",
    "get stuffed", "enough", "quit it", "cut it out", "knock it off", "pack it in",
    "enough already", "just fuck off", "fuck off and die",
    "f k off", "f off", "sod off", "get off my phone", "bugger off", "chega", "basta",
)  # fmt: skip
# A negation shortly before a request reverses it; "why don't you remove me" does not,
# and "not interested" is no negation of what follows.
_NEGATED = re.compile(
    r"(?<!why )\b(?:dont|do not|did not|didnt|never|wont|will not|cant|cannot|can not"
    r"|shouldnt|should not|doesnt|does not|wouldnt|would not|isnt|is not|not(?! interested))"
    r"(?: (?:ever|just|really|you|u|please|pls|want|wanna|need|have|ask|asked|to|me|for"
    r"|mean|meant|say|said|tell|told|i|we|ya))* ?$"
)
# The whole message and nothing else (one clause of a longer message means something else:
# "text me when you get off, don't call").
_WHOLE_MESSAGE_REQUESTS = {
    _phrases("do not call", "dont call", "do not text", "dont text", "no calls",
             "no texts", "no more texts", "no contact", "do not contact", "dont contact",
             "no spam", "do not disturb", "dnc", "unsubscribed", "opted out", "optedout",
             "remove me", "delete me", "i want out",
             "off list", "off the list", "off your list", "no texting", "no text", "no sms",
             "no messages", "no mensajes", "no mensagens",
             "take me off", "unsub me", "unsubscribe me please"): "request: whole message",
}


def _request(clause: str) -> Classification | None:
    """A plain request not to be contacted somewhere in one clause, or None."""
    for match in _STOP_ALL_MESSAGES.finditer(clause):
        if not _NEGATED.search(clause[: match.start()]):
            return Classification(Intent.OPT_OUT_ALL, "STOP ALL", rule="request: stop all")
    for rule, pattern in _AFFIRMATIVE_REQUESTS:
        for match in pattern.finditer(clause):
            if not _NEGATED.search(clause[: match.start()]):
                return Classification(Intent.OPT_OUT, match.group().upper(), rule=rule)
    for rule, pattern in _NEGATIVE_REQUESTS:
        negative = pattern.search(clause)
        if negative is not None:
            return Classification(Intent.OPT_OUT, negative.group().upper(), rule=rule)
    return None


def _clause_reading(core: _Tokens) -> Classification | None:
    """One clause (courtesy aside) as a stand-alone STOP / STOP ALL, a dismissal or a plain
    request not to be contacted; None if it is none of these."""
    if core in _CLAUSE_KEYWORDS:
        return _CLAUSE_KEYWORDS[core]
    if core in _DISMISSALS:
        return Classification(Intent.OPT_OUT, " ".join(core).upper(), rule="dismissal")
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
# Opt-out words on their own: "delete quit", "remove idiots", "optut", "quitremove"
# --------------------------------------------------------------------------------------------

# Words that ask to stop when nothing but courtesy, insults or the name of the messages is
# around them (the FCC's list, the CTIA keywords, their common relatives and translations).
_REQUEST_WORDS = frozenset(
    """
    stop unsubscribe unsub cancel end quit revoke optout remove removed delete deregister
    unregister desist stp stahp unsubscribed optedout
    arret arrete arretez desabonner desinscrire baja alto parar pare parem detener cancelar
    fin sair descadastrar remover stopio stopiwch diddymu canslo stopp abmelden austragen
    detengase detente paren
    abbestellen
    """.split()
)
# Targets of a misspelling: long enough that one or two slips still name the word.
_TYPO_TARGETS = (
    "stop", "unsubscribe", "cancel", "quit", "revoke", "optout", "remove", "delete", "arret",
    "parar", "cancelar", "stopio", "descadastrar", "desabonner",
)  # fmt: skip
# Real words a slip away from a target: never read as the target.
_NOT_TYPOS = frozenset(
    """
    step shop stomp stoop atop spot slop stow stops top tops soap snop stoic stood story stone
    stole stove store stool stork storm
    quite quiet quilt suit quid quip quiz quits quint
    remote removal revolve evoke invoke revote reprove remover move remark
    cancer canal camel panel candle chancel
    debate relate delta delete deleted deletes
    arrest parer pasar padar param parade
    output outpost subscribe subscribed resubscribe subscriber
    move rove pout tout cane dele recover resolve devote deplete chanel channel remind
    """.split()
)
# Ordinary words too ("cancel it", "delete this", "I quit"): alone with a pointer they are
# about something else, so only the unambiguous ones take one ("stop this").
_WEAK_REQUEST_WORDS = frozenset(
    "cancel end quit remove removed delete deregister unregister fin alto para sair".split()
)
# What may stand around request words and leave the message a request: the messages
# themselves, courtesy, impatience and insults. "the", "by", "of", "non" are *not* here:
# "the end", "stop by", "end of the month", "non stop" are about something else.
_MESSAGE_NAMES = frozenset(
    """
    text texts txt txts message messages msg msgs sms ads ad spam promos promotions
    promociones promocoes mensajes mensagens textos marketing notifications emails email
    calls number list
    """.split()
)
_AROUND_REQUESTS = _MESSAGE_NAMES | frozenset(
    "and to too now please pls plz already again asap".split()
)
_INSULTS = frozenset(
    """
    fuck fucking fuckin fu fk fck f k off idiot idiots moron morons bloody damn dammit
    shit hell asshole assholes scum jerks jerk ffs wtf omg bitch bitches cunt cunts twat twats
    wanker wankers prick pricks dick dicks bastard bastards losers clowns go away lost piss
    """.split()
)
# "stop this", "stop it you morons": a pointer needs an unambiguous request word (or two
# request words), someone addressed needs an insult beside them.
_POINTERS = frozenset("this these that it them".split())
_ADDRESSEES = frozenset("you u guys people".split())


def _distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment edit distance (a swapped pair counts one), capped at
    ``limit + 1``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return min(previous[-1], limit + 1)


def _misspelt(word: str) -> str | None:
    """The request word a short reply's word is a slip of, or None. One slip for a word of
    up to five letters, two for longer ones; never for a real word a slip away."""
    if len(word) < 4 or word in _NOT_TYPOS or not word.isalpha():
        return None
    for target in _TYPO_TARGETS:
        limit = 1 if len(target) <= 5 else 2
        if _distance(word, target, limit) <= limit:
            return target
    return None


def _compound(word: str) -> tuple[str, ...] | None:
    """A run-together pair ("quitremove", "stop2stop", "endall"): its parts, or None."""
    letters = "".join(ch for ch in word if not ch.isdigit())
    for i in range(3, len(letters) - 2):
        head, tail = letters[:i], letters[i:]
        if head in _REQUEST_WORDS and (tail in _REQUEST_WORDS or tail in _AROUND_REQUESTS
                                        or tail in _POINTERS or tail == "all"):
            return head, tail
    return None


def _request_words(words: _Tokens) -> Classification | None:
    """The whole message, courtesy aside, is request words with only pronouns, the
    messages' name or insults around them; in a short reply a word may be misspelt."""
    core = _core(words)
    merged: list[str] = []
    i = 0
    while i < len(core):  # "opt out", "opting out", "opted out" are one word here
        if core[i] in ("opt", "opting", "opted") and core[i + 1 : i + 2] == ("out",):
            merged.append("optout")
            i += 2
        else:
            merged.append(core[i])
            i += 1
    short = len(merged) <= 3
    found: list[str] = []
    typo: str | None = None
    every = pointed = addressed = insulted = named = False
    for position, word in enumerate(merged):
        if word in _REQUEST_WORDS:
            found.append(word)
        elif word == "all" and found:
            every = True
        elif word in _AROUND_REQUESTS:
            named = named or word in _MESSAGE_NAMES
        elif word in _INSULTS:
            insulted = True
        elif word in _POINTERS:
            pointed = True
        elif word in _ADDRESSEES:
            addressed = True
        elif word in ("i", "im") and position == 0:
            continue  # "I quit", "I opt out"
        elif (parts := _compound(word)) is not None:
            found.append(parts[0])
            if parts[1] == "all":  # "ENDALL" is END ALL run together: a keyword
                every = named = True
        elif short and (target := _misspelt(word)) is not None:
            found.append(target)
            typo = target
        else:
            return None
    if not found or (addressed and not insulted):
        return None
    unambiguous = named or len(found) > 1 or found[0] not in _WEAK_REQUEST_WORDS
    if (pointed or every) and not unambiguous:
        return None
    keyword = found[0].upper()
    if every:
        return Classification(Intent.OPT_OUT_ALL, f"{keyword} ALL",
                              rule="opt-out words only, all")
    if typo is not None:
        return Classification(Intent.OPT_OUT, typo.upper(), rule=f"misspelt {typo.upper()}")
    return Classification(Intent.OPT_OUT, keyword, rule="opt-out words only")


# --------------------------------------------------------------------------------------------
# Opt-out words used about something else, and hostility: kept for a person to read
# --------------------------------------------------------------------------------------------

_OPT_OUT_WORDS = frozenset(
    """
    stop stops stopped stopping stopall unsubscribe unsubscribed unsubscribing unsub
    cancel cancels cancelled canceled cancelling canceling cancellation end ends ended ending
    quit quits quitting revoke revoked revoking optout optedout remove removed removing removal
    delete deleted unsubscription
    arret arrete arretez baja parar pare parem detener cancelar sair descadastrar stopio
    stopiwch stopp abmelden desabonner desinscrire diddymu canslo halt cease desist
    """.split()
)
_OPT_OUT_PHRASES = _phrases(
    "opt out", "opted out", "opting out", "not interested", "no mas", "no more", "dim mwy",
    "leave me", "leave us", "take me", "my number", "this number", "signed up", "im out",
    "too many", "im done", "am done", "were done",
    "me out",
)
# Hostility without a request: a person reads it (opting it out would also be defensible).
_HOSTILE_WORDS = frozenset(
    """
    fuck fucks fucking fuckin fucker fuckers fck fcking fk fu effing wtf shit shite bullshit
    crap piss pissed
    wanker wankers twat twats prick pricks idiot idiots moron morons scum bastard bastards
    arsehole arseholes asshole assholes cunt cunts bitch dick dicks bollocks tosser tossers
    harass harassing harassment spam spamming spammer spammers scam scammer scammers
    block blocked blocking report reported reporting annoying stfu gtfo
    """.split()
)
_HOSTILE_PHRASES = _phrases("f k", "f off", "f you", "screw you", "go to hell", "shut up",
                            "get lost", "go away", "sod off", "naff off", "get bent",
                            "drop dead", "f yourself", "kiss my", "my ass")
# A whole reply that only declines: not a request to stop, but a person should see it.
_REFUSALS = _phrases("no", "no thanks", "no thank you", "nope", "nah", "no way", "not for me",
                     "no chance", "not a chance", "never", "dont care", "who cares",
                     "na", "na diolch", "dim diolch", "no gracias", "non merci", "nao obrigado",
                     "nein danke", "nein", "no me interesa", "no estoy interesado",
                     "no estoy interesada", "nao tenho interesse", "nao quero", "pas interesse",
                     "dim diddordeb", "kein interesse")
# A message of nothing but these symbols says STOP, or something hostile, without a word.
_STOP_SYMBOLS = frozenset(
    "\U0001f6d1\u270b\U0001f6ab\u26d4\U0001f645\U0001f91a\U0001f44e"  # stop, hand, no entry
    "\U0001f595\U0001f92c\U0001f621\U0001f620\U0001f4a9"  # finger, cursing, angry, pile
)


def _opt_out_word(words: _Tokens) -> str | None:
    """The first opt-out word or phrase in the message, upper-case, or None."""
    for i, word in enumerate(words):
        if word in _OPT_OUT_WORDS or word.startswith(("stop", "unsubscrib", "optout")):
            return word.upper()
        if words[i : i + 2] in _OPT_OUT_PHRASES:
            return " ".join(words[i : i + 2]).upper()
    return None


def _hostile_word(words: _Tokens) -> str | None:
    for i, word in enumerate(words):
        if word in _HOSTILE_WORDS:
            return word.upper()
        if words[i : i + 2] in _HOSTILE_PHRASES:
            return " ".join(words[i : i + 2]).upper()
    return None


# --------------------------------------------------------------------------------------------
# Classifying
# --------------------------------------------------------------------------------------------


def classify(text: str) -> Classification:
    """Read one inbound message.

    Precedence, first match wins:

    1. the whole message, courtesy aside, is a keyword, in English or one of the languages
       above (STOP ALL before STOP, JOIN HALL);
    2. the whole message is a short request ("do not call", "remove me");
    3. some clause is a stand-alone STOP / STOP ALL, a dismissal or a plain request not to
       be contacted ("stop texting me", "remove me", "wrong number", "no me manden mas"):
       OPT_OUT or OPT_OUT_ALL;
    4. the whole message is request words with only pronouns, the messages' name, courtesy
       or insults around them ("delete quit", "remove idiots"), in a short reply possibly
       misspelt ("optut") or run together ("quitremove"): OPT_OUT;
    5. hostility, or an opt-out word used anyway: POSSIBLE_OPT_OUT, for a person to read;
    6. anything else: OTHER.
    """
    text = _WRONG_HASH.sub("wrong number", text)
    words = _words(normalise(text))
    if not words:
        if any(ch in _STOP_SYMBOLS for ch in text):
            return Classification(Intent.POSSIBLE_OPT_OUT, "SYMBOL", rule="symbols only")
        return Classification(Intent.OTHER, rule="no words")
    keyword = _keyword(words)
    if keyword is not None:
        return keyword
    core = _core(words)
    for phrases, rule in _WHOLE_MESSAGE_REQUESTS.items():
        if core in phrases:
            return Classification(Intent.OPT_OUT, " ".join(core).upper(), rule=rule)
    request = _clause_request(_clauses(text))
    if request is not None:
        return request
    only_requests = _request_words(words)
    if only_requests is not None:
        return only_requests
    hostile = _hostile_word(words)
    if hostile is not None:
        return Classification(Intent.POSSIBLE_OPT_OUT, hostile, rule="hostile, no request")
    word = _opt_out_word(words)
    if word is not None:
        return Classification(Intent.POSSIBLE_OPT_OUT, word,
                              rule="opt-out word about something else")
    if words in _REFUSALS:
        return Classification(Intent.POSSIBLE_OPT_OUT, " ".join(words).upper(),
                              rule="refusal, no request")
    return Classification(Intent.OTHER)
