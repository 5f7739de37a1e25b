"""``autolab review``: list, show, accept and reject candidates from the terminal.

Candidates are finished, unpromoted, unrejected experiments (docs/review.md). An
acceptance is a promotion through the usual transaction, recorded with the reviewer's
id and note; a rejection is a ``rejected`` queue row.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from autolab.agents.cli.common import AgentOpt, JsonOpt, LabOpt, fmt, open_lab, print_json

review_app = typer.Typer(
    help="Review candidates (finished, unpromoted, unrejected experiments): list them, "
    "show one, accept (promote) or reject one. Pull requests on Git hosts are not built "
    "yet (docs/review.md).",
    no_args_is_help=True,
)

_ExperimentArg = Annotated[str, typer.Argument(help="The experiment, e.g. 0007.")]


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.6g}"


@review_app.command("list")
def review_list(lab: LabOpt = None, as_json: JsonOpt = False) -> None:
    """Candidates, best first, with their metric's delta against the best on their parent
    commit and against the current best. Exit code 3 when there are none."""
    from autolab.protocol.errors import NothingToDo
    from autolab.scoreboard.review import candidates

    view = open_lab(lab).read()
    rows = candidates(view)
    if as_json:
        print_json({"mode": view.config.policy.review, "metric": view.config.metric,
                    "direction": view.config.direction, "candidates": rows})
    else:
        for r in rows:
            mark = ("awaiting-review" if r["awaiting_review"]
                    else "beats-best" if r["beats_best"] else "")
            typer.echo(f"{r['experiment_id']}  {view.config.metric}={fmt(r['metric'])}  "
                       f"vs parent {_delta(r['delta_parent'])}  vs best "
                       f"{_delta(r['delta_best'])}  {mark:15}  {r['hypothesis'][:70]}")
    if not rows:
        raise NothingToDo("no candidates to review")


@review_app.command("show")
def review_show(
    experiment_id: _ExperimentArg, lab: LabOpt = None, as_json: JsonOpt = False,
    log_lines: Annotated[int, typer.Option(help="Lines of the last attempt's log to show "
                                           "(0: none).")] = 20,
) -> None:
    """One candidate in full (as `autolab show`), with where it stands in review."""
    from autolab.agents.cli.cmd_inspect import print_show, show_data
    from autolab.scoreboard.review import candidates

    the_lab = open_lab(lab)
    view = the_lab.read()
    data = show_data(the_lab, view, experiment_id, log_lines)
    found = next((r for r in candidates(view) if r["experiment_id"] == experiment_id), None)
    data["review"] = _standing(data, found)
    if as_json:
        print_json(data)
        return
    print_show(data)
    review = data["review"]
    line = f"review: {review['standing']}"
    if found is not None:
        line += (f" (vs parent {_delta(found['delta_parent'])}, vs best "
                 f"{_delta(found['delta_best'])})")
    if review.get("hold"):
        line += f": {review['hold']}"
    typer.echo(line)


def _standing(data: dict[str, Any], found: dict[str, Any] | None) -> dict[str, Any]:
    if data["promoted"]:
        return {"standing": "promoted"}
    if data.get("rejected"):
        return {"standing": "rejected", "reason": data["rejection"],
                "reviewer": data["rejected_by"]}
    if found is None:
        return {"standing": "not a candidate"}
    standing = ("awaiting-review" if found["awaiting_review"]
                else "beats-best" if found["beats_best"] else "candidate")
    return {"standing": standing, "hold": found["hold"], **{
        k: found[k] for k in ("parent_best", "delta_parent", "best", "delta_best",
                              "beats_best")}}


@review_app.command("accept")
def review_accept(
    experiment_id: _ExperimentArg,
    note: Annotated[str | None, typer.Option(help="Why, recorded on the promotion row.",
                                             show_default=False)] = None,
    lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False,
) -> None:
    """Promote a candidate (whatever the review gate says), recording you as reviewer.

    Exit code 3 when it is not promoted: it no longer beats the best, was promoted or
    rejected already (the reason on stderr); 1 for an unknown experiment.
    """
    from autolab.protocol.errors import AutoLabError, NothingToDo
    from autolab.protocol.transactions import promote

    outcome = promote(open_lab(lab, agent), experiment_id, reviewed=True, note=note)
    if not outcome.promoted and outcome.reason.startswith("unknown experiment"):
        raise AutoLabError(outcome.reason)
    if as_json:
        print_json(outcome.__dict__)
    elif outcome.promoted:
        typer.echo(f"accepted {experiment_id}: promoted ({outcome.commit[:12]})"  # type: ignore[index]
                   f", best {'none' if outcome.previous is None else fmt(outcome.previous)}"
                   f" -> {fmt(outcome.metric)}")
    if not outcome.promoted:
        raise NothingToDo(f"not promoted: {outcome.reason}")


@review_app.command("reject")
def review_reject(
    experiment_id: _ExperimentArg,
    reason: Annotated[str, typer.Option(help="Why: recorded, and shown to proposers.",
                                        show_default=False)],
    lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False,
) -> None:
    """Reject a finished experiment: it is never promoted and its patch never proposed
    again. Exit code 3 when it was promoted or rejected already; 1 for an unknown or
    unfinished experiment."""
    from autolab.protocol.errors import NothingToDo
    from autolab.protocol.review import reject

    outcome = reject(open_lab(lab, agent), experiment_id, reason)
    if as_json:
        print_json(outcome.__dict__)
    elif outcome.rejected:
        typer.echo(f"rejected {experiment_id} ({outcome.commit[:12]})")  # type: ignore[index]
    if not outcome.rejected:
        raise NothingToDo(f"not rejected: {outcome.reason}")


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
