"""Contract tests for the Hugging Face Papers stand-in (``tests/hub_contract``) and the
``researcher`` agent that searches it.

The stand-in is driven only through ``huggingface_hub.HfApi``, so a test passing means
the installed client and the stand-in agree on the routes and shapes. The researcher
runs as real ``autolab researcher`` processes with ``HF_ENDPOINT`` pointing at the
stand-in, against labs served by a real ``git daemon``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from autolab.agents.lab_init import init_lab
from autolab.protocol import ideas as ideas_api
from autolab.protocol.errors import AutoLabError
from autolab.protocol.lab import Lab

from .conftest import GitDaemon, Remote, run_cli
from .hub_contract.papers_server import PapersServer, StoredPaper

TODAY = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
PAPERS = [
    StoredPaper("2501.00001", "Muon optimizer for small transformers",
                "We train small transformers with the Muon optimizer.", upvotes=30,
                keywords=["muon", "orthogonalization"]),
    StoredPaper("2501.00002", "Learning rate warmup revisited",
                "Warmup of the learning rate matters less than thought.", upvotes=20),
    StoredPaper("2501.00003", "Muon optimizer with learning rate warmup",
                "A learning rate warmup schedule for the Muon optimizer.", upvotes=10),
    StoredPaper("2501.00004", "Rotary embeddings at small scale",
                "Rotary position embeddings help tiny language models.", upvotes=5),
    StoredPaper("2501.00005", "Rotary embeddings and learning rate warmup",
                "Longer learning rate warmup with rotary embeddings.", upvotes=3),
    StoredPaper("2501.00006", "Weight tying in byte-level models",
                "Tying input and output embeddings.", upvotes=1),
    StoredPaper("2501.00010", "A daily paper on muon optimizer scaling",
                "Scaling laws of the muon optimizer.", upvotes=7, daily=TODAY,
                submitter="alice"),
    StoredPaper("2501.00011", "A daily paper about diffusion",
                "Nothing about the lab's topics.", upvotes=50,
                daily=TODAY - timedelta(days=1), submitter="bob"),
]
TOPICS = ["muon optimizer", "learning rate warmup"]
PROGRAM = """# A lab with topics

Minimize `score`.

## Topics

- muon optimizer
- `learning rate warmup`

## Notes

