"""Explicit, versioned pyarrow schemas of the lab's tables (DESIGN.md §4.9).

Each table is a directory of immutable parquet shards under ``.autolab/<table>/`` on
``main``. Every row carries ``seq`` (its position in the lab's total order, assigned
when the shard lands on ``main``; null while it only lives in a record ref),
``event_id`` (unique per row) and ``schema_version``.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3
# Columns added after version 1, by table: a shard of an older version lacks them and
# is read with nulls there (readers accept every version up to SCHEMA_VERSION).
ADDED_IN: dict[str, dict[str, int]] = {
    "scores": {"flavor": 2, "job_seconds": 2, "cost_usd": 2, "log_ref": 2},
    "queue": {"cost_usd": 2, "proposer": 3, "model": 3, "prompt_tokens": 3,
              "completion_tokens": 3, "llm_usd": 3, "reviewer": 3, "note": 3},
    "ideas": {"event": 3, "arxiv_id": 3, "link": 3, "query": 3, "experiment_id": 3},
}
TABLES = ("queue", "scores", "ideas")

# An idea row is a finding (``found``; null in rows older than version 3) or a mark that
# a proposer used an idea (``used``): see ``autolab.protocol.ideas``.
IDEA_EVENTS = ("found", "used")
QUEUE_EVENTS = ("proposed", "claimed", "launched", "released", "expired", "failed", "cancelled",
                "promoted", "rejected")
SCORE_STATUSES = ("ok", "crash", "timeout", "invalid")

_TS = pa.timestamp("us", tz="UTC")
_COMMON = [
    pa.field("seq", pa.int64()),
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("schema_version", pa.int16(), nullable=False),
]

QUEUE = pa.schema(
    [
        *_COMMON,
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("attempt", pa.int32()),
        pa.field("agent", pa.string()),
        pa.field("at", _TS),
        pa.field("lease_until", _TS),
        pa.field("parent_commit", pa.string()),
        pa.field("patch", pa.string()),
        pa.field("patch_hash", pa.string()),
        pa.field("hypothesis", pa.string()),
        pa.field("priority", pa.float64()),
        pa.field("reason", pa.string()),
        pa.field("metric", pa.float64()),
        pa.field("source_commit", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("job_id", pa.string()),
        pa.field("cost_usd", pa.float64()),  # what an attempt ended without a score cost
        # A proposal's origin: the proposer ("space", "llm", "agent", "cli"), the model,
        # and what asking it cost (every call of the proposal, retries included).
        pa.field("proposer", pa.string()),
        pa.field("model", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("llm_usd", pa.float64()),
        # A review (``autolab review``): who decided (their agent id) on a ``promoted``
        # row the reviewer accepted or a ``rejected`` row (whose ``reason`` says why),
        # and the reviewer's note on an accepted promotion.
        pa.field("reviewer", pa.string()),
        pa.field("note", pa.string()),
    ],
    metadata={"autolab.table": "queue", "autolab.schema_version": str(SCHEMA_VERSION)},
)

SCORES = pa.schema(
    [
        *_COMMON,
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("agent", pa.string()),
        pa.field("parent_commit", pa.string()),
        pa.field("branch_commit", pa.string()),
        pa.field("metric", pa.float64()),
        pa.field("metrics", pa.map_(pa.string(), pa.float64())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("runtime_s", pa.float64()),
        pa.field("backend", pa.string()),
        pa.field("job_id", pa.string()),
        pa.field("harness_hash", pa.string()),
        pa.field("patch_hash", pa.string()),
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
        pa.field("late", pa.bool_()),
        pa.field("result_digest", pa.string()),
        pa.field("flavor", pa.string()),  # compute flavor (hf-jobs), e.g. a100-large
        pa.field("job_seconds", pa.float64()),  # billed running time of the job
        pa.field("cost_usd", pa.float64()),  # job_seconds at the flavor's price
        pa.field("log_ref", pa.string()),  # ref holding the run's log, if kept
    ],
    metadata={"autolab.table": "scores", "autolab.schema_version": str(SCHEMA_VERSION)},
)

IDEAS = pa.schema(
    [
        *_COMMON,
        pa.field("idea_id", pa.string(), nullable=False),
        pa.field("agent", pa.string()),
        pa.field("at", _TS),
        pa.field("title", pa.string()),
        pa.field("body", pa.string()),
        pa.field("source", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("event", pa.string()),  # IDEA_EVENTS; null: found (older rows)
        pa.field("arxiv_id", pa.string()),  # the paper's arXiv id, without version
        pa.field("link", pa.string()),  # where the paper was found (its page)
        pa.field("query", pa.string()),  # the search that found it
        pa.field("experiment_id", pa.string()),  # a used row: the experiment it became
    ],
    metadata={"autolab.table": "ideas", "autolab.schema_version": str(SCHEMA_VERSION)},
)

SCHEMAS: dict[str, pa.Schema] = {"queue": QUEUE, "scores": SCORES, "ideas": IDEAS}
