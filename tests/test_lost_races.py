"""Concurrent ``autolab doctor --fix`` processes against real remotes: a lost race is
re-planned on the fresh main, never reported as a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolab.protocol.lab import Lab
from autolab.protocol.store import FileChange

from .conftest import run_cli
from .helpers import propose_x
from .test_bad_input import _push_file

DOCTORS = 4
# Holds every push of main in pre-receive until DOCTORS of them have arrived (or 10 s
# passed): all of them then reach receive-pack's ref update with the same old main, so
# all but one lose the ref lock, every time. After that round, pushes go straight on.
BARRIER_HOOK = f"""#!/bin/sh
grep -q ' refs/heads/main$' || exit 0
[ -e "$GIT_DIR/race-open" ] && exit 0
mkdir -p "$GIT_DIR/race" && touch "$GIT_DIR/race/$$"
n=0
while [ "$(ls "$GIT_DIR/race" | wc -l)" -lt {DOCTORS} ] && [ $n -lt 200 ]; do
  sleep 0.05; n=$((n + 1))
done
touch "$GIT_DIR/race-open"
"""


def _hook(remote, text: str) -> None:
    hook = Path(remote.bare) / "hooks" / "pre-receive"
    hook.write_text(text)
    hook.chmod(0o755)


def _damage(remote, tmp_path: Path) -> str:
    """A garbage shard under .autolab/scores on main and an unreadable record ref."""
    lab = Lab.open(remote.url, "agent")
    [eid] = propose_x(lab, 1.0)
    _push_file(remote, tmp_path, ".autolab/scores/000000000099-intruder-00000000000000aa.parquet",
               b"not parquet at all")
    bad = lab.store.make_commit(None, FileChange(add={
        ".autolab/queue/000000000000-evil-00000000000000dd.json": b"{not json"}), "record")
    ref = f"refs/autolab/claims/{eid}/1"
    lab.store.create_ref(ref, bad)
    return ref


def _doctors(url: str, count: int, tmp_path: Path) -> list[subprocess.CompletedProcess[str]]:
    """``count`` doctor --fix processes at once; half share this host's cache clone."""
    procs = []
    for n in range(count):
        env = {**os.environ}
        if n % 2:
            env["AUTOLAB_CACHE"] = str(tmp_path / f"cache-{n}")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "autolab.agents.cli", "doctor", "--fix", "--lab", url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.mark.slow
