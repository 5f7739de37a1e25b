"""RMSNorm: ``rms_norm`` and the ``layers.RMSNorm`` layer for ``kernels.kernelize``.

``rms_norm(x, weight, eps)`` is ``x * rsqrt(mean(x**2, -1) + eps) * weight`` in ``x``'s
dtype, accumulated in float32 and rounded once. CUDA: one pass over ``x`` with 16-byte
vector accesses (bf16, fp16, fp32; any hidden size). CPU: PyTorch operations.
"""

from __future__ import annotations

import torch

from . import layers
from ._ops import add_op_namespace_prefix, ops


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of ``x`` over its last dimension; ``x``, ``weight`` (1-D) and ``out`` share
    one dtype and are contiguous. Returns ``out`` (a new tensor when not given)."""
    if out is None:
        out = torch.empty_like(x)
    ops.rms_norm(out, x, weight, eps)
    return out


__all__ = ["add_op_namespace_prefix", "layers", "ops", "rms_norm"]
