"""Objective metrics of a predicted piano pianoroll against its target (paper-spec §5.2).

All functions take **binary pianorolls** of shape ``(T, 128)`` (one window) or ``(N, T, 128)``
(N windows; the metric is computed per window) with time on the second-to-last axis at
16 ticks per quarter note in 4/4:

====================  ==========  =========================================
unit                  ticks       used by
====================  ==========  =========================================
2-tick unit           2           SSMD ([S24]-code reading)
16th note             4           NDD, GS ([S24]-code reading)
quarter note (beat)   16          GS
half-measure          32          CS, SSMD (papers'-text reading)
====================  ==========  =========================================

Definitions shared by all metrics:

* **Onsets.** ``on(t, p) = max(x(t, p) - x(t-1, p), 0)`` with ``x(-1, p) = 0``: a note that is
  held over several frames counts once; two re-articulations of a pitch without a silent frame
  in between count once (muspy-style pianorolls cannot tell them apart).
* **Chroma onset vector** of a unit u: ``c_k(u) = sum_{t in u} sum_{p mod 12 = k} on(t, p)``,
  k = 0..11 (pitch index p has chroma p mod 12).
* **Cosine** with eps: ``cos(a, b) = a.b / max(|a| |b|, 1e-6)``; a zero vector gives 0.
* **Partial units at the window end.** When T is not a multiple of the unit length, the window
  is zero-padded to the next multiple, i.e. the trailing partial unit is kept as a (shorter)
  unit. The paper's windows (1024 and 4096 frames) are multiples of every unit, so this only
  matters for other lengths.

Readings (spec A17). The papers' text and the [S24] code define SSMD, GS and NDD differently.
Each metric has a **primary reading**, behind the plain key of :func:`compute_metrics`: the one
whose no-information floor (an empty or near-empty prediction) lands on the papers' floor (the
NoPE / TIME rows), measured over the full test sets by ``stripes calibrate``
(results/tables/metric_floor.md; numbers and reasoning in docs/metric-readings.md). The other
readings are the variant keys ``<key>_<reading>``.

* **CS**: ``onset`` (half-measure chroma onsets; the papers' text and the code agree).
* **SSMD**: primary ``s24``, the [S24] code's chroma of active-cell counts per 2-tick unit
  (:func:`ssm_distance_s24`), at x50 ([S26]) and x100 ([F25]); variant ``onset``, the papers'
  text, half-measure chroma onsets (:func:`ssm_distance`).
* **GS**: primary ``quarter``, the papers' text, quarter-note onset agreement
  (:func:`grooving_similarity`); variant ``s24``, histogram overlap
  (:func:`grooving_similarity_s24`).
* **NDD**: primary ``missing``, the papers' text, share of the target's cells missing per 16th
  (:func:`note_density_distance`, A18); variant ``s24``, mean absolute cell-count difference
  (:func:`note_density_distance_s24`).

The empty prediction scores SSMD 23.4 (16 bars) / 21.1 (64 bars) at x50 under the ``onset``
reading, against the papers' 14.65 / 13.8; the ``s24`` reading gives 14.45 / 13.52.
"""

from __future__ import annotations

import numpy as np

TICKS_PER_QUARTER = 16
SIXTEENTH = 4
QUARTER = 16
HALF_MEASURE = 32
EPS = 1e-6

__all__ = [
    "onsets",
    "chroma_onsets",
    "chroma_similarity",
    "self_similarity",
    "ssm_distance",
    "grooving_similarity",
    "note_density_distance",
    "onset_rate",
    "compute_metrics",
    "grooving_similarity_s24",
    "ssm_distance_s24",
    "note_density_distance_s24",
    "metric_readings",
    "METRIC_NAMES",
    "METRICS",
    "GRID_NAMES",
    "higher_is_better",
    "READINGS",
    "READING_NAMES",
    "VARIANT_NAMES",
]

