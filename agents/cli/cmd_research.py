"""Agent verb: ``researcher`` (docs/researcher.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from autolab.agents.cli.cmd_agents import (
    IntervalOpt,
    LoopOpt,
    OnceOpt,
    _one_mode,
    _rounds,
    agent_log,
    lifetime,
)
from autolab.agents.cli.common import (
    AgentOpt,
    EventsJsonOpt,
    LabOpt,
    QuietOpt,
    VerboseOpt,
    open_lab,
    read_input,
    verbosity,
)

if TYPE_CHECKING:
    from autolab.protocol.ideas import NewIdea

PAPERS_FILE_LIMIT = 64 << 20  # bytes of --from-file


def researcher(
    lab: LabOpt = None, agent: AgentOpt = None, once: OnceOpt = False, loop: LoopOpt = False,
    query: Annotated[list[str] | None, typer.Option(
        "--query", help="Search this instead of the lab's topics (repeatable).",
        show_default=False)] = None,
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", metavar="PAPERS.JSONL",
        help="Record the papers of this JSON-lines file (one object per line: id, title, "
        "summary, ...) instead of searching; for machines without network.",
        show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, max=100, help="Papers taken per query (default: [research] limit, 10); with "
        "--from-file, the first N papers of the file.", show_default=False)] = None,
    daily: Annotated[bool | None, typer.Option(
        "--daily/--no-daily", help="Also scan the latest daily papers for the topics "
        "(default: [research] daily).", show_default=False)] = None,
    interval: IntervalOpt = "1h",  # type: ignore[assignment]  # parsed by `duration`
    as_json: EventsJsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Search Hugging Face Papers for the lab's topics; record each new paper once as an idea.

    Topics are the bullets under a '## Topics' heading of program.md, plus [research]
    queries of autolab.toml; --query replaces both. The Hub is $HF_ENDPOINT (default
    https://huggingface.co). Concurrent researchers never record a paper twice.

    Exit code 0 after a round, whatever it found ("0 new paper(s)" included); 1 when
    the Hub or the lab fails, there is no topic, or a --from-file line is malformed
    (the line is named). With --loop, a failing Hub is a warning and the next round
    tries again.

    Logs one dated line per event (-q, -v); --json prints JSON lines instead.
    """
    from autolab.agents.events import WARNING, emit
    from autolab.agents.research import PapersError, parse_papers, research_once
    from autolab.protocol.errors import UsageError, shown

    _one_mode(once, loop)
    verbosity(quiet, verbose)
    if query and from_file is not None:
        raise UsageError("give --query or --from-file, not both")
    the_lab = open_lab(lab, agent)
    log = agent_log("researcher", the_lab.agent, as_json, quiet, verbose)
    papers: list[NewIdea] | None = None

    def round_() -> None:
        try:
            research_once(the_lab, log, queries=query, papers=papers, limit=limit, daily=daily)
        except PapersError as exc:
            if not loop:
                raise
            emit(log, "search_failed", f"{exc}; next round in {interval:g}s", level=WARNING,
                 reason=str(exc))

    with lifetime(log, once=once, loop=loop, lab=the_lab.store.url, interval_s=interval,
                  queries=list(query or ()), from_file=str(from_file) if from_file else None):
        if from_file is not None:  # read once, before the first round: a bad line records nothing
            text = read_input(from_file, "--from-file", limit=PAPERS_FILE_LIMIT)
            papers = parse_papers(text, f"--from-file {shown(str(from_file))}")
        _rounds(once, loop, interval, round_)


def register(app: typer.Typer) -> None:
    app.command()(researcher)
