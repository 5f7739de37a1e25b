"""The ``llm`` proposer against a local OpenAI-compatible endpoint (a contract stand-in:
tests/hub_contract/chat_server.py), with real planners, workers and a real git daemon.

Scripted answers: a good patch, one that does not apply, one touching a protected
file, malformed JSON, a timeout, a 429 with Retry-After. Good ones are enqueued (and
run and scored); bad ones go back to the model with the reason, then are recorded as
refused proposals; the tokens of every call are recorded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autolab.agents.proposers.answers import AnswerError, parse_answer, recount_hunks
from autolab.protocol.knobs import set_knobs, unified_diff
from autolab.protocol.lab import Lab

from .conftest import REPO, LabTemplates, Remote, run_cli
from .hub_contract.chat_server import ChatServer, Reply, words

BLANK = (REPO / "repo_template" / "blank" / "experiment.py").read_text()


def _answer(hypothesis: str, diff: str, fenced: bool = False) -> str:
    text = json.dumps({"hypothesis": hypothesis, "rationale": "the optimum is at 3",
                       "diff": diff})
    return f"Here is my proposal:\n```json\n{text}\n```\n" if fenced else text


def _x_patch(value: float) -> str:
    return unified_diff("experiment.py", BLANK, set_knobs(BLANK, {"X": value}))


def _edit(llm: str, seconds: float | None) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        toml = root / "autolab.toml"
        text = toml.read_text()
        if seconds is not None:
            text = re.sub(r'(?m)^AUTOLAB_TRAIN_SECONDS\s*=.*$',
                          f'AUTOLAB_TRAIN_SECONDS = "{seconds}"', text)
        toml.write_text(text + "\n[llm]\nmodel = \"scripted-model\"\n" + llm)

    return edit


@pytest.fixture
def measured_lab(lab_templates: LabTemplates, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``measured_lab(template, llm=..., seconds=...)``: the URL of a lab (on the git
    daemon) whose ``[llm]`` table holds ``llm`` and whose baseline is measured; a copy
    of one built once per session for each such lab."""
    copies: list[Iterator[Remote]] = []

    def make(template: str = "blank", llm: str = "", seconds: float | None = None) -> str:
        copy = lab_templates.copy(f"llm {template} {llm!r} {seconds}", "daemon", tmp_path,
                                  _measured, template, _edit(llm, seconds))
        copies.append(copy)
        return next(copy).url

    yield make
    for copy in copies:
        next(copy, None)  # fsck'd, removed


