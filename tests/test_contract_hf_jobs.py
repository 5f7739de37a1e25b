"""The hf-jobs backend against a local stand-in of the Hub's Jobs REST API.

Contract tests: the Hub cannot be reached from here, so ``tests/hub_contract`` serves
the documented Jobs endpoints on 127.0.0.1 (``HF_ENDPOINT`` points at it) and really
runs each job's command (``autolab run ...``) as a local process against a real lab
behind a real ``git daemon``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from autolab.agents.backends.hf_jobs import lab_label
from autolab.agents.lab_init import init_lab
from autolab.agents.reaping import reap
from autolab.protocol import compute
from autolab.protocol import transactions as tx
from autolab.protocol.knobs import set_knobs, unified_diff
from autolab.protocol.lab import Lab, now

from .conftest import REPO, Remote, run_cli
from .hub_contract.jobs_server import JobsServer

pytestmark = pytest.mark.slow

TOKEN = "hf_contracttoken0123456789"
IMAGE = "python:3.12-autolab"  # the stand-in runs commands here; the image is recorded
USER = "autolab-test"


@pytest.fixture
def hub(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    with JobsServer(user=USER, path_prefix=[venv_bin], kill_grace_s=1.0, extra_env={
        "PYTHONUNBUFFERED": "1", "AUTOLAB_CACHE": str(tmp_path / "job-cache"),
        "AUTOLAB_REF_GRACE": "0",
    }) as server:
        yield server


def _lab(tmp_path: Path, git_daemon, extra: str = "", policy: str = "",
         max_attempts: int | None = None) -> Remote:
    name = f"hf-{tmp_path.name}.git"
    bare = git_daemon.base / name

    def edit(work: Path) -> None:
        config = work / "autolab.toml"
        text = config.read_text().replace("[policy]\n", "[policy]\n" + policy)
        if max_attempts is not None:
            text = re.sub(r"(?m)^max_attempts\s*=.*$", f"max_attempts = {max_attempts}", text)
        config.write_text(text + extra)

    init_lab(bare, "blank", bare=True, edit=edit)
    return Remote("daemon", git_daemon.url(name), bare)


def _env(hub: JobsServer) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN}


def _propose(lab: Lab, x: float, *, prefix: str = "", suffix: str = "") -> str:
    source = (REPO / "repo_template" / "blank" / "experiment.py").read_text()
    edited = set_knobs(source, {"X": x})
    edited = edited.replace("X = ", prefix + "X = ", 1) + suffix
    [eid] = tx.propose(lab, [tx.Proposal(f"X to {x}", unified_diff("experiment.py", source,
                                                                     edited))])
    assert eid
    return eid


def _launch(lab_url: str, hub: JobsServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("worker", "--lab", lab_url, "--backend", "hf-jobs", "--once",
                   "--namespace", USER, "--agent", "laptop", "--image", IMAGE, *args,
                   env=_env(hub))


def _only_job(hub: JobsServer, api: HfApi, eid: str, attempt: int):  # noqa: ANN202
    jobs = list(api.list_jobs(namespace=USER, labels={"autolab-experiment": eid,
                                                       "autolab-attempt": str(attempt)}))
    assert len(jobs) == 1, jobs
    return jobs[0]


def _wait_for(predicate, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_contract_detached_launch_completes_with_a_promotion(hub, tmp_path, git_daemon):
    remote = _lab(tmp_path, git_daemon)
    lab = Lab.open(remote.url, "planner")
    eid = _propose(lab, 2.5)
    started = time.monotonic()
    proc = _launch(remote.url, hub, "--flavor", "cpu-basic", "--volume",
                   "hf://buckets/autolab-test/cache:/data", "--label", "team=lm")
    assert proc.returncode == 0, proc.stderr
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    job = _only_job(hub, api, eid, 1)
    assert hub.job(job.id)["status"]["stage"] in ("RUNNING", "COMPLETED")  # detached
    assert job.labels["autolab-lab"] == lab_label(remote.url)
    assert job.labels["autolab-agent"] == "laptop" and job.flavor == "cpu-basic"
    assert job.command[:2] == ["autolab", "run"] and job.docker_image == IMAGE
    assert job.labels["team"] == "lm" and job.labels["autolab-attempt"] == "1"
    [body] = [r.body for r in hub.requests if r.method == "POST" and r.path == f"/api/jobs/{USER}"]
    assert body["volumes"] == [{"type": "bucket", "source": "autolab-test/cache",
                                "mountPath": "/data"}]
    assert body["attempts"] == 1  # the platform never runs an attempt again on its own
    assert hub.wait_job(job.id, timeout=120) == "COMPLETED", "\n".join(hub.logs(job.id)[-8:])

    view = Lab.open(remote.url, "check").read()
    exp = view.state.experiments[eid]
    assert exp.state == "done" and exp.promoted, exp
    score = exp.result
    assert score["backend"] == "hf-jobs" and score["job_id"] == f"{USER}/{job.id}"
    assert score["flavor"] == "cpu-basic"
    assert 0 < score["job_seconds"] < time.monotonic() - started + 1
    price = 167e-6 / 60  # the stand-in's cpu-basic price, USD per second
    assert score["cost_usd"] == pytest.approx(score["job_seconds"] * price)
    assert score["log_ref"] == f"refs/autolab-logs/{eid}/1"
    log = remote.git("show", f"{score['log_ref']}:run.log")
    assert "score: 0.250000" in log
    assert "X = 2.5" in remote.git("show", "main:experiment.py")
    launched = compute.launches(view)[(eid, 1)]
    assert launched["job_id"] == f"{USER}/{job.id}"
    # The token went to the job as a secret, and nowhere into the lab.
    assert body["secrets"] == {"HF_TOKEN": TOKEN}
    status = json.loads(run_cli("status", "--lab", remote.url, "--json", check=True).stdout)
    spend = status["spend"]
    assert spend["total_usd"] == pytest.approx(score["cost_usd"])
    assert spend["per_experiment"] == [{"experiment_id": eid, "cost_usd": score["cost_usd"],
                                        "runs": 1, "flavors": ["cpu-basic"]}]
    assert [(p["experiment_id"], p["runs"]) for p in spend["per_promotion"]] == [(eid, 1)]
    text = run_cli("status", "--lab", remote.url, check=True).stdout
    assert "spend" in text and f"{score['cost_usd']:.4f}"[:6] in text
    everything = remote.git("log", "--all", "-p", "--format=%B")
    assert TOKEN not in everything and TOKEN not in str(view.table("scores").to_pylist())


def test_contract_a_failing_job_is_requeued_then_failed_after_max_attempts(
        hub, tmp_path, git_daemon):
    # Jobs are told to use a lab URL where there is no lab: `autolab run` exits 1 at once
    # (a URL nothing listens on would first retry for seconds). max_attempts 2: one
    # failed job requeues the experiment, the second fails it.
    nowhere = tmp_path / "no-lab-here.git"
    remote = _lab(tmp_path, git_daemon, f'\n[hf_jobs]\nlab_url = "{nowhere}"\n',
                  max_attempts=2)
    lab = Lab.open(remote.url, "planner")
    eid = _propose(lab, 1.0)
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    events = []
    for attempt in (1, 2):
        proc = _launch(remote.url, hub)
        assert proc.returncode == 0, proc.stderr
        job = _only_job(hub, api, eid, attempt)
        assert hub.wait_job(job.id, timeout=120) == "ERROR"
        proc = run_cli("reap", "--lab", remote.url, "--json", env=_env(hub), check=True)
        exp = Lab.open(remote.url, "check").read().state.experiments[eid]
        events.append(exp.state)
        assert f"job {USER}/{job.id} ERROR" in exp.reason
        assert "exit code" in exp.reason  # the job's status message
    assert events == ["queued", "failed"]
    assert "max_attempts 2" in exp.reason


def test_contract_a_job_cancelled_from_outside_is_requeued_and_a_running_one_kept(
        hub, tmp_path, git_daemon):
    remote = _lab(tmp_path, git_daemon)
    lab = Lab.open(remote.url, "planner")
    eid = _propose(lab, 1.0, prefix="import time\ntime.sleep(60)\n")
    assert _launch(remote.url, hub).returncode == 0
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    job = _only_job(hub, api, eid, 1)
    _wait_for(lambda: any("running `python experiment.py`" in line
                          for line in hub.logs(job.id)))
    # Long past its lease, a job the Jobs API reports RUNNING keeps it.
    os.environ.update(_env(hub))
    try:
        reporter = Lab.open(remote.url, "reporter")
        assert reap(reporter, say=lambda _: None, at=now() + timedelta(days=1)) == []
        assert reporter.read().state.experiments[eid].state == "claimed"
        api.cancel_job(job_id=job.id, namespace=USER)
        assert hub.wait_job(job.id, timeout=30) == "CANCELED"
        lines: list[str] = []
        reap(reporter, say=lines.append)
    finally:
        for key in _env(hub):
            os.environ.pop(key, None)
    exp = Lab.open(remote.url, "check").read().state.experiments[eid]
    assert exp.state == "queued" and f"job {USER}/{job.id} CANCELED" in exp.reason, (exp, lines)


def test_contract_a_killed_job_has_its_metric_recovered_from_its_logs(
        hub, tmp_path, git_daemon):
    remote = _lab(tmp_path, git_daemon)
    lab = Lab.open(remote.url, "planner")
    # Prints its summary block, then hangs: killed before `autolab run` could submit.
    eid = _propose(lab, 2.0, suffix="import time\ntime.sleep(60)\n")
    assert _launch(remote.url, hub).returncode == 0
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    job = _only_job(hub, api, eid, 1)
    _wait_for(lambda: any("score: 1.000000" in line for line in hub.logs(job.id)))
    hub.kill_process(job.id)
    assert hub.wait_job(job.id, timeout=30) == "ERROR"
    proc = run_cli("reap", "--lab", remote.url, env=_env(hub), check=True)
    assert "recovered from the logs" in proc.stdout
    exp = Lab.open(remote.url, "check").read().state.experiments[eid]
    assert exp.state == "done" and exp.result["metric"] == 1.0
    assert "recovered from the logs of job" in exp.result["reason"]
    assert not exp.promoted  # no pushed result commit to merge
    assert "score: 1.000000" in remote.git("show", f"{exp.result['log_ref']}:run.log")


def test_contract_budget_exhaustion_stops_launches_and_proposals(hub, tmp_path, git_daemon):
    remote = _lab(tmp_path, git_daemon, policy="max_usd = 0.0000001\n")
    lab = Lab.open(remote.url, "planner")
    eid = _propose(lab, 2.0)
    _propose(lab, 2.2)
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    assert _launch(remote.url, hub).returncode == 0
    first = [j for j in api.list_jobs(namespace=USER)]
    assert len(first) == 1
    assert hub.wait_job(first[0].id, timeout=120) == "COMPLETED"
    spent = compute.spent_usd(Lab.open(remote.url, "check").read())
    assert spent > 0.0000001
    proc = _launch(remote.url, hub)
    assert proc.returncode == 3 and "budget spent" in proc.stderr
    assert len(list(api.list_jobs(namespace=USER))) == 1  # nothing more launched
    proc = run_cli("planner", "--lab", remote.url, "--once", env=_env(hub), check=True)
    assert "budget spent" in proc.stdout
    assert eid in Lab.open(remote.url, "check").read().state.experiments


def test_contract_a_scheduled_worker_triggered_twice_runs_two_experiments(
        hub, tmp_path, git_daemon):
    remote = _lab(tmp_path, git_daemon)
    lab = Lab.open(remote.url, "planner")
    ids = [_propose(lab, 2.0), _propose(lab, 2.5)]
    proc = run_cli("schedule", "--lab", remote.url, "--role", "worker", "--every", "10m",
                   "--namespace", USER, "--image", IMAGE, env=_env(hub))
    assert proc.returncode == 0, proc.stderr
    scheduled_id = proc.stdout.split(" as ")[1].split(":")[0]
    listed = run_cli("schedule", "--lab", remote.url, "--namespace", USER, "list",
                     env=_env(hub), check=True).stdout
    assert scheduled_id in listed and "*/10 * * * *" in listed and "worker" in listed
    for _ in range(2):
        job_id = hub.trigger_scheduled(scheduled_id)
        assert job_id is not None
        assert hub.wait_job(job_id, timeout=120) == "COMPLETED", "\n".join(hub.logs(job_id)[-8:])
    state = Lab.open(remote.url, "check").read().state
    assert all(state.experiments[i].state == "done" for i in ids)
    for action in ("suspend", "resume", "delete"):
        run_cli("schedule", "--namespace", USER, action, scheduled_id, env=_env(hub),
                check=True)
    listed = run_cli("schedule", "--lab", remote.url, "--namespace", USER, "list",
                     env=_env(hub), check=True).stdout
    assert scheduled_id not in listed


def test_contract_the_default_image_without_install_is_refused(hub, tmp_path, git_daemon):
    remote = _lab(tmp_path, git_daemon)
    _propose(Lab.open(remote.url, "planner"), 1.0)
    proc = run_cli("worker", "--lab", remote.url, "--backend", "hf-jobs", "--once",
                   "--namespace", USER, env=_env(hub))
    assert proc.returncode == 1 and "[hf_jobs].install" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert Lab.open(remote.url, "check").read().state.experiments["0001"].state == "queued"


def test_contract_labels_the_hub_refuses_are_never_sent(hub, tmp_path, git_daemon):
    """Lab URLs and agent ids become label values of letters, digits, - and _ only."""
    url = f"git://127.0.0.1:{git_daemon.port}/team.v2/lab:one.git"
    value = lab_label(url)
    assert set(value) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    assert value == lab_label(url) and value != lab_label(url.replace("one", "two"))
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    job = api.run_job(image="python:3.12", command=["true"], namespace=USER,
                      labels={"autolab-lab": value})
    assert hub.wait_job(job.id, timeout=30) == "COMPLETED"
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError):  # the raw URL is refused, as by the Hub
        api.run_job(image="python:3.12", command=["true"], namespace=USER,
                    labels={"autolab-lab": url})


def test_contract_a_job_that_cannot_be_inspected_does_not_keep_its_lease_forever(
        hub, tmp_path, git_daemon):
    remote = _lab(tmp_path, git_daemon)
    lab = Lab.open(remote.url, "planner")
    counted = _propose(lab, 1.0, prefix="import time\ntime.sleep(60)\n")
    timed = _propose(lab, 2.0, prefix="import time\ntime.sleep(60)\n")
    hub.orgs.append("team")
    for _ in range(2):
        proc = run_cli("worker", "--lab", remote.url, "--backend", "hf-jobs", "--once",
                       "--namespace", "team", "--agent", "laptop", "--image", IMAGE,
                       env=_env(hub))
        assert proc.returncode == 0, proc.stderr
    hub.orgs.remove("team")  # the reapers' token lost access: every inspection is a 403
    os.environ.update(_env(hub))
    try:
        reporter = Lab.open(remote.url, "reporter")
        exps = reporter.read().state.experiments
        lease_end = max(exps[counted].lease_until, exps[timed].lease_until)
        lease = exps[counted].lease_until - exps[counted].claimed_at
        # Within the lease, trust; just past it, a bounded number of failed inspections.
        assert reap(reporter, say=lambda _: None) == []
        for _ in range(2):
            assert reap(reporter, say=lambda _: None,
                        at=lease_end + timedelta(seconds=1)) == []
        ended = reap(reporter, say=lambda _: None, at=lease_end + timedelta(seconds=1))
        assert {(r.experiment_id, r.event) for r in ended} == {(counted, "expired"),
                                                               (timed, "expired")}
        # A reaper that inspects once per process (cron) gives up a whole lease later.
        third = _propose(lab, 3.0, prefix="import time\ntime.sleep(60)\n")
        hub.orgs.append("team")
        proc = run_cli("worker", "--lab", remote.url, "--backend", "hf-jobs", "--once",
                       "--namespace", "team", "--agent", "laptop", "--image", IMAGE,
                       env=_env(hub))
        assert proc.returncode == 0, proc.stderr
        hub.orgs.remove("team")
        exp = reporter.read().state.experiments
        claimed = [e for e in exp.values() if e.state == "claimed"]
        assert len(claimed) == 1, [(e.id, e.state) for e in exp.values()]
        late = claimed[0].lease_until + lease + timedelta(seconds=1)
        code = ("import sys; from datetime import datetime\n"
                "from autolab.agents.reaping import reap\n"
                "from autolab.protocol.lab import Lab\n"
                "reap(Lab.open(sys.argv[1], 'cron'), at=datetime.fromisoformat(sys.argv[2]))\n")
        once = subprocess.run([sys.executable, "-c", code, remote.url, late.isoformat()],
                              capture_output=True, text=True, env={**os.environ}, timeout=120)
        assert f"{claimed[0].id} attempt" in once.stdout, once.stdout + once.stderr
        assert "cannot be inspected" in once.stdout
    finally:
        for key in _env(hub):
            os.environ.pop(key, None)
    state = Lab.open(remote.url, "check").read().state
    assert third in state.experiments
    assert all("cannot be inspected" in state.experiments[e].reason for e in (counted, timed))


def test_contract_waiting_on_a_job_that_cannot_be_inspected_is_bounded(
        hub, tmp_path, git_daemon):
    from autolab.agents.backends.hf_jobs import INSPECTION_LIMIT, JobSettings, Launcher
    from autolab.protocol.errors import AutoLabError

    remote = _lab(tmp_path, git_daemon)
    lab = Lab.open(remote.url, "laptop")
    _propose(lab, 1.0, prefix="import time\ntime.sleep(60)\n")
    hub.orgs.append("team")
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    config = lab.read().config
    settings = JobSettings.from_config(config.hf_jobs, config.timeout, namespace="team",
                                       image=IMAGE)
    launcher = Launcher(lab, settings, api=api, say=lambda _: None)
    job = launcher.launch_next()
    hub.orgs.remove("team")
    started = time.monotonic()
    with pytest.raises(AutoLabError, match="inspect_job: 403"):
        launcher.wait(job, poll=0.05)
    assert time.monotonic() - started < 5
    assert sum(1 for r in hub.requests if r.method == "GET" and job.id in r.path
               and r.path.endswith(job.id)) == INSPECTION_LIMIT


def test_contract_schedule_create_list_suspend_resume_delete(hub, tmp_path, git_daemon):
    """``autolab schedule`` as subcommands, each against the Jobs API stand-in, with its
    --json document; the durations it takes mean what they mean everywhere."""
    remote = _lab(tmp_path, git_daemon)
    env = _env(hub)

    def cli(*args: str) -> dict | list:
        proc = run_cli("schedule", *args, "--namespace", USER, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    made = cli("create", "--lab", remote.url, "--role", "reporter", "--every", "2h",
               "--image", IMAGE, "--job-timeout", "1h30m")
    assert made["schedule"] == "0 */2 * * *" and made["role"] == "reporter"
    assert made["command"][:2] == ["autolab", "reporter"] and made["command"][-1] == "--once"
    [sent] = [r.body for r in hub.requests if r.method == "POST"
              and r.path == f"/api/scheduled-jobs/{USER}"]
    assert sent["jobSpec"]["timeoutSeconds"] == 5400  # --job-timeout 1h30m
    [row] = cli("list", "--lab", remote.url)
    assert row["id"] == made["id"] and not row["suspended"]
    assert row["role"] == "reporter" and row["next_run"] is not None
    assert cli("suspend", made["id"]) == {"id": made["id"], "namespace": USER,
                                          "action": "suspended"}
    assert cli("list", "--lab", remote.url)[0]["suspended"] is True
    assert hub.trigger_scheduled(made["id"]) is None  # a suspended schedule starts nothing
    assert cli("resume", made["id"])["action"] == "resumed"
    assert cli("list", "--lab", remote.url)[0]["suspended"] is False
    assert cli("delete", made["id"])["action"] == "deleted"
    assert cli("list", "--lab", remote.url) == []
    text = run_cli("schedule", "list", "--lab", remote.url, "--namespace", USER, env=env)
    assert text.returncode == 0 and text.stdout == "0 scheduled job(s)\n"


def test_contract_schedule_keeps_its_first_spelling(hub, tmp_path, git_daemon):
    """``schedule --role R --every E`` still creates, and group options written before
    the subcommand still reach it."""
    remote = _lab(tmp_path, git_daemon)
    env = _env(hub)
    made = run_cli("schedule", "--lab", remote.url, "--role", "planner", "--every", "@hourly",
                   "--namespace", USER, "--image", IMAGE, "--json", env=env)
    assert made.returncode == 0, made.stderr
    scheduled = json.loads(made.stdout)["id"]
    listed = run_cli("schedule", "--lab", remote.url, "--namespace", USER, "--json", "list",
                     env=env)
    assert [r["id"] for r in json.loads(listed.stdout)] == [scheduled]
    gone = run_cli("schedule", "--namespace", USER, "delete", scheduled, env=env)
    assert gone.returncode == 0 and gone.stdout == f"deleted {scheduled}\n"


def test_contract_every_that_is_not_whole_minutes_is_refused(hub, tmp_path, git_daemon):
    """``--every 90s`` divides an hour, but cron counts minutes: it was scheduled every
    minute ("*/1"); it is refused, as is any --every that is not whole minutes."""
    remote = _lab(tmp_path, git_daemon)
    for every in ("90s", "30s", "2.5m", "7m", "@often"):
        for verb in ([], ["create"]):  # the first spelling, and the new one
            proc = run_cli("schedule", *verb, "--lab", remote.url, "--role", "worker",
                           "--every", every, "--namespace", USER, "--image", IMAGE,
                           env=_env(hub))
            assert proc.returncode == 2, (every, proc.stdout, proc.stderr)
            assert proc.stderr.startswith("autolab: error: --every")
    assert list(HfApi(endpoint=hub.endpoint, token=TOKEN).list_scheduled_jobs(
        namespace=USER)) == []


def test_contract_an_hf_jobs_worker_prints_its_launches_as_json_lines(hub, tmp_path, git_daemon):
    remote = _lab(tmp_path, git_daemon)
    eid = _propose(Lab.open(remote.url, "planner"), 2.5)
    proc = _launch(remote.url, hub, "--json", "--job-timeout", "20m")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["event"] for e in events] == ["started", "launched", "done"]
    assert events[0]["backend"] == "hf-jobs" and events[0]["job_timeout_s"] == 1200
    job = _only_job(hub, HfApi(endpoint=hub.endpoint, token=TOKEN), eid, 1)
    assert events[1]["experiment_id"] == eid and events[1]["job_id"] == f"{USER}/{job.id}"
    [body] = [r.body for r in hub.requests if r.method == "POST" and r.path == f"/api/jobs/{USER}"]
    assert body["timeoutSeconds"] == 1200
    assert hub.wait_job(job.id, timeout=120) == "COMPLETED"
    idle = _launch(remote.url, hub, "--json")
    assert idle.returncode == 3
    assert json.loads(idle.stdout.splitlines()[-1])["event"] == "nothing_to_do"
