"""The kernel lab's run-time checks that need a GPU: work on another stream or after
the call returns, and every correctness check on CUDA tensors. Skipped without CUDA
(CI has none); run on a GPU machine with

    python -m pytest -q tests/template/test_kernel_lab_gpu.py

Self-contained (no autolab import), so that it also runs with ``--noconftest``."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEMPLATE = Path(__file__).resolve().parents[2] / "repo_template" / "kernel"
SHAPE = (16384, 4096)


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("kernel_lab_harness", TEMPLATE / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rms(out, x, weight, eps):
    xf = x.float()
    out.copy_(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float())


def on_side_stream(out, x, weight, eps, _stream=[]):  # noqa: B006 (one stream, kept)
    if not _stream:
        _stream.append(torch.cuda.Stream())
    _stream[0].wait_stream(torch.cuda.current_stream())  # inputs ready; the result is not
    with torch.cuda.stream(_stream[0]):
        rms(out, x, weight, eps)


def after_returning(out, x, weight, eps):
    """Queues the work from another thread a little after the call has returned."""
    threading.Timer(0.005, rms, args=(out, x, weight, eps)).start()


def weight_for(shape):
    return (1 + 0.5 * torch.randn(shape[-1], device="cuda")).to(torch.bfloat16)


def test_the_profiler_sees_work_on_another_stream(harness):
    x = torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(harness.Invalid, match="another stream"):
        harness.check_streams(on_side_stream, x, weight_for(SHAPE), 1e-6)
    harness.check_streams(rms, x, weight_for(SHAPE), 1e-6)  # the honest one passes


@pytest.mark.parametrize("call", [on_side_stream, after_returning],
                         ids=["side-stream", "after-returning"])
def test_timed_calls_see_work_not_done_when_the_timing_ends(harness, call):
    with pytest.raises(harness.Invalid, match="not complete"):
        harness.time_gpu(call, SHAPE, weight_for(SHAPE), 1e-6, 5, check=harness.timed_check)
    torch.cuda.synchronize()


def skip_last_row(out, x, weight, eps):
    rows_out, rows_x = out.view(-1, x.shape[-1]), x.view(-1, x.shape[-1])
    if len(rows_x) > 1:
        rms(rows_out[:-1], rows_x[:-1], weight, eps)


HACKS = {
    "calls torch's rms_norm": (
        lambda out, x, w, eps: out.copy_(F.rms_norm(x, (x.shape[-1],), w, eps)), "rms_norm"),
    "leaves the last row unwritten": (lambda out, x, w, eps: skip_last_row(out, x, w, eps),
                                      "not finite"),
    "wrong at width 1001": (
        lambda out, x, w, eps: rms(out, x, w if x.shape[-1] != 1001 else w * 1.1, eps),
        "tolerance"),
    "mutates its input": (lambda out, x, w, eps: (rms(out, x, w, eps), x.add_(1)),
                          "changed its input"),
}


@pytest.mark.parametrize("name", sorted(HACKS))
def test_correctness_checks_on_cuda_reject_hack(harness, name):
    call, reason = HACKS[name]
    with pytest.raises(harness.Invalid, match=reason):
        harness.check_all(call, "cuda", torch.Generator().manual_seed(5))


def test_the_template_kernel_builds_and_passes_every_check(harness, tmp_path):
    cuda, defines = harness.static_check((TEMPLATE / "kernel.py").read_text())
    call = harness.build_cuda(cuda, defines, tmp_path)
    harness.check_all(call, "cuda", torch.Generator().manual_seed(6))
    x = torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16)
    harness.check_streams(call, x, weight_for(SHAPE), 1e-6)
    us = harness.time_gpu(call, SHAPE, weight_for(SHAPE), 1e-6, 5, check=harness.timed_check)
    assert us > 0


def test_a_kernel_writing_past_its_output_is_caught(harness, tmp_path):
    cuda, defines = harness.static_check((TEMPLATE / "kernel.py").read_text())
    # One block too many: the last block normalizes the row after the last one.
    cuda = cuda.replace("const dim3 grid((unsigned)rows);", "const dim3 grid((unsigned)rows + 1);")
    call = harness.build_cuda(cuda, defines, tmp_path)
    # Caught as a write outside the output, or a changed input where the stray row
    # landed on one, or a CUDA fault: which depends on the allocator's layout. (Last in
    # this file: a fault leaves the process's CUDA context unusable.)
    with pytest.raises((harness.Invalid, RuntimeError)):
        harness.check_all(call, "cuda", torch.Generator().manual_seed(7))
        torch.cuda.synchronize()
