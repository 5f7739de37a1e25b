"""A local stand-in for the Hugging Face Papers REST API, for tests.

``PapersServer`` answers the routes the installed ``huggingface_hub`` client calls, with
the JSON shapes the Hub sends, so ``HfApi(endpoint=server.endpoint)`` (or
``HF_ENDPOINT=server.endpoint``) works against it unchanged:

========  =========================================================  ====================
method    path                                                       client method
========  =========================================================  ====================
GET       /api/papers/search?q=TEXT&limit=N                          list_papers
GET       /api/papers/{arxiv_id}                                     paper_info
GET       /api/daily_papers?p=&limit=&sort=&date=&week=&month=&submitter=  list_daily_papers
========  =========================================================  ====================

Search and daily entries are the Hub's "daily paper" objects: the paper under ``paper``
(``id``, ``authors``, ``publishedAt``, ``title``, ``summary``, ``upvotes``,
``ai_keywords``, ...) beside the entry's own ``title``, ``publishedAt``,
``numComments``, ``submittedBy``. ``paper_info`` answers the paper object itself. The
search matches papers holding every word of ``q`` in their title, abstract or keywords
(the Hub's search is semantic; tests need a rule they can predict), most upvoted first.

Hooks for tests: ``delay_s`` (every search and daily answer waits that long: concurrent
clients overlap), ``search_summaries=False`` (search entries without abstracts, as a
lean answer would be), ``fail(status, message)`` (every answer is that error until
``fail(None)``) and ``requests`` (what went over the wire).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DAILY_SORTS = ("publishedAt", "trending")
_WORD = re.compile(r"[a-z0-9]+")


def iso(moment: datetime) -> str:
    """The Hub's timestamp format (milliseconds, ``Z``), which ``parse_datetime`` expects."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class StoredPaper:
    """A paper the stand-in knows; ``daily``: the day it was on the daily list (None: never)."""

    id: str
    title: str
    summary: str = ""
    authors: list[str] = field(default_factory=lambda: ["A. Author"])
    published: datetime = field(default_factory=lambda: datetime(2025, 1, 2, tzinfo=UTC))
    upvotes: int = 0
    keywords: list[str] = field(default_factory=list)
    daily: datetime | None = None
    submitter: str = "submitter"

    def paper_json(self) -> dict[str, Any]:
        """``GET /api/papers/{id}``, and the ``paper`` of an entry."""
        out: dict[str, Any] = {
            "id": self.id,
            "authors": [{"_id": f"{i:024x}", "name": name, "hidden": False}
                        for i, name in enumerate(self.authors)],
            "publishedAt": iso(self.published), "title": self.title, "summary": self.summary,
            "upvotes": self.upvotes,
            "discussionId": hashlib.sha256(self.id.encode()).hexdigest()[:24],
            "ai_summary": self.summary[:80], "ai_keywords": list(self.keywords),
        }
        if self.daily is not None:
            out["submittedOnDailyAt"] = iso(self.daily)
            out["submittedOnDailyBy"] = self._user()
        return out

    def entry_json(self, *, summary: bool = True) -> dict[str, Any]:
        """One entry of a search or of the daily list."""
        paper = self.paper_json()
        if not summary:
            paper.pop("summary")
            paper.pop("ai_summary")
        return {"paper": paper, "publishedAt": iso(self.daily or self.published),
                "title": self.title, "thumbnail": f"https://cdn.example/{self.id}.png",
                "numComments": 0, "submittedBy": self._user(),
                "isAuthorParticipating": False}

    def _user(self) -> dict[str, Any]:
        return {"_id": "0" * 24, "avatarUrl": "/avatars/x.svg", "fullname": self.submitter,
                "name": self.submitter, "user": self.submitter, "type": "user",
                "isPro": False}

    def words(self) -> set[str]:
        return set(_WORD.findall(" ".join([self.title, self.summary, *self.keywords]).lower()))


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class PapersServer:
    """A threaded local Hugging Face Papers API.

    Args:
        papers: what it knows.
        delay_s: how long every search and daily-papers answer waits.
        search_summaries: whether search entries carry abstracts.
    """

    def __init__(self, papers: Iterable[StoredPaper] = (), *, delay_s: float = 0.0,
                 search_summaries: bool = True) -> None:
        self.papers = {p.id: p for p in papers}
        self.delay_s = delay_s
        self.search_summaries = search_summaries
        self._failure: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._httpd: _HTTPServer | None = None

    def start(self) -> PapersServer:
        """Listen on a free loopback port and serve in a background thread."""
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.app = self
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         name="hf-papers-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> PapersServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The base URL for ``HfApi(endpoint=...)`` or ``$HF_ENDPOINT``."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def fail(self, status: int | None, message: str = "Internal Error") -> None:
        """Answer every request with ``status`` from now on (None: answer normally)."""
        with self._lock:
            self._failure = None if status is None else (status, message)

    # -- routes --------------------------------------------------------------------------

    def _dispatch(self, path: str, query: Mapping[str, list[str]]) -> Any:
        with self._lock:
            failure = self._failure
        if failure is not None:
            raise HttpError(*failure)
        if path == "/api/papers/search":
            time.sleep(self.delay_s)
            return self._search(_one(query, "q") or "", _int(query, "limit"))
        if path == "/api/daily_papers":
            time.sleep(self.delay_s)
            return self._daily(query)
        if path.startswith("/api/papers/"):
            paper_id = unquote(path.removeprefix("/api/papers/"))
            paper = self.papers.get(paper_id)
            if paper is None:
                raise HttpError(404, "Paper not found")
            return paper.paper_json()
        raise HttpError(404, f"Sorry, we can't find the page you are looking for: {path}")

    def _search(self, text: str, limit: int | None) -> list[dict[str, Any]]:
        words = set(_WORD.findall(text.lower()))
        hits = [p for p in self.papers.values() if words <= p.words()]
        hits.sort(key=lambda p: (-p.upvotes, p.id))
        if limit is not None:
            hits = hits[:limit]
        return [p.entry_json(summary=self.search_summaries) for p in hits]

    def _daily(self, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        sort = _one(query, "sort") or "publishedAt"
        if sort not in DAILY_SORTS:
            raise HttpError(400, f"Invalid sort: expected one of {', '.join(DAILY_SORTS)}")
        limit = _int(query, "limit")
        limit = 50 if limit is None else limit
        if not 1 <= limit <= 100:
            raise HttpError(400, "limit must be between 1 and 100")
        page = _int(query, "p") or 0
        listed = [p for p in self.papers.values() if p.daily is not None]
        day, week, month = _one(query, "date"), _one(query, "week"), _one(query, "month")
        submitter = _one(query, "submitter")
        if day is not None:
            wanted = _parse(day, date.fromisoformat, "date")
            listed = [p for p in listed if p.daily and p.daily.date() == wanted]
        if week is not None:
            match = re.fullmatch(r"(\d{4})-W(\d{2})", week)
            if not match:
                raise HttpError(400, "week must be YYYY-Www")
            iso_week = (int(match[1]), int(match[2]))
            listed = [p for p in listed if p.daily and p.daily.isocalendar()[:2] == iso_week]
        if month is not None:
            if not re.fullmatch(r"\d{4}-\d{2}", month):
                raise HttpError(400, "month must be YYYY-MM")
            listed = [p for p in listed if p.daily and p.daily.strftime("%Y-%m") == month]
        if submitter is not None:
            listed = [p for p in listed if p.submitter == submitter]
        if sort == "trending":
            listed.sort(key=lambda p: (-p.upvotes, p.id))
        else:
            listed.sort(key=lambda p: (p.daily, p.id), reverse=True)
        return [p.entry_json() for p in listed[page * limit:(page + 1) * limit]]


def _one(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _int(query: Mapping[str, list[str]], key: str) -> int | None:
    value = _one(query, key)
    return None if value is None else _parse(value, int, key)


def _parse(value: str, kind: Any, key: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise HttpError(400, f"Invalid {key}: {value!r}") from None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: PapersServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read ``PapersServer.requests`` instead

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        app = self.server.app
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        with app._lock:
            app._requests.append(RecordedRequest("GET", url.path, query,
                                                 dict(self.headers.items())))
        try:
            status, payload, headers = 200, app._dispatch(url.path, query), {}
        except HttpError as err:
            # The client reads the JSON ``error`` and the ``X-Error-Message`` header.
            status, payload = err.status, {"error": err.message}
            headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


