"""Binarisation of predicted piano probabilities and its selection on validation (spec §5.1, A16).

Two strategies:

* ``threshold``: ``y = [prob >= tau]``.
* ``merge``: threshold, then in every pitch row fill each gap of at most ``gap`` silent frames
  that lies **between two active frames** of that row (leading and trailing silence is never
  filled).

A candidate is ``(strategy, threshold, gap)`` (gap 0 for ``threshold``). The grid is every
threshold alone plus every (threshold, gap) pair with merge, in that order.

Selection rules (``eval.selection``; :func:`select_rule`), all on the validation windows:

* ``fixed``: plain threshold at ``eval.threshold`` (no search);
* ``max_cs``: the highest mean validation CS; ties (equal after rounding to 1e-9) go to the
  higher mean GS, then to the earlier candidate in grid order (:func:`select`, paper-spec A16);
* ``min_ssmd``: the lowest mean validation SSMD, ties as above;
* ``max_cs_sparse``: ``max_cs`` among the candidates whose predictions are no denser than their
  targets (mean active cells per frame); the sparsest candidate when none is.

docs/evaluation-protocol.md compares the rules on the quick study and gives the evidence for
the default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from stripes.metrics import higher_is_better

DEFAULT_THRESHOLDS = (0.2, 0.4, 0.5, 0.6, 0.8)
SELECTION_RULES = ("fixed", "max_cs", "min_ssmd", "max_cs_sparse")
DEFAULT_GAPS = (2, 4, 6, 8, 10, 12, 14)
STRATEGIES = ("threshold", "merge")


@dataclass(frozen=True)
class Candidate:
    strategy: str  # "threshold" or "merge"
    threshold: float
    gap: int = 0

    def apply(self, prob: np.ndarray) -> np.ndarray:
        return binarize(prob, self.strategy, self.threshold, self.gap)

    def as_dict(self) -> dict:
        return asdict(self)


def threshold(prob: np.ndarray, tau: float) -> np.ndarray:
    """``prob >= tau`` as a bool array of the same shape."""
    return np.asarray(prob) >= tau


def gap_lengths(roll: np.ndarray, axis: int = -2) -> np.ndarray:
    """Length of the enclosed silent gap each frame belongs to (int32, same shape as ``roll``).

    For a silent frame t of a pitch with an active frame a < t before it and b > t after it (the
    nearest ones), the value is ``b - a - 1``; active frames and leading/trailing silence get a
    value larger than any gap (T + 1). ``merge_gaps(roll, s) == roll | (gap_lengths(roll) <= s)``.
    """
    x = np.asarray(roll) > 0
    axis = axis % x.ndim
    t = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = t
    idx = np.arange(t, dtype=np.int32).reshape(shape)
    # last active index at or before t (-1 if none); next active index at or after t (t if none)
    prev = np.maximum.accumulate(np.where(x, idx, np.int32(-1)), axis=axis)
    rev = np.flip(np.where(x, idx, np.int32(t)), axis=axis)
    nxt = np.flip(np.minimum.accumulate(rev, axis=axis), axis=axis)
    gl = nxt - prev - 1
    gl[x | (prev < 0) | (nxt >= t)] = t + 1
    return gl


def merge_gaps(roll: np.ndarray, gap: int, axis: int = -2) -> np.ndarray:
    """Fill every run of at most ``gap`` silent frames enclosed by active frames of the same pitch.

    Args:
        roll: binary array; time along ``axis`` (default -2, i.e. (..., T, P)).
        gap: longest gap (in frames) to fill; ``gap <= 0`` returns a copy.

    Returns:
        bool array of the same shape.

    A silent frame t of pitch p is filled when the previous active frame a < t and the next
    active frame b > t exist and the gap between them, ``b - a - 1``, is at most ``gap``.
    """
    x = np.asarray(roll) > 0
    if gap <= 0:
        return x.copy()
    return x | (gap_lengths(x, axis) <= gap)


def binarize(prob: np.ndarray, strategy: str, tau: float, gap: int = 0) -> np.ndarray:
    """Apply one strategy to probabilities (..., T, P) -> bool (..., T, P)."""
    if strategy == "threshold":
        return threshold(prob, tau)
    if strategy == "merge":
        return merge_gaps(threshold(prob, tau), gap)
    raise ValueError(f"unknown binarisation strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def candidates(
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    gaps: Sequence[int] = DEFAULT_GAPS,
    strategies: Sequence[str] = STRATEGIES,
) -> list[Candidate]:
    """The candidate grid in selection order (threshold first, then merge; ascending tau, gap)."""
    out: list[Candidate] = []
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown binarisation strategy {s!r}; known: {', '.join(STRATEGIES)}")
    if "threshold" in strategies:
        out += [Candidate("threshold", float(t), 0) for t in thresholds]
    if "merge" in strategies:
        out += [Candidate("merge", float(t), int(g)) for t in thresholds for g in gaps]
    if not out:
        raise ValueError("empty binarisation grid")
    return out


def select(scores: Sequence[dict]) -> int:
    """Index of the best candidate: highest ``cs``, ties by ``gs``, then the earliest.

    Args:
        scores: one dict per candidate (grid order) with mean validation ``cs`` and ``gs``.
    """
    return _best(scores, range(len(scores)), "cs")


def _best(scores: Sequence[dict], idx: Sequence[int], metric: str) -> int:
    sign = 1.0 if higher_is_better(metric) else -1.0
    best = idx[0]
    for i in idx:
        key = (round(sign * float(scores[i][metric]), 9), round(float(scores[i]["gs"]), 9))
        if key > (round(sign * float(scores[best][metric]), 9), round(float(scores[best]["gs"]), 9)):
            best = i
    return best


def select_rule(rule: str, grid: Sequence[Candidate], scores: Sequence[dict], fixed_threshold: float = 0.5) -> int:
    """Index into ``grid`` of the candidate that ``rule`` picks (module docstring).

    Args:
        rule: one of :data:`SELECTION_RULES`.
        grid: the candidates (grid order).
        scores: per candidate, its mean validation metrics (``cs``, ``ssmd50``, ``gs``; for
            ``max_cs_sparse`` also ``density_pred`` and ``density_tgt``).
        fixed_threshold: tau of the ``fixed`` rule; the grid must hold ``threshold`` at it.
    """
    if rule == "fixed":
        for i, c in enumerate(grid):
            if c.strategy == "threshold" and abs(c.threshold - float(fixed_threshold)) < 1e-12:
                return i
        raise ValueError(f"the binarisation grid has no plain threshold at {fixed_threshold}")
    allidx = list(range(len(grid)))
    if rule == "max_cs":
        return select(scores)
    if rule == "min_ssmd":
        return _best(scores, allidx, "ssmd50")
    if rule == "max_cs_sparse":
        sparse = [i for i in allidx if scores[i]["density_pred"] <= scores[i]["density_tgt"]]
        if not sparse:
            return min(allidx, key=lambda i: (scores[i]["density_pred"], i))
        return _best(scores, sparse, "cs")
    raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(SELECTION_RULES)}")


def evaluate_grid(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    grid: Sequence[Candidate],
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
) -> list[dict[str, float]]:
    """Mean metrics of every candidate over all windows.

    Args:
        batches: iterable of (prob (N, T, P), target (N, T, P)) chunks; iterated once.
        grid: the candidates.
        metric_fn: (pred, target) -> dict of per-window arrays (e.g. metrics.compute_metrics).

    Returns:
        one dict per candidate: metric name -> mean over windows, plus ``n_windows``.

    Per chunk and threshold the thresholded roll and its gap lengths are computed once and
    shared by all merge gaps of that threshold.
    """
    sums: list[dict[str, float]] = [dict() for _ in grid]
    n = 0
    for prob, tgt in batches:
        n += len(prob)
        tgt = np.asarray(tgt) > 0
        for tau in sorted({c.threshold for c in grid}):
            x = threshold(prob, tau)
            gl = None
            for i, cand in enumerate(grid):
                if cand.threshold != tau:
                    continue
                if cand.strategy == "merge" and cand.gap > 0:
                    gl = gap_lengths(x) if gl is None else gl
                    pred = x | (gl <= cand.gap)
                else:
                    pred = x
                for k, v in metric_fn(pred, tgt).items():
                    sums[i][k] = sums[i].get(k, 0.0) + float(np.sum(v))
    return [{**{k: v / max(n, 1) for k, v in acc.items()}, "n_windows": n} for acc in sums]


def iter_chunks(prob: np.ndarray, tgt: np.ndarray, size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Split (N, T, P) arrays into chunks of ``size`` windows."""
    for i in range(0, len(prob), size):
        yield prob[i : i + size], tgt[i : i + size]
