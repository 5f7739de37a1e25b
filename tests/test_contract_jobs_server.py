"""Contract tests for the local Hugging Face Jobs stand-in (``tests/hub_contract``).

Every test drives the server only through ``huggingface_hub.HfApi`` pointed at it, so a
test passing means the installed client and the stand-in agree on the REST contract.
The server's Python hooks are used only where the Hub has no API (kill a process, play a
cron tick) or to look at what went over the wire.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from .hub_contract.jobs_server import REDACTED, JobsServer

TOKEN = "hf_test_contract_token"
NS = "autolab-test"
PY = sys.executable
IMAGE = "python:3.12"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


def _header(request_headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in request_headers.items() if k.lower() == name.lower()), None)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[JobsServer]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "hello-tool"
    tool.write_text('#!/bin/sh\necho "hello $1 from $(basename "$PWD")"\n')
    tool.chmod(0o755)
    with JobsServer(user=NS, orgs=["autolab-org"], path_prefix=[bin_dir],
                    extra_env={"EXTRA_FROM_SERVER": "yes"}, kill_grace_s=1.0) as srv:
        yield srv


@pytest.fixture
def api(server: JobsServer) -> HfApi:
    return HfApi(endpoint=server.endpoint, token=TOKEN)


def _wait(api: HfApi, job_id: str, timeout: float = 10.0):
    return api.wait_for_job(job_id, timeout=timeout, poll_interval=0.05, namespace=NS)


def test_contract_run_job_completes_with_env_secrets_labels_and_logs(
        server: JobsServer, api: HfApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAK_CHECK", "leaked")  # the job's environment must not inherit this
    code = ("import os; print('MARKER-7f3', os.environ['MODE'], os.environ['API_KEY'], "
            "os.environ.get('LEAK_CHECK', 'clean'), os.environ['EXTRA_FROM_SERVER'])")
    job = api.run_job(image=IMAGE, command=_py(code), env={"MODE": "fast"},
                      secrets={"API_KEY": "s3cret-value"},
                      labels={"autolab-exp": "e1", "team": "core_ml"}, flavor="l4x1",
                      timeout="5m", namespace=NS)
    assert job.status.stage in ("SCHEDULING", "RUNNING")
    assert job.url == f"{server.endpoint}/jobs/{NS}/{job.id}"

    done = _wait(api, job.id)
    assert done.status.stage == "COMPLETED" and done.status.message is None
    assert done.labels is not None
    assert done.labels["autolab-exp"] == "e1" and done.labels["team"] == "core_ml"
    assert done.labels["name"].startswith("python-3-12-")  # the client's default name label
    assert done.environment == {"MODE": "fast"}
    assert done.secrets == {"API_KEY": REDACTED}  # never echoed back in clear
    assert (done.flavor, done.docker_image, done.command) == ("l4x1", IMAGE, _py(code))
    assert done.owner.name == NS and done.initiator is not None
    assert done.initiator.type == "user"
    assert done.created_at and done.started_at and done.finished_at
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.durations is not None and done.durations.running_secs is not None
    assert done.durations.total_secs >= done.durations.running_secs

    logs = list(api.fetch_job_logs(job_id=job.id, namespace=NS))
    assert logs == ["MARKER-7f3 fast s3cret-value clean yes"]  # banner filtered by the client

    post = [r for r in server.requests if r.method == "POST" and r.path == f"/api/jobs/{NS}"]
    assert len(post) == 1
    assert post[0].body["timeoutSeconds"] == 300  # "5m" goes over the wire in seconds
    assert post[0].body["secrets"] == {"API_KEY": "s3cret-value"}
    assert _header(post[0].headers, "authorization") == f"Bearer {TOKEN}"


def test_contract_default_namespace_and_path_prefix(server: JobsServer, api: HfApi) -> None:
    job = api.run_job(image=IMAGE, command=["hello-tool", "world"])  # namespace via whoami
    assert job.owner.name == NS
    assert any(r.path == "/api/whoami-v2" for r in server.requests)
    assert _wait(api, job.id).status.stage == "COMPLETED"
    # PATH reaches the tool, and each job runs in its own fresh directory named by its id.
    assert list(api.fetch_job_logs(job_id=job.id, namespace=NS)) == [
        f"hello world from {job.id}"]


def test_contract_failing_command_ends_in_error(server: JobsServer, api: HfApi) -> None:
    code = "import sys; print('boom on stderr', file=sys.stderr); sys.exit(3)"
    job = api.run_job(image=IMAGE, command=_py(code), namespace=NS)
    done = _wait(api, job.id)
    assert done.status.stage == "ERROR"
    assert done.status.message == "Job failed with exit code: 3"
    assert done.finished_at is not None
    assert "boom on stderr" in list(api.fetch_job_logs(job_id=job.id, namespace=NS))


def test_contract_background_children_die_with_the_job(server: JobsServer, api: HfApi) -> None:
    # As in a container, what the main process leaves behind ends when it exits.
    code = ("import subprocess\nchild = subprocess.Popen(['sleep', '60'])\n"
            "print('child', child.pid, flush=True)")
    job = api.run_job(image=IMAGE, command=_py(code), namespace=NS)
    started = time.monotonic()
    assert _wait(api, job.id).status.stage == "COMPLETED"
    assert time.monotonic() - started < 3  # the orphan holding the log pipe did not stall it
    (line,) = api.fetch_job_logs(job_id=job.id, namespace=NS)
    assert not _alive(int(line.split()[1]))


def test_contract_follow_logs_stream_live_and_end_with_the_job(
        server: JobsServer, api: HfApi) -> None:
    code = ("import time\nfor i in range(5):\n    print('tick', i, flush=True)\n"
            "    time.sleep(0.15)")
    job = api.run_job(image=IMAGE, command=_py(code), namespace=NS)
    lines, stages_seen = [], []
    started = time.monotonic()
    for line in api.fetch_job_logs(job_id=job.id, namespace=NS, follow=True):
        lines.append(line)
        stages_seen.append(server.job(job.id)["status"]["stage"])
    assert lines == [f"tick {i}" for i in range(5)]
    assert stages_seen[0] == "RUNNING"  # the first line arrived while the job still ran
    assert time.monotonic() - started < 5  # the stream ended with the job, no timeout
    assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "COMPLETED"
    assert list(api.fetch_job_logs(job_id=job.id, namespace=NS, tail=2)) == ["tick 3", "tick 4"]


def test_contract_cancel_kills_the_process_group(server: JobsServer, api: HfApi) -> None:
    code = ("import subprocess, time\nchild = subprocess.Popen(['sleep', '60'])\n"
            "print('child', child.pid, flush=True)\ntime.sleep(60)")
    job = api.run_job(image=IMAGE, command=_py(code), namespace=NS)
    child_pid = None
    for line in api.fetch_job_logs(job_id=job.id, namespace=NS, follow=True):
        if line.startswith("child "):
            child_pid = int(line.split()[1])
            break
    main_pid = server.pid(job.id)
    assert child_pid and main_pid and _alive(child_pid) and _alive(main_pid)

    api.cancel_job(job_id=job.id, namespace=NS)
    info = api.inspect_job(job_id=job.id, namespace=NS)
    assert info.status.stage == "CANCELED" and info.finished_at is not None
    assert not _alive(main_pid) and not _alive(child_pid)
    api.cancel_job(job_id=job.id, namespace=NS)  # canceling a finished job changes nothing
    assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "CANCELED"


def test_contract_timeout_ends_in_error(server: JobsServer, api: HfApi) -> None:
    job = api.run_job(image=IMAGE, command=_py("import time; time.sleep(30)"), timeout=1,
                      namespace=NS)
    done = _wait(api, job.id, timeout=8)
    assert done.status.stage == "ERROR"
    assert done.status.message == "Job timed out after 1 seconds"
    assert done.started_at and done.finished_at
    assert 0.9 <= (done.finished_at - done.started_at).total_seconds() < 5
    pid = server.pid(job.id)
    assert pid is not None and not _alive(pid)


def test_contract_killed_process_and_deleted_job(server: JobsServer, api: HfApi) -> None:
    sleeper = _py("import time; print('up', flush=True); time.sleep(30)")
    killed = api.run_job(image=IMAGE, command=sleeper, namespace=NS)
    deleted = api.run_job(image=IMAGE, command=sleeper, namespace=NS)
    for job in (killed, deleted):
        assert _wait_stage(api, job.id, "RUNNING")
    server.kill_process(killed.id)
    assert server.wait_job(killed.id, 5) == "ERROR"
    info = api.inspect_job(job_id=killed.id, namespace=NS)
    assert info.status.message == "Job failed with exit code: 137"  # 128 + SIGKILL
    server.delete_job(deleted.id)
    assert api.inspect_job(job_id=deleted.id, namespace=NS).status.stage == "DELETED"
    pid = server.pid(deleted.id)
    assert pid is not None and not _alive(pid)


def _wait_stage(api: HfApi, job_id: str, stage: str) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if api.inspect_job(job_id=job_id, namespace=NS).status.stage == stage:
            return True
        time.sleep(0.05)
    return False


def test_contract_list_jobs_filters_by_labels_and_stage(server: JobsServer, api: HfApi) -> None:
    specs = [{"exp": "a", "team": "x"}, {"exp": "a", "team": "y"}, {"exp": "b", "team": "x"}]
    ids = [api.run_job(image=IMAGE, command=_py("pass"), labels=labels, namespace=NS).id
           for labels in specs]
    for job_id in ids:
        assert _wait(api, job_id).status.stage == "COMPLETED"

    def listed(**kwargs: object) -> set[str]:
        return {job.id for job in api.list_jobs(namespace=NS, **kwargs)}

    assert listed(labels={"exp": "a"}) == {ids[0], ids[1]}
    assert listed(labels={"exp": "a", "team": "x"}) == {ids[0]}
    assert listed(labels={"exp": "zzz"}) == set()
    assert listed(status="RUNNING") == set()
    assert listed(status="COMPLETED", labels={"team": "x"}) == {ids[0], ids[2]}
    # The filter is applied server-side: the client sends one `label=k=v` per pair.
    queries = [r.query for r in server.requests if r.path == f"/api/jobs/{NS}"
               and r.method == "GET"]
    assert {"label": ["exp=a", "team=x"]} in queries
    server.page_size = 2  # list_jobs follows the Link header across pages
    assert listed() == set(ids)
    assert any("cursor" in q for q in (r.query for r in server.requests))


@pytest.mark.parametrize("labels", [{"a/b": "x"}, {"k": "v:1"}, {"k.x": "v"},
                                    {"k": "é"}, {"k": "v" * 101}, {"": "v"}])
def test_contract_invalid_labels_are_refused(
        server: JobsServer, api: HfApi, labels: dict[str, str]) -> None:
    with pytest.raises(HfHubHTTPError, match="Invalid label") as err:
        api.run_job(image=IMAGE, command=_py("pass"), labels=labels, namespace=NS)
    assert err.value.response.status_code == 400
    assert list(api.list_jobs(namespace=NS)) == []  # nothing was created, nothing ran


def test_contract_bad_requests_are_refused(server: JobsServer, api: HfApi) -> None:
    with pytest.raises(HfHubHTTPError, match="Invalid label value 'run.1'"):
        api.run_job(image=IMAGE, command=_py("pass"), name="run.1", namespace=NS)
    with pytest.raises(HfHubHTTPError, match="Invalid flavor 'tpu-mega'") as err:
        api.run_job(image=IMAGE, command=_py("pass"), flavor="tpu-mega", namespace=NS)
    assert err.value.response.status_code == 400
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=server.endpoint, token=False).run_job(
            image=IMAGE, command=_py("pass"), namespace=NS)
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        api.run_job(image=IMAGE, command=_py("pass"), namespace="someone-else")
    assert err.value.response.status_code == 403
    assert list(api.list_jobs(namespace=NS)) == []
    job = api.run_job(image=IMAGE, command=_py("pass"), namespace="autolab-org")
    assert job.owner.name == "autolab-org" and job.owner.type == "org"
    with pytest.raises(HfHubHTTPError, match="Invalid label key"):
        api.update_job_labels(job_id=job.id, labels={"a:b": "c"}, namespace="autolab-org")
    relabeled = api.update_job_labels(job_id=job.id, labels={"ok": "1"}, namespace="autolab-org")
    assert relabeled.labels == {"ok": "1"}
    with pytest.raises(HfHubHTTPError) as err:
        api.inspect_job(job_id="0" * 24, namespace=NS)
    assert err.value.response.status_code == 404


def test_contract_hardware_lists_flavors_with_prices(api: HfApi) -> None:
    flavors = {hw.name: hw for hw in api.list_jobs_hardware()}
    assert {"cpu-basic", "l4x1", "a100-large", "h200"} <= set(flavors)
    assert flavors["cpu-basic"].accelerator is None
    assert flavors["cpu-basic"].unit_cost_micro_usd == 167  # $0.01 an hour, per minute
    h200 = flavors["h200"]
    assert h200.accelerator is not None and h200.accelerator.model == "H200"
    assert h200.unit_label == "minute"
    assert h200.unit_cost_usd == pytest.approx(h200.unit_cost_micro_usd / 1e6)
    assert h200.unit_cost_usd > flavors["a100-large"].unit_cost_usd > flavors["l4x1"].unit_cost_usd


def test_contract_scheduled_job_lifecycle(server: JobsServer, api: HfApi) -> None:
    before = datetime.now(UTC)
    sched = api.create_scheduled_job(
        image=IMAGE, command=_py("import os; print('sched-run', os.environ['K'])"),
        schedule="@hourly", env={"K": "v"}, secrets={"T": "tok"},
        labels={"autolab-sched": "s1"}, timeout=60, namespace=NS)
    assert (sched.schedule, sched.suspend, sched.concurrency) == ("@hourly", False, False)
    assert sched.job_spec.labels is not None and sched.job_spec.labels["autolab-sched"] == "s1"
    assert sched.job_spec.secrets == {"T": REDACTED}
    assert sched.status.last_job is None
    next_run = sched.status.next_job_run_at
    assert next_run is not None and next_run.minute == 0
    assert before < next_run <= before + timedelta(hours=1)

    assert [s.id for s in api.list_scheduled_jobs(labels={"autolab-sched": "s1"},
                                                  namespace=NS)] == [sched.id]
    assert api.list_scheduled_jobs(labels={"autolab-sched": "other"}, namespace=NS) == []

    api.suspend_scheduled_job(scheduled_job_id=sched.id, namespace=NS)
    paused = api.inspect_scheduled_job(scheduled_job_id=sched.id, namespace=NS)
    assert paused.suspend is True and paused.status.next_job_run_at is None
    assert server.trigger_scheduled(sched.id) is None  # a suspended schedule does not fire
    api.resume_scheduled_job(scheduled_job_id=sched.id, namespace=NS)
    assert api.inspect_scheduled_job(scheduled_job_id=sched.id, namespace=NS).suspend is False

    first = server.trigger_scheduled(sched.id)
    assert first is not None and _wait(api, first).status.stage == "COMPLETED"
    second = server.trigger_scheduled(sched.id)
    assert second is not None and second != first
    for run_id in (first, second):
        run = _wait(api, run_id)
        assert run.status.stage == "COMPLETED"
        assert run.initiator is not None
        assert (run.initiator.type, run.initiator.id) == ("scheduled-job", sched.id)
        assert list(api.fetch_job_logs(job_id=run_id, namespace=NS)) == ["sched-run v"]
    status = api.inspect_scheduled_job(scheduled_job_id=sched.id, namespace=NS).status
    assert status.last_job is not None and status.last_job.id == second
    runs = api.list_jobs(labels={"autolab-sched": "s1"}, namespace=NS)
    assert {job.id for job in runs} == {first, second}

    api.delete_scheduled_job(scheduled_job_id=sched.id, namespace=NS)
    assert api.list_scheduled_jobs(namespace=NS) == []
    with pytest.raises(HfHubHTTPError) as err:
        api.inspect_scheduled_job(scheduled_job_id=sched.id, namespace=NS)
    assert err.value.response.status_code == 404


def test_contract_scheduled_job_concurrency_and_schedule(server: JobsServer, api: HfApi) -> None:
    sched = api.create_scheduled_job(image=IMAGE, command=_py("import time; time.sleep(30)"),
                                     schedule="@daily", namespace=NS)
    run = api.trigger_scheduled_job(scheduled_job_id=sched.id, namespace=NS)
    assert run.initiator is not None and run.initiator.id == sched.id
    with pytest.raises(HfHubHTTPError) as err:
        api.trigger_scheduled_job(scheduled_job_id=sched.id, namespace=NS)
    assert err.value.response.status_code == 409
    assert server.trigger_scheduled(sched.id) is None  # the cron tick is skipped too
    api.cancel_job(job_id=run.id, namespace=NS)
    assert server.trigger_scheduled(sched.id) is not None  # free again after the cancel

    monday_9 = api.update_scheduled_job_schedule(scheduled_job_id=sched.id,
                                                 schedule="0 9 * * 1", namespace=NS)
    next_run = monday_9.status.next_job_run_at
    assert monday_9.schedule == "0 9 * * 1" and next_run is not None
    assert (next_run.weekday(), next_run.hour, next_run.minute) == (0, 9, 0)
    with pytest.raises(HfHubHTTPError, match="Invalid schedule") as err:
        api.update_scheduled_job_schedule(scheduled_job_id=sched.id, schedule="every tuesday",
                                          namespace=NS)
    assert err.value.response.status_code == 400
