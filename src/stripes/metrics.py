"""Objective metrics of a predicted piano pianoroll against its target (paper-spec §5.2).

All functions take **binary pianorolls** of shape ``(T, 128)`` (one window) or ``(N, T, 128)``
(N windows; the metric is computed per window) with time on the second-to-last axis at
16 ticks per quarter note in 4/4:

====================  ==========  =========================================
unit                  ticks       used by
====================  ==========  =========================================
16th note             4           NDD
quarter note (beat)   16          GS
half-measure          32          CS, SSMD
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

Primary definitions are the papers' ([S26] §IV-F, [F25] §IV-E; spec A17, A18). The [S24]
code's variants (``*_s24`` functions) are kept for reference only.
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
    "METRIC_NAMES",
]

#: keys of :func:`compute_metrics` (paper definitions), in table order.
METRIC_NAMES = ("cs", "ssmd50", "ssmd100", "gs", "ndd")


def _as_batch(roll) -> tuple[np.ndarray, bool]:
    arr = np.asarray(roll)
    if arr.ndim == 2:
        return arr[None], True
    if arr.ndim != 3:
        raise ValueError(f"expected a pianoroll of shape (T, P) or (N, T, P), got {arr.shape}")
    return arr, False


def _unbatch(values: np.ndarray, single: bool):
    return float(values[0]) if single else values


def _check_pair(pred, tgt) -> tuple[np.ndarray, np.ndarray, bool]:
    p, single = _as_batch(pred)
    t, _ = _as_batch(tgt)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    return (p > 0).astype(np.float32), (t > 0).astype(np.float32), single


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


def onsets(roll) -> np.ndarray:
    """Onset pianoroll ``on(t, p) = max(x(t, p) - x(t-1, p), 0)`` with ``x(-1, p) = 0``.

    Args:
        roll: binary pianoroll (T, P) or (N, T, P).

    Returns:
        float32 array of the same shape, 1 where a note starts.
    """
    x = (np.asarray(roll) > 0).astype(np.float32)
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
    silent half-measures. Range 0..100 (counts are non-negative).

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
    """Self-similarity matrix distance SSMD (lower is better).

    ``SSMD = scale * mean_{u,v} |S_tgt(u, v) - S_pred(u, v)|`` over all pairs of half-measures,
    S from :func:`self_similarity`. The mean lies in [0, 1] for onset counts; ``scale = 50``
    reproduces [S26] (the paper's "[0, 2] -> [0, 100]" scaling) and ``scale = 100`` [F25].

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
    ``100 * (1 - mean XOR)``. An empty prediction scores the share of target quarters
    without onsets.

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
    target is silent everywhere has nothing to miss and scores 0.

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


# ---------------------------------------------------------------------------- [S24] code variants


def grooving_similarity_s24(pred, tgt, bins: int = 20):
    """[S24]-code grooving similarity (histogram overlap), for reference only.

    Per-16th onset counts (summed over pitches) are L2-normalised over the window; 20-bin
    histograms of the normalised pred and target values over their joint [min, max] range are
    intersected: ``GS_s24 = mean_b min(h_pred(b), h_tgt(b))`` (units: windows' 16ths per bin).

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt)

    def pattern(x):
        g = _unit_sum(onsets(x).sum(-1), SIXTEENTH)
        return g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)

    gp, gt = pattern(p), pattern(t)
    out = np.empty(len(gp))
    for i in range(len(gp)):
        lo = min(gp[i].min(), gt[i].min())
        hi = max(gp[i].max(), gt[i].max())
        hp, _ = np.histogram(gp[i], bins=bins, range=(lo, hi))
        ht, _ = np.histogram(gt[i], bins=bins, range=(lo, hi))
        out[i] = np.minimum(hp, ht).mean()
    return _unbatch(out, single)


def ssm_distance_s24(pred, tgt, unit: int = 2, scale: float = 100.0):
    """[S24]-code SSMD, for reference only.

    Chroma of active-cell **counts** (not onsets) per 2-tick unit, self-similarity by cosine,
    ``scale * mean |S_tgt - S_pred|`` with scale 100. Quadratic in T/2 (4096-frame windows give
    2048x2048 matrices per window).

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt)

    def ssm(x):
        n, tt, pp = x.shape
        pad = (-pp) % 12
        if pad:
            x = np.concatenate([x, np.zeros((n, tt, pad), x.dtype)], axis=-1)
        c = _unit_sum(x.reshape(n, tt, -1, 12).sum(2), unit)
        return _cos(c[:, :, None, :], c[:, None, :, :])

    out = np.array([scale * np.abs(ssm(t[i : i + 1]) - ssm(p[i : i + 1])).mean() for i in range(len(p))])
    return _unbatch(out, single)


