"""``autolab lineage``: the chain of promotions along ``main``'s history.

Promoting an experiment is a merge commit on ``main`` whose first parent is the
previous ``main`` and whose second parent is the experiment's branch head, the
``source_commit`` of its ``promoted`` row. So ``git log --first-parent main`` reads as
the lab's history, and its merges, joined with the promotion rows and the folded
experiments, are the lineage of the current best: which experiment each step took,
by how much it moved the metric, who ran it.

JSON shape (``--json``), oldest first::

    [{"commit": str, "experiment_id": str | null, "attempt": int | null,
      "metric": float | null, "previous": float | null, "delta": float | null,
      "hypothesis": str | null, "agent": str | null, "at": str | null,
      "source_commit": str}]

``previous`` is the metric of the step before (null for the first), ``delta`` the
change (``metric - previous``). A merge on ``main`` that no promotion row names (a
merge made by hand) is a step with ``experiment_id`` null.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from autolab.protocol.errors import AutoLabError

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView
    from autolab.protocol.store import LabStore


def first_parent_history(store: LabStore, main: str) -> Iterator[tuple[str, list[str]]]:
    """``(commit, parent ids)`` along ``main``'s first-parent chain, newest first.

    Raises:
        AutoLabError: the store is not a Git store (it has no repository to walk).
    """
    repo = getattr(store, "repo", None)
    if repo is None:
        raise AutoLabError(f"{type(store).__name__} has no Git history to walk")
    walker = repo.walk(main)
    walker.simplify_first_parent()
    for commit in walker:
        yield str(commit.id), [str(p) for p in commit.parent_ids]


def promotions_by_source(view: LabView) -> dict[str, dict[str, Any]]:
    """Promotion rows by their ``source_commit`` (the merge's second parent)."""
    rows = view.folded().promotions.to_pylist()
    return {p["source_commit"]: p for p in rows if p["source_commit"]}


def lineage(view: LabView) -> list[dict[str, Any]]:
    """The promotion chain of ``view.main``, oldest first (shape: module docstring)."""
    by_source = promotions_by_source(view)
    merges = [(commit, parents[1]) for commit, parents in
              first_parent_history(view.store, view.main) if len(parents) > 1]
    merges.reverse()
    ids = [by_source[s]["experiment_id"] for _, s in merges if s in by_source]
    hypotheses = hypotheses_of(view, ids)
    steps: list[dict[str, Any]] = []
    previous = None
    for commit, source in merges:
        row = by_source.get(source)
        if row is None:
            steps.append({"commit": commit, "experiment_id": None, "attempt": None,
                          "metric": None, "previous": previous, "delta": None,
                          "hypothesis": None, "agent": None, "at": None,
                          "source_commit": source})
            continue
        metric = row["metric"]
        steps.append({
            "commit": commit, "experiment_id": row["experiment_id"], "attempt": row["attempt"],
            "metric": metric, "previous": previous,
            "delta": None if previous is None or metric is None else metric - previous,
            "hypothesis": hypotheses.get(row["experiment_id"]), "agent": row["agent"],
            "at": row["at"], "source_commit": source,
        })
        previous = metric
    return steps


def hypotheses_of(view: LabView, ids: Iterable[str]) -> dict[str, str]:
    """Hypotheses of the experiments ``ids``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    exps = view.folded().experiments
    found = exps.filter(pc.is_in(exps.column("experiment_id"),
                                 value_set=pa.array(wanted, pa.string())))
    return dict(zip(found.column("experiment_id").to_pylist(),
                    found.column("hypothesis").to_pylist(), strict=True))


def best_at(view: LabView, commits: Iterable[str]) -> dict[str, float | None]:
    """The best metric on ``main`` at each of ``commits``: that of the promotion in force
    there (the last promotion merge at or before it on the first-parent chain).

    Commits on the chain before the first promotion map to None; commits not on the
    chain at all are left out. The walk stops once every commit is placed.
    """
    remaining = set(commits)
    if not remaining:
        return {}
    by_source = promotions_by_source(view)
    out: dict[str, float | None] = {}
    waiting: list[str] = []
    for commit, parents in first_parent_history(view.store, view.main):
        if commit in remaining:
            remaining.discard(commit)
            waiting.append(commit)
        if len(parents) > 1 and parents[1] in by_source and waiting:
            metric = by_source[parents[1]]["metric"]
            out.update(dict.fromkeys(waiting, metric))
            waiting = []
            if not remaining:
                break
    out.update(dict.fromkeys(waiting))
    return out
