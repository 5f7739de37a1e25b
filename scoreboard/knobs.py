"""The ``knobs`` view: each experiment's value of every knob of the lab's config.

A knob is a ``NAME = value`` line of an editable file (``[knobs.NAME]`` in
``autolab.toml``). An experiment's value is read without applying its patch:

1. the patch's own line: the last ``+NAME = value`` line in the hunks of the knob's
   file (a patch of ``autolab propose --set`` or of the planner has exactly one);
2. otherwise the value in that file at the experiment's parent commit, which the patch
   applies to: a patch that leaves the line alone leaves the value. A patch that
   removes the line (a ``-NAME = ...`` line and no ``+`` line) leaves no value;
3. otherwise null: no such line, the parent commit is not in the store, or the value
   is not a Python literal.

This reads any unified diff, a coding agent's included, in one pass over its text;
applying 10^5 patches would take minutes, and a patch that no longer applies to its
parent would have no values at all. Values are typed by the knob: DOUBLE for
``float``, BIGINT for ``int``, and for ``choice`` the type its choices share (BIGINT,
DOUBLE, else VARCHAR). A knob named like one of the fixed columns is ``knob_<name>``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from autolab.protocol.config import Knob, LabConfig
from autolab.protocol.errors import AutoLabError

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView
    from autolab.protocol.store import LabStore

FIXED = ("experiment_id", "state", "metric")


def column_name(name: str) -> str:
    """The view's column for knob ``name``."""
    return f"knob_{name}" if name in FIXED else name


