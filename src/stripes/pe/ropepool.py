"""RoPEPool (paper-spec §3.11): rotate each pair, then sum the pair's two coordinates.

q (B,H,T,D) -> c (B,H,T,D/2), c_d = q_{2d-1}(cos + sin) + q_{2d}(cos - sin) with theta_{h,d}(p);
D_in = D/2. Kernel (eq. 23) has the RoPE Delta- terms plus Delta+ (absolute) terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import full_precision
from .rope import _RotaryPE


def pool_rotated_pairs(x, cos, sin):
    """[R(theta) x_d]_1 + [R(theta) x_d]_2 for each pair d; (...,D) -> (...,D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return x1 * (cos + sin) + x2 * (cos - sin)


def pool_weights(theta: Tensor) -> Tensor:
    """w (...,D/2,2) = [cos + sin, cos - sin] of theta (...,D/2): the code of ``pool_pairs``."""
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([c + s, c - s], -1)


class _PairDot(torch.autograd.Function):
    """out_d = x_{2d-1} w_{d,1} + x_{2d} w_{d,2}: x (...,D), w (...,D/2,2) -> (...,D/2).

    Two passes forward (mul, addcmul on the strided pair lanes) and one broadcast product per
    gradient, where the complex rotation + pair sum writes a full-width rotated tensor and sums
    over a last dimension of 2, and its backward materialises the expanded gradient.
    """

    @staticmethod
    def forward(ctx, x, w):
        xp = x.unflatten(-1, (-1, 2))
        out = torch.mul(xp[..., 0], w[..., 0])
        out.addcmul_(xp[..., 1], w[..., 1])
        ctx.save_for_backward(x, w)
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.unsqueeze(-1)
        gx = (g * w).flatten(-2) if ctx.needs_input_grad[0] else None
        gw = g * x.unflatten(-1, (-1, 2)) if ctx.needs_input_grad[1] else None
        return gx, gw


def pool_pairs(x: Tensor, w: Tensor) -> Tensor:
    """``pool_rotated_pairs(x, cos, sin)`` with w = ``pool_weights(theta)``; differentiable in x and w."""
    return _PairDot.apply(x, w)


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
        """w (B,H,T,D/2,2) = [cos + sin, cos - sin] of theta, shared by all layers."""
        with full_precision(pos):
            return pool_weights(self.angles(pos))

    def transform_qk(self, q, k, code, layer):
        w = code.to(q.dtype)
        return pool_pairs(q, w), pool_pairs(k, w)
