"""What a model or coding agent is told about a lab before it proposes an experiment.

Built from one read of the lab: ``program.md``, main's editable files (the current
best), the best score, recent results with their hypotheses and diffs, recent
failures, refused proposals and experiments reviewers rejected, with their reasons,
open ideas from the ``ideas`` table, and what is queued or running now (so that two
planners do not propose the same thing). :func:`render` turns it into one prompt of
bounded size: sections are cut, oldest first, until the prompt fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autolab.protocol.patch_judge import path_rule

if TYPE_CHECKING:
    from autolab.protocol.lab import Lab
    from autolab.protocol.reader import LabView

MAX_FILE_CHARS = 40_000  # an editable file longer than this is shown cut (and said so)
MAX_DIFF_CHARS = 1_500  # per past experiment
HISTORY = 12  # recent results shown
FAILURES = 8  # recent failures, refused proposals and rejections shown


@dataclass
class PastExperiment:
    """One earlier experiment, as the prompt shows it."""

    id: str
    hypothesis: str
    state: str
    metric: float | None = None
    reason: str | None = None
    promoted: bool = False
    diff: str = ""
    rejected: str | None = None  # a reviewer's reason, when one rejected it


@dataclass
class LabContext:
    """Everything a proposer is shown (see the module docstring)."""

    name: str
    metric: str
    direction: str
    editable: tuple[str, ...]
    protected: tuple[str, ...]
    program: str = ""
    files: dict[str, str] = field(default_factory=dict)
    best: PastExperiment | None = None
    history: list[PastExperiment] = field(default_factory=list)
    failures: list[PastExperiment] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    ideas: list[dict[str, Any]] = field(default_factory=list)


def editable_files(lab: Lab, view: LabView) -> dict[str, str]:
    """Main's editable text files (path -> text), each cut to ``MAX_FILE_CHARS``."""
    out: dict[str, str] = {}
    for path in sorted(lab.store.list_files(view.main)):
        if path_rule(path, view.config) is not None:
            continue
        data = lab.store.read_file(view.main, path) or b""
        if b"\0" in data[:8000]:
            continue  # binary: nothing a diff can edit
        text = data.decode("utf-8", "replace")
        if len(text) > MAX_FILE_CHARS:
            text = text[:MAX_FILE_CHARS] + f"\n[... cut: {len(text)} characters in all]\n"
        out[path] = text
    return out


