"""Opt-out understanding, measured on real replies: how many requests to stop the classifier
acts on, how many ordinary replies it wrongly opts out, and whether every reply that mentions
stopping (or is hostile) reaches a person.

The replies live in ``tests/data/sms_replies.tsv`` (gathered from public sources, each row
naming its source) and ``tests/data/sms_replies_more.tsv`` (more of the same kinds). Columns:
``text``, ``expected``, ``source``, ``note``; tags such as ``[list-entry]`` or ``[lang=es]``
in the note group the figures.

    .venv/bin/python -m bench.optout [--file FILE ...] [--json]

Like the other benchmarks it also writes its figures to ``bench/out/optout.json``.

Figures:

* **opt-out recall**: of the replies labelled ``opt_out`` / ``opt_out_all``, the share the
  classifier opts out (either intent counts: widening an opt-out is always safe);
* **false opt-out rate**: of the replies that are not requests (``flag``, ``other``,
  ``opt_in``, ``help``), the share it opts out;
* **flag recall**: of the replies labelled ``flag`` or ``dismiss``, the share that reaches a
  person, i.e. is flagged or (only where opting out is acceptable, ``dismiss``) opted out.
  A ``flag`` reply that is opted out counts as a miss here *and* as a false opt-out.
* **keyword accuracy**: ``opt_in`` and ``help`` replies read as exactly that.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from consentgate.bot.keywords import Intent, classify

__all__ = ["Reply", "Score", "load", "main", "score"]

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
OUT = Path(__file__).resolve().parent / "out"
DEFAULT_FILES = (DATA / "sms_replies.tsv", DATA / "sms_replies_more.tsv")

_OUT = {Intent.OPT_OUT, Intent.OPT_OUT_ALL}
_NOT_REQUESTS = {"flag", "other", "opt_in", "help"}
_TAG = re.compile(r"\[([^\]]+)\]")


@dataclass(frozen=True)
class Reply:
    text: str
    expected: str
    source: str
    note: str

    @property
    def tags(self) -> tuple[str, ...]:
        """The ``[...]`` tags of the note, split on ``/`` ("[real/dev]" is both)."""
        found: list[str] = []
        for tag in _TAG.findall(self.note):
            found.extend(t.strip() for t in tag.split("/") if t.strip())
        return tuple(found)


def load(paths: Iterable[Path]) -> list[Reply]:
    """Every row of the TSV files that exist; ``\\n`` in a text is a line break."""
    replies: list[Reply] = []
    for path in paths:
        if not path.exists():
            continue
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                replies.append(Reply(row["text"].replace("\\n", "\n"), row["expected"],
                                     row.get("source") or "", row.get("note") or ""))
    return replies


@dataclass
class Score:
    """Counts for one group of replies."""

    requests: int = 0
    opted_out: int = 0
    not_requests: int = 0
    false_opt_outs: int = 0
    to_read: int = 0
    reached: int = 0
    keywords: int = 0
    keywords_right: int = 0

    def add(self, reply: Reply, got: Intent) -> bool:
        """Count one reply; True when it was read right by the measures above."""
        right = True
        if reply.expected in ("opt_out", "opt_out_all"):
            self.requests += 1
            self.opted_out += got in _OUT
            right = got in _OUT
        if reply.expected in _NOT_REQUESTS:
            self.not_requests += 1
            self.false_opt_outs += got in _OUT
            right = got not in _OUT
        if reply.expected in ("flag", "dismiss"):
            self.to_read += 1
            ok = got is Intent.POSSIBLE_OPT_OUT or (reply.expected == "dismiss" and got in _OUT)
            self.reached += ok
            right = right and ok
        if reply.expected in ("opt_in", "help"):
            self.keywords += 1
            ok = got.value == reply.expected
            self.keywords_right += ok
            right = right and ok
        return right

    @staticmethod
    def _ratio(n: int, d: int) -> float | None:
        return None if d == 0 else round(n / d, 3)

    def figures(self) -> dict[str, float | int | None]:
        return {
            "opt_out_recall": self._ratio(self.opted_out, self.requests),
            "requests": self.requests,
            "false_opt_out_rate": self._ratio(self.false_opt_outs, self.not_requests),
            "not_requests": self.not_requests,
            "flag_recall": self._ratio(self.reached, self.to_read),
            "to_read": self.to_read,
            "keyword_accuracy": self._ratio(self.keywords_right, self.keywords),
        }


def score(replies: Sequence[Reply]) -> tuple[Score, dict[str, Score], list[tuple[Reply, str]]]:
    """Overall score, score by tag, and the misses with what the classifier said."""
    overall = Score()
    by_tag: dict[str, Score] = defaultdict(Score)
    misses: list[tuple[Reply, str]] = []
    for reply in replies:
        reading = classify(reply.text)
        if not overall.add(reply, reading.intent):
            misses.append((reply, f"{reading.intent.value} ({reading.rule})"))
        for tag in reply.tags:
            by_tag[tag].add(reply, reading.intent)
    return overall, dict(by_tag), misses


def _fmt(value: float | int | None) -> str:
    return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.optout", description=__doc__.splitlines()[0])
    p.add_argument("--file", action="append", type=Path,
                   help="a TSV of replies (default: the project's two corpus files)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    replies = load(args.file or DEFAULT_FILES)
    if not replies:
        print("no replies found", file=sys.stderr)
        return 2
    overall, by_tag, misses = score(replies)
    report = json.dumps({"replies": len(replies), "overall": overall.figures(),
                         "by_tag": {t: s.figures() for t, s in sorted(by_tag.items())},
                         "misses": [{"text": r.text, "expected": r.expected, "got": g}
                                    for r, g in misses]}, indent=2, ensure_ascii=False)
    OUT.mkdir(exist_ok=True)
    (OUT / "optout.json").write_text(report + "\n", encoding="utf-8")
    if args.json:
        print(report)
        return 0
    header = ("group", "opt-out recall", "n", "false opt-out", "n", "flag recall", "n",
              "keywords")
    rows = [("overall", overall.figures())]
    rows += [(tag, s.figures()) for tag, s in sorted(by_tag.items())]
    print(f"{len(replies)} replies")
    print(f"{header[0]:<16}" + "".join(f"{h:>15}" for h in header[1:]))
    for name, f in rows:
        print(f"{name:<16}" + "".join(f"{_fmt(v):>15}" for v in f.values()))
    print(f"\nmisses ({len(misses)}):")
    for reply, got in misses:
        print(f"  expected {reply.expected:<11} got {got:<40} {reply.text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
