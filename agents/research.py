"""The researcher: searches Hugging Face Papers for the lab's topics and records each
new paper once in the ideas table, for proposers to use (DESIGN.md §6).

A round reads the lab, searches (``HfApi.list_papers`` per query; with ``daily``, also
``HfApi.list_daily_papers`` filtered by the topics), completes results that lack a
title or an abstract with ``HfApi.paper_info``, and records the papers the lab does not
hold through :func:`autolab.protocol.ideas.record_ideas`, which decides on the exact
parent of its commit: concurrent researchers never record a paper twice.

Topics come from ``program.md`` (the bullets under a ``## Topics`` heading) and from
``[research] queries`` in ``autolab.toml``; explicit queries replace both. A machine
without network records papers from a JSON-lines file instead (:func:`parse_papers`).
The Hub is ``$HF_ENDPOINT`` (default https://huggingface.co). docs/researcher.md has
the whole contract.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from autolab.agents.events import WARNING, emit
from autolab.protocol.errors import AutoLabError, shown
from autolab.protocol.ideas import NewIdea, known_idea_ids, normalize_arxiv_id, record_ideas
from autolab.protocol.lab import Lab
from autolab.protocol.redact import redact

if TYPE_CHECKING:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import PaperInfo

    from autolab.protocol.reader import LabView

TOPICS_FILE = "program.md"
TOPICS_HEADINGS = ("topics", "research topics")
DAILY_SCAN = 50  # daily papers scanned per round with ``daily`` (the Hub's default page)
TITLE_CHARS, BODY_CHARS, QUERY_CHARS = 300, 8000, 200
SOURCE_SEARCH, SOURCE_DAILY, SOURCE_FILE = "hf-papers", "hf-daily", "file"

_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*\S)\s*$")
_WORD = re.compile(r"[a-z0-9]{3,}")


class PapersError(AutoLabError):
    """The Hugging Face Papers API failed (an HTTP error, a refused connection)."""


# -- topics --------------------------------------------------------------------------------


def program_topics(text: str) -> list[str]:
    """The bullets of the ``## Topics`` section of a ``program.md``, one query each.

    The section is the first heading (any level) named ``Topics`` or ``Research
    topics``, up to the next heading of the same or a higher level. Each ``-``, ``*`` or
    ``+`` bullet is one query; backticks are dropped, and repeats kept once.

    Example:
        >>> program_topics("# Lab\\n## Topics\\n- muon optimizer\\n- `rotary embeddings`\\n")
        ['muon optimizer', 'rotary embeddings']
    """
    topics: list[str] = []
    level = 0  # the section's heading level while inside it
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = _HEADING.match(line)
        if heading:
            depth = len(heading[1])
            if level and depth <= level:
                break
            if not level and heading[2].strip().lower() in TOPICS_HEADINGS:
                level = depth
            continue
        bullet = _BULLET.match(line) if level else None
        if bullet:
            topics.append(" ".join(bullet[1].replace("`", "").split())[:QUERY_CHARS])
    return _unique(topics)


def lab_queries(lab: Lab, view: LabView) -> list[str]:
    """The lab's queries: ``[research] queries``, then ``program.md``'s topics."""
    raw = lab.store.read_file(view.main, TOPICS_FILE)
    text = raw.decode("utf-8", "replace") if raw else ""
    return _unique([*view.config.research.queries, *program_topics(text)])


def _unique(items: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item and item.casefold() not in seen:
            seen.add(item.casefold())
            out.append(item)
    return out


# -- the Hub -------------------------------------------------------------------------------


def papers_api() -> HfApi:
    """A client for ``$HF_ENDPOINT`` (default: the Hub)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


def _hub_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the Hub client's (an HTTP status, a refused connection)."""
    return type(exc).__module__.startswith(("huggingface_hub", "httpx", "requests"))


def _hub_error(what: str, exc: BaseException) -> PapersError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return PapersError(f"Hugging Face Papers: {what}: {redact(first)[:300]}")


def _hub(what: str, call: Callable[[], Any]) -> Any:
    """``call()``, with a Hub failure turned into one line naming ``what``."""
    try:
        return call()
    except Exception as exc:
        if not _hub_failure(exc):
            raise
        raise _hub_error(what, exc) from None


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _clip(text: str | None, limit: int, *, one_line: bool = False) -> str:
    text = (text or "").strip()
    if one_line:
        text = " ".join(text.split())
    return text[:limit]


