"""Stochastic positional encoding (paper-spec §3.7): gated sineSPE and convSPE.

q, k (B,H,T,D) -> q^, k^ (B,H,T,R), q^_t = sum_d q_td Qbar_d(t), with R random realisations
Qbar_d(t) = Omega^Q_d(t) Z_d / (R D)^(1/4). One code per model forward, shared by all layers
(SPE share_pe); gates are per layer. Noise: fresh from torch's global RNG in training, a fixed
draw from ``seed`` in eval (never touching the global RNG).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import sine_mix as kernels
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

    def _gate_scales(self, layer: int, dtype) -> tuple[Tensor, Tensor]:
        """(sqrt(1 - g), sqrt(g)) (H,D) of layer ``layer``'s gate g = sigmoid(logit)."""
        g = torch.sigmoid(self.gate[layer]).to(dtype)
        return (1 - g).sqrt(), g.sqrt()

    def _gate_terms(self, q, k, u, layer):
        """(q * sqrt(1-g), k * sqrt(1-g), shared-noise part of q^, of k^)."""
        if not self.gated:
            return q, k, 0, 0
        a, b = (x.unsqueeze(1) for x in self._gate_scales(layer, q.dtype))  # (H,1,D)
        uq = torch.einsum("bhtd,hdr->bhtr", q * b, u)
        uk = torch.einsum("bhtd,hdr->bhtr", k * b, u)
        return q * a, k * a, uq, uk


class SineCode(NamedTuple):
    """sineSPE's per-forward code, shared by all layers.

    feats (H,B',T,J,D): [cos_1..cos_K, sin_1..sin_K] of 2 pi f.p, then (gated) one row of ones,
    J = 2K (+1); B' = 1 when every window has the same positions (TIME), else B; with a sine_mix
    kernel computed without a graph (the kernel forms its gradient to ``freq``, see
    ``stripes.kernels.sine_mix``). freq (H,D,K,L) = sigmoid(w)/2;
    pos (B',T,L); zq, zk (H,2K*D,R) noise in the feats order (the query phase folded into zq);
    u (H,D,R) gate noise. The gate enters per layer through the noise only (``transform_qk``).
    """

    feats: Tensor
    freq: Tensor
    pos: Tensor
    zq: Tensor
    zk: Tensor
    u: Tensor


def sine_features(pos: Tensor, freq: Tensor) -> Tensor:
    """[cos, sin](2 pi pos.f) (H,B,T,2K,D) for pos (B,T,L), freq (H,D,K,L); differentiable."""
    with full_precision(pos):
        ang = 2 * math.pi * torch.einsum("btl,hdkl->hbtkd", pos.to(freq.dtype), freq)
    return torch.cat([torch.cos(ang), torch.sin(ang)], -2)


def sine_mix_reference(x: Tensor, feats: Tensor, z: Tensor) -> Tensor:
    """sum_{j,d} x_d feats_jd z_(jd)r: x (B,H,T,D), feats (H,B',T,J,D), z (H,J*D,R) -> (B,H,T,R).

    Plain autograd (feats with its graph to freq): it materialises the (H,B,T,J,D) product
    forward and backward.
    """
    prod = x.transpose(0, 1).unsqueeze(-2) * feats
    h, b, t = prod.shape[:3]
    return torch.bmm(prod.reshape(h, b * t, -1), z).view(h, b, t, -1).transpose(0, 1)


