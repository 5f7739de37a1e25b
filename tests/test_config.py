"""autolab.toml: typed config, and one line naming the key for every bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from autolab.protocol.config import parse_config
from autolab.protocol.errors import ConfigError

BLANK = (Path(__file__).parents[1] / "repo_template" / "blank" / "autolab.toml").read_text()


def test_blank_template_parses():
    config = parse_config(BLANK)
    assert (config.metric, config.direction, config.timeout) == ("score", "min", 60.0)
    assert config.editable == ("experiment.py",)
    assert "autolab.toml" in config.all_protected and ".autolab/**" in config.all_protected
    assert config.knobs["X"].type == "float" and config.knobs["X"].low == -10.0
    assert config.policy.max_attempts == 3
    assert config.better(1.0, 2.0) and not config.better(2.0, 1.0)
    assert config.lease_seconds() == 60.0 + 30.0


@pytest.mark.parametrize("old, new, key", [
    ('direction = "min"', 'direction = "down"', "metric.direction"),
    ('name = "score"', "name = 3", "metric.name"),
    ('name = "score"\n', "", "metric.name"),
    ("timeout = 60", 'timeout = "60"', "run.timeout"),
    ("timeout = 60", "timeout = -1", "run.timeout"),
    ("[policy]", "[policy]\nbogus = 1", "policy.bogus"),
    ("max_attempts = 3", "max_attempts = 0", "policy.max_attempts"),
    ('type = "float"', 'type = "complex"', "knobs.X.type"),
    ("[lab]", "[labs]", "labs"),
    ('editable = ["experiment.py"]', "editable = []", "paths.editable"),
    ('editable = ["experiment.py"]', 'editable = ["../x"]', "paths.editable"),
])
def test_bad_config_names_the_key(old, new, key):
    assert old in BLANK
    with pytest.raises(ConfigError) as info:
        parse_config(BLANK.replace(old, new, 1))
    message = str(info.value)
    assert message.startswith(f"autolab.toml: {key}: expected")
    assert "\n" not in message


def test_not_toml():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[metric\nname=")


def test_docs_lab_md_documents_every_key_of_autolab_toml():
    """docs/lab.md is the reference: every key the parser accepts is in its section."""
    import re
    from pathlib import Path

    from autolab.protocol.config import _KNOB_KEYS, _SCHEMA

    text = (Path(__file__).resolve().parents[1] / "docs" / "lab.md").read_text()
    sections = {m["name"]: m.start() for m in re.finditer(r"^### `\[(?P<name>[^\]]+)\]`",
                                                           text, re.M)}
    expected = {**{s: list(keys) for s, keys in _SCHEMA.items()}, "knobs.NAME": list(_KNOB_KEYS)}
    for section, keys in expected.items():
        assert section in sections, f"docs/lab.md has no [{section}] section"
        start = sections[section]
        end = min([p for p in sections.values() if p > start] + [len(text)])
        body = text[start:end]
        for key in keys:
            assert f"`{key}`" in body, f"docs/lab.md [{section}] does not document {key}"
