"""consentgate: a messaging gateway for election campaigns that makes consent impossible to skip.

The code lives in the repository's top-level folders (``bot/``, ``adapters/``, ``storage/``,
``testing/``); this package gathers them under one name, so that what is installed is
``consentgate.bot``, ``consentgate.adapters``, ``consentgate.storage`` and
``consentgate.testing``, and nothing with a generic name lands at the top of site-packages.
The four entries beside this file are links to those folders.
"""
