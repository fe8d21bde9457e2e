"""Kernels of sineSPE's mix q^ = sum_{j,d} q_d feats_jd z_(jd)r (``stripes.pe.spe``).

Both take feats = ``stripes.pe.spe.sine_features(pos, freq)`` (then any constant rows, J > 2K)
without a graph and form the gradient to freq themselves, as 2 pi pos^T (cos * g_sin - sin *
g_cos) with g_feats = (g z^T) * x, so autograd never keeps the (H,B,T,K,D) angle tensors of
``sine_features``. Reference for both: ``stripes.pe.spe.sine_mix_reference(x, feats, z)`` with
feats carrying its graph to freq.

- ``sine_mix_blocked``: CPU. Loops over (head, window, block of rows frames) so that every
  product stays in cache; H*B*T/rows small GEMMs.
- ``sine_mix_batched``: GPU. One bmm over all heads, windows and frames each way; it writes the
  (H,B,T,J,D) product (recomputed in backward, not saved).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class _SineMixBlocked(torch.autograd.Function):
    """Each (head, window, block of ``rows`` frames) forms its (rows, J*D) product in a reused
    buffer that stays in cache, for one GEMM forward; backward recomputes it instead of saving it,
    so no (H,B,T,J,D) tensor is written, saved or summed over the four uses of one step (q and k,
    two layers).
    """

    @staticmethod
    def forward(ctx, x, z, freq, feats, pos, rows):
        b, h, t, d = x.shape
        j, r = feats.shape[-2], z.shape[-1]
        out = x.new_empty(b, h, t, r)
        buf = x.new_empty(min(rows, t), j, d)
        for hi, bi, s, e in _blocks(h, b, t, rows):
            p = torch.mul(x[bi, hi, s:e].unsqueeze(1), feats[hi, bi % feats.shape[1], s:e], out=buf[: e - s])
            torch.mm(p.view(e - s, -1), z[hi], out=out[bi, hi, s:e])
        ctx.save_for_backward(x, z, feats, pos)
        ctx.rows, ctx.n_sines = rows, freq.shape[2]
        return out

    @staticmethod
    def backward(ctx, g):
        x, z, feats, pos = ctx.saved_tensors
        b, h, t, d = x.shape
        j, k = feats.shape[-2], ctx.n_sines
        need_x, need_z, need_f = ctx.needs_input_grad[:3]
        tc = min(ctx.rows, t)
        gp_buf, p_buf, ga_buf = x.new_empty(tc, j, d), x.new_empty(tc, j, d), x.new_empty(tc, k, d)
        gx = x.new_empty(b, h, t, d) if need_x else None
        gz = torch.zeros_like(z) if need_z else None
        gf = x.new_zeros(h, pos.shape[-1], k * d) if need_f else None
        pos = pos.to(x.dtype)
        for hi, bi, s, e in _blocks(h, b, t, ctx.rows):
            n, fe, xe, ge = e - s, feats[hi, bi % feats.shape[1], s:e], x[bi, hi, s:e].unsqueeze(1), g[bi, hi, s:e]
            gp = torch.mm(ge, z[hi].t(), out=gp_buf[:n].view(n, -1)).view(n, j, d)  # d prod
            if need_z:
                p = torch.mul(xe, fe, out=p_buf[:n])
                gz[hi].addmm_(p.view(n, -1).t(), ge)
            if need_x:
                torch.sum(torch.mul(gp, fe, out=p_buf[:n]), 1, out=gx[bi, hi, s:e])
            if need_f:
                gp.mul_(xe)  # d feats
                ga = torch.mul(fe[:, :k], gp[:, k : 2 * k], out=ga_buf[:n])
                ga.addcmul_(fe[:, k : 2 * k], gp[:, :k], value=-1)  # d angle
                gf[hi].addmm_(pos[bi % pos.shape[0], s:e].t(), ga.view(n, -1))
        if need_f:
            gf = (gf * (2 * math.pi)).view(h, -1, k, d).permute(0, 3, 2, 1)
        return gx, gz, gf, None, None, None


def _blocks(h: int, b: int, t: int, rows: int):
    for hi in range(h):
        for bi in range(b):
            for s in range(0, t, rows):
                yield hi, bi, s, min(s + rows, t)


def sine_mix_blocked(x: Tensor, z: Tensor, freq: Tensor, feats: Tensor, pos: Tensor, rows: int = 1024) -> Tensor:
    """Reference: ``sine_mix_reference(x, feats, z)`` (see the module docstring); x (B,H,T,D),
    z (H,J*D,R), freq (H,D,K,L), feats (H,B',T,J,D), pos (B',T,L) -> (B,H,T,R). Memory beyond
    the output: three (rows, J, D) buffers."""
    return _SineMixBlocked.apply(x, z, freq, feats.detach(), pos, int(rows))


def _product(x: Tensor, feats: Tensor) -> Tensor:
    """x_d feats_jd, (H,B,T,J*D), B' = 1 feats broadcast over the windows."""
    prod = x.transpose(0, 1).unsqueeze(-2) * feats
    return prod.flatten(-2).flatten(1, 2)


class _SineMixBatched(torch.autograd.Function):
    """All heads in one bmm over the (B*T, J*D) rows, forward and each gradient."""

    @staticmethod
    def forward(ctx, x, z, freq, feats, pos):
        b, h, t, _ = x.shape
        out = torch.bmm(_product(x, feats), z)  # (H,B*T,R)
        ctx.save_for_backward(x, z, feats, pos)
        ctx.n_sines = freq.shape[2]
        return out.view(h, b, t, -1).transpose(0, 1)

    @staticmethod
    def backward(ctx, g):
        x, z, feats, pos = ctx.saved_tensors
        b, h, t, d = x.shape
        j, k = feats.shape[-2], ctx.n_sines
        need_x, need_z, need_f = ctx.needs_input_grad[:3]
        gh = g.transpose(0, 1).reshape(h, b * t, -1)
        gx = gz = gf = None
        if need_z:
            gz = torch.bmm(_product(x, feats).transpose(1, 2), gh)
        if need_x or need_f:
            gp = torch.bmm(gh, z.transpose(1, 2)).view(h, b, t, j, d)  # d prod
        if need_x:
            gx = (gp * feats).sum(-2).transpose(0, 1)
        if need_f:
            gfe = gp[..., : 2 * k, :] * x.transpose(0, 1).unsqueeze(-2)  # d feats
            cos, sin = feats[..., :k, :], feats[..., k : 2 * k, :]
            ga = cos * gfe[..., k:, :] - sin * gfe[..., :k, :]  # d angle (H,B,T,K,D)
            if pos.shape[0] != b:
                ga = ga.sum(1, keepdim=True)
            gf = torch.einsum("hbtkd,btl->hdkl", ga, pos.to(ga.dtype)) * (2 * math.pi)
        return gx, gz, gf, None, None


def sine_mix_batched(x: Tensor, z: Tensor, freq: Tensor, feats: Tensor, pos: Tensor) -> Tensor:
    """Reference: ``sine_mix_reference(x, feats, z)`` (see the module docstring); arguments as
    ``sine_mix_blocked``. Memory: the (H,B,T,J,D) product, twice in backward."""
    return _SineMixBatched.apply(x, z, freq, feats.detach(), pos)
