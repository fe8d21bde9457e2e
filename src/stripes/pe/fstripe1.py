"""F-StrIPE1 (paper-spec §3.10): one learnable frequency per dimension, pooled to R^2 per head.

q (B,H,T,D) -> q~ = sum_d q_d [cos theta_d(p), sin theta_d(p)] (B,H,T,2), theta_d(p) = omega_d . p;
``unpooled``: (q_d cos theta_d, q_d sin theta_d)_d (B,H,T,2D), exactly eq. 15 with no cross terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

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

    def prepare(self, pos):
        """Pooled: (theta (B,H,T,D), [cos, sin] (B,H,T,2,D) without a graph, see ``cos_sin_pool``);
        unpooled: (cos, sin) (B,H,T,D)."""
        theta = self.angles(pos)
        if self.unpooled:
            return torch.cos(theta), torch.sin(theta)
        with torch.no_grad():
            cs = torch.stack([torch.cos(theta), torch.sin(theta)], -2)
        return theta, cs

    def transform_qk(self, q, k, code, layer):
        a, b = (c.to(q.dtype) for c in code)
        if self.unpooled:
            return tuple(torch.stack([x * a, x * b], -1).flatten(-2) for x in (q, k))
        return cos_sin_pool(q, a, b), cos_sin_pool(k, a, b)


def cos_sin_pool_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """[sum_d x_d cos_d, sum_d x_d sin_d] (...,2) for x, cos, sin (...,D)."""
    return torch.stack([(x * cos).sum(-1), (x * sin).sum(-1)], -1)


class _CosSinPool(torch.autograd.Function):
    """``cos_sin_pool_reference`` with cos, sin taken from cs, gradient to theta formed here.

    Forward is one batched (2 x D) @ (D x 1) product; backward writes d x = g_1 cos + g_2 sin and
    d theta = x (g_2 cos - g_1 sin) directly, so no (cos, sin) gradients are written, summed over
    the four uses per step and sent back through cos and sin.
    """

    @staticmethod
    def forward(ctx, x, theta, cs):
        ctx.save_for_backward(x, cs)
        return torch.matmul(cs, x.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def backward(ctx, g):
        x, cs = ctx.saved_tensors
        cos, sin = cs.unbind(-2)
        g1, g2 = g[..., :1], g[..., 1:]
        gx = g_theta = None
        if ctx.needs_input_grad[0]:
            gx = torch.mul(cos, g1)
            gx.addcmul_(sin, g2)
        if ctx.needs_input_grad[1]:
            g_theta = torch.mul(cos, g2)
            g_theta.addcmul_(sin, g1, value=-1)
            g_theta.mul_(x)
        return gx, g_theta, None


def cos_sin_pool(x: Tensor, theta: Tensor, cs: Tensor) -> Tensor:
    """``cos_sin_pool_reference(x, cos theta, sin theta)`` with cs = [cos, sin] (...,2,D) of theta
    given without a graph; differentiable in x and theta."""
    return _CosSinPool.apply(x, theta, cs.detach())
