"""Reading a model's answer: one JSON object holding a hypothesis and a unified diff.

Models wrap JSON in prose or code fences and miscount the lines of a diff's hunks;
both are forgiven here (the JSON object is found, the hunk counts are recomputed from
the hunk's own lines). Everything else that is wrong is an :class:`AnswerError`
whose message goes back to the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_HYPOTHESIS = 500


class AnswerError(ValueError):
    """The answer cannot become a proposal; the message says why, for the model."""


@dataclass(frozen=True)
class Answer:
    hypothesis: str
    rationale: str
    diff: str
    idea: str | None = None  # the id of the recorded idea it builds on


def parse_answer(text: str) -> Answer:
    """The proposal in a model's reply ``text`` (see the module docstring)."""
    data = _json_object(text)
    hypothesis = data.get("hypothesis")
    diff = data.get("diff")
    if not isinstance(hypothesis, str) or not hypothesis.strip():
        raise AnswerError('the JSON object has no "hypothesis" string')
    if not isinstance(diff, str) or not diff.strip():
        raise AnswerError('the JSON object has no "diff" string (a unified diff)')
    rationale = data.get("rationale")
    hypothesis = " ".join(hypothesis.split())[:MAX_HYPOTHESIS]
    idea = data.get("idea")
    return Answer(hypothesis=hypothesis,
                  rationale=rationale.strip() if isinstance(rationale, str) else "",
                  diff=recount_hunks(_unfence(diff)),
                  idea=idea.strip() if isinstance(idea, str) and idea.strip() else None)


def _json_object(text: str) -> dict:
    text = text.strip()
    candidates = [text]
    fenced = re.findall(r"```(?:json)?\s*\n(.*?)\n```", text, flags=re.DOTALL)
    candidates += fenced
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    problem = "no JSON object found"
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc})"
            continue
        if isinstance(data, dict):
            return data
        problem = "the JSON is not an object"
    raise AnswerError(f"{problem}: reply with one JSON object only")


def _unfence(diff: str) -> str:
    lines = diff.strip("\n").splitlines()
    if lines and lines[0].startswith("```"):
        lines = lines[1:]
    if lines and lines[-1].startswith("```"):
        lines = lines[:-1]
    return "\n".join(lines) + "\n"


_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$")


def recount_hunks(diff: str) -> str:
    """``diff`` with each hunk header's line counts recomputed from the hunk's lines.

    Only the counts change: the start lines, the headers and every line of content
    stay as given, so git still checks that the context matches the file.
    """
    lines = diff.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _HUNK.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not _HUNK.match(lines[j]) and not lines[j].startswith(
                ("diff --git", "--- ", "+++ ")):
            body.append(lines[j])
            j += 1
        while body and body[-1] == "":  # blank lines closing the answer, not context
            body.pop()
        body = [" " if line == "" else line for line in body]  # a stripped context line
        old = sum(1 for line in body if line[:1] in (" ", "-"))
        new = sum(1 for line in body if line[:1] in (" ", "+"))
        out.append(f"@@ -{match[1]},{old} +{match[2]},{new} @@{match[3]}")
        out.extend(body)
        i = j
    return "\n".join(out) + "\n"
