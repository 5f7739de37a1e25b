"""The CPU implementation, in PyTorch operations, and the op registration.

The CPU variant of this kernel is this file alone (no compiled code); a CUDA variant
registers it beside its CUDA kernel, so its ops also take CPU tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SCHEMAS = {
    "silu_and_mul": "silu_and_mul(Tensor! out, Tensor input) -> ()",
    "silu_mul": "silu_mul(Tensor! out, Tensor gate, Tensor up) -> ()",
}


def silu_mul(out: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> None:
    """Write ``silu(gate) * up`` into ``out``, computed in float32, rounded once."""
    out.copy_(F.silu(gate.float()) * up.float())


def silu_and_mul(out: torch.Tensor, input: torch.Tensor) -> None:
    """Write ``silu(input[..., :d]) * input[..., d:]`` into ``out`` (``2d`` = last size)."""
    d = input.shape[-1] // 2
    silu_mul(out, input[..., :d], input[..., d:])


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