- not a topic
"""


def _ids(*numbers: int) -> set[str]:
    return {f"arxiv:2501.{n:05d}" for n in numbers}


@pytest.fixture
def server() -> Iterator[PapersServer]:
    with PapersServer(PAPERS) as srv:
        yield srv


@pytest.fixture
def api(server: PapersServer) -> HfApi:
    return HfApi(endpoint=server.endpoint, token=False)


@pytest.fixture
def lab_remote(tmp_path: Path, git_daemon: GitDaemon) -> Iterator[Remote]:
    """A blank lab served by git daemon whose program.md lists TOPICS."""
    bare = git_daemon.base / f"lab-{tmp_path.name}.git"
    init_lab(bare, "blank", bare=True,
             edit=lambda work: (work / "program.md").write_text(PROGRAM))
    remote = Remote("daemon", git_daemon.url(bare.name), bare)
    yield remote
    remote.fsck()
    shutil.rmtree(bare, ignore_errors=True)


def _research(remote: Remote, server: PapersServer | str, *args: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    endpoint = server if isinstance(server, str) else server.endpoint
    return run_cli("researcher", "--once", "--json", "--lab", remote.url, *args,
                   env={"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
                        **(env or {})})


def _events(proc: subprocess.CompletedProcess[str], name: str) -> list[dict]:
    return [e for e in map(json.loads, proc.stdout.splitlines()) if e["event"] == name]


def _found_rows(url: str) -> Counter[str]:
    rows = ideas_api.idea_rows(Lab.open(url, "reader").read())
    return Counter(r["idea_id"] for r in rows if r["event"] == "found")


# -- the stand-in speaks the client's contract ------------------------------------------------


def test_search_answers_as_list_papers_parses_it(api, server):
    found = list(api.list_papers(query="muon optimizer", limit=2))
    assert [p.id for p in found] == ["2501.00001", "2501.00003"]  # most upvoted first
    first = found[0]
    assert first.title == "Muon optimizer for small transformers"
    assert first.summary == PAPERS[0].summary
    assert first.authors[0].name == "A. Author" and first.upvotes == 30
    # The keywords are the paper's; the client reads only the entry's own (none).
    assert first.ai_keywords is None
    assert first.published_at == datetime(2025, 1, 2, tzinfo=UTC)
    [request] = server.requests
    assert request.path == "/api/papers/search"
    assert request.query == {"q": ["muon optimizer"], "limit": ["2"]}
    assert [p.id for p in api.list_papers(query="no such words at all")] == []


def test_paper_info_answers_the_paper_and_404_for_an_unknown_one(api, server):
    info = api.paper_info("2501.00004")
    assert (info.id, info.title, info.summary) == (
        "2501.00004", PAPERS[3].title, PAPERS[3].summary)
    assert api.paper_info("2501.00001").ai_keywords == ["muon", "orthogonalization"]
    with pytest.raises(HfHubHTTPError) as caught:
        api.paper_info("2501.99999")
    assert caught.value.response.status_code == 404
    assert [r.path for r in server.requests] == ["/api/papers/2501.00004",
                                                 "/api/papers/2501.00001",
                                                 "/api/papers/2501.99999"]


def test_daily_papers_take_the_clients_filters(api, server):
    latest = list(api.list_daily_papers())
    assert [p.id for p in latest] == ["2501.00010", "2501.00011"]  # newest day first
    assert latest[0].submitted_by.username == "alice"
    assert latest[0].submitted_at == TODAY
    assert [p.id for p in api.list_daily_papers(sort="trending")] == ["2501.00011",
                                                                     "2501.00010"]
    assert [p.id for p in api.list_daily_papers(date=TODAY.date().isoformat())] == [
        "2501.00010"]
    assert [p.id for p in api.list_daily_papers(submitter="bob")] == ["2501.00011"]
    assert [p.id for p in api.list_daily_papers(month=TODAY.strftime("%Y-%m"))]
    week = "{}-W{:02d}".format(*TODAY.isocalendar()[:2])
    assert "2501.00010" in [p.id for p in api.list_daily_papers(week=week)]
    assert [p.id for p in api.list_daily_papers(limit=1, p=1)] == ["2501.00011"]
    last = server.requests[-1]
    assert last.path == "/api/daily_papers" and last.query == {"p": ["1"], "limit": ["1"]}


def test_a_failing_server_raises_the_clients_http_error(api, server):
    server.fail(503, "Service Unavailable")
    with pytest.raises(HfHubHTTPError) as caught:
        list(api.list_papers(query="muon"))
    assert caught.value.response.status_code == 503


# -- the researcher ------------------------------------------------------------------------


def test_researcher_records_the_topics_papers_once_and_a_rerun_nothing(lab_remote, server):
    proc = _research(lab_remote, server)
    assert proc.returncode == 0, proc.stderr
    searched = [e["query"] for e in _events(proc, "searched")]
    assert searched == TOPICS  # program.md's Topics bullets, not the Notes ones
    [summary] = _events(proc, "researched")
    assert summary["new"] == 5 and summary["known"] == 0
    assert {e["idea_id"] for e in _events(proc, "found")} == _ids(1, 2, 3, 5, 10)
    view = Lab.open(lab_remote.url, "reader").read()
    got = {i.idea_id: i for i in ideas_api.ideas(view)}
    assert set(got) == _ids(1, 2, 3, 5, 10)
    muon = got["arxiv:2501.00001"]
    assert (muon.arxiv_id, muon.title, muon.body, muon.query, muon.source) == (
        "2501.00001", PAPERS[0].title, PAPERS[0].summary, "muon optimizer", "hf-papers")
    assert muon.link == f"{server.endpoint}/papers/2501.00001"
    assert muon.tags == () and muon.agent  # search entries carry no keywords the client reads
    assert got["arxiv:2501.00003"].query == "muon optimizer"  # its first query
    main = lab_remote.main()

    again = _research(lab_remote, server)
    assert again.returncode == 0, again.stderr
    [summary] = _events(again, "researched")
    assert (summary["new"], summary["known"], summary["commit"]) == (0, 5, None)
    assert "0 new paper(s), 5 already recorded" in summary["message"]
    assert lab_remote.main() == main  # nothing written


def test_two_researchers_at_once_record_each_paper_once(lab_remote, tmp_path):
    """Both search (slowly, so they overlap), read the same main and push at once: a
    pre-receive barrier holds both pushes until both arrived (30 s at most), so one
    always loses the compare-and-swap and must re-decide against the winner's papers."""
    hook = Path(lab_remote.bare) / "hooks" / "pre-receive"
    hook.write_text("""#!/bin/sh
grep -q ' refs/heads/main$' || exit 0
[ -e "$GIT_DIR/race-open" ] && exit 0
mkdir -p "$GIT_DIR/race" && touch "$GIT_DIR/race/$$"
n=0
while [ "$(ls "$GIT_DIR/race" | wc -l)" -lt 2 ] && [ $n -lt 600 ]; do
  sleep 0.05; n=$((n + 1))
done
touch "$GIT_DIR/race-open"
""")
    hook.chmod(0o755)
    queries = {"a": ["muon optimizer", "learning rate warmup"],
               "b": ["learning rate warmup", "rotary embeddings"]}
    with PapersServer(PAPERS, delay_s=0.3) as slow:
        procs = {}
        for name, asked in queries.items():
            # Separate cache clones: two hosts, which do not take turns at main.
            env = {**os.environ, "HF_ENDPOINT": slow.endpoint, "AUTOLAB_AGENT": name,
                   "AUTOLAB_CACHE": str(tmp_path / f"cache-{name}"),
                   "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
            argv = [sys.executable, "-m", "autolab.agents.cli", "researcher", "--once",
                    "--json", "--lab", lab_remote.url]
            for q in asked:
                argv += ["--query", q]
            procs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, env=env)
        results = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    for proc in results.values():
        assert proc.returncode == 0, proc.stderr
    found = _found_rows(lab_remote.url)
    assert set(found) == _ids(1, 2, 3, 4, 5, 10)  # the union of both searches
    assert all(count == 1 for count in found.values()), found
    summaries = {n: _events(p, "researched")[0] for n, p in results.items()}
    assert sum(s["lost_races"] for s in summaries.values()) >= 1  # the race happened
    assert sum(s["new"] for s in summaries.values()) == 6
    recorded = [e["idea_id"] for p in results.values() for e in _events(p, "found")]
    assert sorted(recorded) == sorted(found)  # each agent reports only what it wrote