def build_context(lab: Lab, view: LabView) -> LabContext:
    """Read what the prompt needs from ``view`` (one snapshot of the lab)."""
    config, state = view.config, view.state
    program = (lab.store.read_file(view.main, "program.md") or b"").decode("utf-8", "replace")
    exps = list(state.experiments.values())
    finished = [e for e in exps
                if e.state == "done" and e.result is not None and not e.rejected][-HISTORY:]
    failed = [e for e in exps if e.state == "failed" or e.rejected][-FAILURES:]
    best_id = state.best["experiment_id"] if state.best else None
    wanted = [e.id for e in finished] + [e.id for e in failed]
    if best_id and best_id not in wanted:
        wanted.append(best_id)
    diffs = dict(zip(wanted, view.patches(wanted), strict=True))

    def past(exp: Any) -> PastExperiment:
        result = exp.result or {}
        return PastExperiment(
            id=exp.id, hypothesis=exp.hypothesis, state=exp.state,
            metric=result.get("metric"), reason=exp.reason or result.get("reason"),
            promoted=exp.promoted, diff=_cut(diffs.get(exp.id, ""), MAX_DIFF_CHARS),
            rejected=(exp.rejection or "no reason recorded") if exp.rejected else None)

    from autolab.protocol.ideas import open_ideas

    ideas = open_ideas(view)[-8:]
    return LabContext(
        name=config.name, metric=config.metric, direction=config.direction,
        editable=config.editable, protected=config.all_protected, program=program,
        files=editable_files(lab, view),
        best=past(state.experiments[best_id]) if best_id in state.experiments else None,
        history=[past(e) for e in finished], failures=[past(e) for e in failed],
        running=[e.hypothesis for e in exps if e.state in ("queued", "claimed")][-30:],
        ideas=[{"id": i.idea_id, "title": i.title, "body": _cut(i.body or "", 600),
                "source": i.link or i.source} for i in ideas],
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\n[... cut]\n"


def _result_line(exp: PastExperiment, metric: str) -> str:
    if exp.state == "done":
        score = f"{metric} = {exp.metric:.6g}" if exp.metric is not None else "no metric"
        tags = ", promoted" if exp.promoted else ""
        if exp.rejected is not None:
            tags += f", rejected by a reviewer: {exp.rejected}"
        status = f"{score}{tags}" + (f" ({exp.reason})" if exp.reason else "")
    else:
        status = f"{exp.state}: {exp.reason or 'no reason recorded'}"
    return f"- {exp.id} [{status}] {exp.hypothesis}"


def _experiments_section(title: str, exps: list[PastExperiment], metric: str,
                         with_diffs: bool) -> str:
    if not exps:
        return ""
    lines = [f"## {title}"]
    for exp in exps:
        lines.append(_result_line(exp, metric))
        if with_diffs and exp.diff:
            lines.append("```diff\n" + exp.diff.rstrip("\n") + "\n```")
    return "\n".join(lines)


ANSWER_FORMAT = """## Your answer
Propose exactly one experiment: one hypothesis, one change. Reply with one JSON object and
nothing else:
{"hypothesis": "<one sentence: the change and why it should improve the metric>",
 "rationale": "<a few sentences>",
 "diff": "<a unified diff of main's files as shown, with --- a/PATH and +++ b/PATH headers>",
 "idea": "<the id of the idea from papers it builds on, if any>"}
The diff must apply to the files exactly as shown, and change only editable paths."""


def render(ctx: LabContext, budget: int, answer: str = ANSWER_FORMAT) -> str:
    """The prompt: every section of ``ctx``, cut oldest first to fit ``budget`` characters.

    The rules, the files and the answer format are never cut; history, failures, ideas
    and the running list lose their oldest entries first, then ``program.md`` is cut.
    """
    direction = "lower is better" if ctx.direction == "min" else "higher is better"
    history, failures = list(ctx.history), list(ctx.failures)
    ideas, running = list(ctx.ideas), list(ctx.running)
    program = ctx.program
    while True:
        text = _render(ctx, direction, program, history, failures, ideas, running, answer)
        if len(text) <= budget:
            return text
        for items in (failures, history, ideas, running):
            if len(items) > 1:
                items.pop(0)
                break
        else:
            if len(program) > 500:
                program = _cut(program, len(program) // 2)
            elif history or failures or ideas or running:
                history, failures, ideas, running = [], [], [], []
            else:
                return text  # the files and rules alone are over budget: say them all


def _render(ctx: LabContext, direction: str, program: str, history: list[PastExperiment],
            failures: list[PastExperiment], ideas: list[dict[str, Any]],
            running: list[str], answer: str) -> str:
    parts = [f"You are a researcher improving the lab {ctx.name!r}. Its metric is "
             f"{ctx.metric} ({direction})."]
    if program.strip():
        parts.append("## Research brief (program.md)\n" + program.strip())
    if ctx.best is not None:
        parts.append(f"## Current best (main)\n{_result_line(ctx.best, ctx.metric)}")
    else:
        parts.append("## Current best (main)\nNothing promoted yet: main is the baseline.")
    parts.append("## Rules\n"
                 f"- Edit only these paths: {', '.join(ctx.editable)}.\n"
                 f"- Never edit: {', '.join(ctx.protected)} (the harness and the lab's "
                 "state; a change there is refused).\n"
                 "- One hypothesis per experiment; do not repeat an experiment listed below.")
    for path, text in ctx.files.items():
        parts.append(f"## {path} (on main)\n```\n{text.rstrip(chr(10))}\n```")
    parts.append(_experiments_section("Recent results (oldest first)", history, ctx.metric,
                                      with_diffs=True))
    parts.append(_experiments_section("Recent failures, refused proposals and rejections "
                                      "(never propose these again)", failures,
                                      ctx.metric, with_diffs=True))
    if running:
        parts.append("## Queued or running now (do not propose these again)\n"
                     + "\n".join(f"- {h}" for h in running))
    if ideas:
        parts.append("## Ideas from papers (name the one you use as \"idea\": \"<id>\")\n"
                     + "\n".join(f"- [{i['id']}] {i['title']} ({i['source']}): {i['body']}"
                                  for i in ideas))
    parts.append(answer)
    return "\n\n".join(p for p in parts if p)
