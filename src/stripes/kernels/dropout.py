"""CPU kernel of dropout: the mask cut from 16-bit random lanes, ties settled exactly.

On CPU, ``F.dropout`` spends most of its time drawing the Bernoulli mask: forward + backward
on an (8,1024,512) fp32 tensor took 43 ms on 2 cores against 16 ms with a 16-bit mask (one
64-bit ``random_`` word cut into four int16 lanes), where applying a mask costs about 3 ms.

A 16-bit threshold alone drops with probability round(p * 65536) / 65536 (0.1 -> 0.100006),
so a CPU run and a CUDA run (``F.dropout``) of one config would train with different rates.
Here p * 65536 = k + f (k integer, 0 <= f < 1): a lane u (uniform on 0..65535) drops when u < k,
and the lanes with u == k (one in 65536) draw a 64-bit word each and drop when it is below
f * 2^64. The drop probability is k / 2^16 + f / 2^16 = p, exactly as the float64 p states it
whenever p * 2^80 is an integer, which holds for every float64 p >= 2^-28 (smaller rates are
rounded to the nearest 2^-80). ``drop_split`` gives (k, f * 2^64); the test checks that they
sum back to p.

Speed, forward + backward of an (8,1024,512) fp32 tensor, the three interleaved, minimum of 40
runs on the 2-core shared Xeon of this project (torch 2.13.0+cpu, 2 threads, a load average of
6-15 from other jobs, so only the ordering within one run is meaningful): ``F.dropout`` 41.6 ms,
the old inexact 16-bit mask 29.5 ms, this exact mask 59.7 ms; a second run 109.4 / 90.4 /
153.8 ms; a mask of one whole 64-bit word per element (exact too, four times the bits) 43.1 ms
against 40.7 ms for ``F.dropout``. The tie pass (``==`` then ``nonzero`` over all lanes) costs
more than the 16 bits save, so ``auto`` leaves dropout to ``F.dropout`` on CPU; ``fast`` uses
this mask (rate exactly p). To be measured again on an idle machine.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import Tensor


def drop_split(p: float) -> tuple[int, int]:
    """(k, t): p = k / 2^16 + t / 2^80 exactly (p >= 2^-28; else t is rounded), 0 <= t < 2^64."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    scaled = Fraction(p) * 2**16
    k = math.floor(scaled)
    return k, round((scaled - k) * 2**64)


def drop_rate(p: float) -> Fraction:
    """The exact drop probability that ``bit_dropout_mask`` uses for p."""
    k, t = drop_split(p)
    return Fraction(k, 2**16) + Fraction(t, 2**80)


def bit_dropout_mask(shape, p: float, device=None) -> Tensor:
    """float32 mask of ``shape``: 0 with probability ``drop_rate(p)`` (= p), else 1 / (1 - p).

    Reference: the mask of ``torch.nn.functional.dropout(x, p, training=True)`` (same
    distribution, not the same draws: both come from torch's global RNG, so ``torch.manual_seed``
    and a restored RNG state reproduce either). The scale is 1 / (1 - p), as there.
    """
    k, t = drop_split(p)
    if k >= 2**16:
        return torch.zeros(shape, device=device)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:n]
    # comparing straight into float32 is one pass; a bool mask and torch.where take three
    mask = torch.empty(n, device=device)
    torch.ge(lanes, k - 2**15, out=mask)
    if t:
        ties = torch.nonzero(lanes == k - 2**15).squeeze(1)
        tie_words = torch.empty(ties.numel(), dtype=torch.int64, device=device).random_(-(2**63), None)
        mask[ties] = (tie_words >= t - 2**63).to(mask.dtype)
    return mask.view(shape).mul_(1 / (1 - p))


def bit_dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode dropout of x with drop probability p (see ``bit_dropout_mask``)."""
    if p == 0:
        return x
    return (x * bit_dropout_mask(x.shape, p, x.device)).to(x.dtype)


def residual_dropout(x: Tensor, branch: Tensor, p: float) -> Tensor:
    """x + bit_dropout(branch, p) as one ``addcmul``."""
    return torch.addcmul(x, branch, bit_dropout_mask(branch.shape, p, branch.device))


__all__ = ["bit_dropout", "bit_dropout_mask", "drop_rate", "drop_split", "residual_dropout"]
