"""S S-RPE / X-StrIPE (paper-spec §3.12, A30): exact attention with a Shaw-style key-side bias.

logit_mn = (q_m.k_n + q_m.E_mn) / sqrt(D), E_mn = sum_s Lin_layer(Lin_s(sin_s(p^s_m - p^s_n))),
sin_s the S24 sinusoid of the unclipped label difference (d_model dims). pos (B,T,S) with the
structures in the order melody, chord, section (the mcp context); bias (B,H,T,T). Exact
attention keeps it O(T^2); the bias is computed through the distinct label differences, so the
(B,T,T,d_model) tensor of the S24 code is never formed (same values, see ``logit_bias``).
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

    @classmethod
    def config_problems(cls, head_dim, kwargs):
        # accepts() admits only N_STRUCTURES-dimensional contexts, so that is the length bases needs
        # (the constructor's default has it)
        bases = kwargs.get("bases")
        if bases is not None and len(bases) != cls.N_STRUCTURES:
            return [f"kwargs.bases has {len(bases)} entries; it needs one per structure "
                    f"({cls.N_STRUCTURES}: melody, chord, section)"]
        return []

    def prepare(self, pos: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per structure: (table (U_s, d_model) = Lin_s(sin_s(delta)) over the U_s distinct label
        differences delta in the batch, index (B,T,T) of each pair's delta in that table)."""
        dtype = self.structure_proj[0].weight.dtype
        code = []
        for s, (base, proj) in enumerate(zip(self.bases, self.structure_proj)):
            p = pos[..., s].to(torch.float64)
            uniq, index = torch.unique(p[:, :, None] - p[:, None, :], return_inverse=True)
            code.append((proj(s24_sinusoid(uniq, self.d_model, base).to(dtype)), index))
        return code

    def logit_bias(self, q: Tensor, code, layer: int) -> Tensor:
        """q_m . E_mn / sqrt(D) per head, never forming the (B,T,T,d_model) tensor E.

        E_mn = W_l (sum_s table_s[idx_s(m,n)]) + S b_l, its 512 dims viewed as (D, H). So
        q_m . E_mn = sum_s (q_m W_l,h) . table_s[idx] + S q_m . b_l,h, i.e. a (B,H,T,U_s)
        product gathered at idx: O(B H T (U + T)) memory instead of O(B T^2 d_model).
        """
        lin = self.layer_proj[layer]
        d, h = self.head_dim, self.n_heads
        w = lin.weight.to(q.dtype).view(d, h, self.d_model)  # output index o = d * H + h
        qw = torch.einsum("bhmd,dhi->bhmi", q, w)
        bias = len(code) * torch.einsum("bhmd,dh->bhm", q, lin.bias.to(q.dtype).view(d, h)).unsqueeze(-1)
        b, _, t, _ = q.shape
        for table, index in code:
            scores = qw @ table.to(q.dtype).T  # (B,H,T,U_s)
            bias = bias + torch.gather(scores, -1, index.unsqueeze(1).expand(b, h, t, t))
        return bias / math.sqrt(d)
