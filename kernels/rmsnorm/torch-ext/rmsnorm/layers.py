"""Layers for ``kernels.kernelize``: stateless, with the forward of the layer replaced.

``RMSNorm`` replaces the forward of RMSNorm layers that hold ``weight`` and
``variance_epsilon`` (``LlamaRMSNorm``, ``Qwen3RMSNorm`` and their kin in
``transformers``, registered there under the hub layer name ``"RMSNorm"``).
"""

from __future__ import annotations

import torch
from torch import nn

from ._ops import ops


def _eager(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The forward of transformers' RMSNorm layers, for inputs the kernel does not take."""
    dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


class RMSNorm(nn.Module):
    """RMSNorm forward through this kernel; falls back to the eager computation when
    ``weight`` and the input differ in dtype or device, or the input is not contiguous."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        eps = float(getattr(self, "variance_epsilon", getattr(self, "eps", 1e-6)))
        if (hidden_states.dtype != weight.dtype or hidden_states.device != weight.device
                or not hidden_states.is_contiguous() or not weight.is_contiguous()):
            return _eager(hidden_states, weight, eps)
        out = torch.empty_like(hidden_states)
        ops.rms_norm(out, hidden_states, weight, eps)
        return out


__all__ = ["RMSNorm"]
