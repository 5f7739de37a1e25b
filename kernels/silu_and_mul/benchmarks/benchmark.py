#!/usr/bin/env python3
"""SiLU-and-mul on the GPU: correctness against float64 and timing against PyTorch.

Loads the CUDA variant built by ``kernels/build.py`` through ``kernels.get_local_kernel``,
checks it on fresh random inputs (several shapes and dtypes, poisoned outputs), then
times at the Qwen3-8B MLP shape (16384 tokens x 2 x 12288, bf16): a device copy, the
eager computation (``F.silu(gate) * up``), ``torch.compile`` of it, and the kernel with
its default and tuned launch shapes. Same timing method as the RMSNorm benchmark: CUDA
events, a sleep kernel queued first, inputs rotated, median after warm-up.

    python kernels/build.py silu_and_mul && python kernels/silu_and_mul/benchmarks/benchmark.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

PROJECT = Path(__file__).resolve().parents[1]
SETS = 3
SLEEP_CYCLES = 200_000


def eager(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def time_us(fn, sets: list[tuple], iters: int, warmup: int = 10) -> float:
    """Median microseconds of ``fn(*sets[i % len(sets)])``."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(warmup + iters):
        args = sets[i % len(sets)]
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)


def check(call, dtype: torch.dtype, shape: tuple[int, ...]) -> float:
    """Max error of ``call(out, x)`` in units of the dtype's tolerance (<= 1 passes)."""
    x = torch.randn(shape, device="cuda", dtype=dtype) * 4
    d = shape[-1] // 2
    out = torch.full((*shape[:-1], d), float("nan"), device="cuda", dtype=dtype)
    call(out, x)
    torch.cuda.synchronize()
    g, u = x[..., :d].double(), x[..., d:].double()
    ref = g / (1 + torch.exp(-g)) * u
    rtol = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-5}[dtype]
    err = ((out.double() - ref).abs() / (1e-3 * rtol + rtol * ref.abs())).max().item()
    return float("inf") if not torch.isfinite(out).all() else err


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    from kernels import get_local_kernel

    kernel = get_local_kernel(PROJECT)
    ops = kernel.ops

    def tuned(block: int, unroll: int, stream: int):
        def call(out, x):
            d = x.shape[-1] // 2
            ops.silu_mul_tuned(out, x[..., :d], x[..., d:], block, unroll, stream)
        return call

    launches = [(b, u, s) for b in (128, 256, 512) for u in (1, 2, 4) for s in (0, 1)]
    failures = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in [(1, 256), (7, 24576), (33, 2002), (5, 18), (2, 3, 8192), (70000, 16)]:
            err = check(ops.silu_and_mul, dtype, shape)
            if not err <= 1.0:
                failures += 1
                print(f"FAIL silu_and_mul {dtype} {shape}: error {err:.3g} x tolerance")
            d = shape[-1] // 2
            err = check(lambda out, x, d=d: ops.silu_mul(out, x[..., :d].contiguous(),
                                                         x[..., d:].contiguous()), dtype, shape)
            if not err <= 1.0:
                failures += 1
                print(f"FAIL silu_mul {dtype} {shape}: error {err:.3g} x tolerance")
    for launch in launches:
        err = check(tuned(*launch), torch.bfloat16, (513, 2 * 12288))
        if not err <= 1.0:
            failures += 1
            print(f"FAIL tuned {launch}: error {err:.3g} x tolerance")
    print(f"correctness: {failures} failures")

    tokens, d = 16384, 12288
    sets = []
    for _ in range(SETS):
        x = torch.randn(tokens, 2 * d, device="cuda", dtype=torch.bfloat16)
        sets.append((x.new_empty(tokens, d), x))
    es = x.element_size()
    nbytes = 3 * tokens * d * es
    copy_src = [(torch.empty(tokens, d, device="cuda", dtype=torch.bfloat16),
                 torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16)) for _ in range(SETS)]
    copy = time_us(lambda out, src: out.copy_(src), copy_src, args.iters)
    copy_bw = 2 * tokens * d * es / copy / 1e3
    del copy_src
    compiled = None if args.no_compile else torch.compile(eager)
    contenders = {"eager (F.silu(gate) * up)": lambda out, x: eager(x)}
    if compiled is not None:
        contenders["torch.compile(eager)"] = lambda out, x: compiled(x)
    contenders["kernel silu_and_mul (default)"] = lambda out, x: ops.silu_and_mul(out, x)
    for launch in launches:
        contenders[f"kernel block={launch[0]} unroll={launch[1]}"
                   f"{' stream' if launch[2] else ''}"] = tuned(*launch)
    results = {name: time_us(fn, sets, args.iters) for name, fn in contenders.items()}
    best_torch = results.get("torch.compile(eager)", results["eager (F.silu(gate) * up)"])
    print(f"\nSiLU-and-mul {tokens} x 2*{d} bf16: {nbytes / 1e6:.1f} MB moved, copy"
          f" {copy_bw:.0f} GB/s ({copy:.1f} us for {2 * tokens * d * es / 1e6:.0f} MB), floor"
          f" {nbytes / copy_bw / 1e3:.1f} us")
    print(f"{'contender':44s} {'us':>8s} {'GB/s':>7s} {'%copy':>6s} {'vs eager':>8s}"
          f" {'vs compile':>10s}")
    rows_out = []
    for name, us in results.items():
        bw = nbytes / us / 1e3
        row = {"op": "silu_and_mul", "shape": [tokens, 2 * d], "contender": name, "us": us,
               "gbs": bw, "pct_copy": 100 * bw / copy_bw, "copy_gbs": copy_bw,
               "speedup_vs_eager": results["eager (F.silu(gate) * up)"] / us,
               "speedup_vs_best_torch": best_torch / us}
        rows_out.append(row)
        print(f"{name:44s} {us:8.1f} {bw:7.0f} {row['pct_copy']:6.1f}"
              f" {row['speedup_vs_eager']:8.2f} {row['speedup_vs_best_torch']:10.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                         "torch": torch.__version__, "failures": failures,
                                         "copy_us": copy, "rows": rows_out}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
