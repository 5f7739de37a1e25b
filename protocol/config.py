"""The lab contract: ``autolab.toml`` parsed into typed, validated config.

A bad file fails with one line naming the key and what was expected, e.g.
``autolab.toml: metric.direction: expected "min" or "max", got "down"``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field, replace
from types import UnionType
from typing import Any

from autolab.protocol.errors import ConfigError

CONFIG_FILE = "autolab.toml"
# Paths no patch may touch, whatever the lab lists.
ALWAYS_PROTECTED = (CONFIG_FILE, ".autolab/**")


@dataclass(frozen=True)
class Knob:
    """One tunable constant of the editable surface (``NAME = value`` in ``file``)."""

    name: str
    file: str
    type: str  # "float" | "int" | "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


REVIEW_MODES = ("none", "required", "above-bar")


@dataclass(frozen=True)
class Policy:
    """Promotion and lease policy."""

    min_delta: float = 0.0
    max_attempts: int = 3
    lease_margin: float = 60.0
    max_usd: float | None = None  # spend after which planners and launches stop
    # Which winners wait for `autolab review accept` instead of being promoted by the
    # worker that scored them: "none", "required" (all) or "above-bar" (those that beat
    # the best by less than review_bar, or touch a [paths] sensitive path).
    review: str = "none"
    review_bar: float = 0.0  # an absolute metric delta (interim: no noise model yet)


@dataclass(frozen=True)
class HfJobsConfig:
    """``[hf_jobs]``: how ``autolab worker --backend hf-jobs`` launches runs.

    Every field can be overridden by a flag of the same name.
    """

    flavor: str = "cpu-basic"
    image: str = "ghcr.io/astral-sh/uv:python3.12-bookworm"  # needs `install` (no autolab)
    namespace: str | None = None  # default: the token's user
    timeout: float | None = None  # default: run.timeout + 600 s for start-up
    secrets: tuple[str, ...] = ("HF_TOKEN",)  # names of local env vars sent as secrets
    env: dict[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()  # hf://buckets/<ns>/<name>:/data and friends
    labels: dict[str, str] = field(default_factory=dict)
    install: str = ""  # shell command run before `autolab run` (e.g. pip install ...)
    lab_url: str | None = None  # the URL jobs use for the lab, if not the worker's


@dataclass(frozen=True)
class LlmConfig:
    """``[llm]``: the chat endpoint the ``llm`` proposer asks for experiments.

    Every field can be overridden by a planner flag of the same name.
    """

    model: str | None = None  # sent with every call (the endpoint's default when unset)
    base_url: str | None = None  # an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1)
    provider: str | None = None  # a Hugging Face inference provider, when no base_url
    api_key_env: str = "HF_TOKEN"  # the environment variable holding the key
    max_tokens: int = 4096
    temperature: float = 0.7
    timeout: float = 120.0  # seconds per call
    retries: int = 2  # times a refused answer goes back to the model with the reason
    context_chars: int = 30000  # how much of the lab the prompt may carry
    usd_per_mtok_in: float = 0.0  # price of a million prompt tokens (spend reports)
    usd_per_mtok_out: float = 0.0  # price of a million completion tokens


@dataclass(frozen=True)
class AgentConfig:
    """``[agent]``: a coding agent's command line, run in a worktree of ``main``.

    ``command`` is split like a shell line, then ``{prompt}``, ``{prompt_file}`` and
    ``{workdir}`` are substituted in each word (never through a shell).
    """

    command: str = ""
    timeout: float = 900.0  # seconds before the agent is killed (its edits discarded)
    env: tuple[str, ...] = ()  # names of environment variables passed through to it


@dataclass(frozen=True)
class ResearchConfig:
    """``[research]``: what ``autolab researcher`` searches for (docs/researcher.md).

    The queries are searched besides the bullets of ``program.md``'s ``## Topics``
    section; ``--query`` flags replace both.
    """

    queries: tuple[str, ...] = ()  # Hugging Face Papers searches, one per string
    limit: int = 10  # papers taken per query
    daily: bool = False  # also scan the latest daily papers for the topics


@dataclass(frozen=True)
class LabConfig:
    """Typed view of ``autolab.toml``."""

    name: str
    metric: str
    direction: str  # "min" | "max"
    command: str
    timeout: float
    editable: tuple[str, ...]
    protected: tuple[str, ...]
    policy: Policy = field(default_factory=Policy)
    knobs: dict[str, Knob] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""
    bounds: tuple[float, float] | None = None
    floor: float | None = None
    hf_jobs: HfJobsConfig = field(default_factory=HfJobsConfig)
    research: ResearchConfig = field(default_factory=ResearchConfig)
    allow_binary: bool = False  # [paths] binary: patches may carry binary files
    llm: LlmConfig = field(default_factory=LlmConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    sensitive: tuple[str, ...] = ()  # [paths] sensitive: changes here wait for review

    def better(self, candidate: float, best: float | None) -> bool:
        """True if ``candidate`` beats ``best`` by at least ``policy.min_delta``."""
        if best is None:
            return True
        if self.direction == "min":
            return candidate <= best - self.policy.min_delta and candidate < best
        return candidate >= best + self.policy.min_delta and candidate > best

    def lease_seconds(self) -> float:
        """How long a claim holds: the run's timeout plus the lease margin."""
        return self.timeout + self.policy.lease_margin

    @property
    def all_protected(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.protected, *ALWAYS_PROTECTED)))


