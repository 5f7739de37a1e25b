#!/usr/bin/env python3
"""RMSNorm on the GPU: correctness against float64 and timing against PyTorch.

Loads the CUDA variant built by ``kernels/build.py`` through ``kernels.get_local_kernel``,
checks every launch shape it times on fresh random inputs (several shapes and dtypes,
poisoned outputs), then times, at the Qwen3 shapes (hidden 16384 x 4096 and q_norm
16384*32 x 128, bf16): a device copy of the same bytes, the eager transformers
computation, ``F.rms_norm``, ``torch.compile`` of the eager computation, and the kernel
with its default and tuned launch shapes. Timing: CUDA events around each call, a
sleep kernel queued first so that launch latency is not timed, inputs rotated over
several sets, median of ``--iters`` after warm-up. Prints a table; ``--json`` writes
every row.

    python kernels/build.py rmsnorm && python kernels/rmsnorm/benchmarks/benchmark.py
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
SETS = 4
SLEEP_CYCLES = 200_000  # ~100 us at 1.98 GHz: longer than any contender's launch latency


def eager(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Qwen3RMSNorm.forward."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dtype)


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


def check(kernel, call, dtype: torch.dtype, shape: tuple[int, ...], eps: float) -> float:
    """Max error of ``call`` in units of the dtype's tolerance (<= 1 passes)."""
    x = torch.randn(shape, device="cuda", dtype=dtype) * 3
    w = (1 + 0.5 * torch.randn(shape[-1], device="cuda")).to(dtype)
    out = torch.full_like(x, float("nan"))
    call(out, x, w, eps)
    torch.cuda.synchronize()
    xd, wd = x.double(), w.double()
    ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * wd
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
    rows_out = []

    def tuned(tpr: int, vpt: int, block: int, stream: int):
        return lambda out, x, w, eps: ops.rms_norm_tuned(out, x, w, eps, tpr, vpt, block, stream)

    big = {  # shape -> launch shapes (threads per row, packs per thread, block, streaming)
        (16384, 4096): [(32, 16, 256, 0), (32, 16, 256, 1), (64, 8, 256, 0), (64, 8, 256, 1),
                        (128, 4, 256, 0), (128, 4, 256, 1), (128, 4, 512, 0), (128, 4, 128, 0),
                        (256, 2, 256, 0), (256, 2, 512, 0), (512, 1, 512, 0)],
        (16384 * 32, 128): [(16, 1, 256, 0), (8, 2, 256, 0), (4, 4, 256, 0), (4, 4, 256, 1),
                            (4, 4, 128, 0), (4, 4, 512, 0), (2, 8, 256, 0)],
    }
    # Correctness first: the default launch on odd shapes and every dtype, then every
    # tuned launch shape on its own shape.
    failures = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in [(1, 4096), (7, 128), (333, 4096), (5, 4100), (64, 1001), (3, 12),
                      (2, 3, 32, 128), (17, 32768), (4, 65536)]:
            err = check(kernel, ops.rms_norm, dtype, shape, 1e-6)
            if not err <= 1.0:
                failures += 1
                print(f"FAIL default {dtype} {shape}: error {err:.3g} x tolerance")
    for shape, launches in big.items():
        for launch in launches:
            err = check(kernel, tuned(*launch), torch.bfloat16, (shape[0] // 8, shape[1]), 1e-5)
            if not err <= 1.0:
                failures += 1
                print(f"FAIL tuned {launch} {shape}: error {err:.3g} x tolerance")
    print(f"correctness: {failures} failures")

    compiled = None if args.no_compile else torch.compile(eager)
    for shape, launches in big.items():
        rows, cols = shape
        sets = []
        for _ in range(SETS):
            x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
            w = (1 + 0.1 * torch.randn(cols, device="cuda")).to(torch.bfloat16)
            sets.append((torch.empty_like(x), x, w, 1e-6))
        nbytes = 2 * x.numel() * x.element_size() + cols * x.element_size()
        copy = time_us(lambda out, x, w, eps: out.copy_(x), sets, args.iters)
        copy_bw = 2 * x.numel() * x.element_size() / copy / 1e3  # GB/s
        contenders = {
            "copy (same bytes)": lambda out, x, w, eps: out.copy_(x),
            "eager (transformers)": lambda out, x, w, eps: eager(x, w, eps),
            "F.rms_norm": lambda out, x, w, eps, n=cols: F.rms_norm(x, (n,), w, eps),
        }
        if compiled is not None:
            contenders["torch.compile(eager)"] = lambda out, x, w, eps: compiled(x, w, eps)
        contenders["kernel (default)"] = lambda out, x, w, eps: ops.rms_norm(out, x, w, eps)
        for launch in launches:
            contenders[f"kernel tpr={launch[0]} vpt={launch[1]} block={launch[2]}"
                       f"{' stream' if launch[3] else ''}"] = tuned(*launch)
        results = {name: time_us(fn, sets, args.iters) for name, fn in contenders.items()}
        best_torch = min(results["F.rms_norm"], results.get("torch.compile(eager)", 1e30))
        print(f"\nRMSNorm {rows} x {cols} bf16: {nbytes / 1e6:.1f} MB moved, copy {copy_bw:.0f}"
              f" GB/s, floor {nbytes / copy_bw / 1e3:.1f} us")
        print(f"{'contender':44s} {'us':>8s} {'GB/s':>7s} {'%copy':>6s} {'vs eager':>8s}"
              f" {'vs best torch':>13s}")
        for name, us in results.items():
            bw = nbytes / us / 1e3
            row = {"op": "rmsnorm", "shape": list(shape), "contender": name, "us": us,
                   "gbs": bw, "pct_copy": 100 * bw / copy_bw, "copy_gbs": copy_bw,
                   "speedup_vs_eager": results["eager (transformers)"] / us,
                   "speedup_vs_best_torch": best_torch / us}
            rows_out.append(row)
            print(f"{name:44s} {us:8.1f} {bw:7.0f} {row['pct_copy']:6.1f}"
                  f" {row['speedup_vs_eager']:8.2f} {row['speedup_vs_best_torch']:13.2f}")
        del sets
        torch.cuda.empty_cache()
    if args.json is not None:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                         "torch": torch.__version__, "failures": failures,
                                         "rows": rows_out}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
