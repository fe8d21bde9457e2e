"""S S-RPE / X-StrIPE (paper-spec §3.12, A30): exact attention with a Shaw-style key-side bias.

logit_mn = (q_m.k_n + q_m.E_mn) / sqrt(D), E_mn = sum_s Lin_layer(Lin_s(sin_s(p^s_m - p^s_n))),
sin_s the S24 sinusoid of the unclipped label difference (d_model dims). pos (B,T,S) with the
structures in the order melody, chord, section (the mcp context); bias (B,H,T,T). Memory
O(B T^2 d_model): the quadratic baseline the paper could not run on 64-bar windows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import PositionalEncoding


def s24_sinusoid(delta: Tensor, dim: int, base: float) -> Tensor:
    """(...,) -> (..., dim): frequency base^(-2 floor(j'/2)/dim), j' = j + 1; sin at even j, cos at odd."""
    j = torch.arange(dim, device=delta.device)
    freq = float(base) ** (-2 * torch.div(j + 1, 2, rounding_mode="floor").to(delta.dtype) / dim)
    ang = delta.unsqueeze(-1) * freq
    return torch.where(j % 2 == 0, torch.sin(ang), torch.cos(ang))


class SSRPE(PositionalEncoding):
    """Kwargs: bases (melody 7920, chord 10001, section 11339) [R: S24 configs]; one per structure.
    Parameters: a Linear(d_model, d_model) per structure and one per layer (both shared as in S24).
    """

    target = "logits"
    attention = "exact"
    N_STRUCTURES = 3

    def __init__(self, *, bases: list[float] = (7920.0, 10001.0, 11339.0), share_layers: bool = True,
                 **structural):
        super().__init__(share_layers=share_layers, **structural)
        if len(bases) != self.context_dim:
            raise ValueError(f"SSRPE: {len(bases)} bases for a context of dimension {self.context_dim}")
        if self.d_model != self.n_heads * self.head_dim:
            raise ValueError("SSRPE needs d_model = n_heads * head_dim")
        self.bases = [float(b) for b in bases]
        self.structure_proj = nn.ModuleList(nn.Linear(self.d_model, self.d_model) for _ in bases)
        self.layer_proj = nn.ModuleList(nn.Linear(self.d_model, self.d_model) for _ in range(self.n_layers))

    @classmethod
    def accepts(cls, context_dim, regular_grid):
        return context_dim == cls.N_STRUCTURES

    def prepare(self, pos: Tensor) -> Tensor:
        """sum_s Lin_s(sin_s(p^s_m - p^s_n)): (B,T,T,d_model), shared by the layers."""
        dtype = self.structure_proj[0].weight.dtype
        pos = pos.to(dtype)
        e = 0
        for s, (base, proj) in enumerate(zip(self.bases, self.structure_proj)):
            delta = pos[:, :, None, s] - pos[:, None, :, s]
            e = e + proj(s24_sinusoid(delta, self.d_model, base))
        return e

    def logit_bias(self, q: Tensor, code: Tensor, layer: int) -> Tensor:
        lin = self.layer_proj[layer]
        # sum_s Lin_layer(E_s) = W_layer (sum_s E_s) + S b_layer, without a per-structure copy
        e = nn.functional.linear(code.to(q.dtype), lin.weight.to(q.dtype)) + len(self.bases) * lin.bias.to(q.dtype)
        b, t = e.shape[:2]
        e = e.view(b, t, t, self.head_dim, self.n_heads)  # S24: 512 viewed as (128, H), interleaved
        return torch.einsum("bhmd,bmndh->bhmn", q, e) / math.sqrt(self.head_dim)
