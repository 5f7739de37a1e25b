"""The ideas table: findings agents record (papers a researcher found) and the marks
proposers leave when they use one (DESIGN.md §6).

An idea is a ``found`` row keyed by its ``idea_id`` (``arxiv:<id>`` for a paper, see
:func:`paper_idea_id`). Recording is idempotent per key, decided on the exact parent of
the commit: a recorder that loses the race to ``main`` re-reads and drops what the
winner recorded, so two researchers finding the same paper at once record it once.

A proposer that turns an idea into an experiment appends a ``used`` row naming the idea
and the experiment (:func:`mark_used`, or :func:`used_row` inside its own commit). An
idea with no ``used`` row is *open*: :func:`open_ideas` lists them, oldest first.

Reading needs no network beyond the lab read itself::

    view = lab.read()
    for idea in open_ideas(view, limit=5):
        print(idea.idea_id, idea.title, idea.link)

Writing::

    record_ideas(lab, [NewIdea("arxiv:2401.00001", "A title", body="The abstract...")])
    mark_used(lab, "arxiv:2401.00001", experiment_id="0007")
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from autolab.protocol.errors import AutoLabError, shown
from autolab.protocol.lab import Lab, MainChange, now

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView
    from autolab.protocol.state import LabState, StateTables

FOUND, USED = "found", "used"
# A new-style arXiv id (2401.12345, version dropped) or an old-style one (hep-th/9901001).
_ARXIV = re.compile(r"(?P<id>\d{4}\.\d{4,5}|[a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?")
_IDEA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+-]{0,199}")


def normalize_arxiv_id(text: str) -> str | None:
    """The arXiv id ``text`` names, without its version; None if it names none.

    Accepts ``2401.12345``, ``2401.12345v2``, ``arXiv:2401.12345`` and
    ``https://arxiv.org/abs/2401.12345`` (``/pdf/`` too).

    Example:
        >>> normalize_arxiv_id("arXiv:2401.12345v3")
        '2401.12345'
    """
    text = text.strip()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            host, _, rest = text[len(prefix):].partition("/")
            if host not in ("arxiv.org", "www.arxiv.org") or not rest.startswith(("abs/", "pdf/")):
                return None
            text = rest[4:].removesuffix(".pdf")
            break
    if text[:6].lower() == "arxiv:":
        text = text[6:]
    match = _ARXIV.fullmatch(text)
    return match["id"] if match else None


def paper_idea_id(arxiv_id: str) -> str:
    """The idea id of a paper: ``arxiv:<id>``, whatever form the id came in.

    Raises:
        ValueError: ``arxiv_id`` is not an arXiv id.
    """
    clean = normalize_arxiv_id(arxiv_id)
    if clean is None:
        raise ValueError(f"not an arXiv id: {shown(arxiv_id)!r}")
    return f"arxiv:{clean}"


@dataclass(frozen=True)
class NewIdea:
    """An idea to record; ``idea_id`` is its idempotency key.

    Attributes:
        idea_id: ``arxiv:<id>`` for a paper; any id of letters, digits and ``._:/+-``.
        title: one line.
        body: the text a proposer reads (a paper's abstract).
        source: where it came from (``hf-papers``, ``hf-daily``, ``file``, ...).
        link: a URL to read more.
        arxiv_id: the paper's arXiv id, if it is one.
        query: the search that found it.
        tags: keywords.
    """

    idea_id: str
    title: str
    body: str = ""
    source: str | None = None
    link: str | None = None
    arxiv_id: str | None = None
    query: str | None = None
    tags: tuple[str, ...] = ()

    def row(self) -> dict[str, Any]:
        """The ``found`` row (``event_id`` and ``agent`` are added when it is written)."""
        return {"idea_id": self.idea_id, "event": FOUND, "at": now(), "title": self.title,
                "body": self.body, "source": self.source, "link": self.link,
                "arxiv_id": self.arxiv_id, "query": self.query, "tags": list(self.tags)}


@dataclass(frozen=True)
class Idea:
    """A recorded idea, with the marks of its use.

    Attributes:
        agent: who recorded it; ``at``: when; ``seq``: its place in the lab's order.
        used_by: the experiments recorded as having used it, in order (a mark without
            an experiment is not listed, but still makes ``used`` true).
        used: whether any ``used`` row names it.
    """

    idea_id: str
    title: str
    body: str
    source: str | None
    link: str | None
    arxiv_id: str | None
    query: str | None
    tags: tuple[str, ...]
    agent: str | None
    at: datetime | None
    seq: int | None
    used_by: tuple[str, ...] = ()
    used: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"idea_id": self.idea_id, "title": self.title, "body": self.body,
                "source": self.source, "link": self.link, "arxiv_id": self.arxiv_id,
                "query": self.query, "tags": list(self.tags), "agent": self.agent,
                "at": self.at, "seq": self.seq, "used_by": list(self.used_by),
                "used": self.used}


@dataclass(frozen=True)
class Recorded:
    """What :func:`record_ideas` did: the ideas it recorded and those already there (or
    repeated within the call), in the order given; ``commit`` is None if it wrote
    nothing."""

    recorded: tuple[NewIdea, ...] = ()
    known: tuple[NewIdea, ...] = ()
    commit: str | None = None


def idea_rows(source: LabView | LabState | StateTables,
              columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Every row of the ideas table in the lab's order, from a view (only the ideas
    table is read), a folded state or its columnar form; ``columns``: only those."""
    from autolab.protocol.reader import LabView

    if isinstance(source, LabView):
        table = source.table("ideas")
        return (table.select(columns) if columns else table).to_pylist()
    rows = source.ideas
    if not isinstance(rows, list):
        return (rows.select(columns) if columns else rows).to_pylist()
    return rows if not columns else [{c: r.get(c) for c in columns} for r in rows]


def _event(row: dict[str, Any]) -> str:
    return row.get("event") or FOUND  # rows older than schema version 3 are findings


def ideas(source: LabView | LabState | StateTables) -> list[Idea]:
    """Every recorded idea, in the order recorded, with its ``used`` marks.

    The first ``found`` row of an id counts; a ``used`` row for an id never found is
    ignored.
    """
    found: dict[str, dict[str, Any]] = {}
    marks: dict[str, list[str | None]] = {}
    for row in idea_rows(source):
        key = row["idea_id"]
        if _event(row) == FOUND:
            found.setdefault(key, row)
        elif _event(row) == USED:
            marks.setdefault(key, []).append(row.get("experiment_id"))
    out = []
    for key, row in found.items():
        used = marks.get(key, [])
        out.append(Idea(
            idea_id=key, title=row.get("title") or "", body=row.get("body") or "",
            source=row.get("source"), link=row.get("link"), arxiv_id=row.get("arxiv_id"),
            query=row.get("query"), tags=tuple(row.get("tags") or ()), agent=row.get("agent"),
            at=row.get("at"), seq=row.get("seq"),
            used_by=tuple(dict.fromkeys(e for e in used if e)), used=bool(used)))
    return out


def open_ideas(source: LabView | LabState | StateTables, limit: int | None = None, *,
               query: str | None = None) -> list[Idea]:
    """The ideas no proposer has used yet, oldest first.

    Args:
        source: ``lab.read()`` (reads only the ideas table), ``view.state`` or
            ``view.folded()``.
        limit: at most this many.
        query: only those found by this search query.

    Example:
        >>> for idea in open_ideas(lab.read(), limit=3):  # doctest: +SKIP
        ...     prompt += f"- {idea.title} ({idea.link}): {idea.body[:500]}\\n"
    """
    out = [i for i in ideas(source) if not i.used and (query is None or i.query == query)]
    return out if limit is None else out[:max(limit, 0)]


def known_idea_ids(source: LabView | LabState | StateTables) -> set[str]:
    """The ids of every recorded idea (what a new finding must not repeat)."""
    return {r["idea_id"] for r in idea_rows(source, ["idea_id", "event"]) if _event(r) == FOUND}


def _check_id(idea_id: str) -> None:
    if not isinstance(idea_id, str) or not _IDEA_ID.fullmatch(idea_id):
        raise AutoLabError(f"bad idea id {shown(str(idea_id))!r}: letters, digits and "
                           "._:/+- only, at most 200 characters")


def record_ideas(lab: Lab, new: Iterable[NewIdea]) -> Recorded:
    """Record the ideas whose id the lab does not hold yet, in one commit on ``main``.

    Decided on the exact parent of the commit and again after every lost race: an idea
    another agent recorded meanwhile (or an id repeated in ``new``) is dropped, never
    written twice.

    Raises:
        AutoLabError: an idea id is malformed.
    """
    given = list(new)
    for idea in given:
        _check_id(idea.idea_id)
    outcome: dict[str, Recorded] = {}

    def decide(view: LabView) -> MainChange | None:
        known = known_idea_ids(view)
        fresh: list[NewIdea] = []
        seen: list[NewIdea] = []
        for idea in given:
            if idea.idea_id in known:
                seen.append(idea)
            else:
                known.add(idea.idea_id)
                fresh.append(idea)
        outcome["last"] = Recorded(tuple(fresh), tuple(seen))
        if not fresh:
            return None
        more = f" and {len(fresh) - 1} more" if len(fresh) > 1 else ""
        return MainChange(message=f"ideas: record {fresh[0].idea_id}{more}",
                          rows={"ideas": [i.row() for i in fresh]})

    if not given:
        return Recorded()
    _, commit, _ = lab.commit_main(decide)
    last = outcome["last"]
    return Recorded(last.recorded, last.known, commit)


def used_row(idea_id: str, experiment_id: str | None = None, note: str = ""
             ) -> dict[str, Any]:
    """The ``used`` row for ``idea_id``: for a proposer that records the mark in the same
    commit as its proposal (``MainChange(rows={"queue": [...], "ideas": [used_row(...)]})``).
    ``note`` (why, e.g. an idea judged not applicable) goes in ``body``."""
    _check_id(idea_id)
    return {"idea_id": idea_id, "event": USED, "at": now(), "experiment_id": experiment_id,
            "body": note}


def mark_used(lab: Lab, idea_id: str, experiment_id: str | None = None, *,
              note: str = "") -> bool:
    """Record that ``idea_id`` was used (by ``experiment_id``, or by nothing: set aside).

    Idempotent: False if the same mark is already there.

    Raises:
        AutoLabError: no idea ``idea_id`` was recorded, or the id is malformed.
    """
    row = used_row(idea_id, experiment_id, note)

    def decide(view: LabView) -> MainChange | None:
        rows = [r for r in idea_rows(view) if r["idea_id"] == idea_id]
        if not any(_event(r) == FOUND for r in rows):
            raise AutoLabError(f"unknown idea {idea_id}")
        if any(_event(r) == USED and r.get("experiment_id") == experiment_id for r in rows):
            return None
        by = f"experiment {shown(experiment_id)}" if experiment_id else "no experiment"
        return MainChange(message=f"ideas: {idea_id} used by {by}", rows={"ideas": [row]},
                          result=True)

    return bool(lab.commit_main(decide)[2])


__all__ = ["FOUND", "USED", "Idea", "NewIdea", "Recorded", "idea_rows", "ideas",
           "known_idea_ids", "mark_used", "normalize_arxiv_id", "open_ideas", "paper_idea_id",
           "record_ideas", "used_row"]