#: the four metrics of the papers' tables, in table order, with the direction of "better"
#: (the one place that says it: the tables, the significance marks, the best-of rows, the
#: binarisation rules and the tuning objective all read it through :func:`higher_is_better`).
METRICS: dict[str, str] = {"cs": "max", "ssmd": "min", "gs": "max", "ndd": "min"}

#: primary keys of :func:`compute_metrics` (each in its primary reading), in table order.
METRIC_NAMES = ("cs", "ssmd50", "ssmd100", "gs", "ndd")

#: the four metrics with SSMD on one scale (x50): the binarisation grid, its per-metric choices
#: and the evaluation-protocol tables report these.
GRID_NAMES = ("cs", "ssmd50", "gs", "ndd")


def higher_is_better(key: str) -> bool:
    """Whether a larger value of a metric key is better: ``cs``, ``gs`` (and their readings and
    ``val_`` forms) yes; ``ssmd50``, ``ssmd100``, ``ndd``, ``bce`` no."""
    base = key.removeprefix("val_").split("_")[0]
    base = "ssmd" if base.startswith("ssmd") else base
    if base == "bce":
        return False
    if base not in METRICS:
        raise KeyError(f"unknown metric {key!r}; known: {', '.join(METRICS)}, bce")
    return METRICS[base] == "max"


def _as_batch(roll) -> tuple[np.ndarray, bool]:
    arr = np.asarray(roll)
    if arr.ndim == 2:
        return arr[None], True
    if arr.ndim != 3:
        raise ValueError(f"expected a pianoroll of shape (T, P) or (N, T, P), got {arr.shape}")
    return arr, False


def _unbatch(values: np.ndarray, single: bool):
    return float(values[0]) if single else values


def _check_pair(pred, tgt, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, bool]:
    p, single = _as_batch(pred)
    t, _ = _as_batch(tgt)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    return (p > 0).astype(dtype), (t > 0).astype(dtype), single


def _unit_sum(arr: np.ndarray, unit: int) -> np.ndarray:
    """Sum ``arr`` (N, T, ...) over consecutive blocks of ``unit`` frames -> (N, ceil(T/unit), ...).

    The trailing partial block is zero-padded (kept as a shorter unit).
    """
    n, t = arr.shape[:2]
    n_units = -(-t // unit)
    pad = n_units * unit - t
    if pad:
        arr = np.concatenate([arr, np.zeros((n, pad) + arr.shape[2:], arr.dtype)], axis=1)
    return arr.reshape((n, n_units, unit) + arr.shape[2:]).sum(axis=2)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine along the last axis: ``a.b / max(|a| |b|, EPS)`` (zero vector -> 0)."""
    num = (a * b).sum(-1)
    den = np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), EPS)
    return num / den


def onsets(roll, dtype=np.float32) -> np.ndarray:
    """Onset pianoroll ``on(t, p) = max(x(t, p) - x(t-1, p), 0)`` with ``x(-1, p) = 0``.

    Args:
        roll: binary pianoroll (T, P) or (N, T, P).
        dtype: float type of the result.

    Returns:
        array of the same shape (float32 by default), 1 where a note starts.
    """
    x = (np.asarray(roll) > 0).astype(dtype)
    prev = np.zeros_like(x)
    prev[..., 1:, :] = x[..., :-1, :]
    return np.maximum(x - prev, 0.0)


def chroma_onsets(roll, unit: int = HALF_MEASURE) -> np.ndarray:
    """Chroma onset vectors ``c_k(u)`` per unit (default: half-measure of 32 ticks).

    Args:
        roll: binary pianoroll (T, P) or (N, T, P); pitch p has chroma p mod 12.
        unit: unit length in ticks.

    Returns:
        float32 (U, 12) or (N, U, 12) onset counts, U = ceil(T / unit).
    """
    arr, single = _as_batch(roll)
    on = onsets(arr)
    n, t, p = on.shape
    pad = (-p) % 12
    if pad:
        on = np.concatenate([on, np.zeros((n, t, pad), on.dtype)], axis=-1)
    chroma = on.reshape(n, t, -1, 12).sum(axis=2)
    out = _unit_sum(chroma, unit)
    return out[0] if single else out


def chroma_similarity(pred, tgt):
    """Chroma similarity CS (higher is better), in percent.

    ``CS = 100 * mean_u cos(c_pred(u), c_tgt(u))`` over the half-measures u (32 ticks) of the
    window, with c the chroma onset vector (module docstring). A half-measure where either
    vector is empty contributes 0, so even ``pred == tgt`` scores below 100 when the target has
    silent half-measures. Range 0..100 (counts are non-negative). The papers' text and the [S24]
    code agree on it: its only reading (``onset``, key ``cs`` of :func:`compute_metrics`).

    Args:
        pred, tgt: binary pianorolls (T, 128) or (N, T, 128).

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt)
    cs = 100.0 * _cos(chroma_onsets(p), chroma_onsets(t)).mean(axis=-1)
    return _unbatch(cs, single)