def test_config_queries_and_daily_papers(tmp_path, git_daemon, server):
    bare = git_daemon.base / f"lab-{tmp_path.name}.git"

    def edit(work: Path) -> None:
        with (work / "autolab.toml").open("a") as toml:
            toml.write('\n[research]\nqueries = ["rotary embeddings"]\nlimit = 1\n'
                       "daily = true\n")
        (work / "program.md").write_text(PROGRAM)

    init_lab(bare, "blank", bare=True, edit=edit)
    remote = Remote("daemon", git_daemon.url(bare.name), bare)
    proc = _research(remote, server)
    assert proc.returncode == 0, proc.stderr
    searched = [(e["query"], e["source"]) for e in _events(proc, "searched")]
    assert searched == [("rotary embeddings", "hf-papers"), ("muon optimizer", "hf-papers"),
                        ("learning rate warmup", "hf-papers"),
                        ("rotary embeddings", "hf-daily"), ("muon optimizer", "hf-daily"),
                        ("learning rate warmup", "hf-daily")]
    found = {e["idea_id"]: e for e in _events(proc, "found")}
    assert set(found) == _ids(4, 1, 2, 10)  # limit 1 per query, and the daily match
    assert found["arxiv:2501.00010"]["source"] == "hf-daily"
    daily = [r for r in server.requests if r.path == "/api/daily_papers"]
    assert len(daily) == 1 and daily[0].query == {"limit": ["50"]}
    # --query replaces the lab's topics; --no-daily the config's daily.
    proc = _research(remote, server, "--query", "weight tying", "--no-daily")
    assert [e["query"] for e in _events(proc, "searched")] == ["weight tying"]
    assert {e["idea_id"] for e in _events(proc, "found")} == _ids(6)


