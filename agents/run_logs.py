"""Where a run's log is: on this host (a local worker's log directory) or in the lab
(``refs/autolab-logs/<experiment>/<attempt>``, where runs in jobs keep theirs)."""

from __future__ import annotations

from pathlib import Path

from autolab.protocol.errors import AutoLabError
from autolab.protocol.lab import Lab

LOG_REFS = "refs/autolab-logs/"


def default_log_dir(lab: Lab) -> Path:
    """Where this host's workers of ``lab`` write run logs (beside the cache clone)."""
    return Path(str(lab.store.path)).with_suffix(".logs")  # type: ignore[attr-defined]


def find_log(lab: Lab, experiment_id: str, attempt: int,
             log_dir: Path | None = None) -> tuple[str, bytes]:
    """``(where, bytes)`` of the log of ``attempt``: this host's file first, then the
    lab's log ref (the one the score names, else the conventional one).

    Raises:
        AutoLabError: neither exists.
    """
    local = (log_dir or default_log_dir(lab)) / f"{experiment_id}-{attempt}.log"
    if local.is_file():
        return str(local), local.read_bytes()
    refs = [s["log_ref"] for s in lab.read(max_age=5.0).state.scores_for(experiment_id, attempt)
            if s.get("log_ref")]
    for ref in dict.fromkeys([*refs, f"{LOG_REFS}{experiment_id}/{attempt}"]):
        if not ref.startswith(LOG_REFS):
            continue  # a row names only refs of this kind; anything else is not read
        commit = lab.store.fetch_ref(ref)
        if commit is not None:
            data = lab.store.read_file(commit, "run.log")
            if data is not None:
                return ref, data
    raise AutoLabError(f"no log of {experiment_id} attempt {attempt}: not on this host "
                       f"({local}) nor in the lab ({LOG_REFS}{experiment_id}/{attempt})")
