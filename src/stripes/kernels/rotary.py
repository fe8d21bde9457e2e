"""CPU kernels of the rotary PEs: RoPE's pair rotation, RoPEPool's pooled rotation and
F-StrIPE1's cos/sin pool, each one custom autograd op.

On CPU they avoid writing the (cos, sin) gradients that autograd through the reference forms
writes, sums over the four uses of one step (q and k, two layers) and sends back through cos
and sin: the gradient to the angles is formed inside the op instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def phasor(theta: Tensor) -> Tensor:
    """exp(i theta) = cos theta + i sin theta, complex (...,D/2); the code of ``rotate``."""
    return torch.complex(torch.cos(theta), torch.sin(theta))


def as_complex_pairs(x: Tensor) -> Tensor:
    """x (...,D) real -> z (...,D/2) complex, z_d = x_{2d-1} + i x_{2d}; a view when the strides allow."""
    if x.dtype not in _COMPLEX:
        x = x.float()
    pairs = x.unflatten(-1, (x.shape[-1] // 2, 2))
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(st % 2 for st in pairs.stride()[:-1]):
        # clone, not contiguous(): a contiguous view at an odd offset would come back as it is
        pairs = pairs.clone(memory_format=torch.contiguous_format)
    return torch.view_as_complex(pairs)


class _RotatePairs(torch.autograd.Function):
    """``stripes.pe.rope.rotate_pairs`` as one complex multiply by rot = exp(i theta), given
    without a graph.

    Backward: d x = g exp(-i theta) (one complex multiply) and, when theta needs it,
    d theta_d = g_{2d} out_{2d-1} - g_{2d-1} out_{2d} (d out / d theta = i out) in two real passes,
    so no complex gradient of rot is written, summed over the four uses per step and sent back
    through cos and sin.
    """

    @staticmethod
    def forward(ctx, x, theta, rot):
        z = as_complex_pairs(x)
        out = torch.view_as_real(z * rot.to(z.dtype)).flatten(-2).to(x.dtype)
        ctx.save_for_backward(rot, out if ctx.needs_input_grad[1] else None)
        return out

    @staticmethod
    def backward(ctx, g):
        rot, out = ctx.saved_tensors
        gx = g_theta = None
        if ctx.needs_input_grad[0]:
            gz = as_complex_pairs(g)
            gx = torch.view_as_real(gz * rot.to(gz.dtype).conj()).flatten(-2).to(g.dtype)
        if ctx.needs_input_grad[1]:
            o, gp = out.unflatten(-1, (-1, 2)), g.unflatten(-1, (-1, 2))
            g_theta = torch.mul(gp[..., 1], o[..., 0])
            g_theta.addcmul_(gp[..., 0], o[..., 1], value=-1)
        return gx, g_theta, None


def rotate(x: Tensor, theta: Tensor, rot: Tensor) -> Tensor:
    """Reference: ``stripes.pe.rope.rotate_pairs(x, cos theta, sin theta)``; rot = ``phasor(theta)``
    (its graph, if any, is not used: the gradient reaches theta directly)."""
    return _RotatePairs.apply(x, theta, rot.detach())


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
    """Reference: ``stripes.pe.ropepool.pool_rotated_pairs(x, cos, sin)``, with
    w = ``pool_weights(theta)``; differentiable in x and w."""
    return _PairDot.apply(x, w)


def cos_sin_code(theta: Tensor) -> Tensor:
    """cs = [cos, sin] (...,2,D) of theta, without a graph: the code of ``cos_sin_pool``."""
    with torch.no_grad():
        return torch.stack([torch.cos(theta), torch.sin(theta)], -2)


class _CosSinPool(torch.autograd.Function):
    """``stripes.pe.fstripe1.cos_sin_pool_reference`` with cos, sin taken from cs, gradient to
    theta formed here.

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
    """Reference: ``stripes.pe.fstripe1.cos_sin_pool_reference(x, cos theta, sin theta)``, with
    cs = ``cos_sin_code(theta)``; differentiable in x and theta."""
    return _CosSinPool.apply(x, theta, cs.detach())
