#!/usr/bin/env python3
"""The protected harness of the kernel lab: build, check, time, summarize.

    python harness.py

1. Static checks of kernel.py, before anything of it runs: its Python may import only
   torch and math and may not reach PyTorch's own normalization ops, the op registry,
   streams, compilers, files or introspection; its CUDA source may include only CUDA's
   own headers and may not create streams, synchronize, allocate, start threads or
   touch files.
2. Build: on a GPU, CUDA_SOURCE is compiled with nvcc for that GPU (sm_90a on Hopper)
   and its `kernel_launch` is called through ctypes on PyTorch's current stream; on a
   CPU, kernel.py is imported and its `cpu_kernel` is called.
3. Correctness, on fresh random inputs every run: shapes with odd sizes, hidden sizes
   4096 and 128 and more, bf16, fp16 and fp32, weights far from one, a random eps.
   Each output is poisoned (NaN) inside guard zones (a sentinel) before the call;
   afterwards every element must be finite and within the dtype's tolerance of a
   float64 reference computed only after the call, the guard zones untouched and the
   inputs unchanged. During each call tripwires record any call of the reference or of
   PyTorch's normalization functions, and the harness's own modules are compared with
   a snapshot taken before the candidate was loaded.
4. Timing. GPU: CUDA events around each call, a sleep kernel queued before the start
   event so that launch latency is not timed, inputs rotated over several buffers and
   refilled with new random data before every call, L2 flushed, the output checked in
   stream order right after the end event (work left running on another stream shows
   as unwritten output), one call profiled to see that every kernel ran on the
   harness's stream; median over many calls after warm-up. CPU: a perf_counter timer
   around each call, one thread. The same loop times a device copy of the same bytes
   (the bandwidth ceiling), the eager PyTorch computation, F.rms_norm and, on a GPU,
   torch.compile of the eager computation.
5. Summary block: time_us, bandwidth_gbs, bandwidth_pct, speedup_vs_torch,
   speedup_vs_best_torch and the baselines' times. A candidate that fails any check
   prints `correct: 0` and no time_us: the lab records it as invalid, never as fast.

Environment: AUTOLAB_KERNEL_DEVICE=cpu forces the CPU path; AUTOLAB_KERNEL_COMPILE=0|1
leaves out or adds the torch.compile baseline (default: on a GPU only);
AUTOLAB_KERNEL_ITERS sets the timed calls per contender.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL = HERE / "kernel.py"


class Invalid(Exception):
    """The candidate is rejected; the message says why."""


# --------------------------------------------------------------------------- static


ALLOWED_IMPORTS = {"torch", "math", "__future__"}
# Names and attributes kernel.py may not use: builtins that reach other code or data,
# PyTorch's own normalization ops, the op registry, streams, compilers and loaders.
BANNED_NAMES = {"eval", "exec", "compile", "open", "getattr", "setattr", "delattr", "globals",
                "locals", "vars", "breakpoint", "input", "memoryview", "harness", "reference"}
BANNED_ATTRS = {
    "rms_norm", "RMSNorm", "layer_norm", "LayerNorm", "group_norm", "batch_norm",
    "instance_norm", "normalize", "functional", "nn", "ops", "library", "cuda", "Stream",
    "stream", "current_stream", "set_stream", "ExternalStream", "Event", "synchronize",
    "compile", "jit", "fx", "utils", "cpp_extension", "load_inline", "hub", "load", "save",
    "backends", "profiler", "distributed", "multiprocessing", "classes", "from_file",
    "frombuffer", "storage", "untyped_storage", "data_ptr", "numpy", "set_", "harness",
    "reference",
}
ALLOWED_INCLUDES = re.compile(
    r"(cuda_runtime\.h|cuda_runtime_api\.h|cuda_bf16\.h|cuda_fp16\.h|cuda_fp8\.h|"
    r"cuda_pipeline\.h|cuda_awbarrier\.h|mma\.h|stdint\.h|cstdint|stddef\.h|cstddef|"
    r"climits|cfloat|math\.h|cmath|type_traits|utility|cooperative_groups\.h|"
    r"cooperative_groups/[a-z_]+\.h|cub/[a-z_/]+\.cuh|cuda/[a-z_/]+)")
BANNED_CUDA = [
    r"cudaStream(Create|Destroy|PerThread|Legacy|Synchronize|Query|BeginCapture|AddCallback)",
    r"cudaLaunchHostFunc", r"cudaGraph", r"cudaEvent", r"cudaDeviceSynchronize",
    r"cudaDeviceReset", r"cudaSetDevice", r"cudaMalloc", r"cudaFree", r"cudaHostAlloc",
    r"cudaMemcpy", r"cudaMemset", r"cudaHostRegister", r"cudaIpc", r"__managed__",
    r"\bmalloc\b", r"\bcalloc\b", r"\brealloc\b", r"\bfree\s*\(", r"\bnew\b", r"\bdelete\b",
    r"std::thread", r"std::async", r"pthread", r"\bfork\b", r"\bsystem\s*\(", r"popen",
    r"dlopen", r"dlsym", r"fopen", r"getenv", r"\bFILE\b", r"\bexit\s*\(", r"\babort\s*\(",
    # Host code can declare any libc or driver function itself: the ways to start
    # threads, run programs, touch files or memory maps, and run code at load time.
    r"\bclone\b", r"syscall", r"\bexec[lv]", r"\bmmap\b", r"\bioctl\b", r"\bopen\s*\(",
    r"\bread\s*\(", r"\bwrite\s*\(", r"\bu?sleep\s*\(", r"nanosleep", r"constructor",
    r"destructor", r"\bcu[A-Z][A-Za-z]+\s*\(",
]


def static_check(source: str) -> tuple[str, dict[str, int]]:
    """Check kernel.py's text; return (CUDA source, -D macros) or raise Invalid.

    CUDA_SOURCE must be one plain string literal, and the macros are the module-level
    UPPERCASE integer constants: both are read from the syntax tree, so nothing of
    kernel.py runs before it passes.
    """
    try:
        tree = ast.parse(source, filename="kernel.py")
    except SyntaxError as exc:
        raise Invalid(f"kernel.py does not parse: {exc}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in ALLOWED_IMPORTS or "." in alias.name:
                    raise Invalid(f"kernel.py line {node.lineno}: import {alias.name} "
                                  f"(only {', '.join(sorted(ALLOWED_IMPORTS))})")
        elif isinstance(node, ast.ImportFrom):
            if node.module not in ALLOWED_IMPORTS or node.level:
                raise Invalid(f"kernel.py line {node.lineno}: from {node.module} import "
                              f"(only {', '.join(sorted(ALLOWED_IMPORTS))})")
            for alias in node.names:
                if alias.name == "*" or alias.name in BANNED_ATTRS or (
                        alias.name.startswith("_") and node.module != "__future__"):
                    raise Invalid(f"kernel.py line {node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") or node.attr in BANNED_ATTRS:
                raise Invalid(f"kernel.py line {node.lineno}: uses .{node.attr}")
        elif isinstance(node, ast.Name) and (node.id in BANNED_NAMES
                                             or node.id.startswith("__")):
            raise Invalid(f"kernel.py line {node.lineno}: uses {node.id}")
    cuda, defines = None, {}
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target = stmt.targets[0]
        if not isinstance(target, ast.Name):
            continue
        value = stmt.value
        if target.id == "CUDA_SOURCE":
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                raise Invalid("kernel.py: CUDA_SOURCE must be one string literal")
            cuda = value.value
        elif (target.id.isupper() and isinstance(value, ast.Constant)
              and type(value.value) is int):
            defines[target.id] = value.value
    if cuda is None:
        raise Invalid("kernel.py: no CUDA_SOURCE string")
    check_cuda(cuda)
    return cuda, defines


def check_cuda(cuda: str) -> None:
    """Reject CUDA source that includes more than CUDA's headers, or that creates
    streams, synchronizes, allocates, starts threads or touches files."""
    for line in cuda.splitlines():
        if re.match(r"\s*#\s*(include|import)", line):
            match = re.fullmatch(r"\s*#\s*include\s*[<\"]([^>\"]+)[>\"]\s*(//.*)?", line)
            if not match or not ALLOWED_INCLUDES.fullmatch(match.group(1)):
                raise Invalid(f"CUDA_SOURCE: {line.strip()} is not allowed")
    for pattern in BANNED_CUDA:
        found = re.search(pattern, cuda)
        if found:
            raise Invalid(f"CUDA_SOURCE uses {found.group(0)!r}")
    if not re.search(r'extern\s+"C"[^;{]*\bkernel_launch\s*\(', cuda):
        raise Invalid('CUDA_SOURCE has no extern "C" kernel_launch')


def _print_invalid(reason: str) -> None:
    print(f"INVALID: {reason}")
    print("---")
    print("correct: 0")


if __name__ == "__main__":
    # The static verdict first, before the seconds PyTorch takes to import.
    try:
        static_check(KERNEL.read_text())
    except Invalid as exc:
        _print_invalid(str(exc))
        sys.exit(0)


# ------------------------------------------------------------------------ run time

# Everything the harness computes with is bound here, before the candidate loads;
# torch._dynamo rebinds torch.manual_seed & co. when imported: before the snapshot.
import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401
import torch.nn.functional as F  # noqa: E402
import torch.profiler  # noqa: E402,F401
from torch.overrides import TorchFunctionMode  # noqa: E402

_empty, _full, _randn, _equal = torch.empty, torch.full, torch.randn, torch.equal
_rsqrt = torch.rsqrt
DTYPES = {torch.bfloat16: 2, torch.float16: 1, torch.float32: 0}
# Per dtype: (rtol, atol) against float64. bf16 and fp16 allow two roundings (the eager
# computation rounds twice); float32 allows float32 accumulation.
TOLERANCE = {torch.bfloat16: (8e-3, 8e-4), torch.float16: (1.5e-3, 1.5e-4),
             torch.float32: (2e-5, 2e-6)}
SHAPES = [(1, 4096), (7, 128), (333, 4096), (64, 1001), (5, 4100), (3, 12), (2, 3, 32, 128),
          (1000, 128), (17, 8192), (9, 1), (2, 5120)]
GPU_SHAPE, CPU_SHAPE = (16384, 4096), (256, 4096)
GUARD = 64  # guard elements on each side of an output: 128 bytes or more
SENTINEL = 12345.0
FORBIDDEN_FUNCS = {"rms_norm", "layer_norm", "group_norm", "batch_norm", "instance_norm",
                   "native_layer_norm", "_fused_rms_norm", "normalize", "local_response_norm"}
SLEEP_CYCLES = 400_000  # ~200 us of GPU time queued ahead of each timed call


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float64: the ground truth. Never callable from inside the candidate."""
    if _Watch.active:
        _Watch.violations.append("the candidate called the reference")
    xd, wd = x.double(), weight.double()
    return xd * _rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * wd