def self_similarity(roll, unit: int = HALF_MEASURE) -> np.ndarray:
    """Self-similarity matrix ``S(u, v) = cos(c(u), c(v))`` of the chroma onset vectors.

    Returns:
        (U, U) or (N, U, U) float array; rows/columns of empty units are 0.
    """
    c, single = _as_batch(chroma_onsets(roll, unit))
    s = _cos(c[:, :, None, :], c[:, None, :, :])
    return s[0] if single else s


def ssm_distance(pred, tgt, scale: float = 50.0):
    """Self-similarity matrix distance SSMD, papers'-text (``onset``) reading (lower is better).

    ``SSMD = scale * mean_{u,v} |S_tgt(u, v) - S_pred(u, v)|`` over all pairs of half-measures,
    S from :func:`self_similarity`. The mean lies in [0, 1] for onset counts, so the range is
    0..scale; ``scale = 50`` is [S26]'s "[0, 2] -> [0, 100]" scaling, ``scale = 100`` [F25]'s.
    Not the primary reading: its empty-prediction floor (23.4 at x50, 16 bars) is far above the
    papers' 14.65, which :func:`ssm_distance_s24` matches. This is the ``ssmd50_onset`` /
    ``ssmd100_onset`` variant of :func:`compute_metrics`.

    Args:
        pred, tgt: binary pianorolls (T, 128) or (N, T, 128).
        scale: 50 ([S26]) or 100 ([F25]).

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt)
    d = scale * np.abs(self_similarity(t) - self_similarity(p)).mean(axis=(-1, -2))
    return _unbatch(d, single)


def _quarter_onsets(roll: np.ndarray) -> np.ndarray:
    """g(q) per quarter note: 1 if any onset of any pitch falls in quarter q -> (N, Q) bool."""
    return _unit_sum(onsets(roll).sum(-1), QUARTER) > 0


def grooving_similarity(pred, tgt):
    """Grooving similarity GS (higher is better), in percent.

    ``GS = 100 * mean_q [g_pred(q) == g_tgt(q)]`` over the quarter notes q (16 ticks) of the
    window, where ``g(q) = 1`` if any onset (any pitch) falls in q, else 0; i.e.
    ``100 * (1 - mean XOR)``. Range 0..100 whatever the window length. An empty prediction
    scores the share of target quarters without onsets. The primary reading (``quarter``,
    key ``gs`` of :func:`compute_metrics`).

    Args:
        pred, tgt: binary pianorolls (T, 128) or (N, T, 128).

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt)
    gs = 100.0 * (_quarter_onsets(p) == _quarter_onsets(t)).mean(axis=-1)
    return _unbatch(gs, single)


