"""RoPEPool (paper-spec §3.11): rotate each pair, then sum the pair's two coordinates.

q (B,H,T,D) -> c (B,H,T,D/2), c_d = q_{2d-1}(cos + sin) + q_{2d}(cos - sin) with theta_{h,d}(p);
D_in = D/2. Kernel (eq. 23) has the RoPE Delta- terms plus Delta+ (absolute) terms.
"""

from __future__ import annotations

from .rope import _RotaryPE, rotate_pairs_complex


def pool_rotated_pairs(x, cos, sin):
    """[R(theta) x_d]_1 + [R(theta) x_d]_2 for each pair d; (...,D) -> (...,D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return x1 * (cos + sin) + x2 * (cos - sin)


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

    def transform_qk(self, q, k, code, layer):
        # Re + Im of (q_{2d-1} + i q_{2d}) exp(i theta) = pool_rotated_pairs(q, cos, sin), as one
        # complex multiply and a pair sum (tests compare it with the reference above)
        return _pool(q, code), _pool(k, code)


def _pool(x, rot):
    return rotate_pairs_complex(x, rot).unflatten(-1, (-1, 2)).sum(-1)