def _from_info(api: HfApi, info: PaperInfo, query: str, source: str) -> NewIdea | None:
    arxiv_id = normalize_arxiv_id(str(info.id or ""))
    if arxiv_id is None:
        return None  # not an arXiv paper: no key to record it under
    keywords = info.ai_keywords if isinstance(info.ai_keywords, list) else []
    return NewIdea(
        idea_id=f"arxiv:{arxiv_id}", title=_clip(info.title, TITLE_CHARS, one_line=True),
        body=_clip(info.summary, BODY_CHARS), source=source,
        link=f"{api.endpoint.rstrip('/')}/papers/{arxiv_id}", arxiv_id=arxiv_id, query=query,
        tags=tuple(_clip(str(k), 100, one_line=True) for k in keywords[:32]))


def _matches(topic: str, info: PaperInfo) -> bool:
    """Whether every word (3+ letters or digits) of ``topic`` is in the paper's title,
    abstract or keywords."""
    words = set(_WORD.findall(topic.lower()))
    keywords = info.ai_keywords if isinstance(info.ai_keywords, list) else []
    text = " ".join([info.title or "", info.summary or "", *map(str, keywords)]).lower()
    return bool(words) and words <= set(_WORD.findall(text))


def search(api: HfApi, queries: Sequence[str], limit: int, *, daily: bool = False,
           say: Callable[[str], None] = print) -> list[NewIdea]:
    """Papers for ``queries``, ``limit`` per query, each paper once (its first query).

    Raises:
        PapersError: the Hub answered with an error, or could not be reached.
    """
    found: dict[str, NewIdea] = {}

    def keep(infos: list[PaperInfo], query: str, source: str) -> None:
        for info in infos:
            idea = _from_info(api, info, query, source)
            if idea is not None:
                found.setdefault(idea.idea_id, idea)

    for query in queries:
        infos = _hub(f"search {shown(query)!r}", lambda q=query: list(
            itertools.islice(api.list_papers(query=q, limit=limit), limit)))
        emit(say, "searched", f"searched {shown(query)!r}: {len(infos)} paper(s)",
             query=query, source=SOURCE_SEARCH, results=len(infos))
        keep(infos, query, SOURCE_SEARCH)
    if daily:
        latest = _hub("daily papers", lambda: list(api.list_daily_papers(limit=DAILY_SCAN)))
        for query in queries:
            matching = [i for i in latest if _matches(query, i)][:limit]
            emit(say, "searched", f"daily papers for {shown(query)!r}: {len(matching)} of "
                 f"{len(latest)}", query=query, source=SOURCE_DAILY, results=len(matching))
            keep(matching, query, SOURCE_DAILY)
    return list(found.values())


def complete(api: HfApi, ideas: Sequence[NewIdea], say: Callable[[str], None] = print
             ) -> list[NewIdea]:
    """``ideas``, those without a title or an abstract filled in from ``paper_info``.

    A paper the Hub no longer knows (404) keeps what the search gave (its id as title
    if it had none).

    Raises:
        PapersError: any other failure of the Hub.
    """
    out = []
    for idea in ideas:
        if idea.arxiv_id and not (idea.title and idea.body):
            try:
                info = api.paper_info(idea.arxiv_id)
            except Exception as exc:
                if not _hub_failure(exc):
                    raise
                if _status(exc) != 404:
                    raise _hub_error(f"paper {idea.arxiv_id}", exc) from None
                emit(say, "paper_unread", f"paper {idea.arxiv_id}: not found on the Hub; "
                     "recording what the search gave", level=WARNING, arxiv_id=idea.arxiv_id)
            else:
                idea = replace(idea, title=idea.title or _clip(info.title, TITLE_CHARS,
                                                               one_line=True),
                               body=idea.body or _clip(info.summary, BODY_CHARS))
        out.append(idea if idea.title else replace(idea, title=idea.arxiv_id or idea.idea_id))
    return out


# -- papers from a file --------------------------------------------------------------------