_Types = type | tuple[type, ...]


def _section_schema(cls: type, skip: tuple[str, ...] = ()) -> dict[str, tuple[_Types, bool]]:
    """The TOML keys of a section that maps one to one onto the dataclass ``cls``: each
    field's TOML types (from its annotation) and whether it is required (no default)."""
    hints = typing.get_type_hints(cls)
    schema: dict[str, tuple[_Types, bool]] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
            hint = args[0]  # X | None: the key is X when given
        origin = typing.get_origin(hint) or hint
        toml = {float: (int, float), int: int, str: str, bool: bool, tuple: list,
                list: list, dict: dict}[origin]
        required = (f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING)  # type: ignore[misc]
        schema[f.name] = (toml, required)
    return schema


def _from_section(cls: type, body: dict[str, Any]) -> Any:
    """``cls`` built from a checked section: lists become tuples, tables dicts, and
    integers floats where the field is a float."""
    hints = typing.get_type_hints(cls)
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in body:
            continue
        value, hint = body[f.name], hints[f.name]
        kinds = set(typing.get_args(hint)) | {typing.get_origin(hint) or hint}
        if float in kinds and isinstance(value, int):
            value = float(value)
        elif tuple in kinds:
            value = tuple(value)
        elif dict in kinds:
            value = dict(value)
        given[f.name] = value
    return cls(**given)


# section -> key -> (accepted types, required). The sections that hold one dataclass
# (policy, hf_jobs, a knob) are derived from it; the others map onto LabConfig fields
# under other names.
_SCHEMA: dict[str, dict[str, tuple[_Types, bool]]] = {
    "lab": {"name": (str, False), "description": (str, False)},
    "metric": {
        "name": (str, True),
        "direction": (str, True),
        "bounds": (list, False),
        "floor": ((int, float), False),
    },
    "run": {"command": (str, True), "timeout": ((int, float), True), "env": (dict, False)},
    "paths": {"editable": (list, True), "protected": (list, False), "binary": (bool, False),
              "sensitive": (list, False)},
    "policy": _section_schema(Policy),
    "hf_jobs": _section_schema(HfJobsConfig),
    "llm": _section_schema(LlmConfig),
    "agent": _section_schema(AgentConfig),
    "research": _section_schema(ResearchConfig),
}
_KNOB_KEYS = {key: types for key, (types, _) in _section_schema(Knob, skip=("name",)).items()}


def _type_name(types: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "a table", bool: "true or false"}
    if isinstance(types, tuple):
        return " or ".join(dict.fromkeys(names[t] for t in types))
    return names[types]


def _fail(key: str, expected: str, got: Any = ...) -> ConfigError:
    suffix = "" if got is ... else f", got {got!r}"
    return ConfigError(f"{CONFIG_FILE}: {key}: expected {expected}{suffix}")


def _check_type(key: str, value: Any, types: type | tuple[type, ...]) -> None:
    # bool is an int subclass; never accept it where a number is expected.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(key, _type_name(types), value)
    if not isinstance(value, types):
        raise _fail(key, _type_name(types), value)


