"""The kernel template: its protected harness (static and run-time checks, the summary
block) on the CPU path, and the lab run through the protocol, where every planted
hack is recorded invalid and an honest kernel is scored."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autolab.agents.lab_init import init_lab, templates
from autolab.agents.summary import parse_summary
from autolab.protocol.config import parse_config
from autolab.protocol.knobs import unified_diff
from autolab.protocol.lab import Lab

from ..conftest import run_cli

TEMPLATE = Path(__file__).resolve().parents[2] / "repo_template" / "kernel"
KERNEL_PY = (TEMPLATE / "kernel.py").read_text()
CPU_BODY = """    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out.copy_(xf * r * weight.float())
"""
CUDA_LAUNCH = "  cudaStream_t s = (cudaStream_t)stream;\n"
SUMMARY_KEYS = ["time_us", "bandwidth_gbs", "bandwidth_pct", "speedup_vs_torch",
                "speedup_vs_best_torch", "copy_gbs", "correct"]


@pytest.fixture(scope="module")
def harness():
    """harness.py loaded as a module (it imports torch; kernel.py is not loaded)."""
    spec = importlib.util.spec_from_file_location("kernel_lab_harness", TEMPLATE / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_cpu_body(body: str, prelude: str = "") -> str:
    """kernel.py with cpu_kernel's body replaced (and lines added after the imports)."""
    assert CPU_BODY in KERNEL_PY
    text = KERNEL_PY.replace(CPU_BODY, body)
    return text.replace("import torch\n", "import torch\n" + prelude, 1) if prelude else text


def with_cuda_launch(line: str) -> str:
    assert CUDA_LAUNCH in KERNEL_PY
    return KERNEL_PY.replace(CUDA_LAUNCH, line)


def rms(out, x, weight, eps):
    xf = x.float()
    out.copy_(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float())


# --- the template -----------------------------------------------------------


def test_kernel_template_is_shipped_and_its_contract_parses(tmp_path):
    assert "kernel" in templates()
    config = parse_config((TEMPLATE / "autolab.toml").read_text())
    assert (config.metric, config.direction, config.editable) == ("time_us", "min",
                                                                   ("kernel.py",))
    assert {"harness.py", "program.md", "autolab.toml"} <= set(config.protected)
    lab = init_lab(tmp_path / "lab", "kernel")
    assert (lab / "harness.py").read_bytes() == (TEMPLATE / "harness.py").read_bytes()


def test_static_check_accepts_the_template_and_reads_its_macros(harness):
    cuda, defines = harness.static_check(KERNEL_PY)
    assert 'extern "C" int kernel_launch(' in cuda
    assert defines == {"THREADS": 256}


PYTHON_HACKS = {
    "torch's rms_norm": with_cpu_body(
        "    out.copy_(torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps))\n"),
    "torch.rms_norm": with_cpu_body(
        "    out.copy_(torch.rms_norm(x, (x.shape[-1],), weight, eps))\n"),
    "the reference": with_cpu_body("    out.copy_(harness.reference(x, weight, eps))\n",
                                   "import harness\n"),
    "the harness via import from": with_cpu_body(CPU_BODY, "from harness import reference\n"),
    "an os import": with_cpu_body(CPU_BODY, "import os\n"),
    "a star import": with_cpu_body(CPU_BODY, "from torch import *\n"),
    "getattr": with_cpu_body("    getattr(torch, 'rms' + '_norm')\n" + CPU_BODY),
    "a private attribute": with_cpu_body("    torch._C\n" + CPU_BODY),
    "a dunder": with_cpu_body("    x.__class__\n" + CPU_BODY),
    "torch.ops": with_cpu_body("    torch.ops.aten\n" + CPU_BODY),
    "a side stream": with_cpu_body("    s = torch.cuda.Stream()\n" + CPU_BODY),
    "torch.compile": with_cpu_body("    torch.compile(torch.rsqrt)\n" + CPU_BODY),
    "eval": with_cpu_body("    eval('1')\n" + CPU_BODY),
    "open": with_cpu_body("    open('cache.pt')\n" + CPU_BODY),
    "a computed CUDA_SOURCE": KERNEL_PY.replace('CUDA_SOURCE = r"""', 'CUDA_SOURCE = "" + r"""'),
}
CUDA_HACKS = {
    "a torch header": "#include <torch/extension.h>\n" + CUDA_LAUNCH,
    "a local header": '#include "cache.h"\n' + CUDA_LAUNCH,
    "a side stream": "  cudaStream_t s; cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);\n",
    "the per-thread stream": "  cudaStream_t s = cudaStreamPerThread;\n",
    "a host callback": CUDA_LAUNCH + "  cudaLaunchHostFunc(s, 0, 0);\n",
    "a device sync": CUDA_LAUNCH + "  cudaDeviceSynchronize();\n",
    "an allocation": CUDA_LAUNCH + "  void* p; cudaMalloc(&p, 16);\n",
    "a thread": CUDA_LAUNCH + "  std::thread t;\n",
    "a file": CUDA_LAUNCH + '  fopen("x", "r");\n',
    "a clone": CUDA_LAUNCH + "  clone(0, 0, 0, 0);\n",
    "a load-time constructor": CUDA_LAUNCH.replace(
        "  cudaStream_t", "  __attribute__((constructor)) void f();\n  cudaStream_t"),
    "the driver API": CUDA_LAUNCH + "  cuStreamCreate(0, 0);\n",
}


