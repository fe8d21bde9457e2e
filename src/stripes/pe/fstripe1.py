"""F-StrIPE1 (paper-spec §3.10): one learnable frequency per dimension, pooled to R^2 per head.

q (B,H,T,D) -> q~ = sum_d q_d [cos theta_d(p), sin theta_d(p)] (B,H,T,2), theta_d(p) = omega_d . p;
``unpooled``: (q_d cos theta_d, q_d sin theta_d)_d (B,H,T,2D), exactly eq. 15 with no cross terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels import rotary
from .base import PositionalEncoding
from .rope import EVEN_HEAD_DIM, RotaryAngles


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

    @classmethod
    def config_problems(cls, head_dim, kwargs):
        return [EVEN_HEAD_DIM.format(head_dim)] if head_dim % 2 else []

    @property
    def d_in(self):
        return 2 * self.head_dim if self.unpooled else 2

    def _pool_kernel(self, ref: Tensor) -> bool:
        return not self.unpooled and self.kernels_for(ref).cos_sin_pool

    def prepare(self, pos):
        """(cos theta, sin theta) (B,H,T,D); with the cos_sin_pool kernel (pooled only)
        (theta, [cos, sin] (B,H,T,2,D) without a graph, ``stripes.kernels.rotary.cos_sin_code``)."""
        theta = self.angles(pos)
        if self._pool_kernel(pos):
            return theta, rotary.cos_sin_code(theta)
        return torch.cos(theta), torch.sin(theta)

    def transform_qk(self, q, k, code, layer):
        a, b = (c.to(q.dtype) for c in code)
        if self.unpooled:
            return tuple(torch.stack([x * a, x * b], -1).flatten(-2) for x in (q, k))
        if self._pool_kernel(q):
            return rotary.cos_sin_pool(q, a, b), rotary.cos_sin_pool(k, a, b)
        return cos_sin_pool_reference(q, a, b), cos_sin_pool_reference(k, a, b)


def cos_sin_pool_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """[sum_d x_d cos_d, sum_d x_d sin_d] (...,2) for x, cos, sin (...,D)."""
    return torch.stack([(x * cos).sum(-1), (x * sin).sum(-1)], -1)
