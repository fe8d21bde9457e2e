"""NoPE: no positional information (paper-spec §3.4); FAVOR+ linear attention on the raw q, k."""

from __future__ import annotations

from .base import PositionalEncoding


class NoPE(PositionalEncoding):
    """Identity. Accepts every context (the positions are ignored)."""

    target = "none"
    attention = "linear"


class ExactNoPE(NoPE):
    """NoPE with exact causal softmax attention (SDPA): the quadratic baseline of the benchmarks."""

    attention = "exact"