def test_results_without_an_abstract_are_completed_from_paper_info(lab_remote):
    with PapersServer(PAPERS, search_summaries=False) as lean:
        proc = _research(lab_remote, lean, "--query", "rotary embeddings")
        assert proc.returncode == 0, proc.stderr
        infos = sorted(r.path for r in lean.requests if r.path.startswith("/api/papers/2"))
        assert infos == ["/api/papers/2501.00004", "/api/papers/2501.00005"]
        bodies = {i.idea_id: i.body for i in ideas_api.ideas(
            Lab.open(lab_remote.url, "reader").read())}
        assert bodies == {"arxiv:2501.00004": PAPERS[3].summary,
                          "arxiv:2501.00005": PAPERS[4].summary}
        again = _research(lab_remote, lean, "--query", "rotary embeddings")
        assert again.returncode == 0
        assert len([r for r in lean.requests if r.path.startswith("/api/papers/2")]) == 2


def test_a_failing_hub_is_exit_1_with_one_line_and_writes_nothing(lab_remote, server,
                                                                   free_endpoint):
    main = lab_remote.main()
    server.fail(500, "Internal Error")
    proc = _research(lab_remote, server)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.startswith("autolab: error: Hugging Face Papers: search 'muon optimizer': ")
    assert "500" in line
    assert _events(proc, "error")[0]["exit_code"] == 1
    refused = _research(lab_remote, free_endpoint)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "Hugging Face Papers: search" in refused.stderr
    assert lab_remote.main() == main


def test_a_looping_researcher_outlives_a_failing_hub(lab_remote, server, tmp_path):
    server.fail(503, "Service Unavailable")
    env = {**os.environ, "HF_ENDPOINT": server.endpoint, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "autolab.agents.cli", "researcher", "--loop",
                             "--interval", "0.2s", "--json", "--lab", lab_remote.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[dict] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(json.loads(line)) for line in proc.stdout],
                     daemon=True).start()

    def wait_for(name: str) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            event = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if event["event"] == name:
                return event
        raise AssertionError(f"no {name} event")

    try:
        failed = wait_for("search_failed")
        assert failed["level"] == "warning" and "503" in failed["reason"]
        server.fail(None)
        assert wait_for("researched")["new"] == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()
    assert set(_found_rows(lab_remote.url)) == _ids(1, 2, 3, 5, 10)


@pytest.fixture
def free_endpoint() -> str:
    from .conftest import free_port

    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_no_topics_is_an_error_naming_where_to_put_them(daemon_remote, server):
    proc = _research(daemon_remote, server)
    assert proc.returncode == 1
    assert "no topics to search" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert server.requests == []


# -- papers from a file ------------------------------------------------------------------------


def test_from_file_records_papers_once_without_network(daemon_remote, tmp_path, free_endpoint):
    papers = tmp_path / "papers.jsonl"
    lines = [
        {"id": "2502.00001", "title": "Offline paper one", "summary": "Abstract one.",
         "query": "by hand", "tags": ["x"]},
        {"id": "arXiv:2502.00002v3", "title": "Offline paper two"},
        # an entry as the Hub's API answers it, nested
        {"paper": {"id": "2502.00003", "summary": "Nested abstract."}, "title": "Nested"},
        {"id": "2502.00001", "title": "A repeat of paper one"},
    ]
    papers.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    proc = _research(daemon_remote, free_endpoint, "--from-file", str(papers))
    assert proc.returncode == 0, proc.stderr
    [summary] = _events(proc, "researched")
    assert (summary["new"], summary["known"]) == (3, 0)
    got = {i.idea_id: i for i in ideas_api.ideas(Lab.open(daemon_remote.url, "r").read())}
    assert set(got) == {"arxiv:2502.00001", "arxiv:2502.00002", "arxiv:2502.00003"}
    one = got["arxiv:2502.00001"]
    assert (one.title, one.body, one.query, one.tags, one.source, one.link) == (
        "Offline paper one", "Abstract one.", "by hand", ("x",), "file",
        "https://arxiv.org/abs/2502.00001")
    assert got["arxiv:2502.00003"].body == "Nested abstract."
    main = daemon_remote.main()
    again = _research(daemon_remote, free_endpoint, "--from-file", str(papers))
    assert again.returncode == 0
    assert _events(again, "researched")[0]["new"] == 0 and daemon_remote.main() == main


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "not JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"title": "no id"}', "no id"),
    ('{"id": "not-an-id", "title": "x"}', "is not an arXiv id"),
    ('{"id": "2502.00009"}', "no title"),
    ('{"id": "2502.00009", "title": "x", "tags": [1]}', "tags must be a list of strings"),
])
def test_a_malformed_line_is_one_error_naming_the_line(daemon_remote, tmp_path, line, why,
                                                       free_endpoint):
    papers = tmp_path / "papers.jsonl"
    papers.write_text('{"id": "2502.00001", "title": "fine"}\n\n' + line + "\n")
    main = daemon_remote.main()
    proc = _research(daemon_remote, free_endpoint, "--from-file", str(papers))
    assert proc.returncode == 1
    [message] = proc.stderr.splitlines()
    assert message.startswith(f"autolab: error: --from-file {papers}:3: ")
    assert why in message
    assert daemon_remote.main() == main  # nothing recorded, not even the good line


