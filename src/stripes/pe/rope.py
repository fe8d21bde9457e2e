"""RoPE(A/B/C) with scalar or vector positions (paper-spec §3.6, A7, A26).

Positions stay separate from the rotation: ``RotaryAngles`` maps pos (B,T,L) to angles
theta (B,H,T,n) = pos . omega_{h,n}; ``rotate_pairs`` rotates the pairs (2d-1, 2d) of
x (B,H,T,D) by theta (B,H,T,D/2). Output D_in = D.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels import rotary
from .base import PositionalEncoding, full_precision

SCHEDULES = ("shared", "interleaved")
EVEN_HEAD_DIM = "needs an even head_dim (it rotates pairs of dimensions), got {}; choose d_model and n_heads with an even d_model / n_heads"


def rope_frequencies(n_heads: int, n_freq: int, schedule: str, base: float = 10000.0) -> Tensor:
    """(H, n_freq) scalar frequencies in rad per position unit; D = 2 n_freq.

    shared (RoPE A):      omega_d     = base^(-2(d-1)/D), the same for every head;
    interleaved (RoPE B): omega_{h,d} = base^(-(2(d-1) + 2h/H)/D), one log-spaced schedule
                          interleaved across heads (A26).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown frequency schedule {schedule!r}; use one of {SCHEDULES}")
    d = torch.arange(n_freq, dtype=torch.float64)
    h = torch.arange(n_heads, dtype=torch.float64).unsqueeze(1)
    offset = 2 * h / n_heads if schedule == "interleaved" else 0 * h
    return base ** (-(2 * d + offset) / (2 * n_freq))


class RotaryAngles(nn.Module):
    """theta_{h,n}(p) = omega_{h,n} . p with omega (H, n, L).

    For L > 1 (e.g. BIN) omega = f * u with u a fixed seeded random unit vector (A7): shared
    across heads for the "shared" schedule, one per head otherwise. ``repeat`` repeats each
    frequency (F-StrIPE1 gives both dims of a pair the pair's frequency). Learnable -> Parameter.
    """

    def __init__(self, n_heads: int, n_freq: int, context_dim: int, schedule: str = "interleaved",
                 learnable: bool = False, base: float = 10000.0, direction_seed: int = 0, repeat: int = 1):
        super().__init__()
        f = rope_frequencies(n_heads, n_freq, schedule, base).repeat_interleave(repeat, dim=1)
        if context_dim == 1:
            omega = f.unsqueeze(-1)
        else:
            gen = torch.Generator().manual_seed(direction_seed)
            heads = 1 if schedule == "shared" else n_heads
            u = torch.randn(heads, n_freq, context_dim, generator=gen, dtype=torch.float64)
            u = (u / u.norm(dim=-1, keepdim=True)).repeat_interleave(repeat, dim=1)
            omega = f.unsqueeze(-1) * u
        omega = omega.float()
        if learnable:
            self.omega = nn.Parameter(omega)
        else:
            self.register_buffer("omega", omega)

    def forward(self, pos: Tensor) -> Tensor:
        with full_precision(pos):
            omega = self.omega.to(torch.promote_types(self.omega.dtype, torch.float32))
            return torch.einsum("btl,hnl->bhtn", pos.to(omega.dtype), omega)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """R(theta) on each pair (x_{2d-1}, x_{2d}); x (...,D), cos/sin (...,D/2). Reference form."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class _RotaryPE(PositionalEncoding):
    """Shared machinery: angles theta (B,H,T,D/2) computed once per forward.

    Code: (cos theta, sin theta); with the rotary kernel (theta, exp(i theta)), see
    ``stripes.kernels.rotary.rotate``.
    """

    target = "qk"
    attention = "linear"

    def __init__(self, *, schedule: str, learnable: bool, base: float = 10000.0, direction_seed: int = 0,
                 share_layers: bool = True, **structural):
        super().__init__(share_layers=share_layers, **structural)
        if self.head_dim % 2:
            raise ValueError(f"{type(self).__name__} needs an even head_dim, got {self.head_dim}")
        self.angles = RotaryAngles(self.n_heads, self.head_dim // 2, self.context_dim, schedule, learnable,
                                   base, direction_seed)

    @classmethod
    def config_problems(cls, head_dim, kwargs):
        return [EVEN_HEAD_DIM.format(head_dim)] if head_dim % 2 else []

    def prepare(self, pos):
        with full_precision(pos):
            theta = self.angles(pos)
            if self.kernels_for(pos).rotary:
                with torch.no_grad():
                    return theta, rotary.phasor(theta)
            return torch.cos(theta), torch.sin(theta)


class RoPE(_RotaryPE):
    """Rotary PE, unpooled (U): q~ = (R(theta_d(p)) q_d)_d, D_in = D.

    Kwargs: schedule "shared" (A) | "interleaved" (B, C) [INF, A26]; learnable False (A, B) |
    True (C); base 10000 [MEM]; direction_seed 0 (random unit directions for L > 1, A7 [INF]).
    """

    def __init__(self, *, schedule: str = "interleaved", learnable: bool = False, base: float = 10000.0,
                 direction_seed: int = 0, share_layers: bool = True, **structural):
        super().__init__(schedule=schedule, learnable=learnable, base=base, direction_seed=direction_seed,
                         share_layers=share_layers, **structural)

    def transform_qk(self, q, k, code, layer):
        if self.kernels_for(q).rotary:
            theta, rot = code
            return rotary.rotate(q, theta, rot), rotary.rotate(k, theta, rot)
        cos, sin = code
        return rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
