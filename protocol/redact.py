"""Keep secrets out of messages, logs and tables (DESIGN.md §4.10)."""

from __future__ import annotations

import os
import re

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/@\s]+)@")
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GIT_PASSWORD", "GITHUB_TOKEN",
               "AUTOLAB_GIT_TOKEN")


def redact(text: str) -> str:
    """Return ``text`` with URL credentials, HF tokens and known secret values masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text)
    text = _TOKEN_LIKE.sub("hf_***", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    return text
