"""The one Jinja environment: every page the gateway serves and every email it composes.

Web pages live in ``bot/web/templates``, the email body in ``bot/templates``; one environment
reads both, so escaping and whitespace rules are the same wherever text is rendered. HTML is
escaped; the plain-text email is not (nothing there is read as markup).
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

__all__ = ["templates"]

_HERE = Path(__file__).parent

templates = Environment(
    loader=FileSystemLoader([str(_HERE / "web" / "templates"), str(_HERE / "templates")]),
    autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml"), default=False,
                                 default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
