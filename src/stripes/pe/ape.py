"""APE: Vaswani sinusoidal table added after the input projection (paper-spec §3.5).

pos (B,T,1) -> (B,T,d_model). The table is evaluated at the given positions on the fly, which
equals the stored table (base 10000) at integer positions and needs no maximum length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import PositionalEncoding


def sinusoid(pos: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """pos (...,) -> (..., dim): sin at even, cos at odd index, frequency base^(-2i/dim)."""
    i = torch.arange(0, dim, 2, device=pos.device, dtype=pos.dtype)
    ang = pos.unsqueeze(-1) * base ** (-i / dim)
    out = torch.empty(*pos.shape, dim, device=pos.device, dtype=pos.dtype)
    out[..., 0::2] = torch.sin(ang)
    out[..., 1::2] = torch.cos(ang[..., : dim // 2])
    return out


class APE(PositionalEncoding):
    """Absolute sinusoidal PE. Kwarg: base=10000. Scalar contexts only (L = 1)."""

    target = "input"
    attention = "linear"

    def __init__(self, *, base: float = 10000.0, **structural):
        super().__init__(**structural)
        self.base = base

    @classmethod
    def accepts(cls, context_dim, regular_grid):
        return context_dim == 1

    def embed(self, x, code):
        return x + sinusoid(code[..., 0].to(x.dtype), x.shape[-1], self.base)
