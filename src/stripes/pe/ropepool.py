"""RoPEPool (paper-spec §3.11): rotate each pair, then sum the pair's two coordinates.

q (B,H,T,D) -> c (B,H,T,D/2), c_d = q_{2d-1}(cos + sin) + q_{2d}(cos - sin) with theta_{h,d}(p);
D_in = D/2. Kernel (eq. 23) has the RoPE Delta- terms plus Delta+ (absolute) terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels import rotary
from .base import full_precision
from .rope import _RotaryPE


def pool_rotated_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """[R(theta) x_d]_1 + [R(theta) x_d]_2 for each pair d; (...,D) -> (...,D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return x1 * (cos + sin) + x2 * (cos - sin)


class RoPEPool(_RotaryPE):
    """Learned per-head frequencies (D/2 per head, times L), initialised as RoPE(B).

    Kwargs: schedule "interleaved" (RoPE(B) init) [INF]; learnable True; base 10000;
    direction_seed 0 (L > 1 directions). No gains, no phases.
    """

    def __init__(self, *, schedule: str = "interleaved", learnable: bool = True, base: float = 10000.0,
                 direction_seed: int = 0, share_layers: bool = True, **structural):
        super().__init__(schedule=schedule, learnable=learnable, base=base, direction_seed=direction_seed,
                         share_layers=share_layers, **structural)

    @property
    def d_in(self):
        return self.head_dim // 2

    def prepare(self, pos):
        """(cos theta, sin theta) (B,H,T,D/2), shared by all layers; with the pool_pairs kernel
        w (B,H,T,D/2,2) = [cos + sin, cos - sin] of theta (``stripes.kernels.rotary.pool_weights``)."""
        with full_precision(pos):
            theta = self.angles(pos)
            if self.kernels_for(pos).pool_pairs:
                return rotary.pool_weights(theta)
            return torch.cos(theta), torch.sin(theta)

    def transform_qk(self, q, k, code, layer):
        if self.kernels_for(q).pool_pairs:
            w = code.to(q.dtype)
            return rotary.pool_pairs(q, w), rotary.pool_pairs(k, w)
        cos, sin = (c.to(q.dtype) for c in code)
        return pool_rotated_pairs(q, cos, sin), pool_rotated_pairs(k, cos, sin)
