"""
tiny-lm: a small GPT that learns to predict the next byte of a synthetic
corpus within a fixed training budget. This is the file to improve.

    python train.py

The data and the metric live in prepare.py, which is protected. The run ends
with a summary block; val_bpb (validation bits per byte, lower is better) is
the number that counts. See program.md for the rules.
"""

import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import VOCAB_SIZE, evaluate_bpb, load_split

# ---------------------------------------------------------------------------
# Knobs (one assignment per line: tools rewrite them in place)
# ---------------------------------------------------------------------------

# peak AdamW learning rate
LEARNING_RATE = 2e-3
# AdamW weight decay on the matrices and embeddings
WEIGHT_DECAY = 0.0
# fraction of the budget spent warming the learning rate up from zero
WARMUP_FRAC = 0.1
# sequences per optimizer step
BATCH_SIZE = 32
# context length in bytes (also the evaluation window)
BLOCK_SIZE = 64
# transformer blocks
N_LAYER = 2
# attention heads per block (must divide N_EMBD)
N_HEAD = 2
# width of the residual stream
N_EMBD = 32
# dropout probability during training
DROPOUT = 0.0
# MLP nonlinearity: "gelu", "relu" or "silu"
ACTIVATION = "gelu"

# ---------------------------------------------------------------------------
# Fixed settings: seed, budget and device
# ---------------------------------------------------------------------------

SEED = 1337
# The budget is AUTOLAB_TRAIN_SECONDS of training (AUTOLAB_TRAIN_SECONDS_GPU on
# a GPU, if set); evaluation comes after it. On CPU a run uses one core and
# the budget counts the process's CPU time: the same as wall time on an idle
# core, and still fair when several runs share a machine. On GPU it is wall time.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRAIN_SECONDS = float(os.environ.get("AUTOLAB_TRAIN_SECONDS", "15"))
if DEVICE == "cuda":
    TRAIN_SECONDS = float(os.environ.get("AUTOLAB_TRAIN_SECONDS_GPU", TRAIN_SECONDS))
    clock = time.perf_counter
else:
    torch.set_num_threads(1)
    clock = time.process_time

torch.manual_seed(SEED)

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        assert N_EMBD % N_HEAD == 0, "N_EMBD must be divisible by N_HEAD"
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD)
        self.proj = nn.Linear(N_EMBD, N_EMBD)
        self.dropout = DROPOUT

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
        k = k.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
        v = v.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(N_EMBD, 4 * N_EMBD)
        self.act = ACTIVATIONS[ACTIVATION]()
        self.proj = nn.Linear(4 * N_EMBD, N_EMBD)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x):
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(N_EMBD)
        self.attn = CausalSelfAttention()
        self.ln2 = nn.LayerNorm(N_EMBD)
        self.mlp = MLP()

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB_SIZE, N_EMBD)
        self.pos_emb = nn.Embedding(BLOCK_SIZE, N_EMBD)
        self.drop = nn.Dropout(DROPOUT)
        self.blocks = nn.ModuleList([Block() for _ in range(N_LAYER)])
        self.ln_f = nn.LayerNorm(N_EMBD)
        self.head = nn.Linear(N_EMBD, VOCAB_SIZE, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * N_LAYER))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx):
        T = idx.size(1)
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, VOCAB_SIZE) logits


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

train_data = load_split("train", DEVICE)
batch_gen = torch.Generator(device="cpu").manual_seed(SEED)


def get_batch():
    ix = torch.randint(len(train_data) - BLOCK_SIZE - 1, (BATCH_SIZE,), generator=batch_gen)
    ix = ix.to(train_data.device)
    offsets = torch.arange(BLOCK_SIZE + 1, device=train_data.device)
    chunk = train_data[ix[:, None] + offsets]
    return chunk[:, :-1], chunk[:, 1:]


def lr_at(progress):
    """Linear warmup, then cosine decay to zero, over the training budget."""
    if progress < WARMUP_FRAC:
        return LEARNING_RATE * progress / WARMUP_FRAC
    decay = (progress - WARMUP_FRAC) / max(1e-8, 1.0 - WARMUP_FRAC)
    return LEARNING_RATE * 0.5 * (1.0 + math.cos(math.pi * min(1.0, decay)))


model = GPT().to(DEVICE)
num_params = sum(p.numel() for p in model.parameters())
decay_params = [p for p in model.parameters() if p.dim() >= 2]
other_params = [p for p in model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW(
    [
        {"params": decay_params, "weight_decay": WEIGHT_DECAY},
        {"params": other_params, "weight_decay": 0.0},
    ],
    lr=LEARNING_RATE,
    betas=(0.9, 0.95),
)

print(f"device: {DEVICE}, params: {num_params}, budget: {TRAIN_SECONDS:.1f}s", flush=True)
step = 0
train_seconds = 0.0
t_start = clock()
while train_seconds < TRAIN_SECONDS:
    lr = lr_at(train_seconds / TRAIN_SECONDS)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = get_batch()
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, VOCAB_SIZE), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    step += 1
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    train_seconds = clock() - t_start
    train_bpb = loss.item() / math.log(2)
    if not math.isfinite(train_bpb):
        sys.exit(f"training diverged at step {step}: the loss is not finite")
    if step % 100 == 0:
        print(f"step {step:5d} | {train_seconds:5.1f}s | lr {lr:.2e} | "
              f"train_bpb {train_bpb:.4f}", flush=True)

# ---------------------------------------------------------------------------
# Evaluation and summary
# ---------------------------------------------------------------------------

val_bpb = evaluate_bpb(model, BLOCK_SIZE, DEVICE)
if DEVICE == "cuda":
    peak_mem_mb = torch.cuda.max_memory_allocated() / 2**20
else:  # peak resident memory of the process: KiB on Linux, bytes on macOS
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mem_mb = peak_rss / (2**20 if sys.platform == "darwin" else 2**10)

print("---")
print(f"val_bpb: {val_bpb:.6f}")
print(f"train_seconds: {train_seconds:.1f}")
print(f"num_steps: {step}")
print(f"num_params: {num_params}")
print(f"peak_mem_mb: {peak_mem_mb:.1f}")
