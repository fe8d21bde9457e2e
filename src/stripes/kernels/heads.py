"""CPU kernel of the head split of the packed qkv projection (``stripes.model``)."""

from __future__ import annotations

import torch
from torch import Tensor


class _SplitHeads(torch.autograd.Function):
    """qkv (B,T,3*H*D) -> q, k, v (B,H,T,D) views of it.

    Autograd's own backward of view/permute/unbind stacks the three gradients and then copies
    the stack into the (B,T,3,H,D) order; here each gradient is copied once, straight into it.
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, n_heads: int):
        b, t, c = qkv.shape
        ctx.shape = (b, t, 3, n_heads, c // (3 * n_heads))
        return qkv.view(ctx.shape).permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        g = torch.empty(ctx.shape, dtype=gq.dtype, device=gq.device)
        for i, gi in enumerate((gq, gk, gv)):
            g[:, :, i] = gi.transpose(1, 2)
        return g.flatten(2), None


def split_heads(qkv: Tensor, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Reference: ``stripes.model.split_heads_reference(qkv, n_heads)``, the same views with
    autograd's own backward."""
    return _SplitHeads.apply(qkv, n_heads)