def note_density_distance(pred, tgt):
    """Note density distance NDD (lower is better), in percent of missing pitches.

    For each 16th note u (4 ticks), ``n(u)`` = number of active (pitch, tick) cells in u.
    ``NDD = 100 * mean_{u : n_tgt(u) > 0} min(1, max(0, n_tgt(u) - n_pred(u)) / n_tgt(u))``:
    the share of the target's cells that the prediction lacks (extra predicted cells are not
    penalised), averaged over the 16ths where the target plays. Range 0..100; a window whose
    target is silent everywhere has nothing to miss and scores 0. The primary reading
    (``missing``, key ``ndd`` of :func:`compute_metrics`).

    Args:
        pred, tgt: binary pianorolls (T, 128) or (N, T, 128).

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt)
    n_p = _unit_sum(p.sum(-1), SIXTEENTH)
    n_t = _unit_sum(t.sum(-1), SIXTEENTH)
    mask = n_t > 0
    frac = np.minimum(1.0, np.maximum(0.0, n_t - n_p) / np.where(mask, n_t, 1.0))
    count = mask.sum(-1)
    ndd = 100.0 * np.where(count > 0, (frac * mask).sum(-1) / np.maximum(count, 1), 0.0)
    return _unbatch(ndd, single)


def onset_rate(roll):
    """Share of quarter notes (16 ticks) with at least one onset, in percent (spec A19).

    A diagnostic for GS: GS of an empty prediction equals ``100 - onset_rate(target)``.

    Returns:
        float (one window) or (N,) array.
    """
    arr, single = _as_batch((np.asarray(roll) > 0).astype(np.float32))
    return _unbatch(100.0 * _quarter_onsets(arr).mean(axis=-1), single)


# ---------------------------------------------------------------------------- [S24] code readings


def _sixteenth_onsets(x: np.ndarray) -> np.ndarray:
    """Onset counts of all pitches per 16th note, float64: (N, T, P) -> (N, ceil(T/4))."""
    return _unit_sum(onsets(x, np.float64).sum(-1), SIXTEENTH)


def _histogram_overlap(gp: np.ndarray, gt: np.ndarray, bins: int = 20) -> np.ndarray:
    """[S24] grooving similarity of per-16th onset counts ``gp``, ``gt`` (N, U) -> (N,).

    Kept in float64 from the counts to the bin edges, as in the authors' code (float64 numpy
    onsets, torch ``normalize`` of a float64 tensor, ``np.histogram`` with a float64 range): the
    counts are integers, so the norms are exact and every normalised value is a correctly rounded
    quotient, but many of them lie on a bin edge in exact arithmetic (e.g. 3/7 on edge 10 of
    [0, 6/7]) and the last ulp decides the bin. In float32 the score differed from the authors'
    on 12-25 % of real windows, by up to 9 points.
    """
    gp = np.asarray(gp, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    gp = gp / np.maximum(np.linalg.norm(gp, axis=-1, keepdims=True), 1e-12)
    gt = gt / np.maximum(np.linalg.norm(gt, axis=-1, keepdims=True), 1e-12)
    out = np.empty(len(gp))
    for i in range(len(gp)):
        lo = min(gp[i].min(), gt[i].min())
        hi = max(gp[i].max(), gt[i].max())
        hp, _ = np.histogram(gp[i], bins=bins, range=(lo, hi))
        ht, _ = np.histogram(gt[i], bins=bins, range=(lo, hi))
        out[i] = np.minimum(hp, ht).mean()
    return out


def grooving_similarity_s24(pred, tgt, bins: int = 20):
    """Grooving similarity, [S24]-code reading (histogram overlap; higher is better).

    The per-16th onset counts g(u) (all pitches) of each window are L2-normalised over the
    window; ``bins`` equal bins over the joint [min, max] of the normalised pred and target
    values give histograms h_pred, h_tgt, and ``GS_s24 = mean_b min(h_pred(b), h_tgt(b))``.
    Units: 16th notes per bin, so the range is 0..U/bins (U = number of 16ths: 12.8 for a
    16-bar window, 51.2 for 64 bars) and, unlike the quarter-note reading, the score grows
    with the window length. Computed in float64 end to end (see :func:`_histogram_overlap`).
    This is the ``gs_s24`` key of :func:`compute_metrics`.

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt, np.float64)
    return _unbatch(_histogram_overlap(_sixteenth_onsets(p), _sixteenth_onsets(t), bins), single)


def _unit_rows(c: np.ndarray) -> np.ndarray:
    """Rows of ``c`` scaled to unit L2 norm (zero rows stay zero), float64."""
    c = np.asarray(c, dtype=np.float64)
    return c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), EPS)