def eager(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm forward (Llama, Qwen3): the eager PyTorch baseline."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


class _Watch(TorchFunctionMode):
    """Active while the candidate runs: records calls of PyTorch's normalization
    functions (from Python, on any device) and of the reference."""

    active = False
    violations: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in FORBIDDEN_FUNCS:
            _Watch.violations.append(f"the candidate called torch's {name}")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        _Watch.violations = []  # per call: verify reads what this call did
        _Watch.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        _Watch.active = False
        return super().__exit__(*exc)


def _snapshot() -> dict[str, dict[str, int]]:
    """Identity of every callable in the modules the harness relies on."""
    spaces = {"torch": vars(torch), "F": vars(F), "Tensor": vars(torch.Tensor),
              "time": vars(time), "statistics": vars(statistics), "math": vars(math),
              "builtins": vars(builtins), "ctypes": vars(ctypes), "harness": globals()}
    return {name: {k: id(v) for k, v in space.items() if callable(v)}
            for name, space in spaces.items()}


def _check_snapshot(before: dict[str, dict[str, int]], when: str) -> None:
    after = _snapshot()
    for space, items in before.items():
        for key, ident in items.items():
            if after[space].get(key) != ident:
                raise Invalid(f"{space}.{key} was replaced {when}")


# ------------------------------------------------------------------------ building


def _nvcc() -> str:
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", ""),
                                                         "bin", "nvcc"),
                      "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise Invalid("no nvcc to build the CUDA kernel (set CUDA_HOME)")


