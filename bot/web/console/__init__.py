"""The organiser console under ``/console/``: the campaign team's pages.

A sub-application of the gateway's web app, so its sign-in, forgery checks and HTML error
pages apply to its own routes only. Its handlers call the same services as the API
(:mod:`bot.broadcasts`, :mod:`bot.links`, :mod:`bot.replies`, :mod:`bot.subscribers`,
:mod:`bot.privacy`, :mod:`bot.imports`, :mod:`bot.report`, :mod:`bot.audit`) and two of its
own (:mod:`bot.sessions`, :mod:`bot.overview`), all built once by the gateway: it has no rule
and no SQL of its own.
"""

from __future__ import annotations

from consentgate.bot.web.console.routes import console_app

__all__ = ["console_app"]