def _ssm_mean_abs_diff(cp: np.ndarray, ct: np.ndarray, block: int = 256) -> np.ndarray:
    """``mean_{u,v} |S_t(u, v) - S_p(u, v)|`` per window, S the cosine self-similarity of the
    unit vectors c (N, U, K) -> (N,).

    Units whose (target, prediction) vector pair is the same have the same row and column in
    both matrices, and music repeats such pairs a lot (a held chord is one pair for many
    units). So the sum runs over the M distinct pairs with their counts w:
    ``sum_{a,b} w_a w_b |S_t(a, b) - S_p(a, b)|``; the same value up to float rounding
    (tests/test_metrics.py compares it with the plain U x U formula), 8-17x faster on
    16- and 64-bar windows (docs/metric-readings.md). Row blocks of ``block`` keep memory at
    block x M floats (a 64-bar window has U = 2048 2-tick units). Unit-norm rows and a matrix
    product give the same cosine as ``a.b / max(|a| |b|, EPS)`` for count vectors (non-zero
    norms are >= 1).
    """
    up, ut = _unit_rows(cp), _unit_rows(ct)
    n, u = up.shape[:2]
    out = np.zeros(n)
    if u == 0:
        return out
    for i in range(n):
        pair = np.ascontiguousarray(np.concatenate([ut[i], up[i]], axis=1))
        keys = pair.view(np.dtype((np.void, pair.itemsize * pair.shape[1]))).ravel()
        _, first, w = np.unique(keys, return_index=True, return_counts=True)
        a, b, w = ut[i][first], up[i][first], w.astype(np.float64)
        for r in range(0, len(first), block):
            out[i] += w[r : r + block] @ np.abs(a[r : r + block] @ a.T - b[r : r + block] @ b.T) @ w
    return out / (u * u)


def _chroma_counts(x: np.ndarray, unit: int) -> np.ndarray:
    """Chroma of active-cell counts per ``unit`` ticks: (N, T, P) -> (N, ceil(T/unit), 12)."""
    n, t, p = x.shape
    pad = (-p) % 12
    if pad:
        x = np.concatenate([x, np.zeros((n, t, pad), x.dtype)], axis=-1)
    return _unit_sum(x.reshape(n, t, -1, 12).sum(2), unit)


def ssm_distance_s24(pred, tgt, unit: int = 2, scale: float = 100.0):
    """Self-similarity matrix distance, [S24]-code reading (lower is better).

    ``c_k(u)`` = number of **active cells** (not onsets) of chroma k in 2-tick unit u (an 8th
    of a quarter note); S(u, v) = cos(c(u), c(v)) (0 for an empty unit);
    ``SSMD_s24 = scale * mean_{u,v} |S_tgt(u, v) - S_pred(u, v)|``. The mean lies in [0, 1], so
    the range is 0..scale: the authors' code uses 100; ``scale = 50`` is the [S26] "[0, 2] ->
    [0, 100]" scaling. Quadratic in T/2 (2048 x 2048 per 64-bar window), computed in row blocks.
    These are the ``ssmd50_s24`` / ``ssmd100_s24`` readings of :func:`compute_metrics`.

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt, np.float64)
    d = scale * _ssm_mean_abs_diff(_chroma_counts(p, unit), _chroma_counts(t, unit))
    return _unbatch(d, single)


def note_density_distance_s24(pred, tgt):
    """Note density distance, [S24]-code reading (lower is better).

    ``NDD_s24 = mean_u |n_pred(u) - n_tgt(u)|`` with n(u) the number of active (pitch, tick)
    cells in 16th note u. Units: cells per 16th (not a percentage), range 0..4 x 128. This is
    the ``ndd_s24`` key of :func:`compute_metrics`.

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt)
    d = np.abs(_unit_sum(p.sum(-1), SIXTEENTH) - _unit_sum(t.sum(-1), SIXTEENTH)).mean(-1)
    return _unbatch(d, single)


# ---------------------------------------------------------------------------- all at once