def parse_config(text: str) -> LabConfig:
    """Parse and validate the text of an ``autolab.toml``.

    Raises:
        ConfigError: one line naming the offending key and what was expected.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE}: not valid TOML: {exc}") from None
    for section in raw:
        if section not in _SCHEMA and section != "knobs":
            raise _fail(section, f"one of the sections {sorted([*_SCHEMA, 'knobs'])}")
    values: dict[str, dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        body = raw.get(section, {})
        if not isinstance(body, dict):
            raise _fail(section, "a table", body)
        for key in body:
            if key not in keys:
                raise _fail(f"{section}.{key}", f"one of the keys {sorted(keys)} (unknown key)")
        for key, (types, required) in keys.items():
            if key not in body:
                if required:
                    raise _fail(f"{section}.{key}", f"{_type_name(types)} (missing)")
                continue
            _check_type(f"{section}.{key}", body[key], types)
        values[section] = body

    metric, run, paths, policy = values["metric"], values["run"], values["paths"], values["policy"]
    if metric["direction"] not in ("min", "max"):
        raise _fail("metric.direction", '"min" or "max"', metric["direction"])
    bounds = metric.get("bounds")
    if bounds is not None and (
        len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise _fail("metric.bounds", "[low, high] with low < high", bounds)
    if not run["timeout"] > 0 or math.isinf(run["timeout"]):
        raise _fail("run.timeout", "a positive number of seconds", run["timeout"])
    env = run.get("env", {})
    for name, value in env.items():
        if not isinstance(value, str):
            raise _fail(f"run.env.{name}", "a string", value)
    for key in ("editable", "protected", "sensitive"):
        for item in paths.get(key, []):
            if not isinstance(item, str) or not item or item.startswith("/") or ".." in item:
                raise _fail(f"paths.{key}", "a list of relative paths", item)
    if not paths["editable"]:
        raise _fail("paths.editable", "at least one editable path", [])
    _check_disjoint(tuple(paths["editable"]),
                    tuple(dict.fromkeys((*paths.get("protected", []), *ALWAYS_PROTECTED))))
    pol: Policy = _from_section(Policy, policy)
    if pol.max_usd is not None and pol.max_usd < 0:
        raise _fail("policy.max_usd", "a number >= 0", pol.max_usd)
    if pol.min_delta < 0:
        raise _fail("policy.min_delta", "a number >= 0", pol.min_delta)
    if pol.max_attempts < 1:
        raise _fail("policy.max_attempts", "an integer >= 1", pol.max_attempts)
    if pol.lease_margin < 0:
        raise _fail("policy.lease_margin", "a number >= 0", pol.lease_margin)
    if pol.review not in REVIEW_MODES:
        raise _fail("policy.review", " or ".join(f'"{m}"' for m in REVIEW_MODES), pol.review)
    if not pol.review_bar >= 0 or math.isinf(pol.review_bar):
        raise _fail("policy.review_bar", "a number >= 0", pol.review_bar)

    return LabConfig(
        name=values["lab"].get("name", "lab"),
        description=values["lab"].get("description", ""),
        metric=metric["name"],
        direction=metric["direction"],
        bounds=tuple(float(b) for b in bounds) if bounds else None,  # type: ignore[arg-type]
        floor=float(metric["floor"]) if "floor" in metric else None,
        command=run["command"],
        timeout=float(run["timeout"]),
        env=dict(env),
        editable=tuple(paths["editable"]),
        protected=tuple(paths.get("protected", [])),
        allow_binary=bool(paths.get("binary", False)),
        sensitive=tuple(paths.get("sensitive", [])),
        policy=pol,
        knobs=_parse_knobs(raw.get("knobs", {}), tuple(paths["editable"])),
        hf_jobs=_parse_hf_jobs(values["hf_jobs"]),
        llm=_parse_llm(values["llm"]),
        agent=_parse_agent(values["agent"]),
        research=_parse_research(values["research"]),
    )


def _check_disjoint(editable: tuple[str, ...], protected: tuple[str, ...]) -> None:
    """Editable and protected patterns must not overlap: a path both editable and
    protected would leave it to rule order whether a patch may change the harness.

    Patterns are compared as paths both ways (an editable pattern that matches a
    protected one, or the reverse), blind to case; ``.git*`` paths are never editable.
    """
    from autolab.protocol.patches import matches_folded

    for pattern in editable:
        sample = pattern.removesuffix("/**").rstrip("/")
        if any(part.casefold().startswith(".git") for part in sample.split("/")):
            raise _fail("paths.editable", "paths outside .git* files (git's own)", pattern)
        for guarded in protected:
            other = guarded.removesuffix("/**").rstrip("/")
            if matches_folded(sample, (guarded,)) or matches_folded(other, (pattern,)):
                raise ConfigError(
                    f"{CONFIG_FILE}: paths.editable: {pattern!r} overlaps the protected "
                    f"path {guarded!r}; list editable paths that leave it out")


def _parse_hf_jobs(body: dict[str, Any]) -> HfJobsConfig:
    for key in ("secrets", "volumes"):
        for item in body.get(key, []):
            if not isinstance(item, str) or not item:
                raise _fail(f"hf_jobs.{key}", "a list of strings", item)
    for key in ("env", "labels"):
        for name, value in body.get(key, {}).items():
            if not isinstance(value, str):
                raise _fail(f"hf_jobs.{key}.{name}", "a string", value)
    if "timeout" in body and not body["timeout"] > 0:
        raise _fail("hf_jobs.timeout", "a positive number of seconds", body["timeout"])
    return _from_section(HfJobsConfig, body)


def _parse_llm(body: dict[str, Any]) -> LlmConfig:
    llm: LlmConfig = _from_section(LlmConfig, body)
    for key in ("max_tokens", "timeout", "context_chars"):
        if not getattr(llm, key) > 0:
            raise _fail(f"llm.{key}", "a positive number", getattr(llm, key))
    for key in ("retries", "temperature", "usd_per_mtok_in", "usd_per_mtok_out"):
        if getattr(llm, key) < 0:
            raise _fail(f"llm.{key}", "a number >= 0", getattr(llm, key))
    if llm.base_url is not None and not llm.base_url.startswith(("http://", "https://")):
        raise _fail("llm.base_url", "an http:// or https:// URL", llm.base_url)
    return llm


def _parse_agent(body: dict[str, Any]) -> AgentConfig:
    import shlex

    for item in body.get("env", []):
        if not isinstance(item, str) or not item.isidentifier():
            raise _fail("agent.env", "a list of environment variable names", item)
    agent: AgentConfig = _from_section(AgentConfig, body)
    try:
        shlex.split(agent.command)
    except ValueError as exc:
        raise _fail("agent.command", f"a command line ({exc})", agent.command) from None
    if not agent.timeout > 0 or math.isinf(agent.timeout):
        raise _fail("agent.timeout", "a positive number of seconds", agent.timeout)
    return agent


def _parse_research(body: dict[str, Any]) -> ResearchConfig:
    for item in body.get("queries", []):
        if not isinstance(item, str) or not item.strip():
            raise _fail("research.queries", "a list of non-empty strings", item)
    if "limit" in body and not 1 <= body["limit"] <= 100:
        raise _fail("research.limit", "an integer from 1 to 100", body["limit"])
    config: ResearchConfig = _from_section(ResearchConfig, body)
    return replace(config, queries=tuple(q.strip() for q in config.queries))


def _parse_knobs(raw: Any, editable: tuple[str, ...]) -> dict[str, Knob]:
    if not isinstance(raw, dict):
        raise _fail("knobs", "a table of [knobs.NAME] tables", raw)
    knobs: dict[str, Knob] = {}
    for name, body in raw.items():
        where = f"knobs.{name}"
        if not isinstance(body, dict):
            raise _fail(where, "a table", body)
        for key, value in body.items():
            if key not in _KNOB_KEYS:
                raise _fail(f"{where}.{key}", f"one of the keys {sorted(_KNOB_KEYS)} (unknown key)")
            _check_type(f"{where}.{key}", value, _KNOB_KEYS[key])
        kind = body.get("type")
        if kind not in ("float", "int", "choice"):
            raise _fail(f"{where}.type", '"float", "int" or "choice"', kind)
        file = body.get("file", editable[0])
        if kind == "choice":
            if not body.get("choices"):
                raise _fail(f"{where}.choices", "a non-empty list")
        elif "low" not in body or "high" not in body or not body["low"] < body["high"]:
            raise _fail(f"{where}.low/high", "numbers with low < high")
        if body.get("log") and kind != "choice" and body["low"] <= 0:
            raise _fail(f"{where}.low", "a positive number when log = true", body["low"])
        knobs[name] = Knob(
            name=name,
            file=file,
            type=kind,
            low=body.get("low"),
            high=body.get("high"),
            log=bool(body.get("log", False)),
            choices=tuple(body.get("choices", ())),
        )
    return knobs
