"""The CPU implementation, in PyTorch operations, and the op registration.

The CPU variant of this kernel is this file alone (no compiled code); a CUDA variant
registers it beside its CUDA kernel, so its ops also take CPU tensors.
"""

from __future__ import annotations

import torch

SCHEMAS = {
    "rms_norm": "rms_norm(Tensor! out, Tensor input, Tensor weight, float eps) -> ()",
}


def rms_norm(out: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """Write ``input * rsqrt(mean(input**2, -1) + eps) * weight`` into ``out``, computed in
    float32 and rounded once to ``out``'s dtype."""
    x = input.float()
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    out.copy_(x * r * weight.float())


def _nothing(*args: object) -> None:
    """The shape function of an op that only writes its ``out`` argument."""


def register(namespace: str, *, define: bool) -> torch.library.Library:
    """Add the CPU (and meta) implementations to ``torch.ops.<namespace>``; with
    ``define``, declare the ops first (a CPU-only build has no compiled library to do
    it). Keep the returned library alive: dropping it unregisters the kernels."""
    lib = torch.library.Library(namespace, "DEF" if define else "IMPL")
    for name, schema in SCHEMAS.items():
        if define:
            lib.define(schema)
        lib.impl(name, globals()[name], "CPU")
        lib.impl(name, _nothing, "Meta")
    return lib
