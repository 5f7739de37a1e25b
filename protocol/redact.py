"""Keep secrets out of messages, logs and tables (DESIGN.md §4.10)."""

from __future__ import annotations

import os
import re

# Up to the authority's last "@" (a password may hold an unencoded one).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<cred>[^/\s]+)@")
# Token formats of the hosts labs live on: Hugging Face, GitHub, GitLab.
_TOKEN_LIKE = re.compile(r"\b(?P<kind>hf_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-)"
                         r"[A-Za-z0-9_-]{8,}")
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GIT_PASSWORD", "GITHUB_TOKEN",
               "AUTOLAB_GIT_TOKEN")


def redact(text: str) -> str:
    """Return ``text`` with URL credentials, HF tokens and known secret values masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text)
    text = _TOKEN_LIKE.sub(lambda m: f"{m['kind']}***", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    return text
