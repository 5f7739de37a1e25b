"""The tiny-lm template: its ground truth (corpus, entropy floor, evaluation)
and one short real training run."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import torch

TEMPLATE = Path(__file__).resolve().parents[2] / "repo_template" / "tiny-lm"
SUMMARY_KEYS = ["val_bpb", "train_seconds", "num_steps", "num_params", "peak_mem_mb"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-lm-data")


@pytest.fixture(scope="module")
def prep(data_dir: Path):
    """prepare.py loaded as a module, its cache in a temporary directory."""
    old = os.environ.get("AUTOLAB_DATA_DIR")
    os.environ["AUTOLAB_DATA_DIR"] = str(data_dir)
    spec = importlib.util.spec_from_file_location("tiny_lm_prepare", TEMPLATE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    if old is None:
        os.environ.pop("AUTOLAB_DATA_DIR", None)
    else:
        os.environ["AUTOLAB_DATA_DIR"] = old


def true_probs(prep) -> dict[bytes, dict[int, float]]:
    """{3-byte context: {next byte: p}} rebuilt from the raw transition table."""
    out = {}
    a = prep.NUM_SYMBOLS
    for c, row in enumerate(prep.source_table()):
        ctx = bytes(prep.ALPHABET[(c // a**k) % a] for k in reversed(range(prep.ORDER)))
        out[ctx] = {prep.ALPHABET[s]: n / prep.QUANTUM for s, n in row}
    return out


# --- the corpus ------------------------------------------------------------


def test_generation_is_deterministic_and_matches_the_pinned_digests(prep):
    n = prep.TRAIN_BYTES + prep.VAL_BYTES
    first, second = prep.generate(n), prep.generate(n)
    assert first == second
    assert hashlib.sha256(first[: prep.TRAIN_BYTES]).hexdigest() == prep.EXPECTED_SHA256["train"]
    assert hashlib.sha256(first[prep.TRAIN_BYTES:]).hexdigest() == prep.EXPECTED_SHA256["val"]
    assert prep.generate(1000, seed=prep.STREAM_SEED + 1) != first[:1000]
    assert set(first) == set(prep.ALPHABET)


def test_cache_is_written_verified_and_rebuilt_when_altered(prep, data_dir):
    val = prep.load_split("val")
    assert val.dtype == torch.long and val.numel() == prep.VAL_BYTES
    path = data_dir / f"tiny-lm-{prep.DATA_VERSION}" / "val.bin"
    assert path.read_bytes() == bytes(val.tolist())
    path.write_bytes(b"x" * prep.VAL_BYTES)
    prep.prepare()  # notices the altered file and writes the true one back
    assert path.read_bytes() == bytes(val.tolist())


def test_stream_follows_the_source_table(prep):
    data = prep.load_bytes("train")
    probs = true_probs(prep)
    o = prep.ORDER
    counts: dict[bytes, Counter] = {}
    for i in range(o, len(data)):
        counts.setdefault(data[i - o:i], Counter())[data[i]] += 1
    checked = 0
    for ctx, counter in counts.items():
        total = sum(counter.values())
        assert set(counter) <= set(probs[ctx]), f"impossible byte after {ctx!r}"
        if total >= 500:
            for byte, p in probs[ctx].items():
                # binomial standard error; 5 sigma plus a little slack
                assert abs(counter[byte] / total - p) < 5 * math.sqrt(p * (1 - p) / total) + 1e-3
            checked += 1
    assert checked >= 500


# --- the entropy floor -----------------------------------------------------


def test_stationary_distribution_is_stationary(prep):
    pi = prep.stationary_distribution()
    assert math.isclose(math.fsum(pi), 1.0, abs_tol=1e-12)
    nxt = [0.0] * len(pi)
    for c, row in enumerate(prep.source_table()):
        for s, n in row:
            nxt[(c * prep.NUM_SYMBOLS + s) % prep.NUM_CONTEXTS] += pi[c] * n / prep.QUANTUM
    assert max(abs(x - y) for x, y in zip(nxt, pi, strict=True)) < 1e-13


def test_entropy_floor_matches_a_long_sample(prep):
    floor = prep.entropy_floor_bpb()
    assert 1.0 < floor < math.log2(prep.NUM_SYMBOLS) / 2  # real structure to learn
    data = prep.load_bytes("train")
    probs = true_probs(prep)
    o = prep.ORDER
    bits = math.fsum(-math.log2(probs[data[i - o:i]][data[i]]) for i in range(o, len(data)))
    empirical = bits / (len(data) - o)
    assert abs(empirical - floor) / floor < 0.005, (empirical, floor)
    # prepare.py's own helper agrees with this independent computation
    assert math.isclose(prep.empirical_bpb(data), empirical, rel_tol=1e-9)


def test_contract_floor_matches_prepare(prep):
    config = tomllib.loads((TEMPLATE / "autolab.toml").read_text())
    assert config["metric"]["floor"] == round(prep.entropy_floor_bpb(), 6)
    assert f"{prep.entropy_floor_bpb():.6f}" in (TEMPLATE / "program.md").read_text()


# --- the evaluation --------------------------------------------------------


class Oracle(torch.nn.Module):
    """The true source as a causal model: logits = log p(next | last 3 bytes),
    uniform over the alphabet where fewer than 3 bytes are known."""

    def __init__(self, prep):
        super().__init__()
        a, o = prep.NUM_SYMBOLS, prep.ORDER
        sym = torch.zeros(256, dtype=torch.long)
        for i, b in enumerate(prep.ALPHABET):
            sym[b] = i
        table = torch.full((prep.NUM_CONTEXTS, 256), -50.0)
        for c, row in enumerate(prep.source_table()):
            for s, n in row:
                table[c, prep.ALPHABET[s]] = math.log(n / prep.QUANTUM)
        start = torch.full((256,), -50.0)
        start[list(prep.ALPHABET)] = -math.log(a)
        self.sym, self.table, self.start, self.a, self.o = sym, table, start, a, o

    def forward(self, idx):
        s, t = self.sym[idx], idx.size(1)
        ctx = torch.zeros_like(s[:, self.o - 1:])  # the context ending at each position
        for k in range(self.o):
            ctx = ctx * self.a + s[:, k:t - self.o + 1 + k]
        out = self.start.expand(*idx.shape, 256).clone()
        out[:, self.o - 1:] = self.table[ctx]
        return out


def test_evaluation_of_the_true_source_is_the_oracle_loss(prep):
    oracle = Oracle(prep)
    val = prep.load_bytes("val")
    expected = prep.empirical_bpb(val, prep.ORDER, prep.EVAL_TOKENS + 1)
    for block in (4, 16, 64):
        bpb = prep.evaluate_bpb(oracle, block)
        # only the first two scored bytes lack context: they cost log2(24) bits each
        assert abs(bpb - expected) < 3 * math.log2(prep.NUM_SYMBOLS) / prep.EVAL_TOKENS, block
    assert abs(bpb - prep.entropy_floor_bpb()) < 0.01


def test_evaluation_rejects_a_model_that_reads_ahead(prep):
    class Peek(torch.nn.Module):
        def forward(self, idx):  # "predicts" the byte that follows by looking at it
            nxt = torch.roll(idx, -1, dims=1)
            return torch.nn.functional.one_hot(nxt, 256).float() * 30.0

    with pytest.raises(RuntimeError, match="causal"):
        prep.evaluate_bpb(Peek(), 16)


def test_every_contract_knob_is_one_plain_line_of_train_py():
    config = tomllib.loads((TEMPLATE / "autolab.toml").read_text())
    source = (TEMPLATE / "train.py").read_text()
    assert config["paths"]["editable"] == ["train.py"]
    for name, knob in config["knobs"].items():
        lines = re.findall(rf"^{name} = (.+)$", source, re.MULTILINE)
        assert len(lines) == 1, name
        value = eval(lines[0], {})  # a literal
        if knob["type"] == "choice":
            assert value in knob["choices"], name
        else:
            assert knob["low"] <= value <= knob["high"], name


# --- a real run ------------------------------------------------------------


@pytest.mark.slow
def test_short_training_run_prints_a_summary_above_the_floor(prep, data_dir, tmp_path):
    lab = tmp_path / "lab"
    shutil.copytree(TEMPLATE, lab, ignore=shutil.ignore_patterns(".data", "__pycache__"))
    env = dict(os.environ, AUTOLAB_TRAIN_SECONDS="2", AUTOLAB_DATA_DIR=str(data_dir),
               CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "train.py"], cwd=lab, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "---" in lines
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1:]
    pairs = [re.fullmatch(r"(\w+): (\S+)", line) for line in block]
    assert all(pairs), block
    summary = {m[1]: float(m[2]) for m in pairs}
    assert list(summary) == SUMMARY_KEYS
    floor = prep.entropy_floor_bpb()
    assert math.isfinite(summary["val_bpb"])
    assert floor < summary["val_bpb"] < 6.0  # learned something (uniform is 8), not magic
    assert 2.0 <= summary["train_seconds"] < 4.0
    assert summary["num_steps"] >= 5
    assert summary["num_params"] > 1000
    assert summary["peak_mem_mb"] > 0
    assert not (lab / ".data").exists()  # the cache went to AUTOLAB_DATA_DIR
