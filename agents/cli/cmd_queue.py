"""Queue verbs: ``propose``, ``claim``, ``submit``, ``promote``, ``reap``, ``compact``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from autolab.agents.cli.common import (
    DURATION_HELP,
    AgentOpt,
    JsonOpt,
    LabOpt,
    duration,
    open_lab,
    print_json,
    read_input,
)


class Status(StrEnum):
    """A run's status, as ``submit --status`` takes it (the scores table's
    ``SCORE_STATUSES``, not imported here: that would load pyarrow for ``--help``)."""

    ok = "ok"
    crash = "crash"
    timeout = "timeout"
    invalid = "invalid"


def propose(
    hypothesis: Annotated[str, typer.Option(help="One sentence: what the edit should do "
                                            "and why.")],
    patch: Annotated[Path | None, typer.Option(help="Unified diff to apply ('-' for stdin).",
                                               allow_dash=True)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Knob edit NAME=VALUE "
                                                   "(repeatable) instead of a patch.")] = None,
    priority: Annotated[float, typer.Option(help="Claim weight (higher is claimed sooner).")
                        ] = 1.0,
    open_: Annotated[bool, typer.Option("--open", help=(
        "No patch: the claimant writes the change (`claim --worktree`, edit, `submit "
        "--worktree`), or a worker's coding agent ([agent]) does."))] = False,
    lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False,
) -> None:
    """Enqueue an experiment: a hypothesis and a patch (or knob edits) against main, or
    with --open the hypothesis alone.

    Exit code 3 when an experiment with the same patch (or the same open hypothesis)
    exists (nothing proposed).
    """
    import math

    from autolab.protocol.errors import NothingToDo, PatchError, UsageError, shown
    from autolab.protocol.patches import MAX_PATCH_BYTES
    from autolab.protocol.transactions import Proposal
    from autolab.protocol.transactions import propose as do_propose

    if open_ and (patch is not None or set_):
        raise UsageError("--open proposes the hypothesis alone: leave out --patch and --set")
    if not open_ and (patch is None) == (not set_):
        raise UsageError("give exactly one of --patch FILE, --set NAME=VALUE or --open")
    if not math.isfinite(priority):
        raise UsageError(f"--priority {priority}: expected a finite number")
    # Read before the lab is opened: a bad file fails at once, naming it.
    text = None if patch is None else read_input(patch, "--patch", limit=MAX_PATCH_BYTES,
                                                  dash=True)
    the_lab = open_lab(lab, agent)
    if text is None:
        text = "" if open_ else _knob_patch(the_lab, set_ or [])
    try:
        ids = do_propose(the_lab, [Proposal(hypothesis, text, priority,
                                            origin={"proposer": "cli"}, open=open_)])
    except PatchError as exc:
        if patch is None:
            raise
        where = "- (standard input)" if str(patch) == "-" else shown(str(patch))
        raise PatchError(f"--patch {where}: {exc}") from None
    if as_json:
        print_json({"experiment_id": ids[0], "duplicate": ids[0] is None})
    elif ids[0] is not None:
        typer.echo(f"proposed {ids[0]}")
    if ids[0] is None:
        raise NothingToDo("duplicate: an experiment with the same patch exists; "
                          "nothing proposed")


def _knob_patch(the_lab, assignments: list[str]) -> str:  # type: ignore[no-untyped-def]
    from autolab.protocol.knobs import knob_patch

    view = the_lab.read()
    config = view.config
    paths = {config.knobs[a.partition("=")[0].strip()].file
             for a in assignments if a.partition("=")[0].strip() in config.knobs}
    files = {p: (view.store.read_file(view.main, p) or b"").decode() for p in paths}
    return knob_patch(config, files, assignments)


def claim(lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False,
          backend: Annotated[str, typer.Option(help="Backend recorded with the claim.")
                             ] = "local",
          worktree: Annotated[Path | None, typer.Option(
              help="Also prepare DIR (absent or empty) to run the experiment by hand: its "
              "files as a worker runs them, and a claim file for `submit --worktree DIR`.",
              show_default=False)] = None,
          lease: Annotated[float | None, typer.Option(
              parser=duration, metavar="DURATION",
              help=f"How long the claim holds ({DURATION_HELP}; default: the lab's run "
              "timeout plus its lease margin): time to write an open experiment by hand.",
              show_default=False)] = None) -> None:
    """Claim one queued experiment (exit code 3 when none is claimable).

    With --worktree DIR: run the command of the lab's [run] in DIR, then
    `autolab submit --worktree DIR --log run.log` pushes the experiment's branch and
    records the score (docs/lab.md, "The manual flow").
    """
    from autolab.protocol.errors import NothingToDo, UsageError
    from autolab.protocol.transactions import claim as do_claim
    from autolab.protocol.transactions import release

    if worktree is not None and worktree.exists() and (
            not worktree.is_dir() or any(worktree.iterdir())):
        raise UsageError(f"--worktree {worktree}: exists and is not empty")
    the_lab = open_lab(lab, agent)
    try:
        won = do_claim(the_lab, backend=backend, lease_seconds=lease)
    except NothingToDo as exc:
        if as_json:  # still one JSON document on stdout, whatever the exit code
            print_json({"claimed": False, "experiment_id": None, "agent": the_lab.agent,
                        "reason": str(exc)})
        raise
    prepared = None
    if worktree is not None:
        from autolab.agents.manual import prepare

        try:
            prepared = prepare(the_lab, won, worktree)
        except BaseException as exc:
            # Nobody can run it from here: give it back at once (not counted).
            release(the_lab, won.experiment_id, won.attempt,
                    f"claim --worktree failed: {str(exc)[:200]}")
            raise
    if as_json:
        print_json({"claimed": True, **won.to_dict(), "agent": the_lab.agent,
                    **({"worktree": str(worktree), "commit": prepared.commit}
                       if prepared else {})})
    else:
        typer.echo(f"claimed {won.experiment_id} attempt {won.attempt} as {the_lab.agent} "
                   f"(lease until {won.lease_until:%H:%M:%S} UTC): {won.hypothesis}")
        if prepared is not None:
            import shlex

            from autolab.protocol.durations import format_duration

            config = the_lab.read(max_age=5.0).config
            where = shlex.quote(str(worktree))
            typer.echo(f"worktree {worktree}: run `{config.command}` there (within "
                       f"{format_duration(config.timeout)}), then `autolab submit "
                       f"--worktree {where} --log <its output>`")


def submit(
    experiment: Annotated[str | None, typer.Option(help="Experiment id.",
                                                   show_default=False)] = None,
    attempt: Annotated[int | None, typer.Option(help="Attempt number from the claim.",
                                                show_default=False)] = None,
    metrics_file: Annotated[Path | None, typer.Option(help="JSON object of metrics.")] = None,
    log: Annotated[Path | None, typer.Option(help="Run log ending in a '---' summary block."
                                             )] = None,
    status: Annotated[Status | None, typer.Option(help="The run's status (default: from the "
                                                  "metrics).", show_default=False)] = None,
    reason: Annotated[str | None, typer.Option(help="Why it failed, if it did.")] = None,
    branch_commit: Annotated[str | None, typer.Option(
        help="The measured commit, on autolab/exp/<id>: the experiment's parent plus "
             "exactly its patch (checked).")] = None,
    runtime: Annotated[float | None, typer.Option(
        parser=duration, metavar="DURATION", help=f"Run time ({DURATION_HELP}).",
        show_default=False)] = None,
    worktree: Annotated[Path | None, typer.Option(
        help="A worktree made by `claim --worktree`: its experiment, attempt and agent are "
        "used, and its branch is pushed for you.", show_default=False)] = None,
    lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False,
) -> None:
    """Record the score of an attempt you claimed (idempotent per experiment and attempt).

    Only the attempt's claimant (the same --agent) may submit; a --branch-commit must
    be the experiment's parent plus exactly its patch, on autolab/exp/<id>. With
    --worktree DIR (from `claim --worktree`), all of that is taken care of.
    """
    from autolab.agents.summary import classify, parse_metrics, parse_summary
    from autolab.protocol.errors import AutoLabError, UsageError, shown
    from autolab.protocol.transactions import make_score
    from autolab.protocol.transactions import submit as do_submit

    if (metrics_file is None) == (log is None):
        raise UsageError("give exactly one of --metrics-file F or --log F")
    record = None
    if worktree is not None:
        from autolab.agents.manual import load

        if experiment is not None or attempt is not None or branch_commit is not None:
            raise UsageError("--worktree gives the experiment, attempt and branch commit: "
                             "leave out --experiment, --attempt and --branch-commit")
        record = load(worktree)
        experiment, attempt = record.experiment_id, record.attempt
        lab, agent = lab or record.lab, agent or record.agent
    elif experiment is None or attempt is None:
        raise UsageError("give --experiment and --attempt, or --worktree DIR")
    try:
        if metrics_file is not None:
            metrics = parse_metrics(read_input(metrics_file, "--metrics-file", limit=1 << 20),
                                    f"--metrics-file {shown(str(metrics_file))}")
        else:
            assert log is not None
            # A run log is read as the worker reads one: bytes that are not UTF-8 are
            # replaced, and the summary block sits at its end.
            metrics = parse_summary(read_input(log, "--log", limit=LOG_LIMIT,
                                               strict=False)).metrics
    except ValueError as exc:
        raise AutoLabError(str(exc)) from None
    the_lab = open_lab(lab, agent)
    view = the_lab.read()
    config = view.config
    found, value, why = classify(metrics, config.metric, config.bounds)
    if record is not None:
        from autolab.agents.manual import check_unchanged, commit_edits, push_branch

        assert worktree is not None
        edited = None
        if record.open:
            edited = commit_edits(the_lab, record, worktree)
        else:
            check_unchanged(the_lab, record, worktree)
        branch_commit = push_branch(the_lab, record,
                                    f"{status.value if status else found} (manual)", edited)
    if branch_commit is not None:
        _check_branch_commit(the_lab, view, experiment, branch_commit)
    from autolab.protocol.harness import harness_files, harness_hash

    score = make_score(experiment, attempt, status=status.value if status else found,
                       metric=value,
                       metrics=metrics, reason=reason or why, branch_commit=branch_commit,
                       runtime_s=runtime, backend="manual", agent=the_lab.agent,
                       harness_hash=harness_hash(harness_files(view.store, view.main, config)))
    result = do_submit(the_lab, score, claimant_only=True)
    if as_json:
        print_json(result.__dict__)
    else:
        typer.echo(f"{result.outcome}: {experiment} attempt {attempt} "
                   f"{score['status']} {config.metric}={value}")


# The most of a --log that is read: a worker keeps at most 20 MiB of a run's output.
LOG_LIMIT = 64 << 20


def _check_branch_commit(the_lab, view, experiment: str, commit: str) -> None:  # type: ignore[no-untyped-def]
    """``commit`` must be on the experiment's branch and be its parent plus its patch."""
    from autolab.protocol.errors import AutoLabError
    from autolab.protocol.patch_judge import result_commit_problem
    from autolab.protocol.transactions import branch_name

    exp = view.state.experiments.get(experiment)
    if exp is None:
        raise AutoLabError(f"unknown experiment {experiment}")
    store = the_lab.store
    branch = branch_name(experiment)
    head = store.fetch_ref(f"refs/heads/{branch}")
    if head is None or not (head == commit or store.is_ancestor(commit, head)):
        raise AutoLabError(f"--branch-commit {commit[:12]} is not on {branch}; push it there "
                           "first")
    from autolab.protocol.patches import is_open

    problem = result_commit_problem(store, exp.parent_commit, exp.patch, commit, view.config,
                                    open_change=is_open(exp.patch_hash))
    if problem:
        raise AutoLabError(f"--branch-commit: {problem}")