#: readings of each metric (paper-spec A17); the FIRST is the primary one, behind the plain key
#: (``cs``, ``ssmd50``/``ssmd100``, ``gs``, ``ndd``), the others are the variant keys
#: ``<key>_<reading>``. Chosen from the no-information floors (docs/metric-readings.md).
READINGS: dict[str, tuple[str, ...]] = {
    "cs": ("onset",),
    "ssmd": ("s24", "onset"),
    "gs": ("quarter", "s24"),
    "ndd": ("missing", "s24"),
}
_SCALED = {"ssmd": ("ssmd50", "ssmd100")}


def _reading_keys(metric: str, reading: str) -> list[str]:
    return [f"{k}_{reading}" for k in _SCALED.get(metric, (metric,))]


#: every ``<key>_<reading>`` of :func:`metric_readings`, in table order
READING_NAMES = tuple(
    key for m, rs in READINGS.items() for r in sorted(rs, key=("onset", "quarter", "missing", "s24").index)
    for key in _reading_keys(m, r)
)
#: variant keys of :func:`compute_metrics` (``s24=True``): the non-primary readings
VARIANT_NAMES = tuple(key for m, rs in READINGS.items() for r in rs[1:] for key in _reading_keys(m, r))


def _chroma_matrix(p: int) -> np.ndarray:
    m = np.zeros((p, 12), dtype=np.float64)
    m[np.arange(p), np.arange(p) % 12] = 1.0
    return m