def test_query_and_from_file_together_are_a_usage_error(daemon_remote, tmp_path):
    proc = run_cli("researcher", "--lab", daemon_remote.url, "--query", "x", "--from-file",
                   str(tmp_path / "p.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "autolab: error: give --query or --from-file, not both"


# -- the ideas helper --------------------------------------------------------------------------


def test_open_ideas_and_marking_them_used(daemon_remote):
    lab = Lab.open(daemon_remote.url, "proposer")
    first = ideas_api.NewIdea("arxiv:2503.00001", "One", body="b1", arxiv_id="2503.00001")
    second = ideas_api.NewIdea("arxiv:2503.00002", "Two", query="q")
    done = ideas_api.record_ideas(lab, [first, second, first])
    assert [i.idea_id for i in done.recorded] == ["arxiv:2503.00001", "arxiv:2503.00002"]
    assert [i.idea_id for i in done.known] == ["arxiv:2503.00001"] and done.commit
    assert ideas_api.record_ideas(lab, [second]).commit is None
    view = lab.read()
    assert [i.idea_id for i in ideas_api.open_ideas(view)] == ["arxiv:2503.00001",
                                                              "arxiv:2503.00002"]
    assert [i.title for i in ideas_api.open_ideas(view.state, limit=1)] == ["One"]
    assert [i.title for i in ideas_api.open_ideas(view.folded(), query="q")] == ["Two"]

    assert ideas_api.mark_used(lab, "arxiv:2503.00001", "0007") is True
    assert ideas_api.mark_used(lab, "arxiv:2503.00001", "0007") is False  # idempotent
    view = lab.read()
    assert [i.idea_id for i in ideas_api.open_ideas(view)] == ["arxiv:2503.00002"]
    used = next(i for i in ideas_api.ideas(view) if i.idea_id == "arxiv:2503.00001")
    assert used.used and used.used_by == ("0007",)
    with pytest.raises(AutoLabError, match="unknown idea arxiv:2503.00009"):
        ideas_api.mark_used(lab, "arxiv:2503.00009", "0008")
    with pytest.raises(AutoLabError, match="bad idea id"):
        ideas_api.record_ideas(lab, [ideas_api.NewIdea("has space", "x")])
    assert ideas_api.used_row("arxiv:2503.00002", "0009")["event"] == "used"
    assert ideas_api.paper_idea_id("https://arxiv.org/abs/2503.00002v2") == "arxiv:2503.00002"
    rows = run_cli("sql", "--json", "--lab", daemon_remote.url,
                   "SELECT idea_id, event, experiment_id FROM ideas ORDER BY seq", check=True)
    assert json.loads(rows.stdout) == [
        {"idea_id": "arxiv:2503.00001", "event": "found", "experiment_id": None},
        {"idea_id": "arxiv:2503.00002", "event": "found", "experiment_id": None},
        {"idea_id": "arxiv:2503.00001", "event": "used", "experiment_id": "0007"}]