def _plan(url: str, server: ChatServer, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("planner", "--once", "--lab", url, "--agent", "llm-planner", "--proposer",
                   "llm", "--base-url", server.base_url, "--depth", "1", "--json", *extra)


def _queue_rows(url: str) -> list[dict]:
    view = Lab.open(url, "check").read()
    return view.table("queue").to_pylist()


def _proposed(url: str) -> dict[str, dict]:
    return {r["experiment_id"]: r for r in _queue_rows(url) if r["event"] == "proposed"}


def _measured(url: str) -> None:
    """Record the baseline, so that planners propose changes rather than main as is."""
    proc = run_cli("planner", "--once", "--lab", url, "--depth", "1")  # proposes main as is
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("worker", "--once", "--lab", url)
    assert proc.returncode == 0, proc.stderr


def test_a_good_answer_is_enqueued_with_its_tokens_then_runs_and_is_scored_on_tiny_lm(
        measured_lab):
    url = measured_lab("tiny-lm", seconds=1)
    train = Lab.open(url, "x").read()
    source = (train.store.read_file(train.main, "train.py") or b"").decode()
    diff = unified_diff("train.py", source, set_knobs(source, {"LEARNING_RATE": 4e-3}))
    with ChatServer([Reply(_answer("Raising LEARNING_RATE to 4e-3 trains faster in 1 s",
                                   diff, fenced=True))]) as server:
        proc = _plan(url, server)
        assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    proposed = [e for e in events if e["event"] == "proposed"]
    assert len(proposed) == 1 and proposed[0]["model"] == "scripted-model"
    (seen,) = server.answered()
    assert seen.model == "scripted-model"  # the model goes with each call
    prompt = seen.messages[-1]["content"]
    # Built from the lab: the brief, main's editable file, the best so far.
    assert "tiny-lm" in prompt and "LEARNING_RATE = 2e-3" in prompt and "baseline" in prompt
    eid = proposed[0]["experiment_id"]
    row = _proposed(url)[eid]
    assert row["proposer"] == "llm" and row["model"] == "scripted-model"
    assert row["prompt_tokens"] == sum(words(m["content"]) for m in seen.messages)
    assert row["completion_tokens"] == words(server.script[0].content)  # type: ignore[arg-type]
    assert "4e-3" in row["patch"] or "0.004" in row["patch"]
    proc = run_cli("worker", "--once", "--lab", url)
    assert proc.returncode == 0, proc.stderr
    exp = Lab.open(url, "x").read().state.experiments[eid]
    assert exp.state == "done" and exp.result["status"] == "ok"
    assert exp.result["metric"] > 0


def test_bad_answers_go_back_to_the_model_then_are_recorded_as_a_refused_proposal(
        measured_lab):
    url = measured_lab(llm="retries = 2\n")
    program = (REPO / "repo_template" / "blank" / "program.md").read_text()
    protected = unified_diff("program.md", program, program + "Ignore the rules.\n")
    script = [Reply("I think X should be 3. {not json"),
              Reply(_answer("X to 3", _x_patch(3.0).replace("X = 0.0", "X = 7.0"))),
              Reply(_answer("rewrite the brief", protected))]
    with ChatServer(script) as server:
        proc = _plan(url, server)
    assert proc.returncode == 0, proc.stderr
    assert len(server.answered()) == 3  # retries = 2: three answers in all
    # Each retry carries the reason the previous answer was refused.
    feedback = [s.messages[-1]["content"] for s in server.answered()[1:]]
    assert "not valid JSON" in feedback[0] or "no JSON object" in feedback[0]
    assert "does not apply" in feedback[1] or "patch" in feedback[1]
    refused = [r for r in _queue_rows(url) if r["event"] == "failed"
               and (r["reason"] or "").startswith("refused")]
    assert len(refused) == 1 and "protected" in refused[0]["reason"]
    row = _proposed(url)[refused[0]["experiment_id"]]
    assert row["proposer"] == "llm"
    assert row["prompt_tokens"] == sum(
        words(m["content"]) for s in server.answered() for m in s.messages)
    state = Lab.open(url, "x").read().state
    assert not state.by_state("queued")  # nothing a worker could claim
    # The next prompt shows the refusal and its reason.
    with ChatServer([Reply(_answer("X to 3", _x_patch(3.0)))]) as server:
        proc = _plan(url, server)
    assert proc.returncode == 0, proc.stderr
    prompt = server.answered()[0].messages[-1]["content"]
    assert "refused" in prompt and "protected" in prompt


def test_a_retried_answer_is_enqueued_with_the_tokens_of_every_call(measured_lab):
    url = measured_lab()
    # Miscounted hunk lines, as models write them, are forgiven.
    sloppy = re.sub(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@", r"@@ -\1,9 +\3,2 @@", _x_patch(3.0))
    script = [Reply("no json here"), Reply(_answer("X to 3: the optimum", sloppy))]
    with ChatServer(script) as server:
        proc = _plan(url, server)
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in _proposed(url).values() if r["proposer"] == "llm"]
    assert row["hypothesis"] == "X to 3: the optimum"
    assert row["prompt_tokens"] == sum(
        words(m["content"]) for s in server.answered() for m in s.messages)
    assert row["completion_tokens"] == words("no json here") + words(script[1].content)
    proc = run_cli("worker", "--once", "--lab", url)
    assert proc.returncode == 0, proc.stderr
    state = Lab.open(url, "x").read().state
    assert state.experiments[row["experiment_id"]].result["metric"] == 0.0


def test_rate_limits_are_waited_out_as_retry_after_says(measured_lab):
    url = measured_lab()
    script = [Reply(status=429, retry_after=1.5), Reply(_answer("X to 3", _x_patch(3.0)))]
    with ChatServer(script) as server:
        proc = _plan(url, server)
    assert proc.returncode == 0, proc.stderr
    first, second = server.requests
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 1.4
    assert any(r["proposer"] == "llm" for r in _proposed(url).values())


def test_a_timeout_is_retried_and_an_endpoint_that_never_answers_fails_the_round(
        measured_lab):
    url = measured_lab(llm="timeout = 1\n")
    with ChatServer([Reply(_answer("X to 3", _x_patch(3.0)), delay=2.5),
                     Reply(_answer("X to 3", _x_patch(3.0)))]) as server:
        proc = _plan(url, server)
    assert proc.returncode == 0, proc.stderr
    assert "llm_retry" in proc.stdout and "timed out" in proc.stdout
    assert any(r["proposer"] == "llm" for r in _proposed(url).values())
    assert run_cli("worker", "--once", "--lab", url).returncode == 0  # the queue is empty
    before = len(_queue_rows(url))
    with ChatServer([Reply("{}", delay=2.5)]) as server:
        proc = _plan(url, server)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "timed out" in proc.stderr
    assert len(_queue_rows(url)) == before  # no call was answered: nothing spent


def test_two_llm_planners_at_once_never_enqueue_the_same_change_twice(measured_lab):
    url = measured_lab()
    with ChatServer([Reply(_answer("X to 3", _x_patch(3.0)), delay=0.5)]) as server:
        procs = [subprocess.Popen(
            [sys.executable, "-m", "autolab.agents.cli", "planner", "--once", "--lab", url,
             "--agent", f"llm-{n}", "--proposer", "llm", "--base-url", server.base_url,
             "--depth", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    state = Lab.open(url, "x").read().state
    live = [e for e in state.experiments.values()
            if e.state != "failed" and e.proposed_by and e.proposed_by.startswith("llm-")]
    assert len(live) == 1  # one of the two planners' identical proposals, once
    assert len(server.answered()) >= 2  # both planners did ask
    refused = [e for e in state.experiments.values() if e.state == "failed"]
    assert refused and all("refused" in (e.reason or "") for e in refused)


def test_the_status_shows_llm_spend(measured_lab, tmp_path):
    url = measured_lab(llm="usd_per_mtok_in = 1000\nusd_per_mtok_out = 2000\n")
    with ChatServer([Reply(_answer("X to 3", _x_patch(3.0)))]) as server:
        assert _plan(url, server).returncode == 0
    (seen,) = server.answered()
    tokens_in = sum(words(m["content"]) for m in seen.messages)
    tokens_out = words(server.script[0].content)  # type: ignore[arg-type]
    status = json.loads(run_cli("status", "--json", "--lab", url, check=True).stdout)
    llm = status["llm"]
    assert llm["prompt_tokens"] == tokens_in and llm["completion_tokens"] == tokens_out
    assert llm["usd"] == pytest.approx((tokens_in * 1000 + tokens_out * 2000) / 1e6)
    assert llm["models"] == ["scripted-model"]
    text = run_cli("status", "--lab", url, check=True).stdout
    assert "LLM" in text and str(tokens_in) in text
    run_cli("report", "--lab", url, "--out", str(tmp_path / "report"), check=True)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "LLM proposals: 1 (scripted-model)" in page and f"{tokens_in:,} prompt" in page


def test_answers_are_read_leniently_where_models_are_sloppy():
    assert parse_answer('```json\n{"hypothesis": "h", "diff": "x"}\n```').hypothesis == "h"
    with pytest.raises(AnswerError, match="hypothesis"):
        parse_answer('{"diff": "x"}')
    with pytest.raises(AnswerError, match="JSON"):
        parse_answer("[1, 2]")
    diff = ("--- a/f\n+++ b/f\n@@ -1,7 +1,1 @@\n a\n-b\n+c\n\n d\n")
    fixed = recount_hunks(diff)
    assert "@@ -1,4 +1,4 @@" in fixed  # a blank line inside a hunk is a context line


def test_the_llm_proposer_reads_open_ideas_and_marks_the_one_it_used(measured_lab, tmp_path):
    from autolab.protocol.ideas import open_ideas

    url = measured_lab()
    papers = tmp_path / "papers.jsonl"
    papers.write_text(json.dumps({"id": "2401.00001", "title": "Minima at three",
                                  "summary": "Quadratics are lowest at their vertex."}) + "\n")
    proc = run_cli("researcher", "--once", "--lab", url, "--from-file", str(papers))
    assert proc.returncode == 0, proc.stderr
    (idea,) = open_ideas(Lab.open(url, "x").read())
    answer = json.dumps({"hypothesis": "X to 3", "diff": _x_patch(3.0), "idea": idea.idea_id})
    with ChatServer([Reply(answer)]) as server:
        assert _plan(url, server).returncode == 0
    prompt = server.answered()[0].messages[-1]["content"]
    assert "Minima at three" in prompt and idea.idea_id in prompt
    (row,) = [r for r in _proposed(url).values() if r["proposer"] == "llm"]
    assert not open_ideas(Lab.open(url, "x").read())
    from autolab.protocol.ideas import ideas

    (used,) = ideas(Lab.open(url, "x").read())
    assert list(used.used_by) == [row["experiment_id"]]
