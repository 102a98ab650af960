"""Test helpers shipped with consentgate, for teams that integrate with it.

``consentgate.testing.harness`` runs a whole gateway on loopback (the real HTTP server, the
real dispatcher, a real database file); ``consentgate.testing.fakes`` holds loopback servers
that speak the providers' wire formats (Twilio's REST API and signed webhooks, Telegram's Bot
API, an SMTP relay built on aiosmtpd). Point the real provider clients at them and test
against the real thing, as consentgate's own tests do. ``consentgate.testing.waiting`` has
``eventually``, to wait for a condition rather than sleep.
"""