class SineSPE(_GatedSPE):
    """Gated sineSPE with positions of dimension L (L = 1: SPE; L > 1 or labels: F-StrIPE:SFF).

    Per (h, d, sine k): frequency f = sigmoid(w)/2 in cycles per position unit (one per level
    for L > 1), query-side phase theta, gain lambda = softplus(g). Kwargs: realizations R=64,
    num_sines K=5, gated True, seed 0 (eval noise) [all INF/SPE music configs, A9].
    """

    rows = 1024  # frames per block of ``sine_mix_blocked``: a (rows, 2K*D) fp32 buffer of 5 MB at K=5, D=128

    def __init__(self, *, realizations: int = 64, num_sines: int = 5, gated: bool = True, seed: int = 0,
                 share_layers: bool = True, **structural):
        super().__init__(realizations=realizations, gated=gated, seed=seed, share_layers=share_layers, **structural)
        h, d, k, L = self.n_heads, self.head_dim, num_sines, self.context_dim
        self.num_sines = k
        self.freq_logit = nn.Parameter(torch.randn(h, d, k, L) - 4.0)
        self.phase = nn.Parameter(torch.randn(h, d, k))
        self.gain_logit = nn.Parameter(_gain_init((h, d, k)))

    def prepare(self, pos) -> SineCode:
        """The code (see ``SineCode``), scaled as in the module docstring.

        The query phase theta only rotates each (cos, sin) pair: with c, s = cos theta, sin theta,
        [cos(a+theta), sin(a+theta)] = [c cos a - s sin a, s cos a + c sin a]. So it is moved onto
        the small noise matrix, Omega^Q Z = Omega^K Z^Q with (z^Q_cos, z^Q_sin) = (c z_cos + s z_sin,
        c z_sin - s z_cos) per pair: queries and keys share one feature tensor, and no gradient
        flows through a (B,H,T,K,D) phase tensor.
        """
        h, d, k, r = self.n_heads, self.head_dim, self.num_sines, self.realizations
        if pos.shape[0] > 1 and bool((pos == pos[:1]).all()):
            pos = pos[:1]  # the same positions in every window: one feature tensor for all
        freq = torch.sigmoid(self.freq_logit) / 2
        kernel = self.kernels_for(pos).sine_mix != "reference"
        with torch.no_grad() if kernel else contextlib.nullcontext():
            feats = sine_features(pos, freq)
            if self.gated:  # the gate's shared-noise term rides on a row of ones (transform_qk)
                feats = torch.cat([feats, feats.new_ones(*feats.shape[:-2], 1, d)], -2)
        lam = F.softplus(self.gain_logit).unsqueeze(-1)  # (H,D,K,1)
        z, u = self._draw((h, d, k, 2, r), (h, d, r), like=feats)  # (cos, sin) noise pair per sine
        scale = (r * d) ** -0.25
        zk = z * (lam / math.sqrt(2 * k) * scale).unsqueeze(-1)
        c, s = torch.cos(self.phase)[..., None, None], torch.sin(self.phase)[..., None, None]
        z_cos, z_sin = zk[..., :1, :], zk[..., 1:, :]
        zq = torch.cat([c * z_cos + s * z_sin, c * z_sin - s * z_cos], -2)

        def feats_order(zz):  # (H,D,K,2,R) -> (H, [cos_1..cos_K, sin_1..sin_K] x D, R)
            return zz.permute(0, 3, 2, 1, 4).reshape(h, 2 * k * d, r)

        return SineCode(feats, freq, pos, feats_order(zq), feats_order(zk), u * scale)

    def realisations(self, code: SineCode) -> tuple[Tensor, Tensor]:
        """Qbar, Kbar (B',H,T,D,R) before gating: for tests and analysis (memory heavy)."""
        h, j, d = code.feats.shape[0], 2 * self.num_sines, code.feats.shape[-1]
        feats = code.feats[..., :j, :]
        return tuple(torch.einsum("hbtjd,hjdr->bhtdr", feats, z.view(h, j, d, -1)) for z in (code.zq, code.zk))

    def transform_qk(self, q, k, code, layer):
        """q^ = sum_d sqrt(1 - g_d) q_d Qbar_d + sqrt(g_d) q_d U_d (gated), K likewise.

        The gate scales the noise, not q: [sqrt(1 - g) Z; sqrt(g) U] against the feature rows
        [Omega; 1] is the same sum as gating q twice and adding the two mixes, with no extra
        (B,H,T,D) passes.
        """
        feats, freq, pos, zq, zk, u = (c.to(q.dtype) for c in code)
        if self.gated:
            h, d, r = u.shape
            a, b = self._gate_scales(layer, q.dtype)
            a, b = a[:, None, :, None], (b.unsqueeze(-1) * u).unsqueeze(1)  # (H,1,D,1), (H,1,D,R)
            zq, zk = (torch.cat([z.view(h, -1, d, r) * a, b], 1).view(h, -1, r) for z in (zq, zk))
        return self._mix(q, zq, freq, feats, pos), self._mix(k, zk, freq, feats, pos)

    def _mix(self, x, z, freq, feats, pos):
        form = self.kernels_for(x).sine_mix
        if form == "blocked":
            return kernels.sine_mix_blocked(x, z, freq, feats, pos, self.rows)
        if form == "batched":
            return kernels.sine_mix_batched(x, z, freq, feats, pos)
        return sine_mix_reference(x, feats, z)


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
