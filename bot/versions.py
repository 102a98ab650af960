"""Consent text versions: a short digest of the exact words a person was shown."""

from __future__ import annotations

import hashlib

__all__ = ["consent_text_version"]


def consent_text_version(text: str) -> str:
    """The same words always give the same version; any change gives a new one."""
    return hashlib.sha256(text.strip().encode()).hexdigest()[:12]