def parse_papers(text: str, where: str) -> list[NewIdea]:
    """Papers from JSON lines: one object per line (blank lines are skipped).

    Each object holds ``id`` (an arXiv id; ``arxiv_id`` also works), ``title``, and
    optionally ``summary``, ``link``, ``query`` and ``tags`` (a list of strings; also
    ``ai_keywords``). An entry as the Hub's search or daily-papers API returns it (the
    paper under ``paper``) is read as well.

    Args:
        where: how to name the file in errors (``--from-file papers.jsonl``).

    Raises:
        AutoLabError: one line naming ``where``, the line number and what is wrong.
    """
    out: dict[str, NewIdea] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AutoLabError(f"{at}: not JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(entry, dict):
            raise AutoLabError(f"{at}: expected a JSON object, got {type(entry).__name__}")
        idea = _idea_of_entry(entry, at)
        out.setdefault(idea.idea_id, idea)
    return list(out.values())


def _idea_of_entry(entry: dict[str, Any], at: str) -> NewIdea:
    nested = entry.get("paper") if isinstance(entry.get("paper"), dict) else {}

    def field(*names: str, kind: type = str) -> Any:
        for name in names:
            value = entry.get(name, nested.get(name))
            if value is None:
                continue
            if not isinstance(value, kind) or (kind is list and not all(
                    isinstance(v, str) for v in value)):
                expected = "a list of strings" if kind is list else "a string"
                raise AutoLabError(f"{at}: {name} must be {expected}")
            return value
        return None

    raw_id = field("id", "arxiv_id")
    if raw_id is None:
        raise AutoLabError(f"{at}: no id (the paper's arXiv id)")
    arxiv_id = normalize_arxiv_id(raw_id)
    if arxiv_id is None:
        raise AutoLabError(f"{at}: id {shown(raw_id)[:60]!r} is not an arXiv id")
    title = _clip(field("title"), TITLE_CHARS, one_line=True)
    if not title:
        raise AutoLabError(f"{at}: no title")
    link = field("link", "url")
    if link is not None and not link.startswith(("https://", "http://")):
        raise AutoLabError(f"{at}: link must be an http(s) URL")
    tags = field("tags", "ai_keywords", kind=list) or []
    return NewIdea(idea_id=f"arxiv:{arxiv_id}", title=title,
                   body=_clip(field("summary", "abstract"), BODY_CHARS), source=SOURCE_FILE,
                   link=link or f"https://arxiv.org/abs/{arxiv_id}", arxiv_id=arxiv_id,
                   query=_clip(field("query"), QUERY_CHARS, one_line=True) or None,
                   tags=tuple(_clip(t, 100, one_line=True) for t in tags[:32]))


# -- a round -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """What one round did.

    Attributes:
        queries: the queries searched (empty with papers from a file).
        seen: distinct papers the search (or the file) gave.
        recorded: the ideas recorded by this round, in order.
        known: papers the lab already held (recorded earlier, or by another researcher
            while this one searched).
        commit: the main commit that recorded them (None: nothing new).
    """

    queries: tuple[str, ...]
    seen: int
    recorded: tuple[NewIdea, ...]
    known: int
    commit: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"queries": list(self.queries), "seen": self.seen, "new": len(self.recorded),
                "known": self.known, "commit": self.commit,
                "recorded": [i.idea_id for i in self.recorded]}


def research_once(lab: Lab, say: Callable[[str], None] = print, *,
                  queries: Sequence[str] | None = None,
                  papers: Sequence[NewIdea] | None = None, limit: int | None = None,
                  daily: bool | None = None, api: HfApi | None = None) -> Round:
    """One round: search (or take ``papers``), then record what the lab lacks.

    Args:
        queries: search these instead of the lab's topics.
        papers: record these (e.g. :func:`parse_papers`) instead of searching.
        limit: papers per query (default ``[research] limit``); with ``papers``, the
            first ``limit`` of them.
        daily: also scan the latest daily papers (default ``[research] daily``).
        api: the Hub client (default :func:`papers_api`).

    Raises:
        AutoLabError: there is no query to search (no topics, no ``queries``).
        PapersError: the Hub failed; nothing was recorded.
    """
    view = lab.read()
    config = view.config.research
    per_query = limit or config.limit
    asked: list[str] = []
    if papers is None:
        asked = _unique([q.strip() for q in queries or () if q.strip()]) or (
            [] if queries else lab_queries(lab, view))
        if not asked:
            raise AutoLabError(f"no topics to search: list them under a '## Topics' heading "
                               f"in {TOPICS_FILE}, set [research] queries in autolab.toml, or "
                               "pass --query")
        api = api or papers_api()
        found = search(api, asked, per_query, daily=config.daily if daily is None else daily,
                       say=say)
    else:
        found = list(papers)[:limit] if limit else list(papers)
    known = known_idea_ids(view)
    fresh = [i for i in found if i.idea_id not in known]
    if api is not None and fresh:
        fresh = complete(api, fresh, say)
    races = lab.stats["conflicts"]
    result = record_ideas(lab, fresh)
    for idea in result.recorded:
        emit(say, "found", f"found {idea.arxiv_id or idea.idea_id}: {idea.title}"
             + (f" (query {idea.query!r})" if idea.query else ""), idea_id=idea.idea_id,
             arxiv_id=idea.arxiv_id, title=idea.title, link=idea.link, query=idea.query,
             source=idea.source)
    done = Round(tuple(asked), len(found), result.recorded,
                 len(found) - len(result.recorded), result.commit)
    lost = lab.stats["conflicts"] - races
    emit(say, "researched", f"{len(done.recorded)} new paper(s), {done.known} already "
         "recorded", new=len(done.recorded), known=done.known, seen=done.seen,
         queries=list(done.queries), commit=done.commit, lost_races=lost)
    return done
