"""Layers for ``kernels.kernelize``: stateless, with the forward of the layer replaced.

* ``SiluAndMul``: ``forward(x)`` = ``silu(x[..., :d]) * x[..., d:]`` (the hub's
  ``SiluAndMul`` layer name).
* ``GatedMLP``: the forward of a gated MLP holding ``gate_proj``, ``up_proj``,
  ``down_proj`` and ``act_fn`` (``Qwen3MLP``, ``LlamaMLP``): the two projections, then
  this kernel instead of ``act_fn(gate) * up`` (two elementwise passes and a temporary),
  then ``down_proj``. transformers does not mark those MLPs as hub layers; give the
  class a ``kernel_layer_name`` (``kernels.replace_kernel_forward_from_hub``) first.
"""

from __future__ import annotations

import torch
from torch import nn

from ._ops import ops


def _kernel_takes(*tensors: torch.Tensor) -> bool:
    first = tensors[0]
    return all(t.dtype == first.dtype and t.device == first.device for t in tensors) and (
        first.dtype in (torch.float32, torch.float16, torch.bfloat16))


class SiluAndMul(nn.Module):
    """``silu(x[..., :d]) * x[..., d:]`` for ``x`` of last size ``2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((*x.shape[:-1], x.shape[-1] // 2))
        ops.silu_and_mul(out, x)
        return out


class GatedMLP(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))`` with the gating in this kernel;
    the module's own ``act_fn`` is used when it is not SiLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        if type(self.act_fn).__name__ not in ("SiLU", "SiLUActivation") or not _kernel_takes(
                gate, up):
            return self.down_proj(self.act_fn(gate) * up)
        out = torch.empty_like(gate)
        ops.silu_mul(out, gate, up)
        return self.down_proj(out)


__all__ = ["GatedMLP", "SiluAndMul"]
