"""Secrets never reach messages, logs or tables."""

from __future__ import annotations

import pytest

from autolab.protocol.redact import redact

from .conftest import run_cli

TOKEN = "hf_abcdefghijklmnop1234"


def test_redact_masks_url_credentials_and_tokens(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "s3cr3t-value-42")
    text = f"https://user:{TOKEN}@example.com/lab.git failed with s3cr3t-value-42 and {TOKEN}"
    masked = redact(text)
    assert TOKEN not in masked and "s3cr3t-value-42" not in masked
    assert "https://***@example.com/lab.git" in masked


@pytest.mark.slow
def test_cli_errors_never_print_the_token_of_a_lab_url(tmp_path):
    url = f"https://user:{TOKEN}@127.0.0.1:9/lab.git"  # nothing listens on port 9
    proc = run_cli("status", "--lab", url, env={"AUTOLAB_GIT_TIMEOUT": "5"})
    assert proc.returncode == 1
    assert TOKEN not in proc.stderr + proc.stdout
    assert "https://127.0.0.1:9/lab.git" in proc.stderr  # credentials never kept in the URL
