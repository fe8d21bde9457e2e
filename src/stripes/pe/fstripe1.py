"""F-StrIPE1 (paper-spec §3.10): one learnable frequency per dimension, pooled to R^2 per head.

q (B,H,T,D) -> q~ = sum_d q_d [cos theta_d(p), sin theta_d(p)] (B,H,T,2), theta_d(p) = omega_d . p;
``unpooled``: (q_d cos theta_d, q_d sin theta_d)_d (B,H,T,2D), exactly eq. 15 with no cross terms.
"""

from __future__ import annotations

import torch

from .base import PositionalEncoding
from .rope import RotaryAngles


class FStripe1(PositionalEncoding):
    """Kwargs: unpooled False (A10 ablation flag); schedule "interleaved" and learnable True
    (RoPE(C)-style init in radians, A8 [INF]; both dims of a pair share the pair's initial
    frequency, the reading behind eq. 25); base 10000; direction_seed 0 (L > 1 directions).
    """

    target = "qk"
    attention = "linear"

    def __init__(self, *, unpooled: bool = False, schedule: str = "interleaved", learnable: bool = True,
                 base: float = 10000.0, direction_seed: int = 0, share_layers: bool = True, **structural):
        super().__init__(share_layers=share_layers, **structural)
        if self.head_dim % 2:
            raise ValueError(f"FStripe1 needs an even head_dim, got {self.head_dim}")
        self.unpooled = unpooled
        self.angles = RotaryAngles(self.n_heads, self.head_dim // 2, self.context_dim, schedule, learnable,
                                   base, direction_seed, repeat=2)

    @property
    def d_in(self):
        return 2 * self.head_dim if self.unpooled else 2

    def prepare(self, pos):
        theta = self.angles(pos)  # (B,H,T,D)
        return torch.cos(theta), torch.sin(theta)

    def _map(self, x, cos, sin):
        if self.unpooled:
            return torch.stack([x * cos, x * sin], -1).flatten(-2)
        return torch.stack([(x * cos).sum(-1), (x * sin).sum(-1)], -1)

    def transform_qk(self, q, k, code, layer):
        cos, sin = (c.to(q.dtype) for c in code)
        return self._map(q, cos, sin), self._map(k, cos, sin)