@pytest.mark.parametrize("name", sorted(PYTHON_HACKS))
def test_static_check_rejects_python_hack(harness, name):
    with pytest.raises(harness.Invalid):
        harness.static_check(PYTHON_HACKS[name])


@pytest.mark.parametrize("name", sorted(CUDA_HACKS))
def test_static_check_rejects_cuda_hack(harness, name):
    with pytest.raises(harness.Invalid):
        harness.static_check(with_cuda_launch(CUDA_HACKS[name]))


def test_static_check_requires_kernel_launch(harness):
    with pytest.raises(harness.Invalid, match="kernel_launch"):
        harness.static_check(KERNEL_PY.replace('extern "C" int kernel_launch(',
                                               'extern "C" int other_launch('))


# --- run-time checks on the CPU path ------------------------------------------


def cached(out, x, weight, eps, _memo={}):  # noqa: B006 (the cache is the hack)
    key = (tuple(x.shape), x.dtype)
    if key not in _memo:
        rms(out, x, weight, eps)
        _memo[key] = out.clone()
    out.copy_(_memo[key])


def calls_reference_factory(harness):
    return lambda out, x, weight, eps: out.copy_(harness.reference(x, weight, eps))


RUNTIME_HACKS = {
    "calls torch's rms_norm": (
        lambda out, x, weight, eps: out.copy_(F.rms_norm(x, (x.shape[-1],), weight, eps)),
        "rms_norm"),
    "leaves the last column unwritten": (
        lambda out, x, weight, eps: rms(out[..., :-1], x[..., :-1] * 0 + x[..., :-1], weight[:-1],
                                        eps) if x.shape[-1] > 1 else None,
        "not finite"),
    "ignores the weight at width 128": (
        lambda out, x, weight, eps: rms(out, x, weight if x.shape[-1] != 128 else
                                        torch.ones_like(weight), eps),
        "tolerance"),
    "mutates its input": (
        lambda out, x, weight, eps: (rms(out, x, weight, eps), x.mul_(2)),
        "changed its input"),
    "writes past its output": (
        lambda out, x, weight, eps: (rms(out, x, weight, eps),
                                     out.view(-1).as_strided((out.numel() + 1,), (1,))[-1]
                                     .fill_(0)),
        "outside its output"),
}


@pytest.mark.parametrize("name", sorted(RUNTIME_HACKS))
def test_runtime_checks_reject_hack(harness, name):
    call, reason = RUNTIME_HACKS[name]
    with pytest.raises(harness.Invalid, match=reason):
        harness.check_all(call, "cpu", torch.Generator().manual_seed(1))


def test_runtime_checks_reject_a_call_of_the_reference(harness):
    with pytest.raises(harness.Invalid, match="reference"):
        harness.check_all(calls_reference_factory(harness), "cpu",
                          torch.Generator().manual_seed(1))


