"""F-StrIPE (RFF, paper-spec §3.9) and F-StrIPE:SFF (§3.8).

F-StrIPE: q (B,H,T,D), pos (B,T,L) -> q~ (B,H,T,2 N_f), q~_t = sum_d q_td Omega^Q_d(t) with
Omega^Q_d(t) = (lambda_d / sqrt(N_f)) [cos phi^Q, sin phi^Q]_omega, phi^Q = 2 pi F_d p_t + theta_d,
phi^K without theta. Deterministic; the diagonal (d = d') kernel is the RFF sine mixture
(1/N_f) sum_omega lambda^2 cos(2 pi f.(p_m - p_n) + theta).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PositionalEncoding, full_precision
from .spe import SineSPE, _gain_init


class FStripe(PositionalEncoding):
    """Kwargs: num_sines N_f=32 (pooled D_in = 64 = SPE's R, A9 [INF]); gated False (optional
    deterministic gate [INF]: adds one pooled unit feature sum_d q_d sqrt(gamma_d), gate per layer).
    Parameterisation as sineSPE [INF, A8]: f = sigmoid(w)/2, w ~ N(0,1) - 4; theta ~ N(0,1)
    (query side only); lambda = softplus(g), SPE gain init.
    """

    target = "qk"
    attention = "linear"

    def __init__(self, *, num_sines: int = 32, gated: bool = False, share_layers: bool = True, **structural):
        super().__init__(share_layers=share_layers, **structural)
        h, d, n, L = self.n_heads, self.head_dim, num_sines, self.context_dim
        self.num_sines, self.gated = n, gated
        self.freq_logit = nn.Parameter(torch.randn(h, d, n, L) - 4.0)
        self.phase = nn.Parameter(torch.randn(h, d, n))
        self.gain_logit = nn.Parameter(_gain_init((h, d, n)))
        if gated:
            self.gate = nn.Parameter(torch.randn(self.n_layers, h, d))

    @property
    def d_in(self):
        return 2 * self.num_sines + int(self.gated)

    def prepare(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Omega^Q, Omega^K (B,H,T,D,2 N_f), laid out [cos_1..cos_N, sin_1..sin_N]."""
        f = torch.sigmoid(self.freq_logit) / 2
        with full_precision(pos):
            ang = 2 * math.pi * torch.einsum("btl,hdnl->bhtdn", pos.to(f.dtype), f)
        angq = ang + self.phase[:, None]
        lam = (F.softplus(self.gain_logit) / math.sqrt(self.num_sines))[:, None]  # (H,1,D,N)
        oq = torch.cat([torch.cos(angq) * lam, torch.sin(angq) * lam], -1)
        ok = torch.cat([torch.cos(ang) * lam, torch.sin(ang) * lam], -1)
        return oq, ok

    def transform_qk(self, q, k, code, layer):
        oq, ok = (c.to(q.dtype) for c in code)
        if not self.gated:
            return torch.einsum("bhtd,bhtdj->bhtj", q, oq), torch.einsum("bhtd,bhtdj->bhtj", k, ok)
        g = torch.sigmoid(self.gate[layer]).to(q.dtype).unsqueeze(1)  # (H,1,D)
        a, b = (1 - g).sqrt(), g.sqrt()
        qt = torch.einsum("bhtd,bhtdj->bhtj", q * a, oq)
        kt = torch.einsum("bhtd,bhtdj->bhtj", k * a, ok)
        return torch.cat([qt, (q * b).sum(-1, keepdim=True)], -1), torch.cat([kt, (k * b).sum(-1, keepdim=True)], -1)


class FStripeSFF(SineSPE):
    """F-StrIPE:SFF: gated sineSPE on structural (vector) positions, one learnable frequency per
    level per (h, d, sine); keys without phase. Defaults as the SPE baseline (R=64, K=5, gated, A9).
    """