def build_cuda(cuda: str, defines: dict[str, int], workdir: Path):
    """Compile the CUDA source for this GPU; return its kernel_launch (ctypes)."""
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}{'a' if major >= 9 else ''}"
    src = workdir / "kernel.cu"
    src.write_text(cuda)
    lib = workdir / "kernel.so"
    cmd = [_nvcc(), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-o", str(lib), str(src),
           *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        print("\n".join(lines[-30:]), file=sys.stderr)
        raise Invalid(f"nvcc failed: {lines[-1] if lines else proc.returncode}")
    print(f"built sm_{arch} in {time.perf_counter() - started:.1f} s "
          f"({', '.join(f'{k}={v}' for k, v in sorted(defines.items())) or 'no macros'})")
    fn = ctypes.CDLL(str(lib)).kernel_launch
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong,
                   ctypes.c_longlong, ctypes.c_float, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int

    def call(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
        cols = x.shape[-1]
        rows = x.numel() // cols if cols else 0
        rc = fn(out.data_ptr(), x.data_ptr(), weight.data_ptr(), rows, cols, eps,
                DTYPES[x.dtype], torch.cuda.current_stream().cuda_stream)
        if rc != 0:
            raise Invalid(f"kernel_launch returned {rc} for {tuple(x.shape)} {x.dtype}")

    return call


def load_cpu():
    """Import kernel.py (it passed the static checks) and return its cpu_kernel."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kernel", KERNEL)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the candidate's own error
        raise Invalid(f"importing kernel.py failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, "cpu_kernel", None)
    if not callable(fn):
        raise Invalid("kernel.py has no cpu_kernel")
    return fn


def as_candidate(fn):
    """fn, with any exception it raises turned into Invalid: a candidate that fails is
    invalid, not a crash of the harness."""

    def call(*args):
        try:
            return fn(*args)
        except Invalid:
            raise
        except Exception as exc:
            raise Invalid(f"the candidate raised {type(exc).__name__}: {exc}") from None

    return call


# --------------------------------------------------------------------- correctness


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of t, so that comparisons see NaN payloads and signed zeros."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def guarded_output(shape: tuple[int, ...], dtype: torch.dtype, device: str):
    """(buffer, out): out is NaN, a view inside buffer between two sentinel zones."""
    numel = math.prod(shape)
    buf = _full((numel + 2 * GUARD,), SENTINEL, dtype=dtype, device=device)
    out = buf[GUARD:GUARD + numel].view(shape)
    out.fill_(float("nan"))
    return buf, out


def verify(call, x: torch.Tensor, weight: torch.Tensor, eps: float, what: str) -> float:
    """Run the candidate once on (x, weight, eps) with every check; return the worst
    error in units of the tolerance (<= 1)."""
    buf, out = guarded_output(tuple(x.shape), x.dtype, str(x.device))
    x_bits, w_bits = _bits(x).clone(), _bits(weight).clone()
    sentinel = _bits(_full((1,), SENTINEL, dtype=x.dtype, device=x.device))
    with _Watch():
        call(out, x, weight, eps)
    if x.is_cuda:
        torch.cuda.synchronize()
    if _Watch.violations:
        raise Invalid(f"{what}: {_Watch.violations[0]}")
    if not (_equal(_bits(x), x_bits) and _equal(_bits(weight), w_bits)):
        raise Invalid(f"{what}: the candidate changed its input")
    guards = torch.cat([_bits(buf[:GUARD]), _bits(buf[-GUARD:])])
    if not bool((guards == sentinel).all()):
        raise Invalid(f"{what}: the candidate wrote outside its output")
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise Invalid(f"{what}: {bad} of {out.numel()} output elements are not finite "
                      f"(unwritten elements stay NaN)")
    ref = reference(x, weight, eps)
    rtol, atol = TOLERANCE[x.dtype]
    err = ((out.double() - ref).abs() / (atol + rtol * ref.abs())).max().item()
    if not err <= 1.0:
        raise Invalid(f"{what}: error {err:.3g} x the {x.dtype} tolerance "
                      f"(rtol {rtol:g}, atol {atol:g})")
    return err


def random_case(shape, dtype, device, gen):
    """Fresh inputs: a random scale, weights far from one, a random eps."""
    scale = [1.0, 0.01, 7.0][int(torch.randint(3, (1,), generator=gen))]
    x = (_randn(shape, generator=gen) * scale).to(dtype=dtype, device=device)
    weight = (1 + 0.5 * _randn(shape[-1], generator=gen)).to(dtype=dtype, device=device)
    eps = 10 ** (-6 + 2 * float(torch.rand((1,), generator=gen)))
    return x, weight, eps


def check_all(call, device: str, gen) -> None:
    worst = 0.0
    for dtype in DTYPES:
        for shape in SHAPES:
            x, weight, eps = random_case(shape, dtype, device, gen)
            worst = max(worst, verify(call, x, weight, eps, f"{tuple(shape)} {dtype}"))
    print(f"correct on {len(SHAPES)} shapes x {len(DTYPES)} dtypes "
          f"(worst error {worst:.2f} x tolerance)")


def check_streams(call, x, weight, eps) -> None:
    """Profile one call: every kernel, copy and fill must run on the harness's stream."""
    from torch.profiler import ProfilerActivity, profile

    marker = torch.zeros(1, device=x.device)
    out = torch.empty_like(x)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        marker.add_(1)
        call(out, x, weight, eps)
        marker.add_(1)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    streams = set()
    for ev in trace.get("traceEvents", []):
        if ev.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            stream = (ev.get("args") or {}).get("stream")
            streams.add(stream if stream is not None else ev.get("tid"))
    if not streams:
        print("stream check: the profiler saw no GPU activity (skipped)")
    elif len(streams) > 1:
        raise Invalid(f"the candidate ran work on another stream (streams {sorted(streams)})")
    else:
        print(f"stream check: all GPU work on stream {streams.pop()}")


# -------------------------------------------------------------------------- timing


def time_gpu(fn, shape, weight, eps, iters: int, check=None) -> float:
    """Median microseconds of fn(out, x, weight, eps) over fresh inputs (see module
    docstring); with `check`, the output of every call is verified in stream order."""
    sets = [(_empty(shape, dtype=weight.dtype, device="cuda"),
             _empty(shape, dtype=weight.dtype, device="cuda")) for _ in range(3)]
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = _empty(max(4 * l2, 1 << 26) // 4, dtype=torch.float32, device="cuda")
    flush.fill_(1.0)
    snap = _empty(shape, dtype=weight.dtype, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    warmup, times = 5, []
    for i in range(warmup + iters):
        out, x = sets[i % len(sets)]
        x.normal_()
        out.fill_(float("nan"))
        x_bits = _bits(x).clone() if check else None
        flush.sum()  # a read of 4x L2: evicts the refill's and the poison's dirty lines
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        result = fn(out, x, weight, eps)
        end.record()
        if check:
            snap.copy_(out)  # in stream order: work deferred elsewhere is not in it yet
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) * 1000.0)
        if check:
            check(snap, x, weight, eps, x_bits)
        del result
    return statistics.median(times)


def time_cpu(fn, shape, weight, eps, iters: int, check=None) -> float:
    sets = [(_empty(shape, dtype=weight.dtype), _empty(shape, dtype=weight.dtype))
            for _ in range(3)]
    warmup, times = 3, []
    for i in range(warmup + iters):
        out, x = sets[i % len(sets)]
        x.normal_()
        out.fill_(float("nan"))
        x_bits = _bits(x).clone() if check else None
        t0 = time.perf_counter_ns()
        fn(out, x, weight, eps)
        elapsed = time.perf_counter_ns() - t0
        if i >= warmup:
            times.append(elapsed / 1000.0)
        if check:
            check(out, x, weight, eps, x_bits)
    return statistics.median(times)


def timed_check(out, x, weight, eps, x_bits) -> None:
    """Verify one timed call: every element written, right, and the input unchanged."""
    if not _equal(_bits(x), x_bits):
        raise Invalid("timed call: the candidate changed its input")
    if not bool(torch.isfinite(out).all()):
        raise Invalid("timed call: output not complete when the call's timing ended "
                      "(unwritten, or computed on another stream or after returning)")
    xf = x.float()
    ref = xf * _rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    rtol, atol = TOLERANCE[x.dtype]
    err = ((out.float() - ref).abs() / (atol + rtol * ref.abs())).max().item()
    if not err <= 1.5:  # a float32 reference here: a little slack over verify's float64
        raise Invalid(f"timed call: error {err:.3g} x tolerance")


# ---------------------------------------------------------------------------- main


def evaluate() -> dict[str, float]:
    """Everything above, in order; returns the summary's numbers or raises Invalid."""
    cuda, defines = static_check(KERNEL.read_text())
    want = os.environ.get("AUTOLAB_KERNEL_DEVICE", "").strip().lower()
    device = "cuda" if torch.cuda.is_available() and want != "cpu" else "cpu"
    iters = int(os.environ.get("AUTOLAB_KERNEL_ITERS", "50" if device == "cuda" else "20"))
    with_compile = os.environ.get("AUTOLAB_KERNEL_COMPILE",
                                  "1" if device == "cuda" else "0") == "1"
    seed = int.from_bytes(os.urandom(8), "little")
    gen = torch.Generator().manual_seed(seed)
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, seed {seed}, kernel.py sha256 "
          f"{hashlib.sha256(KERNEL.read_bytes()).hexdigest()[:12]}")
    before = _snapshot()
    workdir = Path(tempfile.mkdtemp(prefix="kernel-lab-"))
    try:
        if device == "cuda":
            call = build_cuda(cuda, defines, workdir)
        else:
            torch.set_num_threads(1)
            call = as_candidate(load_cpu())
        _check_snapshot(before, "while kernel.py loaded")
        check_all(call, device, gen)
        _check_snapshot(before, "by the candidate")
        shape = GPU_SHAPE if device == "cuda" else CPU_SHAPE
        weight = (1 + 0.5 * _randn(shape[-1], generator=gen)).to(torch.bfloat16).to(device)
        eps = 1e-6
        timer = time_gpu if device == "cuda" else time_cpu
        if device == "cuda":
            x = _randn(shape, generator=gen).to(torch.bfloat16).to(device)
            check_streams(call, x, weight, eps)
            del x
        cols = shape[-1]
        results = {"time_us": timer(call, shape, weight, eps, iters, check=timed_check)}
        _check_snapshot(before, "by the candidate")
        results["copy_us"] = timer(lambda out, x, w, e: out.copy_(x), shape, weight, eps, iters)
        results["eager_us"] = timer(lambda out, x, w, e: eager(x, w, e), shape, weight, eps,
                                    iters)
        results["rms_norm_us"] = timer(lambda out, x, w, e: F.rms_norm(x, (cols,), w, e),
                                       shape, weight, eps, iters)
        if with_compile:
            compiled = torch.compile(eager)
            results["compile_us"] = timer(lambda out, x, w, e: compiled(x, w, e), shape,
                                          weight, eps, iters)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elem = 2  # bf16
    numel = math.prod(shape)
    moved = 2 * numel * elem + cols * elem
    copy_gbs = 2 * numel * elem / results["copy_us"] / 1e3
    best_torch = min(results["rms_norm_us"], results.get("compile_us", math.inf))
    summary = {
        "time_us": results["time_us"],
        "bandwidth_gbs": moved / results["time_us"] / 1e3,
        "bandwidth_pct": 100.0 * moved / results["time_us"] / 1e3 / copy_gbs,
        "speedup_vs_torch": results["eager_us"] / results["time_us"],
        "speedup_vs_best_torch": best_torch / results["time_us"],
        "copy_gbs": copy_gbs,
        "floor_us": moved / copy_gbs / 1e3,
        **{k: v for k, v in results.items() if k != "time_us"},
        "rows": shape[0],
        "cols": cols,
        "correct": 1,
    }
    return summary


def main() -> int:
    try:
        summary = evaluate()
    except Invalid as exc:
        _print_invalid(str(exc))
        return 0
    except torch.cuda.OutOfMemoryError as exc:
        _print_invalid(f"out of GPU memory: {str(exc).splitlines()[0]}")
        return 0
    except RuntimeError as exc:  # a CUDA fault inside the candidate's kernel
        if "CUDA" not in str(exc) and "cuda" not in str(exc):
            raise
        _print_invalid(f"CUDA error: {str(exc).splitlines()[0]}")
        return 0
    print("---")
    for key, value in summary.items():
        print(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
