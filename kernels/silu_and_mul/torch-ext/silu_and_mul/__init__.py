"""SiLU-and-mul: ``silu_and_mul``, ``silu_mul`` and layers for ``kernels.kernelize``.

``silu_and_mul(x)`` is ``silu(x[..., :d]) * x[..., d:]`` for ``x`` of last size ``2d``
(the gated activation of Llama/Qwen MLPs with fused gate and up projections);
``silu_mul(gate, up)`` is ``silu(gate) * up`` for the two halves held apart. CUDA: one
pass with 16-byte vector accesses (bf16, fp16, fp32); CPU: PyTorch operations.
"""

from __future__ import annotations

import torch

from . import layers
from ._ops import add_op_namespace_prefix, ops


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]``; returns ``out`` (new when not given)."""
    if out is None:
        out = x.new_empty((*x.shape[:-1], x.shape[-1] // 2))
    ops.silu_and_mul(out, x)
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(gate) * up``; returns ``out`` (new when not given)."""
    if out is None:
        out = torch.empty_like(gate)
    ops.silu_mul(out, gate, up)
    return out


__all__ = ["add_op_namespace_prefix", "layers", "ops", "silu_and_mul", "silu_mul"]
