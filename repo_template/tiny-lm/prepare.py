"""
Ground truth for the tiny-lm lab: the data and the evaluation.

THIS FILE IS PROTECTED. Agents improve train.py; they never edit this file.

The corpus is a synthetic byte stream drawn from a sparse order-2 Markov
source over a small alphabet. Because the source is known, its entropy rate
(the best bits per byte any predictor can achieve on average) is computed
exactly, in closed form, from the stationary distribution of the context
chain. That number is the floor printed by `python prepare.py`; the gap
between a model's val_bpb and the floor is what is left to learn.

Everything here is deterministic: the generator only uses `random.random()`
(whose sequence for a given seed Python guarantees across versions) and
integer arithmetic, so the same bytes come out on every machine. The cached
files are checked against fixed SHA-256 digests when they are loaded.

Public API used by train.py:
    load_split(split, device)        -> 1-D int64 tensor of byte values
    evaluate_bpb(model, block_size, device) -> validation bits per byte
    VOCAB_SIZE                       -> 256 (models predict raw bytes)
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# The source. Changing anything in this block changes the task.
# ---------------------------------------------------------------------------

ALPHABET = b" abcdefghiklmnoprstuwy.,"  # 24 printable symbols
ORDER = 2                               # next byte depends on the previous 2
POOL_SIZE = 8                           # plausible successors of each symbol
SUPPORT_SIZES = (2, 3, 4)               # possible next symbols per context
QUANTUM = 256                           # probabilities are multiples of 1/256
SOURCE_SEED = 20240607
STREAM_SEED = 7
BURN_IN = 4096                          # bytes dropped before the stream starts
TRAIN_BYTES = 1_000_000
VAL_BYTES = 131_072

VOCAB_SIZE = 256        # models emit logits over all 256 byte values
EVAL_TOKENS = 65_536    # fixed number of predicted validation bytes
EVAL_BATCH = 32         # windows per forward pass during evaluation

DATA_VERSION = "v1"
# SHA-256 of the generated splits; a mismatch means the cache was altered.
EXPECTED_SHA256 = {
    "train": None,
    "val": None,
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


@lru_cache(maxsize=None)
def source_table() -> tuple[tuple[tuple[int, int], ...], ...]:
    """The transition table of the source.

    Returns, for each context index c (the previous ORDER symbols read as a
    base-NUM_SYMBOLS number, oldest symbol most significant), a tuple of
    (next_symbol, count) pairs with counts summing to QUANTUM, so that
    p(next_symbol | c) = count / QUANTUM exactly.

    Each symbol b has a pool of POOL_SIZE plausible successors; the context
    (a, b) allows a random subset of 2-4 of them, with random probabilities.
    The previous byte alone therefore narrows the next one down to a few
    candidates (a bigram model gets part of the way), and the byte before it
    decides among them (only a model that looks two bytes back reaches the
    floor).
    """
    rng = random.Random(SOURCE_SEED)
    pools = [_shuffled_prefix(rng, range(NUM_SYMBOLS), POOL_SIZE) for _ in range(NUM_SYMBOLS)]
    table = []
    for c in range(NUM_CONTEXTS):
        m = SUPPORT_SIZES[_randbelow(rng, len(SUPPORT_SIZES))]
        # m distinct next symbols, drawn from the pool of the previous symbol
        symbols = _shuffled_prefix(rng, pools[c % NUM_SYMBOLS], m)
        # m positive counts summing to QUANTUM: m-1 distinct cut points,
        # i.e. a uniformly random composition (a discrete flat Dirichlet)
        cuts: set[int] = set()
        while len(cuts) < m - 1:
            cuts.add(1 + _randbelow(rng, QUANTUM - 1))
        edges = [0, *sorted(cuts), QUANTUM]
        counts = [edges[i + 1] - edges[i] for i in range(m)]
        table.append(tuple(zip(symbols[:m], counts)))
    return tuple(table)


def _successor(context: int, symbol: int) -> int:
    return (context * NUM_SYMBOLS + symbol) % NUM_CONTEXTS


def _check_ergodic(table, root: int) -> None:
    """The context chain must have a single closed class, reachable from every
    context, and that class must be aperiodic; then the stationary
    distribution, hence the entropy rate, is unique. `root` is a context
    believed to be recurrent (one with the largest stationary mass)."""
    n = NUM_CONTEXTS
    succ = [[_successor(c, s) for s, _ in table[c]] for c in range(n)]
    pred: list[list[int]] = [[] for _ in range(n)]
    for u in range(n):
        for v in succ[u]:
            pred[v].append(u)
    # every context reaches root: then reach(root) is the only closed class
    seen = {root}
    stack = [root]
    while stack:
        for u in pred[stack.pop()]:
            if u not in seen:
                seen.add(u)
                stack.append(u)
    if len(seen) != n:
        raise RuntimeError("source chain has more than one closed class")
    # period of the class = gcd of (level[u] + 1 - level[v]) over its edges
    level = {root: 0}
    queue = [root]
    for u in queue:
        for v in succ[u]:
            if v not in level:
                level[v] = level[u] + 1
                queue.append(v)
    g = 0
    for u in queue:
        for v in succ[u]:
            g = math.gcd(g, level[u] + 1 - level[v])
    if g != 1:
        raise RuntimeError(f"source chain is periodic (period {g})")


@lru_cache(maxsize=None)
def stationary_distribution() -> tuple[float, ...]:
    """Stationary distribution of the context chain, in float64."""
    table = source_table()
    n = NUM_CONTEXTS
    P = torch.zeros(n, n, dtype=torch.float64)
    for c, row in enumerate(table):
        for s, count in row:
            P[c, _successor(c, s)] += count / QUANTUM
    pi = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for _ in range(200):  # rough power iteration, only to find a recurrent state
        pi = pi @ P
    _check_ergodic(table, int(pi.argmax()))
    # solve pi (P - I) = 0 with sum(pi) = 1: replace one equation by the sum
    A = (P - torch.eye(n, dtype=torch.float64)).T.clone()
    A[-1, :] = 1.0
    b = torch.zeros(n, dtype=torch.float64)
    b[-1] = 1.0
    pi = torch.linalg.solve(A, b)
    for _ in range(20):  # polish; converges since the chain is aperiodic
        pi = pi @ P
    pi = pi.clamp_min(0.0)
    pi = pi / pi.sum()
    residual = (pi @ P - pi).abs().max().item()
    if residual > 1e-12:
        raise RuntimeError(f"stationary distribution did not converge ({residual:.2e})")
    return tuple(pi.tolist())


def conditional_entropy_bits(context: int) -> float:
    """H(next | context) in bits, exactly from the table."""
    h = 0.0
    for _, count in source_table()[context]:
        p = count / QUANTUM
        h -= p * math.log2(p)
    return h


@lru_cache(maxsize=None)
def entropy_floor_bpb() -> float:
    """Exact entropy rate of the source in bits per byte:
    sum over contexts of pi(context) * H(next | context)."""
    pi = stationary_distribution()
    return math.fsum(pi[c] * conditional_entropy_bits(c) for c in range(NUM_CONTEXTS))


def log2_prob_table() -> dict[tuple[int, ...], dict[int, float]]:
    """{context bytes: {next byte: -log2 p}} for the true source (for checks)."""
    out = {}
    for c, row in enumerate(source_table()):
        ctx = []
        x = c
        for _ in range(ORDER):
            ctx.append(ALPHABET[x % NUM_SYMBOLS])
            x //= NUM_SYMBOLS
        key = tuple(reversed(ctx))
        out[key] = {ALPHABET[s]: -math.log2(count / QUANTUM) for s, count in row}
    return out


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------

def generate(num_bytes: int, seed: int = STREAM_SEED, burn_in: int = BURN_IN) -> bytes:
    """Sample num_bytes from the source (deterministic for a given seed)."""
    table = source_table()
    # flat lookup: symbol = lut[context * QUANTUM + u], u uniform in [0, QUANTUM)
    lut = bytearray()
    for row in table:
        for s, count in row:
            lut.extend([s] * count)
    lut = bytes(lut)
    rnd = random.Random(seed).random
    q, a, n_ctx = QUANTUM, NUM_SYMBOLS, NUM_CONTEXTS
    ctx = 0
    out = bytearray(burn_in + num_bytes)
    for i in range(burn_in + num_bytes):
        s = lut[ctx * q + int(rnd() * q)]
        out[i] = s
        ctx = (ctx * a + s) % n_ctx
    return bytes(out[burn_in:]).translate(bytes.maketrans(bytes(range(a)), ALPHABET))


def data_dir() -> Path:
    env = os.environ.get("AUTOLAB_DATA_DIR")
    base = Path(env) if env else Path(__file__).resolve().parent / ".data"
    return base / f"tiny-lm-{DATA_VERSION}"


def _split_bytes() -> dict[str, bytes]:
    stream = generate(TRAIN_BYTES + VAL_BYTES)
    return {"train": stream[:TRAIN_BYTES], "val": stream[TRAIN_BYTES:]}


def _verify(split: str, blob: bytes) -> bool:
    expected = EXPECTED_SHA256[split]
    return expected is None or hashlib.sha256(blob).hexdigest() == expected


def prepare() -> Path:
    """Generate the splits into the cache directory if they are missing."""
    d = data_dir()
    paths = {s: d / f"{s}.bin" for s in ("train", "val")}
    if all(p.exists() and _verify(s, p.read_bytes()) for s, p in paths.items()):
        return d
    d.mkdir(parents=True, exist_ok=True)
    for split, blob in _split_bytes().items():
        if not _verify(split, blob):
            raise RuntimeError(f"generated {split} split does not match its digest")
        tmp = paths[split].with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(blob)
        os.replace(tmp, paths[split])
    return d


@lru_cache(maxsize=None)
def _load_bytes(split: str) -> bytes:
    blob = (prepare() / f"{split}.bin").read_bytes()
    if not _verify(split, blob):
        raise RuntimeError(f"{split} split failed its integrity check")
    return blob


def load_split(split: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """The 'train' or 'val' split as a 1-D int64 tensor of byte values."""
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}")
    blob = _load_bytes(split)
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device=device, dtype=torch.long)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def _check_causal(model, x: torch.Tensor) -> None:
    """Logits at a position must not depend on later inputs."""
    t = x.size(1)
    cut = t // 2
    y1 = model(x)
    x2 = x.clone()
    x2[:, cut:] = (x2[:, cut:] + 1) % VOCAB_SIZE
    y2 = model(x2)
    if not torch.allclose(y1[:, :cut].float(), y2[:, :cut].float(), atol=1e-3, rtol=1e-3):
        raise RuntimeError("model is not causal: its predictions depend on future bytes")


@torch.no_grad()
def evaluate_bpb(model, block_size: int, device: str | torch.device = "cpu") -> float:
    """Validation bits per byte of `model`.

    `model(idx)` takes an int64 tensor of shape (B, T) with T <= block_size and
    returns next-byte logits of shape (B, T, VOCAB_SIZE). Exactly EVAL_TOKENS
    validation bytes are predicted (val[1 : EVAL_TOKENS + 1]). Windows of
    block_size bytes slide by half a window, and each byte is scored in the
    window where it has the most context (at least block_size // 2 bytes,
    except at the very start of the validation stream).
    """
    if block_size < 2:
        raise ValueError("block_size must be at least 2")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        val = load_split("val", device)
        n = EVAL_TOKENS
        stride = block_size // 2
        # window k covers inputs val[s_k : s_k + block_size]; it scores targets
        # val[s_k + 1 + lo : s_k + 1 + block_size] where lo = 0 for k = 0
        # and lo = block_size - stride afterwards.
        starts = [0]
        while starts[-1] + block_size < n:
            starts.append(starts[-1] + stride)
        _check_causal(model, torch.stack([val[s:s + block_size] for s in starts[:2]]))
        total_bits = 0.0
        scored = 0
        for i in range(0, len(starts), EVAL_BATCH):
            batch = starts[i:i + EVAL_BATCH]
            x = torch.stack([val[s:s + block_size] for s in batch])
            y = torch.stack([val[s + 1:s + 1 + block_size] for s in batch])
            logits = model(x)
            if logits.shape != (len(batch), block_size, VOCAB_SIZE):
                raise RuntimeError(f"model returned logits of shape {tuple(logits.shape)}")
            nll = F.cross_entropy(
                logits.float().reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction="none"
            ).view(len(batch), block_size)
            pos = torch.arange(block_size, device=nll.device)
            for j, s in enumerate(batch):
                lo = 0 if s == 0 else block_size - stride
                hi = min(block_size, n - s)  # target index s + 1 + t <= n
                if hi <= lo:
                    continue
                mask = (pos >= lo) & (pos < hi)
                total_bits += nll[j][mask].double().sum().item()
                scored += int(mask.sum().item())
        if scored != n:
            raise RuntimeError(f"internal error: scored {scored} bytes, expected {n}")
        bpb = total_bits / n / math.log(2)
        if not math.isfinite(bpb):
            raise RuntimeError("evaluation produced a non-finite loss")
        return bpb
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


def oracle_bpb(split: str = "val", num_tokens: int = EVAL_TOKENS) -> float:
    """Bits per byte of the true source on the scored validation bytes: what a
    perfect model would get on exactly this sample (the floor is its mean)."""
    data = _load_bytes(split)
    nlp = log2_prob_table()
    total = 0.0
    for i in range(1, num_tokens + 1):
        if i < ORDER:
            continue  # too little context; a model needs it too, skip
        total += nlp[tuple(data[i - ORDER:i])][data[i]]
    return total / (num_tokens + 1 - ORDER)


def main() -> None:
    t0 = time.time()
    d = prepare()
    train = _load_bytes("train")
    val = _load_bytes("val")
    floor = entropy_floor_bpb()
    pi = stationary_distribution()
    recurrent = sum(1 for p in pi if p > 0)
    print(f"data_dir: {d}")
    print(f"alphabet: {ALPHABET.decode()!r} ({NUM_SYMBOLS} symbols, log2 = {math.log2(NUM_SYMBOLS):.4f} bits)")
    print(f"source: order-{ORDER} Markov, {NUM_CONTEXTS} contexts ({recurrent} recurrent), "
          f"{min(SUPPORT_SIZES)}-{max(SUPPORT_SIZES)} next symbols each")
    print(f"train_bytes: {len(train)}")
    print(f"val_bytes: {len(val)}")
    print(f"eval_tokens: {EVAL_TOKENS}")
    print(f"sample: {train[:72].decode()!r}")
    print(f"train_sha256: {hashlib.sha256(train).hexdigest()}")
    print(f"val_sha256: {hashlib.sha256(val).hexdigest()}")
    print(f"val_oracle_bpb: {oracle_bpb():.6f}")
    print(f"seconds: {time.time() - t0:.2f}")
    print(f"entropy_floor_bpb: {floor:.6f}")


if __name__ == "__main__":
    main()