def test_concurrent_doctor_fix_loser_replans_instead_of_remote_rejected(remote, tmp_path):
    ref = _damage(remote, tmp_path)
    assert run_cli("doctor", "--lab", remote.url).returncode == 1
    _hook(remote, BARRIER_HOOK)
    before = remote.main()
    results = _doctors(remote.url, DOCTORS, tmp_path)
    for proc in results:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "remote rejected" not in proc.stdout + proc.stderr
        assert proc.stdout.rstrip().splitlines()[-1].startswith("ok:")
    # The fix landed once: one repair commit, one quarantined copy, one moved ref.
    log = remote.git("log", "--format=%s", f"{before}..main").splitlines()
    assert len(log) == 1 and log[0].startswith("doctor --fix"), log
    held = remote.git("ls-tree", "--name-only", "main", ".autolab/quarantine/scores/")
    assert held.splitlines() == [
        ".autolab/quarantine/scores/000000000099-intruder-00000000000000aa.parquet"]
    assert sum("fixed: quarantined" in p.stdout for p in results) == 1
    assert remote.git("for-each-ref", "--format=%(refname)", "refs/autolab/") == ""
    assert remote.git("for-each-ref", "--format=%(refname)", "refs/autolab-quarantine/") == (
        "refs/autolab-quarantine/" + ref.removeprefix("refs/"))
    assert (Path(remote.bare) / "race-open").exists()  # the pushes did meet in the hook
    os.unlink(Path(remote.bare) / "hooks" / "pre-receive")
    proc = run_cli("doctor", "--lab", remote.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_doctor_fix_refused_by_a_hook_is_an_error_not_a_race(remote, tmp_path):
    """'remote rejected' by a pre-receive hook is the server's refusal: one line, exit 1,
    and no retrying as if another writer had won."""
    _damage(remote, tmp_path)
    _hook(remote, "#!/bin/sh\ngrep -q ' refs/heads/main$' || exit 0\n"
                  "echo 'main is frozen' >&2\nexit 1\n")
    before = remote.main()
    proc = run_cli("doctor", "--fix", "--lab", remote.url)
    assert proc.returncode == 1
    assert "pre-receive hook declined" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert remote.main() == before


def _stores(remote, count: int, tmp_path: Path):
    from autolab.protocol.gitstore import GitStore

    return [GitStore(remote.url, cache_dir=tmp_path / f"store-{n}") for n in range(count)]


def test_ref_lock_lost_in_receive_pack_is_a_conflict(any_remote, tmp_path):
    """Pushes that pass the lease check together: receive-pack fails the losers' ref
    update ('failed to update ref', 'cannot lock ref ... but expected'); the store
    reports each as Conflict, the same as a stale lease."""
    import threading

    from autolab.protocol.errors import Conflict

    stores = _stores(any_remote, DOCTORS, tmp_path)
    base = stores[0].refresh().main
    commits = [s.make_commit(s.refresh().main, FileChange(add={"n.txt": str(n).encode()}),
                             f"writer {n}") for n, s in enumerate(stores)]
    _hook(any_remote, BARRIER_HOOK)
    outcomes: list[object] = [None] * DOCTORS

    def push(n: int) -> None:
        try:
            stores[n].cas_main(commits[n], base)
            outcomes[n] = "won"
        except Exception as exc:  # noqa: BLE001 - the type is what is checked
            outcomes[n] = exc

    threads = [threading.Thread(target=push, args=(n,)) for n in range(DOCTORS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert outcomes.count("won") == 1, outcomes
    losers = [o for o in outcomes if o != "won"]
    assert all(isinstance(o, Conflict) for o in losers), losers
    assert any("cannot lock ref" in str(o) for o in losers), losers  # the server's race
    assert any_remote.main() == commits[outcomes.index("won")]


def test_a_ref_update_the_server_cannot_make_is_not_a_race(any_remote, tmp_path):
    """'failed to update ref' for a reason that is not contention (a ref in the way of
    the one created) stays a TransportError: re-deciding would never help."""
    from autolab.protocol.errors import Conflict, TransportError

    [store] = _stores(any_remote, 1, tmp_path)
    base = store.refresh().main
    any_remote.git("update-ref", "refs/autolab/claims/0001", base)  # a file where a dir goes
    record = store.make_commit(None, FileChange(add={"r/x": b"1"}), "one")
    with pytest.raises(TransportError) as info:
        store._push_one("refs/autolab/claims/0001/1", record, None)
    assert not isinstance(info.value, Conflict)
    assert "failed to update ref" in str(info.value)


def test_a_hook_quoting_a_lock_failure_is_still_a_refusal(any_remote, tmp_path):
    """Only receive-pack's own failed update counts: a hook that declines while printing
    git's lock message is the server refusing, not a lost race."""
    from autolab.protocol.errors import Conflict, TransportError

    [store] = _stores(any_remote, 1, tmp_path)
    base = store.refresh().main
    _hook(any_remote, "#!/bin/sh\necho \"error: cannot lock ref 'refs/heads/main': is at "
                      f"{base} but expected {base}\" >&2\nexit 1\n")
    new = store.make_commit(base, FileChange(add={"a.txt": b"a"}), "a")
    with pytest.raises(TransportError) as info:
        store.cas_main(new, base)
    assert not isinstance(info.value, Conflict)


RACE = "5" * 40
SUMMARIES = {
    # git up to 2.49: the reason is on stderr, and explain_rejections appends it.
    "[remote rejected] (failed to update ref): cannot lock ref 'refs/heads/main': "
    f"is at {RACE} but expected {RACE}": True,
    "[remote rejected] (failed to update ref): cannot lock ref 'refs/heads/main': "
    "Unable to create '/lab.git/refs/heads/main.lock': File exists.": True,
    "[remote rejected] (failed to update ref): cannot lock ref "
    "'refs/autolab/claims/0001/1': reference already exists": True,
    # git 2.50 on: receive-pack names the failure in the status line.
    "[remote rejected] (incorrect old value provided)": True,
    "[remote rejected] (reference already exists)": True,
    # Some servers put git's lock message in the status line.
    f"[remote rejected] (cannot lock ref 'refs/heads/main': is at {RACE} but expected "
    f"{RACE})": True,
    # Client-side lease and fast-forward checks.
    "[rejected] (stale info)": True,
    "[rejected] (fetch first)": True,
    # Refusals: retrying the same decision would not help.
    "[remote rejected] (pre-receive hook declined)": False,
    "[remote rejected] (hook declined)": False,
    "[remote rejected] (failed to update ref)": False,  # no reason given
    "[remote rejected] (failed to update ref): cannot lock ref 'refs/heads/main': "
    "Unable to create '/lab.git/refs/heads/main.lock': Permission denied": False,
    "[remote rejected] (refname conflict)": False,
    "[remote rejected] (deny updating a hidden ref)": False,
    "[remote rejected] (shallow update not allowed)": False,
}


@pytest.mark.parametrize("summary", list(SUMMARIES))
def test_only_contention_in_a_rejection_is_a_lost_race(summary):
    from autolab.protocol.git_cli import lost_race

    assert lost_race(summary) is SUMMARIES[summary]