def test_a_candidate_that_raises_is_invalid_not_a_crash(tmp_path):
    lab = tmp_path / "lab"
    shutil.copytree(TEMPLATE, lab)
    (lab / "kernel.py").write_text(with_cpu_body("    out.copy_(x.view(3, -1))\n"))
    proc = subprocess.run([sys.executable, "harness.py"], cwd=lab, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "INVALID: the candidate raised RuntimeError" in proc.stdout
    summary = parse_summary(proc.stdout)
    assert summary.metrics == {"correct": 0.0}


def test_timed_calls_reject_a_cached_output(harness):
    # Every (shape, dtype) of the correctness sweep is new to the cache, so it passes
    # there; the timed calls repeat a shape with fresh inputs and see the stale copy.
    harness.check_all(cached, "cpu", torch.Generator().manual_seed(2))
    weight = torch.randn(4096).to(torch.bfloat16)
    with pytest.raises(harness.Invalid, match="timed call"):
        harness.time_cpu(cached, (8, 4096), weight, 1e-6, 3, check=harness.timed_check)


def test_a_replaced_torch_function_is_caught(harness, monkeypatch):
    before = harness._snapshot()
    monkeypatch.setattr(torch, "rsqrt", lambda t: t)
    with pytest.raises(harness.Invalid, match="torch.rsqrt was replaced"):
        harness._check_snapshot(before, "by the candidate")


def test_an_honest_kernel_passes_every_check(harness):
    harness.check_all(rms, "cpu", torch.Generator().manual_seed(3))
    weight = torch.randn(4096).to(torch.bfloat16)
    assert harness.time_cpu(rms, (8, 4096), weight, 1e-6, 3, check=harness.timed_check) > 0


def test_harness_run_on_cpu_prints_the_summary_block(tmp_path):
    lab = tmp_path / "lab"
    shutil.copytree(TEMPLATE, lab)
    proc = subprocess.run([sys.executable, "harness.py"], cwd=lab, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                       "AUTOLAB_KERNEL_ITERS": "5"})
    assert proc.returncode == 0, proc.stderr
    summary = parse_summary(proc.stdout)
    assert summary.found and list(summary.metrics)[:len(SUMMARY_KEYS) - 1] == SUMMARY_KEYS[:-1]
    assert summary.metrics["correct"] == 1 and summary.metrics["time_us"] > 0
    assert "correct on 11 shapes x 3 dtypes" in proc.stdout


# --- through the protocol -----------------------------------------------------

# In-place arithmetic on a copy: x.float() would be x itself for float32 inputs, and
# the harness rejects a kernel that scales its input in place.
GOOD = with_cpu_body("""    xf = x.to(torch.float32, copy=True)
    r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
    out.copy_(xf.mul_(r).mul_(weight.float()))
""")
PLANTED = {
    "calls torch's op": PYTHON_HACKS["torch's rms_norm"],
    "calls the reference": PYTHON_HACKS["the reference"],
    "returns a cached output": with_cpu_body(
        """    key = (tuple(x.shape), x.dtype)
    if key in CACHE:
        out.copy_(CACHE[key])
        return
""" + CPU_BODY + "    CACHE[key] = out.clone()\n", "CACHE = {}\n"),
    "leaves elements unwritten": with_cpu_body(CPU_BODY.replace(
        "out.copy_(xf * r * weight.float())",
        "out[..., 1:].copy_((xf * r * weight.float())[..., 1:])")),
    "right at one size, wrong at another": with_cpu_body(
        "    if x.shape[-1] == 128:\n        weight = torch.ones_like(weight)\n" + CPU_BODY),
    "mutates its input": with_cpu_body(CPU_BODY + "    x.zero_()\n"),
    "launches on a side stream": with_cuda_launch(CUDA_HACKS["a side stream"]),
}


@pytest.mark.slow
def test_kernel_lab_through_the_protocol_scores_a_kernel_and_rejects_every_hack(tmp_path):
    """Two workers drain a queue of one honest edit and the issue's planted hacks: the
    honest one is scored (time_us recorded, promoted over nothing), each hack invalid.
    (Two at once only because each run is mostly starting torch: one a core.)"""
    from concurrent.futures import ThreadPoolExecutor

    bare = tmp_path / "lab.git"
    init_lab(bare, "kernel", bare=True)
    edits = {"honest": GOOD, **PLANTED}

    def propose(n: int, name: str) -> str:
        patch = tmp_path / f"{n}.diff"
        patch.write_text(unified_diff("kernel.py", KERNEL_PY, edits[name]))
        proc = run_cli("propose", "--lab", str(bare), "--patch", str(patch), "--hypothesis",
                       name, "--json", check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])["experiment_id"]

    with ThreadPoolExecutor(4) as pool:  # proposals need no order: a few at once
        ids = dict(zip(edits, pool.map(propose, range(len(edits)), edits), strict=True))
        workers = list(pool.map(lambda n: run_cli(
            "worker", "--lab", str(bare), "--agent", f"cpu-worker-{n}", "--log-dir",
            str(tmp_path / "logs")), (1, 2)))
    for proc in workers:
        assert proc.returncode in (0, 3), proc.stderr  # 3: the other took the last one
    scores = {s["experiment_id"]: s for s in Lab.open(str(bare), "reader").read().state.scores}
    assert set(scores) == set(ids.values())
    honest = scores[ids["honest"]]
    assert honest["status"] == "ok", honest
    metrics = dict(honest["metrics"])
    assert honest["metric"] > 0 and metrics["correct"] == 1
    assert metrics["time_us"] == honest["metric"]
    for name in PLANTED:
        row = scores[ids[name]]
        assert row["status"] == "invalid", (name, row)
        assert row["metric"] is None and dict(row["metrics"]).get("correct") == 0, (name, row)