def promote(experiment: Annotated[str, typer.Argument(help="Experiment id.")],
            lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False) -> None:
    """Merge an experiment into main if it beats the current best by the lab's policy.

    Exit code 3 when it is not promoted (the reason on stderr: among others, a winner
    the lab's review gate holds, which `autolab review accept` promotes), 1 for an
    unknown experiment.
    """
    from autolab.protocol.errors import AutoLabError, NothingToDo
    from autolab.protocol.transactions import promote as do_promote

    outcome = do_promote(open_lab(lab, agent), experiment)
    if not outcome.promoted and outcome.reason.startswith("unknown experiment"):
        raise AutoLabError(outcome.reason)  # a wrong id is an error, not nothing to do
    if as_json:
        print_json(outcome.__dict__)
    elif outcome.promoted:
        typer.echo(f"promoted {experiment} ({outcome.commit[:12]})")  # type: ignore[index]
    if not outcome.promoted:
        raise NothingToDo(f"not promoted: {outcome.reason}")


def reap(lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False) -> None:
    """End attempts whose lease expired (re-queued, or failed after max_attempts).

    Attempts running as HF jobs are checked with the Jobs API first: a running job
    keeps its lease; one that ended without a score is settled from its logs. Exit
    code 3 when no attempt was ended.
    """
    from autolab.agents.reaping import reap as do_reap
    from autolab.protocol.errors import NothingToDo

    lines: list[str] = []
    done = do_reap(open_lab(lab, agent), say=lines.append)
    if as_json:
        print_json([r.__dict__ for r in done])
    else:
        for line in lines:
            typer.echo(line)
        if done:
            typer.echo(f"reaped {len(done)}")
    if not done:
        raise NothingToDo("nothing to reap: no lease has expired")


def compact(lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False) -> None:
    """Fold record refs into main, then rewrite each table's shards as one shard.

    Exit code 3 when there was nothing to fold or compact.
    """
    from autolab.protocol.errors import NothingToDo
    from autolab.protocol.transactions import compact as do_compact

    the_lab = open_lab(lab, agent)
    with _working("folding record refs and compacting shards", quiet=as_json):
        folded = the_lab.fold(always=True)
        report = do_compact(the_lab)
    if as_json:
        print_json(report.__dict__)
    elif report.commit:
        typer.echo(f"compacted {sum(report.shards_before.values())} shards into "
                   f"{len(report.rows)} ({report.commit[:12]})")
    elif folded:
        typer.echo(f"folded record refs into main ({folded[:12]}); shards already compact")
    if not report.commit and not folded:
        raise NothingToDo("nothing to compact: no record refs to fold, one shard per table")


def _working(what: str, *, quiet: bool):  # noqa: ANN202
    """A spinner on stderr while a long step runs (nothing when not a terminal)."""
    import contextlib
    import sys

    if quiet or not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(what)


def register(app: typer.Typer) -> None:
    for command in (propose, claim, submit, promote, reap, compact):
        app.command()(command)
