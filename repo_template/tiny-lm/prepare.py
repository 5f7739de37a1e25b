"""
Ground truth for the tiny-lm lab: the data and the evaluation.

THIS FILE IS PROTECTED. Agents improve train.py; they never edit this file.

The corpus is a synthetic byte stream drawn from a sparse order-3 Markov
source over a small alphabet. Because the source is known, its entropy rate
(the lowest bits per byte any predictor can achieve on average) is computed
exactly from the stationary distribution of the context chain. That number
is the floor printed by `python prepare.py`; the gap between a model's
val_bpb and the floor is what is left to learn.

Everything here is deterministic: the generator uses only `random.random()`
(whose sequence for a given seed Python guarantees across versions) and
integer arithmetic, so the same bytes come out on every machine. The cached
files are checked against fixed SHA-256 digests whenever they are loaded.

Used by train.py:
    VOCAB_SIZE                               256: models predict raw bytes
    load_split(split, device)                1-D int64 tensor of byte values
    evaluate_bpb(model, block_size, device)  validation bits per byte

Run `python prepare.py` to build the cache and print the corpus statistics.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# The source. Changing anything in this block changes the task.
# ---------------------------------------------------------------------------

ALPHABET = b" abcdefghiklmnoprstuwy.,"  # 24 printable symbols
ORDER = 3                  # the next byte depends on the previous 3
POOL_SIZE = 8              # plausible successors of each symbol
SUPPORT_SIZES = (2, 3, 4)  # possible next symbols in each context
QUANTUM = 256              # probabilities are multiples of 1/256
SOURCE_SEED = 20240607
STREAM_SEED = 7
BURN_IN = 4096             # bytes dropped before the stream starts
TRAIN_BYTES = 1_000_000
VAL_BYTES = 131_072

VOCAB_SIZE = 256           # models emit logits over all 256 byte values
EVAL_TOKENS = 65_536       # fixed number of predicted validation bytes
EVAL_BATCH_TOKENS = 8_192  # input bytes per forward pass during evaluation

DATA_VERSION = "v1"
# SHA-256 of the generated splits: a mismatch means the cache was altered.
EXPECTED_SHA256 = {
    "train": "b632b82760fe41a5c11128a8764fbd776d218e7fcd9bf33317e83a0939b259a8",
    "val": "26934255dd33b47e032ae9e61ce5628a60bd75b107051cd0f88552e22c8c67e0",
}

NUM_SYMBOLS = len(ALPHABET)
NUM_CONTEXTS = NUM_SYMBOLS ** ORDER


# ---------------------------------------------------------------------------
# Building the source
# ---------------------------------------------------------------------------

def _randbelow(rng: random.Random, n: int) -> int:
    """Uniform integer in [0, n) using only rng.random() (version-stable)."""
    return int(rng.random() * n)


def _shuffled_prefix(rng: random.Random, items, k: int) -> list[int]:
    """k distinct items in random order (a partial Fisher-Yates shuffle)."""
    items = list(items)
    for i in range(k):
        j = i + _randbelow(rng, len(items) - i)
        items[i], items[j] = items[j], items[i]
    return items[:k]


@cache
def source_table() -> tuple[tuple[tuple[int, int], ...], ...]:
    """The transition table of the source.

    Contexts are the previous ORDER symbols read as a base-NUM_SYMBOLS number
    (oldest symbol most significant, so `context % NUM_SYMBOLS` is the last
    symbol). For each context the table holds (next_symbol, count) pairs with
    counts summing to QUANTUM: p(next_symbol | context) = count / QUANTUM.

    Each symbol has a pool of POOL_SIZE plausible successors; a context allows
    a random subset of 2-4 symbols from the pool of its last symbol, with
    random probabilities. The last byte alone narrows the next one down (a
    bigram model gets part of the way), the bytes before it decide among the
    candidates (only a model that uses all ORDER bytes reaches the floor).
    """
    rng = random.Random(SOURCE_SEED)
    pools = [_shuffled_prefix(rng, range(NUM_SYMBOLS), POOL_SIZE) for _ in range(NUM_SYMBOLS)]
    table = []
    for context in range(NUM_CONTEXTS):
        m = SUPPORT_SIZES[_randbelow(rng, len(SUPPORT_SIZES))]
        symbols = _shuffled_prefix(rng, pools[context % NUM_SYMBOLS], m)
        # m positive counts summing to QUANTUM from m - 1 distinct cut points:
        # a uniformly random composition (a discrete flat Dirichlet)
        cuts: set[int] = set()
        while len(cuts) < m - 1:
            cuts.add(1 + _randbelow(rng, QUANTUM - 1))
        edges = [0, *sorted(cuts), QUANTUM]
        counts = [edges[i + 1] - edges[i] for i in range(m)]
        table.append(tuple(zip(symbols, counts, strict=True)))
    return tuple(table)


def _successor(context: int, symbol: int) -> int:
    return (context * NUM_SYMBOLS + symbol) % NUM_CONTEXTS


def _check_ergodic(table, root: int) -> set[int]:
    """Check that the context chain has a single closed class, reachable from
    every context, and that this class is aperiodic: then the stationary
    distribution, hence the entropy rate, is unique. `root` is a context
    thought to be recurrent. Returns the closed class."""
    n = len(table)
    succ = [[_successor(c, s) for s, _ in table[c]] for c in range(n)]
    pred: list[list[int]] = [[] for _ in range(n)]
    for u in range(n):
        for v in succ[u]:
            pred[v].append(u)
    # every context reaches root, so the contexts reachable from root form the
    # only closed class
    seen = {root}
    stack = [root]
    while stack:
        for u in pred[stack.pop()]:
            if u not in seen:
                seen.add(u)
                stack.append(u)
    if len(seen) != n:
        raise RuntimeError("the source chain has more than one closed class")
    # period of the class = gcd of (level[u] + 1 - level[v]) over its edges
    level = {root: 0}
    queue = [root]
    for u in queue:
        for v in succ[u]:
            if v not in level:
                level[v] = level[u] + 1
                queue.append(v)
    period = 0
    for u in queue:
        for v in succ[u]:
            period = math.gcd(period, level[u] + 1 - level[v])
    if period != 1:
        raise RuntimeError(f"the source chain is periodic (period {period})")
    return set(queue)


@cache
def stationary_distribution() -> tuple[float, ...]:
    """Stationary distribution of the context chain (float64 power iteration,
    run until it is a fixed point to within 1e-15)."""
    table = source_table()
    src, dst, prob = [], [], []
    for c, row in enumerate(table):
        for s, count in row:
            src.append(c)
            dst.append(_successor(c, s))
            prob.append(count / QUANTUM)
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    prob_t = torch.tensor(prob, dtype=torch.float64)

    def step(pi: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(pi).index_add_(0, dst_t, pi[src_t] * prob_t)

    pi = torch.full((NUM_CONTEXTS,), 1.0 / NUM_CONTEXTS, dtype=torch.float64)
    for _ in range(100):
        pi = step(pi)
    recurrent = _check_ergodic(table, int(pi.argmax()))
    for _ in range(100_000):
        nxt = step(pi)
        nxt /= nxt.sum()
        change = (nxt - pi).abs().sum().item()
        pi = nxt
        if change < 1e-15:
            break
    else:
        raise RuntimeError("the stationary distribution did not converge")
    outside = sum(p for c, p in enumerate(pi.tolist()) if c not in recurrent)
    if outside > 1e-12:
        raise RuntimeError("stationary mass outside the closed class")
    return tuple(pi.tolist())


def conditional_entropy_bits(context: int) -> float:
    """H(next byte | context) in bits, exactly from the table."""
    return -math.fsum(
        count / QUANTUM * math.log2(count / QUANTUM) for _, count in source_table()[context]
    )


@cache
def entropy_floor_bpb() -> float:
    """Exact entropy rate of the source in bits per byte:
    the sum over contexts of pi(context) * H(next byte | context)."""
    pi = stationary_distribution()
    return math.fsum(p * conditional_entropy_bits(c) for c, p in enumerate(pi) if p > 0)


def true_neg_log2_probs() -> dict[bytes, dict[int, float]]:
    """{context bytes: {next byte: -log2 p(next | context)}} of the source."""
    out = {}
    for c, row in enumerate(source_table()):
        symbols = []
        x = c
        for _ in range(ORDER):
            symbols.append(ALPHABET[x % NUM_SYMBOLS])
            x //= NUM_SYMBOLS
        key = bytes(reversed(symbols))
        out[key] = {ALPHABET[s]: -math.log2(count / QUANTUM) for s, count in row}
    return out


def empirical_bpb(data: bytes, start: int = ORDER, stop: int | None = None) -> float:
    """Mean of -log2 p(data[i] | data[i-ORDER:i]) under the true source over
    start <= i < stop: the loss of a perfect predictor on this sample."""
    nlp = true_neg_log2_probs()
    stop = len(data) if stop is None else stop
    if start < ORDER or stop <= start:
        raise ValueError("need ORDER bytes of context and a non-empty range")
    total = math.fsum(nlp[data[i - ORDER:i]][data[i]] for i in range(start, stop))
    return total / (stop - start)


# ---------------------------------------------------------------------------
# Sampling and the on-disk cache
# ---------------------------------------------------------------------------

def generate(num_bytes: int, seed: int = STREAM_SEED, burn_in: int = BURN_IN) -> bytes:
    """Sample num_bytes from the source (the same bytes for the same seed)."""
    # flat lookup: next symbol = lut[context * QUANTUM + u], u uniform in [0, QUANTUM)
    lut = bytearray()
    for row in source_table():
        for s, count in row:
            lut.extend([s] * count)
    lut = bytes(lut)
    rnd = random.Random(seed).random
    q, a, n_ctx = QUANTUM, NUM_SYMBOLS, NUM_CONTEXTS
    out = bytearray(burn_in + num_bytes)
    ctx = 0
    for i in range(burn_in + num_bytes):
        s = lut[ctx * q + int(rnd() * q)]
        out[i] = s
        ctx = (ctx * a + s) % n_ctx
    return bytes(out[burn_in:]).translate(bytes.maketrans(bytes(range(a)), ALPHABET))


def data_dir() -> Path:
    """The cache directory: $AUTOLAB_DATA_DIR if set, else .data/ next to this file."""
    env = os.environ.get("AUTOLAB_DATA_DIR")
    base = Path(env) if env else Path(__file__).resolve().parent / ".data"
    return base / f"tiny-lm-{DATA_VERSION}"


def _verify(split: str, blob: bytes) -> bool:
    return hashlib.sha256(blob).hexdigest() == EXPECTED_SHA256[split]


def prepare() -> Path:
    """Generate the splits into the cache directory unless they are there."""
    d = data_dir()
    paths = {s: d / f"{s}.bin" for s in ("train", "val")}
    if all(p.exists() and _verify(s, p.read_bytes()) for s, p in paths.items()):
        return d
    stream = generate(TRAIN_BYTES + VAL_BYTES)
    splits = {"train": stream[:TRAIN_BYTES], "val": stream[TRAIN_BYTES:]}
    d.mkdir(parents=True, exist_ok=True)
    for split, blob in splits.items():
        if not _verify(split, blob):
            raise RuntimeError(f"the generated {split} split does not match its digest")
        tmp = paths[split].with_name(f"{split}.bin.tmp{os.getpid()}")
        tmp.write_bytes(blob)
        os.replace(tmp, paths[split])  # atomic: concurrent runs never see half a file
    return d


@cache
def load_bytes(split: str) -> bytes:
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}")
    blob = (prepare() / f"{split}.bin").read_bytes()
    if not _verify(split, blob):
        raise RuntimeError(f"the {split} split failed its integrity check")
    return blob


def load_split(split: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """The 'train' or 'val' split as a 1-D int64 tensor of byte values."""
    blob = load_bytes(split)
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device=device, dtype=torch.long)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def _check_causal(model, x: torch.Tensor) -> None:
    """The prediction at a position must not depend on later bytes."""
    cut = x.size(1) // 2
    y1 = model(x)
    x2 = x.clone()
    x2[:, cut:] = (x2[:, cut:] + 1) % VOCAB_SIZE
    y2 = model(x2)
    if not torch.allclose(y1[:, :cut].float(), y2[:, :cut].float(), atol=1e-3, rtol=1e-3,
                          equal_nan=True):
        raise RuntimeError("the model is not causal: its predictions depend on later bytes")


@torch.no_grad()
def evaluate_bpb(model, block_size: int, device: str | torch.device = "cpu") -> float:
    """Validation bits per byte of `model`.

    `model(idx)` takes an int64 tensor of shape (B, block_size) and returns
    next-byte logits of shape (B, block_size, VOCAB_SIZE), where the logits
    at position t may depend only on idx[:, :t + 1]. Exactly EVAL_TOKENS
    bytes are predicted: val[1 : EVAL_TOKENS + 1]. Windows of block_size
    bytes slide by half a window and each byte is scored once, in the window
    where it has the most context before it (at least block_size // 2 bytes,
    except at the very start of the validation stream).
    """
    if block_size < 2:
        raise ValueError("block_size must be at least 2")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        val = load_split("val", device)
        n, t = EVAL_TOKENS, block_size
        stride = t // 2
        # window k holds inputs val[s : s + t] with s = k * stride and targets
        # val[s + 1 : s + t + 1]; it scores targets at positions lo <= p < hi,
        # lo = 0 for the first window and t - stride after it; hi keeps the
        # scored targets within val[1 : n + 1].
        starts = torch.arange(0, n - t + stride, stride, device=device)
        pos = torch.arange(t, device=device)
        _check_causal(model, val[starts[:2, None] + pos])
        total_bits = torch.zeros((), dtype=torch.float64, device=device)
        scored = 0
        per_batch = max(1, EVAL_BATCH_TOKENS // t)
        for i in range(0, len(starts), per_batch):
            s = starts[i:i + per_batch]
            x = val[s[:, None] + pos]
            y = val[s[:, None] + pos + 1]
            logits = model(x)
            if tuple(logits.shape) != (len(s), t, VOCAB_SIZE):
                raise RuntimeError(f"the model returned logits of shape {tuple(logits.shape)}")
            nll = F.cross_entropy(
                logits.float().reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction="none"
            ).view(len(s), t)
            lo = torch.where(s == 0, 0, t - stride)
            hi = (n - s).clamp(max=t)
            mask = (pos >= lo[:, None]) & (pos < hi[:, None])
            total_bits += nll[mask].double().sum()
            scored += int(mask.sum())
        if scored != n:
            raise RuntimeError(f"scored {scored} bytes instead of {n}")
        bpb = total_bits.item() / n / math.log(2)
        if not math.isfinite(bpb):
            raise RuntimeError("the evaluation produced a non-finite loss")
        return bpb
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


def main() -> None:
    t0 = time.time()
    d = prepare()
    train, val = load_bytes("train"), load_bytes("val")
    floor = entropy_floor_bpb()
    recurrent = sum(1 for p in stationary_distribution() if p > 0)
    print(f"data_dir: {d}")
    print(f"alphabet: {ALPHABET.decode()!r} ({NUM_SYMBOLS} symbols, "
          f"log2 = {math.log2(NUM_SYMBOLS):.4f} bits)")
    print(f"source: order-{ORDER} Markov, {recurrent} recurrent contexts of {NUM_CONTEXTS}, "
          f"{min(SUPPORT_SIZES)}-{max(SUPPORT_SIZES)} next bytes each")
    print(f"train_bytes: {len(train)}")
    print(f"val_bytes: {len(val)}")
    print(f"eval_tokens: {EVAL_TOKENS}")
    print(f"sample: {val[:64].decode()!r}")
    print(f"train_sha256: {hashlib.sha256(train).hexdigest()}")
    print(f"val_sha256: {hashlib.sha256(val).hexdigest()}")
    # what a perfect model scores on exactly the evaluated bytes (its mean is the floor)
    print(f"val_oracle_bpb: {empirical_bpb(val, ORDER, EVAL_TOKENS + 1):.6f}")
    print(f"seconds: {time.time() - t0:.2f}")
    print(f"entropy_floor_bpb: {floor:.6f}")


if __name__ == "__main__":
    main()
