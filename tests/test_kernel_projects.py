"""The kernel projects of kernels/: built locally in the kernel-builder output layout,
loaded offline by the Hugging Face `kernels` library, swapped into layers by
`kernelize`. CPU only (CI has no GPU): the CPU variant is Python, its ops registered
with torch.library."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "kernels"

kernels = pytest.importorskip("kernels")


def _build_module():
    """kernels/build.py as a module (kernels/ is not a package, on purpose)."""
    spec = importlib.util.spec_from_file_location("kernel_build", KERNELS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both projects' CPU variants, built once through build.py's command line into
    <tmp>/<project>/build/<variant>; maps project -> the repo path kernels loads."""
    build = _build_module()
    repos = {}
    for project in ("rmsnorm", "silu_and_mul"):
        out = tmp_path_factory.mktemp(project)
        assert build.main([project, "--backend", "cpu", "--out", str(out)]) == 0
        repos[project] = out
    return repos


def variant_of(repo: Path) -> Path:
    (variant,) = (repo / "build").iterdir()
    return variant


def rms_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xd = x.double()
    return xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def test_kernels_dir_has_no_top_level_package():
    # A kernels/__init__.py would make this directory shadow the `kernels` library for
    # anything run from the repository root.
    assert not (KERNELS / "__init__.py").exists()
    assert Path(kernels.__file__).resolve().parent != KERNELS


def test_build_writes_the_variant_and_metadata_the_kernels_library_reads(built):
    variant = variant_of(built["rmsnorm"])
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    assert variant.name.startswith(f"torch{major}{minor}-cxx")
    assert "-cpu-" in variant.name and variant.name.endswith("-linux")
    meta = json.loads((variant / "metadata.json").read_text())
    assert meta["name"] == "rmsnorm" and meta["version"] == 1 and meta["license"]
    assert meta["backend"] == {"type": "cpu"} and meta["python-depends"] == []
    assert meta["id"].startswith("_rmsnorm_")
    assert f'NAMESPACE = {meta["id"]!r}' in (variant / "_ops.py").read_text()
    assert {"__init__.py", "layers.py", "_cpu.py", "_ops.py"} <= {
        p.name for p in variant.iterdir()}
    parsed = kernels.Metadata.read_from_file(variant / "metadata.json")
    assert parsed.id == meta["id"]


def test_get_local_kernel_loads_the_cpu_variant_and_its_ops_compute_rmsnorm(built):
    variant = variant_of(built["rmsnorm"])
    module = kernels.get_local_kernel(built["rmsnorm"])
    meta = json.loads((variant / "metadata.json").read_text())
    # The module is imported under the metadata id, which is also the op namespace.
    assert module.__name__ == meta["id"]
    assert module.ops is getattr(torch.ops, meta["id"])
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(5, 3, 128, dtype=dtype)
        w = (1 + 0.5 * torch.randn(128)).to(dtype)
        out = module.rms_norm(x, w, 1e-5)
        assert out.dtype == dtype and out.shape == x.shape
        rtol = 8e-3 if dtype == torch.bfloat16 else 1e-5
        assert torch.allclose(out.double(), rms_ref(x, w, 1e-5), rtol=rtol, atol=rtol / 10)


def test_kernelize_swaps_the_forward_of_rmsnorm_and_gated_mlp_layers(built):
    norm_repo, mlp_repo = built["rmsnorm"], built["silu_and_mul"]

    @kernels.use_kernel_forward_from_hub("RMSNorm")
    class Norm(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(1 + 0.5 * torch.randn(n))
            self.variance_epsilon = 1e-6

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return torch.full_like(hidden_states, -7.0)  # wrong on purpose: must be swapped

    @kernels.use_kernel_forward_from_hub("GatedMLP")
    class MLP(nn.Module):
        def __init__(self, n: int, hidden: int) -> None:
            super().__init__()
            self.gate_proj = nn.Linear(n, hidden, bias=False)
            self.up_proj = nn.Linear(n, hidden, bias=False)
            self.down_proj = nn.Linear(hidden, n, bias=False)
            self.act_fn = nn.SiLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, -7.0)

    model = nn.Sequential(Norm(64), MLP(64, 96))
    x = torch.randn(4, 64)
    assert bool((model(x) == -7.0).all())
    mapping = {
        "RMSNorm": {"cpu": kernels.LocalLayerRepository(repo_path=norm_repo,
                                                        layer_name="RMSNorm")},
        "GatedMLP": {"cpu": kernels.LocalLayerRepository(repo_path=mlp_repo,
                                                         layer_name="GatedMLP")},
    }
    with kernels.use_kernel_mapping(mapping):
        model = kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")
    norm, mlp = model[0], model[1]
    with torch.no_grad():
        got = model(x)
        normed = rms_ref(x, norm.weight, 1e-6).float()
        want = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(normed)) * mlp.up_proj(normed))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    # The layers stay the user's modules (stateless kernel layers, parameters kept).
    assert isinstance(norm, Norm) and isinstance(mlp, MLP)


def test_silu_and_mul_cpu_variant_matches_float64(built):
    module = kernels.get_local_kernel(built["silu_and_mul"])
    x = torch.randn(3, 7, 2 * 40, dtype=torch.bfloat16) * 4
    out = module.silu_and_mul(x)
    g, u = x[..., :40].double(), x[..., 40:].double()
    ref = g / (1 + torch.exp(-g)) * u
    assert out.shape == (3, 7, 40)
    assert torch.allclose(out.double(), ref, rtol=8e-3, atol=1e-3)
    out2 = module.silu_mul(x[..., :40].contiguous(), x[..., 40:].contiguous())
    assert torch.equal(out, out2)
