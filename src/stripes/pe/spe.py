"""Stochastic positional encoding (paper-spec §3.7): gated sineSPE and convSPE.

q, k (B,H,T,D) -> q^, k^ (B,H,T,R), q^_t = sum_d q_td Qbar_d(t), with R random realisations
Qbar_d(t) = Omega^Q_d(t) Z_d / (R D)^(1/4). One code per model forward, shared by all layers
(SPE share_pe); gates are per layer. Noise: fresh from torch's global RNG in training, a fixed
draw from ``seed`` in eval (never touching the global RNG).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PositionalEncoding, full_precision


def _gain_init(shape) -> Tensor:
    g = torch.randn(*shape)
    # SPE's init: each (h,d) gain vector times 2/sqrt(||g||) (paper-spec §3.7)
    return g * 2 / g.norm(dim=-1, keepdim=True).sqrt()


class _GatedSPE(PositionalEncoding):
    target = "qk"
    attention = "linear"

    def __init__(self, *, realizations: int, gated: bool, seed: int, share_layers: bool = True, **structural):
        super().__init__(share_layers=share_layers, **structural)
        self.realizations, self.gated, self.seed = realizations, gated, seed
        if gated:
            # one gate per layer (SPE share_spe_filter = False), gate logits ~ N(0,1)
            self.gate = nn.Parameter(torch.randn(self.n_layers, self.n_heads, self.head_dim))

    @property
    def d_in(self):
        return self.realizations

    def _draw(self, *shapes, like: Tensor) -> list[Tensor]:
        """N(0,1) tensors, drawn on the CPU so a seed means the same noise on every device."""
        gen = None if self.training else torch.Generator().manual_seed(self.seed)
        return [torch.randn(*s, generator=gen).to(device=like.device, dtype=like.dtype) for s in shapes]

    def _gate_terms(self, q, k, u, layer):
        """(q * sqrt(1-g), k * sqrt(1-g), shared-noise part of q^, of k^)."""
        if not self.gated:
            return q, k, 0, 0
        g = torch.sigmoid(self.gate[layer]).to(q.dtype).unsqueeze(1)  # (H,1,D)
        a, b = (1 - g).sqrt(), g.sqrt()
        uq = torch.einsum("bhtd,hdr->bhtr", q * b, u)
        uk = torch.einsum("bhtd,hdr->bhtr", k * b, u)
        return q * a, k * a, uq, uk


class SineSPE(_GatedSPE):
    """Gated sineSPE with positions of dimension L (L = 1: SPE; L > 1 or labels: F-StrIPE:SFF).

    Per (h, d, sine k): frequency f = sigmoid(w)/2 in cycles per position unit (one per level
    for L > 1), query-side phase theta, gain lambda = softplus(g). Kwargs: realizations R=64,
    num_sines K=5, gated True, seed 0 (eval noise) [all INF/SPE music configs, A9].
    """

    def __init__(self, *, realizations: int = 64, num_sines: int = 5, gated: bool = True, seed: int = 0,
                 share_layers: bool = True, **structural):
        super().__init__(realizations=realizations, gated=gated, seed=seed, share_layers=share_layers, **structural)
        h, d, k, L = self.n_heads, self.head_dim, num_sines, self.context_dim
        self.num_sines = k
        self.freq_logit = nn.Parameter(torch.randn(h, d, k, L) - 4.0)
        self.phase = nn.Parameter(torch.randn(h, d, k))
        self.gain_logit = nn.Parameter(_gain_init((h, d, k)))

    def features(self, pos: Tensor) -> Tensor:
        """Omega^K (H,B,T,D,2K) = [cos_1, sin_1, cos_2, ...] of 2 pi f.p: keys, no phase.

        Head-major, so that the per-head contraction in ``transform_qk`` is one bmm on a view.
        """
        f = torch.sigmoid(self.freq_logit) / 2
        with full_precision(pos):
            ang = 2 * math.pi * torch.einsum("btl,hdkl->hbtdk", pos.to(f.dtype), f)
        return torch.stack([torch.cos(ang), torch.sin(ang)], -1).flatten(-2)

    def prepare(self, pos):
        """(Omega^K (H,B,T,D,2K), Z^Q, Z^K (H,D,2K,R), U (H,D,R)), scaled as in the module docstring.

        The query phase theta only rotates each (cos, sin) pair: with c, s = cos theta, sin theta,
        [cos(a+theta), sin(a+theta)] = [c cos a - s sin a, s cos a + c sin a]. So it is moved onto
        the small noise matrix, Omega^Q Z = Omega^K Z^Q with (z^Q_cos, z^Q_sin) = (c z_cos + s z_sin,
        c z_sin - s z_cos) per pair: queries and keys share one feature tensor, and no gradient
        flows through a (B,H,T,D,K) phase tensor.
        """
        h, d, k, r = self.n_heads, self.head_dim, self.num_sines, self.realizations
        ok = self.features(pos)
        lam = F.softplus(self.gain_logit).repeat_interleave(2, dim=-1)  # (H,D,2K)
        z, u = self._draw((h, d, 2 * k, r), (h, d, r), like=ok)
        scale = (r * d) ** -0.25
        zk = z * (lam / math.sqrt(2 * k) * scale).unsqueeze(-1)
        c, s = torch.cos(self.phase).unsqueeze(-1), torch.sin(self.phase).unsqueeze(-1)  # (H,D,K,1)
        z_cos, z_sin = zk[..., 0::2, :], zk[..., 1::2, :]
        zq = torch.stack([c * z_cos + s * z_sin, c * z_sin - s * z_cos], -2).flatten(-3, -2)
        return ok, zq, zk, u * scale

    def realisations(self, code) -> tuple[Tensor, Tensor]:
        """Qbar, Kbar (B,H,T,D,R) before gating: for tests and analysis (memory heavy)."""
        ok, zq, zk, _ = code
        return torch.einsum("hbtdj,hdjr->bhtdr", ok, zq), torch.einsum("hbtdj,hdjr->bhtdr", ok, zk)

    def transform_qk(self, q, k, code, layer):
        ok, zq, zk, u = (c.to(q.dtype) for c in code)
        q, k, uq, uk = self._gate_terms(q, k, u, layer)
        return _mix(q, ok, zq) + uq, _mix(k, ok, zk) + uk


def _mix(x: Tensor, feats: Tensor, z: Tensor) -> Tensor:
    """sum_{d,j} x_d feats_dj z_djr: x (B,H,T,D), feats (H,B,T,D,J), z (H,D,J,R) -> (B,H,T,R)."""
    h, b, t, d, j = feats.shape
    prod = (x.transpose(0, 1).unsqueeze(-1) * feats).view(h, b * t, d * j)
    return torch.bmm(prod, z.reshape(h, d * j, -1)).view(h, b, t, -1).transpose(0, 1)


class ConvSPE(_GatedSPE):
    """Gated convSPE: depthwise filters of ``kernel_size`` applied to white noise (regular grid
    only: it ignores the position values and uses the frame index, so it refuses other contexts).

    Kwargs: realizations R=64, kernel_size 64 [INF], gated True, seed 0.
    """

    def __init__(self, *, realizations: int = 64, kernel_size: int = 64, gated: bool = True, seed: int = 0,
                 share_layers: bool = True, **structural):
        super().__init__(realizations=realizations, gated=gated, seed=seed, share_layers=share_layers, **structural)
        self.kernel_size = kernel_size
        n = self.n_heads * self.head_dim
        self.filter_q = nn.Parameter(torch.rand(n, 1, kernel_size) / math.sqrt(kernel_size / 2))
        self.filter_k = nn.Parameter(torch.rand(n, 1, kernel_size) / math.sqrt(kernel_size / 2))

    @classmethod
    def accepts(cls, context_dim, regular_grid):
        return context_dim == 1 and regular_grid

    def prepare(self, pos):
        t, ks, r = pos.shape[1], self.kernel_size, self.realizations
        h, d = self.n_heads, self.head_dim
        noise, u = self._draw((r, h * d, t + 4 * ks), (h, d, r), like=self.filter_q)
        scale = (r * d) ** -0.25

        def code(w):
            c = F.conv1d(noise, w, groups=h * d)[..., ks : ks + t]  # (R, H*D, T)
            return c.reshape(r, h, d, t).permute(1, 3, 2, 0) * scale  # (H,T,D,R)

        return code(self.filter_q), code(self.filter_k), u * scale

    def transform_qk(self, q, k, code, layer):
        cq, ck, u = (c.to(q.dtype) for c in code)
        q, k, uq, uk = self._gate_terms(q, k, u, layer)
        return torch.einsum("bhtd,htdr->bhtr", q, cq) + uq, torch.einsum("bhtd,htdr->bhtr", k, ck) + uk
