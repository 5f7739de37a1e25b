"""Folds of ``main`` cached on disk, beside the cache clone.

``<cache clone>.state/<main>-<key>/``: the fold of one main commit as arrow IPC files
(memory-mapped when read) and its shard list. ``key`` hashes the code that defines the
fold and the tables, so a new autolab never reads an old autolab's fold. Entries are
written to a temporary directory and renamed into place: readers see whole entries or
none. A reader uses an entry whose main is its own, or one whose rows are a prefix of
its main's (then it continues the fold: :mod:`autolab.protocol.main_fold`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from autolab.protocol.schemas import SCHEMA_VERSION, SCHEMAS, TABLES
from autolab.protocol.state import ANOMALIES, CHARGES, EXPERIMENT_STATE, PROMOTIONS, StateTables
from autolab.protocol.store import LabStore

if TYPE_CHECKING:
    from autolab.protocol.main_fold import MainFold

_KEEP_ON_DISK = 3
MAX_GONE = 256  # shards a base may have lost (to compaction) and still be used
# Main's rows are saved with the fold when main has more shards than this: a few shards
# (a compacted lab) decode faster than their copy is written.
MAIN_SHARDS_SAVED = 64
_DISK_TABLES = ("experiments", "scores", "promotions", "ideas", "anomalies", "charges")


def _code_key() -> str:
    digest = hashlib.sha256(f"{SCHEMA_VERSION} {sys.version_info[:2]} {pa.__version__}".encode())
    here = Path(__file__).parent
    for module in ("reader.py", "main_fold.py", "columnar_fold.py", "fold_cache.py",
                   "shard_cache.py", "state.py", "schemas.py", "shards.py"):
        with contextlib.suppress(OSError):
            digest.update((here / module).read_bytes())
    return digest.hexdigest()[:16]


_KEY = _code_key()


def state_cache_dir(store: LabStore) -> Path | None:
    """Where folds of ``store``'s lab are cached on this host (None: not cached).

    Beside the cache clone, so a lab's caches go together; other read-side caches
    (derived from immutable rows) may keep files here too.
    """
    path = getattr(store, "path", None)
    return Path(f"{path}.state") if isinstance(path, Path) else None




def _save_threshold() -> int:
    """Folds of fewer rows are not worth a file (``AUTOLAB_STATE_CACHE_ROWS``; < 0: never)."""
    try:
        return int(os.environ.get("AUTOLAB_STATE_CACHE_ROWS", "10000"))
    except ValueError:
        return 10000


def maybe_save(store: LabStore, fold_: MainFold) -> None:
    threshold = _save_threshold()
    where = state_cache_dir(store)
    if (where is None or threshold < 0 or fold_.rows < threshold
            or fold_.unsaved < max(2000, fold_.rows // 20)):
        return
    with contextlib.suppress(OSError):
        _save(store, where, fold_)
        fold_.unsaved = 0


def _save(store: LabStore, where: Path, fold_: MainFold) -> None:
    assert fold_._tables is not None
    final = where / f"{fold_.main}-{_KEY}"
    if final.exists():
        return
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f".tmp-{os.getpid()}-{fold_.main[:12]}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        folded = fold_._tables
        files = {name: getattr(folded, name) for name in _DISK_TABLES}
        if sum(len(files) for files in fold_.shards.values()) > MAIN_SHARDS_SAVED:
            # Main's rows too, where reading them back from git means decoding many shards.
            files.update({f"main-{t}": fold_.main_table(store, t) for t in TABLES})
        files["ids"] = pa.table({"event_id": fold_.id_column()})
        for name, table in files.items():
            with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, \
                    pa.ipc.new_file(sink, table.schema) as writer:
                # One batch: a table of 10^4 shards' chunks is slow to compute on.
                writer.write_table(table.combine_chunks())
        meta = {"main": fold_.main, "max_seq": fold_.max_seq, "max_row_seq": fold_.max_row_seq,
                "rows": fold_.rows, "shards": fold_.shards}
        (tmp / "meta.pickle").write_bytes(pickle.dumps(meta))
        os.rename(tmp, final)  # fails if another process saved it first: fine
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    entries = sorted((p for p in where.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=_mtime, reverse=True)
    for old in entries[_KEEP_ON_DISK:]:
        shutil.rmtree(old, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def disk_bases(store: LabStore, main: str, shards: dict[str, dict[str, str]]
                ) -> Iterator[MainFold]:
    """Folds on disk that could serve ``main``: its own first, then the newest others."""
    where = state_cache_dir(store)
    if where is None or _save_threshold() < 0 or not where.is_dir():
        return
    entries = sorted(where.glob(f"*-{_KEY}"), key=_mtime, reverse=True)
    entries.sort(key=lambda p: not p.name.startswith(main))
    for entry in entries[:_KEEP_ON_DISK]:
        try:
            meta = pickle.loads((entry / "meta.pickle").read_bytes())
            gone = sum(1 for t in TABLES for p, b in meta["shards"][t].items()
                       if shards[t].get(p) != b)
            if gone > MAX_GONE:
                continue
            yield _load(entry, meta)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, pa.ArrowInvalid):
            continue  # removed by another process meanwhile, or unreadable: skip it


def _load(entry: Path, meta: dict[str, Any]) -> MainFold:
    from autolab.protocol.main_fold import MainFold

    def arrow(name: str) -> pa.Table:
        return pa.ipc.open_file(pa.memory_map(str(entry / f"{name}.arrow"))).read_all()

    loaded = {name: arrow(name) for name in _DISK_TABLES}
    expected = {"experiments": EXPERIMENT_STATE, "promotions": PROMOTIONS,
                "anomalies": ANOMALIES, "scores": SCHEMAS["scores"], "ideas": SCHEMAS["ideas"],
                "charges": CHARGES}
    for name, schema in expected.items():
        if not loaded[name].schema.equals(schema):
            raise pa.ArrowInvalid(f"{entry}: {name} has another schema")
    tables = StateTables(main=meta["main"], max_seq=meta["max_seq"], **loaded)
    return MainFold(meta["main"], meta["shards"], meta["max_seq"],
                    max_row_seq=meta["max_row_seq"], rows=meta["rows"],
                    ids=arrow("ids").column("event_id"), tables=tables,
                    main_tables={t: arrow(f"main-{t}") for t in TABLES
                                 if (entry / f"main-{t}.arrow").exists()}, unsaved=0)
