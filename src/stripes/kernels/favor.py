"""CPU kernels of the FAVOR+ feature map (``stripes.attention.FavorFeatureMap``)."""

from __future__ import annotations

import torch
from torch import Tensor


class _SqNorm(torch.autograd.Function):
    """|x|^2 over the last dim, (..., 1): one fused pass forward, backward 2 g x in one product
    (autograd's norm().square() backward divides by the norm and masks its zeros)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return x * (2 * g)


def sq_norm(x: Tensor) -> Tensor:
    """Reference: ``stripes.attention.sq_norm_reference(x)`` = (x * x).sum(-1, keepdim=True)."""
    return _SqNorm.apply(x)


class _PairedExp(torch.autograd.Function):
    """phi = exp([u - c, -u - c]) (..., 2h) for u (..., h) and a per-row c (..., 1).

    Written straight into one buffer (no cat, no negated copy of u); backward is one product
    g * phi, a half-width difference and, when c needs it, a row sum.
    """

    @staticmethod
    def forward(ctx, u, c):
        h = u.shape[-1]
        phi = u.new_empty(*u.shape[:-1], 2 * h)
        torch.sub(u, c, out=phi[..., :h])
        torch.sub(c.neg(), u, out=phi[..., h:])
        phi.exp_()
        ctx.save_for_backward(phi)
        return phi

    @staticmethod
    def backward(ctx, g):
        (phi,) = ctx.saved_tensors
        h = phi.shape[-1] // 2
        ge = g * phi
        du = ge[..., :h] - ge[..., h:]
        dc = ge.sum(-1, keepdim=True).neg_() if ctx.needs_input_grad[1] else None
        return du, dc


def paired_exp(u: Tensor, c: Tensor) -> Tensor:
    """Reference: ``stripes.attention.paired_exp_reference(u, c)`` = exp(cat[u - c, -u - c])."""
    return _PairedExp.apply(u, c)