def column_type(knob: Knob) -> pa.DataType:
    if knob.type == "float":
        return pa.float64()
    if knob.type == "int":
        return pa.int64()
    numbers = [c for c in knob.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if len(numbers) == len(knob.choices):
        return pa.int64() if all(isinstance(c, int) for c in numbers) else pa.float64()
    return pa.string()


def _coerce(value: Any, dtype: pa.DataType) -> Any:
    """``value`` as ``dtype`` (None when it is not one)."""
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if pa.types.is_float64(dtype):
        return float(value) if number else None
    if pa.types.is_int64(dtype):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if number and isinstance(value, int) else None
    return value if isinstance(value, str) else str(value)


@functools.lru_cache(maxsize=65536)
def literal(text: str) -> Any:
    """The Python literal ``text`` (None if it is not one); fast for plain numbers."""
    if text[:1] in "+-.0123456789":
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


class PatchReader:
    """Finds knob assignments in unified diffs, one regex pass per patch."""

    def __init__(self, knobs: dict[str, Knob]) -> None:
        self.file_of = {name: knob.file for name, knob in knobs.items()}
        names = "|".join(re.escape(n) for n in sorted(knobs, key=len, reverse=True))
        # As protocol.knobs reads an assignment: NAME = value, an optional comment. The
        # leading newline (the text gets one prepended) lets the regex engine skip to
        # line starts instead of trying every character.
        self.pattern = re.compile(
            r"\n(?:\+\+\+ (?:b/)?(\S+)[^\n]*"
            rf"|([+-])({names})[ \t]*=[ \t]*([^#\n]*?)[ \t]*(?:#[^\n]*)?(?=\n|$))",
        ) if knobs else None

    def assignments(self, patch: str) -> dict[str, Any]:
        """Knob name -> the value the patch sets (None where it removes the line)."""
        if not patch or self.pattern is None:
            return {}
        out: dict[str, Any] = {}
        current = None
        file_of = self.file_of
        for path, sign, name, value in self.pattern.findall("\n" + patch):
            if path:
                current = path
            elif file_of[name] != current:
                continue
            elif sign == "+":
                out[name] = literal(value)
            elif name not in out:
                out[name] = None
        return out


class ParentValues:
    """Knob values in the files of parent commits, read once per distinct file blob."""

    def __init__(self, store: LabStore, knobs: dict[str, Knob]) -> None:
        self.store = store
        self.by_file: dict[str, list[str]] = {}
        for name, knob in knobs.items():
            self.by_file.setdefault(knob.file, []).append(name)
        self._commits: dict[str, dict[str, Any]] = {}
        self._blobs: dict[str, dict[str, Any]] = {}

    def values(self, commit: str | None) -> dict[str, Any]:
        if commit is None:
            return {}
        hit = self._commits.get(commit)
        if hit is None:
            hit = self._commits[commit] = self._read(commit)
        return hit

    def _read(self, commit: str) -> dict[str, Any]:
        from autolab.protocol.knobs import read_knob

        out: dict[str, Any] = {}
        listings: dict[str, dict[str, str]] = {}
        for path, names in self.by_file.items():
            folder = posixpath.dirname(path)
            try:
                if folder not in listings:
                    listings[folder] = self.store.list_dir(commit, folder)
            except (AutoLabError, KeyError, ValueError):
                return {}  # the parent commit is not in the store
            blob = listings[folder].get(f"{folder}/{posixpath.basename(path)}")
            if blob is None:
                continue
            if blob not in self._blobs:
                text = self.store.read_blob(blob).decode(errors="replace")
                self._blobs[blob] = {n: _parse(read_knob(text, n)) for n in names}
            out.update(self._blobs[blob])
        return out


def _parse(text: str | None) -> Any:
    return None if text is None else literal(text)


def knob_rows(config: LabConfig, store: LabStore, patches: list[str | None],
              parents: list[str | None]) -> dict[str, pa.Array]:
    """Each knob's typed values for experiments given by their patches and parents."""
    knobs = config.knobs
    reader, parent = PatchReader(knobs), ParentValues(store, knobs)
    owns = [reader.assignments(patch or "") for patch in patches]
    bases = [parent.values(commit) if len(own) < len(knobs) else {}
             for own, commit in zip(owns, parents, strict=True)]
    raw = {name: [b.get(name) for b in bases] for name in knobs}
    for i, own in enumerate(owns):
        for name, value in own.items():
            raw[name][i] = value
    return {name: typed_column(raw[name], column_type(knob)) for name, knob in knobs.items()}


def typed_column(values: list[Any], dtype: pa.DataType) -> pa.Array:
    """``values`` as an arrow column of ``dtype``; a value that is not one is null."""
    kinds = set(map(type, values)) - {type(None)}
    plain = {pa.float64(): {int, float}, pa.int64(): {int}, pa.string(): {str}}.get(dtype)
    if plain is not None and kinds <= plain:
        return pa.array(values, dtype)  # the usual case: no value to coerce
    return pa.array([_coerce(v, dtype) for v in values], dtype)


def knobs_table(view: LabView) -> pa.Table:
    """The ``knobs`` view of ``view``: experiment_id, state, metric, then a column per knob.

    An experiment's knob values never change (its patch and parent commit do not), so
    they are kept on disk beside the lab's cached folds and only new experiments are
    read (parsing 10^5 patches takes about a second).
    """
    exps = view.folded().experiments
    config = view.config
    names = [column_name(n) for n in config.knobs]
    schema = pa.schema([("experiment_id", pa.string()),
                        *((column_name(n), column_type(k)) for n, k in config.knobs.items())])
    cache = _cache_file(view, schema)
    known = _load(cache, schema)
    ids = exps.column("experiment_id")
    todo = exps if known is None else exps.filter(
        pc.invert(pc.is_in(ids, value_set=known.column("experiment_id"))))
    values = knob_rows(config, view.store, view.patches(todo.column("experiment_id").to_pylist()),
                       todo.column("parent_commit").to_pylist())
    fresh = pa.table([todo.column("experiment_id"), *values.values()], schema=schema)
    every = fresh if known is None else pa.concat_tables([known, fresh])
    if cache is not None and fresh.num_rows >= _SAVE_AFTER:
        _save(cache, every)
    if every.num_rows != exps.num_rows or known is not None:
        where = {eid: i for i, eid in enumerate(every.column("experiment_id").to_pylist())}
        every = every.take(pa.array([where[i] for i in ids.to_pylist()], pa.int64()))
    return pa.table([*(exps.column(n) for n in FIXED), *(every.column(n) for n in names)],
                    names=[*FIXED, *names])


_SAVE_AFTER = 1000  # new experiments worth rewriting the cached values for


def _cache_file(view: LabView, schema: pa.Schema) -> Path | None:
    from autolab.protocol.fold_cache import state_cache_dir

    where = state_cache_dir(view.store)
    if where is None:
        return None
    # The knobs' definitions and this module's code decide the values.
    key = hashlib.sha256(repr(sorted(view.config.knobs.items())).encode()
                         + Path(__file__).read_bytes() + str(schema).encode())
    return where / f"knobs-{key.hexdigest()[:16]}.arrow"


def _load(path: Path | None, schema: pa.Schema) -> pa.Table | None:
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all() if path else None
    except (OSError, pa.ArrowInvalid):
        return None
    return table if table is not None and table.schema.equals(schema) else None


def _save(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        os.replace(tmp, path)  # readers see the old file or the new one, whole
    except OSError:
        tmp.unlink(missing_ok=True)