def note_density_distance_s24(pred, tgt):
    """[S24]-code note density distance: ``mean_u |n_pred(u) - n_tgt(u)|`` (raw cell counts per 16th).

    Returns:
        float (one window) or (N,) array.
    """
    p, t, single = _check_pair(pred, tgt)
    d = np.abs(_unit_sum(p.sum(-1), SIXTEENTH) - _unit_sum(t.sum(-1), SIXTEENTH)).mean(-1)
    return _unbatch(d, single)


# ---------------------------------------------------------------------------- all at once


def _chroma_matrix(p: int) -> np.ndarray:
    m = np.zeros((p, 12), dtype=np.float64)
    m[np.arange(p), np.arange(p) % 12] = 1.0
    return m


def compute_metrics(pred, tgt, s24: bool = False) -> dict[str, np.ndarray]:
    """All per-window metrics of a batch (the fast path used by evaluation and the selection grid).

    Same definitions as the single-metric functions above (a test checks they agree), computed
    with a few passes over bool arrays: the rolls are zero-padded to a multiple of 32 ticks once
    (partial units kept), onsets are ``x & ~x(t-1)``, and per-unit sums are taken before the
    pitch -> chroma folding.

    Args:
        pred, tgt: binary pianorolls (N, T, P) (a single (T, P) window is promoted).
        s24: also compute the [S24]-code variants (``gs_s24``, ``ssmd_s24``, ``ndd_s24``).

    Returns:
        dict of (N,) float64 arrays: ``cs``, ``ssmd50``, ``ssmd100``, ``gs``, ``ndd`` (paper
        definitions), ``onset_rate_pred``, ``onset_rate_tgt`` (A19 diagnostics) and, with
        ``s24``, the code variants.
    """
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
    cm = _chroma_matrix(pitches)

    def parts(x):
        on = x.copy()
        on[:, 1:] &= ~x[:, :-1]
        per_unit = on.reshape(n, n_half, HALF_MEASURE, pitches).sum(axis=2, dtype=np.int32)
        chroma = per_unit @ cm  # (n, U, 12)
        quarter = on.reshape(n, n_quarter, QUARTER * pitches).any(axis=-1)[:, :n_quarter_real]
        density = x.reshape(n, n_six, SIXTEENTH * pitches).sum(axis=-1, dtype=np.int32)[:, :n_six_real]
        return chroma, quarter, density.astype(np.float64)

    cp, qp, dp = parts(p)
    ct, qt, dt = parts(t)
    sp = _cos(cp[:, :, None, :], cp[:, None, :, :])
    st = _cos(ct[:, :, None, :], ct[:, None, :, :])
    ssm = np.abs(st - sp).mean(axis=(-1, -2))
    mask = dt > 0
    frac = np.minimum(1.0, np.maximum(0.0, dt - dp) / np.where(mask, dt, 1.0))
    count = mask.sum(-1)
    out = {
        "cs": 100.0 * _cos(cp, ct).mean(-1),
        "ssmd50": 50.0 * ssm,
        "ssmd100": 100.0 * ssm,
        "gs": 100.0 * (qp == qt).mean(-1),
        "ndd": 100.0 * np.where(count > 0, (frac * mask).sum(-1) / np.maximum(count, 1), 0.0),
        "onset_rate_pred": 100.0 * qp.mean(-1),
        "onset_rate_tgt": 100.0 * qt.mean(-1),
    }
    if s24:
        pf, tf = p[:, :length], t[:, :length]
        out["gs_s24"] = np.asarray(grooving_similarity_s24(pf, tf)).reshape(-1)
        out["ssmd_s24"] = np.asarray(ssm_distance_s24(pf, tf)).reshape(-1)
        out["ndd_s24"] = np.asarray(note_density_distance_s24(pf, tf)).reshape(-1)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