def metric_readings(pred, tgt, readings=None) -> dict[str, np.ndarray]:
    """Every reading of every metric, per window, under explicit names (the fast path).

    Same definitions as the single-metric functions (a test checks they agree), computed with a
    few passes over bool arrays: the rolls are zero-padded to a multiple of 32 ticks once
    (partial units kept, padded units beyond the window dropped), onsets are ``x & ~x(t-1)``, and
    per-unit sums are taken before the pitch -> chroma folding.

    Args:
        pred, tgt: binary pianorolls (N, T, P) (a single (T, P) window is promoted).
        readings: names of :data:`READING_NAMES` to compute (default: all).

    Returns:
        dict of (N,) float64 arrays: the requested ``<key>_<reading>`` (``cs_onset``,
        ``ssmd50_onset``, ``ssmd100_onset``, ``ssmd50_s24``, ``ssmd100_s24``, ``gs_quarter``,
        ``gs_s24``, ``ndd_missing``, ``ndd_s24``) and always ``onset_rate_pred``,
        ``onset_rate_tgt`` (A19 diagnostics).
    """
    want = set(READING_NAMES if readings is None else readings)
    unknown = want - set(READING_NAMES)
    if unknown:
        raise KeyError(f"unknown metric readings: {', '.join(sorted(unknown))}")
    p, _ = _as_batch(pred)
    t, _ = _as_batch(tgt)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    p = p if p.dtype == bool else p > 0
    t = t if t.dtype == bool else t > 0
    n, length, pitches = p.shape
    pad = (-length) % HALF_MEASURE
    if pad:
        z = np.zeros((n, pad, pitches), dtype=bool)
        p, t = np.concatenate([p, z], axis=1), np.concatenate([t, z], axis=1)
    n_half = p.shape[1] // HALF_MEASURE
    n_quarter = p.shape[1] // QUARTER
    n_six = p.shape[1] // SIXTEENTH
    # the trailing padded units that lie entirely beyond T are not units of the window
    n_quarter_real = -(-length // QUARTER)
    n_six_real = -(-length // SIXTEENTH)
    n_pair_real = -(-length // 2)
    cm = _chroma_matrix(pitches)

    def parts(x):
        on = x.copy()
        on[:, 1:] &= ~x[:, :-1]
        r = {}
        r["quarter"] = on.reshape(n, n_quarter, QUARTER * pitches).any(axis=-1)[:, :n_quarter_real]
        if want & {"cs_onset", "ssmd50_onset", "ssmd100_onset"}:
            r["chroma"] = on.reshape(n, n_half, HALF_MEASURE, pitches).sum(axis=2, dtype=np.int32) @ cm
        if want & {"ndd_missing", "ndd_s24"}:
            r["density"] = x.reshape(n, n_six, SIXTEENTH * pitches).sum(-1, dtype=np.int32)[:, :n_six_real]
            r["density"] = r["density"].astype(np.float64)
        if "gs_s24" in want:
            r["groove"] = on.reshape(n, n_six, SIXTEENTH * pitches).sum(-1, dtype=np.int64)[:, :n_six_real]
        if want & {"ssmd50_s24", "ssmd100_s24"}:
            # strided uint8 add + float32 product: 5x faster than a reduction over a length-2
            # axis, and exact (counts <= 2 x 11)
            pairs = x[:, 0::2].view(np.uint8) + x[:, 1::2].view(np.uint8)
            r["counts"] = (pairs[:, :n_pair_real].astype(np.float32) @ cm.astype(np.float32)).astype(np.float64)
        return r

    a, b = parts(p), parts(t)
    out = {"onset_rate_pred": 100.0 * a["quarter"].mean(-1), "onset_rate_tgt": 100.0 * b["quarter"].mean(-1)}
    if "cs_onset" in want:
        out["cs_onset"] = 100.0 * _cos(a["chroma"], b["chroma"]).mean(-1)
    if want & {"ssmd50_onset", "ssmd100_onset"}:
        d = _ssm_mean_abs_diff(a["chroma"], b["chroma"])
        out["ssmd50_onset"], out["ssmd100_onset"] = 50.0 * d, 100.0 * d
    if want & {"ssmd50_s24", "ssmd100_s24"}:
        d = _ssm_mean_abs_diff(a["counts"], b["counts"])
        out["ssmd50_s24"], out["ssmd100_s24"] = 50.0 * d, 100.0 * d
    if "gs_quarter" in want:
        out["gs_quarter"] = 100.0 * (a["quarter"] == b["quarter"]).mean(-1)
    if "gs_s24" in want:
        out["gs_s24"] = _histogram_overlap(a["groove"], b["groove"])
    if "ndd_missing" in want:
        dp, dt = a["density"], b["density"]
        mask = dt > 0
        frac = np.minimum(1.0, np.maximum(0.0, dt - dp) / np.where(mask, dt, 1.0))
        count = mask.sum(-1)
        out["ndd_missing"] = 100.0 * np.where(count > 0, (frac * mask).sum(-1) / np.maximum(count, 1), 0.0)
    if "ndd_s24" in want:
        out["ndd_s24"] = np.abs(a["density"] - b["density"]).mean(-1)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items() if k in want or k.startswith("onset_rate")}


def compute_metrics(pred, tgt, s24: bool = False) -> dict[str, np.ndarray]:
    """All per-window metrics of a batch (used by evaluation and the selection grid).

    Args:
        pred, tgt: binary pianorolls (N, T, P) (a single (T, P) window is promoted).
        s24: also return the other readings of each metric (:data:`VARIANT_NAMES`).

    Returns:
        dict of (N,) float64 arrays: :data:`METRIC_NAMES` (``cs``, ``ssmd50``, ``ssmd100``,
        ``gs``, ``ndd``), each in its primary reading (the first of :data:`READINGS`),
        ``onset_rate_pred``, ``onset_rate_tgt`` (A19 diagnostics) and, with ``s24``, the
        variants ``<key>_<reading>`` (e.g. ``ssmd50_onset``, ``gs_s24``).
    """
    primary = {key: f"{key}_{rs[0]}" for m, rs in READINGS.items() for key in _SCALED.get(m, (m,))}
    want = set(primary.values()) | (set(VARIANT_NAMES) if s24 else set())
    r = metric_readings(pred, tgt, want)
    out = {key: r[name] for key, name in primary.items()}
    out["onset_rate_pred"], out["onset_rate_tgt"] = r["onset_rate_pred"], r["onset_rate_tgt"]
    if s24:
        out.update({k: r[k] for k in VARIANT_NAMES})
    return out
