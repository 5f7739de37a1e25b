#!/usr/bin/env python3
"""End to end: bf16 prefill of a Qwen3-8B-shaped model with and without this
directory's kernels.

The model is built from its configuration with random weights (``transformers``
``Qwen3Config`` + ``from_config``; nothing is downloaded). Prefill is one forward over
batch x sequence tokens (8 x 2048 by default) without a KV cache, logits for the last
position only, as ``generate`` does. Three runs on the one model, each the median of
``--iters`` CUDA-event timings after warm-up:

1. eager: transformers' own layers (sdpa attention);
2. + rmsnorm: ``kernels.kernelize`` swaps every ``Qwen3RMSNorm`` forward (hidden norms
   and the per-head ``q_norm``/``k_norm``) for ``kernels/rmsnorm``'s ``RMSNorm`` layer;
3. + silu_and_mul: also every ``Qwen3MLP`` forward for ``kernels/silu_and_mul``'s
   ``GatedMLP`` (the MLP is not a hub layer in transformers, so it is given a layer
   name first).

Kernels load offline from ``build/<variant>/`` (``python kernels/build.py rmsnorm
silu_and_mul`` first). ``--tiny`` runs a two-layer model (on the CPU where there is no
GPU) to check the wiring.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def qwen3_8b_config(tiny: bool):
    from transformers import Qwen3Config

    if tiny:
        return Qwen3Config(vocab_size=1024, hidden_size=256, intermediate_size=768,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=64, rms_norm_eps=1e-6, tie_word_embeddings=False)
    # Qwen/Qwen3-8B's config.json, transcribed.
    return Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                       num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, hidden_act="silu", attention_bias=False,
                       tie_word_embeddings=False)


def time_forward(model, ids: torch.Tensor, iters: int, warmup: int) -> tuple[float, torch.Tensor]:
    """(median seconds of one prefill forward, last-position logits of the last run)."""
    cuda = ids.is_cuda
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
            else:
                t0 = time.perf_counter()
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
            if cuda:
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end) / 1000.0
            else:
                elapsed = time.perf_counter() - t0
            if i >= warmup:
                times.append(elapsed)
    return statistics.median(times), logits.float()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM
    from transformers.models.qwen3 import modeling_qwen3

    from kernels import (
        LocalLayerRepository,
        Mode,
        kernelize,
        replace_kernel_forward_from_hub,
        use_kernel_mapping,
    )

    # kernelize warns for every MLP while only RMSNorm is mapped (run 2): expected here.
    logging.getLogger("kernels").setLevel(logging.ERROR)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        args.batch, args.seq = min(args.batch, 2), min(args.seq, 64)
    torch.manual_seed(0)
    config = qwen3_8b_config(args.tiny)
    t0 = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa")
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e9:.2f} B parameters on {device}, built in"
          f" {time.perf_counter() - t0:.1f} s")
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    tokens = args.batch * args.seq

    # transformers marks Qwen3RMSNorm as the hub layer "RMSNorm" only when `kernels` was
    # importable at its import; the MLP is never marked.
    if not hasattr(modeling_qwen3.Qwen3RMSNorm, "kernel_layer_name"):
        replace_kernel_forward_from_hub(modeling_qwen3.Qwen3RMSNorm, "RMSNorm")
    replace_kernel_forward_from_hub(modeling_qwen3.Qwen3MLP, "GatedMLP")
    rmsnorm = {"RMSNorm": {device: LocalLayerRepository(repo_path=HERE / "rmsnorm",
                                                        layer_name="RMSNorm")}}
    mlp = {"GatedMLP": {device: LocalLayerRepository(repo_path=HERE / "silu_and_mul",
                                                     layer_name="GatedMLP")}}

    results = []
    base_s, base_logits = time_forward(model, ids, args.iters, args.warmup)
    results.append(("eager (transformers)", base_s, base_logits))
    with use_kernel_mapping(rmsnorm):
        kernelize(model, mode=Mode.INFERENCE, device=device)
    norms = sum(type(m).__name__ == "Qwen3RMSNorm" for m in model.modules())
    s, logits = time_forward(model, ids, args.iters, args.warmup)
    results.append((f"+ rmsnorm kernel ({norms} norms)", s, logits))
    with use_kernel_mapping({**rmsnorm, **mlp}):
        kernelize(model, mode=Mode.INFERENCE, device=device)
    s, logits = time_forward(model, ids, args.iters, args.warmup)
    results.append(("+ rmsnorm + silu_and_mul kernels", s, logits))

    print(f"prefill {args.batch} x {args.seq} = {tokens} tokens, bf16, median of {args.iters}")
    print(f"{'run':40s} {'ms':>9s} {'tokens/s':>10s} {'gain':>7s} {'logits cos':>10s}")
    rows = []
    for name, sec, lg in results:
        cos = torch.nn.functional.cosine_similarity(lg.flatten(), base_logits.flatten(),
                                                    dim=0).item()
        row = {"run": name, "ms": sec * 1e3, "tokens_per_s": tokens / sec,
               "gain_pct": 100 * (base_s / sec - 1), "logits_cos_vs_eager": cos}
        rows.append(row)
        print(f"{name:40s} {row['ms']:9.1f} {row['tokens_per_s']:10.0f}"
              f" {row['gain_pct']:+6.1f}% {cos:10.5f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name() if device ==
                                         "cuda" else "cpu", "batch": args.batch,
                                         "seq": args.seq, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
