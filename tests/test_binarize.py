"""Binarisation strategies and the validation selection rule (paper-spec §5.1, A16)."""

from __future__ import annotations

import numpy as np
import pytest

from stripes import binarize as B
from stripes import metrics as M


def col(values) -> np.ndarray:
    """One pitch row as a (T, 1) roll."""
    return np.asarray(values, dtype=np.float32)[:, None]


def test_threshold_is_inclusive():
    prob = col([0.1, 0.4, 0.5, 0.50001, 0.9])
    assert B.threshold(prob, 0.5)[:, 0].tolist() == [False, False, True, True, True]


@pytest.mark.parametrize(
    "row, gap, expected",
    [
        # gap of 2 silent frames between actives: filled when gap >= 2, kept when gap = 1
        ([1, 0, 0, 1], 2, [1, 1, 1, 1]),
        ([1, 0, 0, 1], 1, [1, 0, 0, 1]),
        # two gaps (2 and 3 frames): gap = 2 fills only the first; gap = 3 both
        ([1, 0, 0, 1, 0, 0, 0, 1], 2, [1, 1, 1, 1, 0, 0, 0, 1]),
        ([1, 0, 0, 1, 0, 0, 0, 1], 3, [1, 1, 1, 1, 1, 1, 1, 1]),
        # leading and trailing silence is never filled (no active frame on both sides)
        ([0, 0, 1, 0, 1, 0, 0], 5, [0, 0, 1, 1, 1, 0, 0]),
        # gap 0 leaves the roll unchanged
        ([1, 0, 1], 0, [1, 0, 1]),
    ],
)
def test_merge_gap_boundaries(row, gap, expected):
    assert B.merge_gaps(col(row), gap)[:, 0].astype(int).tolist() == expected


def test_merge_is_per_pitch_and_batched():
    # pitch 0 active at 0, pitch 1 active at 2: no same-pitch gap, nothing is filled
    x = np.zeros((2, 4, 3), dtype=bool)
    x[0, 0, 0] = x[0, 2, 1] = True
    x[1, 0, 2] = x[1, 3, 2] = True  # window 1: pitch 2 gap of 2 frames
    out = B.merge_gaps(x, 2)
    assert out[0].sum() == 2
    assert out[1, :, 2].tolist() == [True, True, True, True]


def test_merge_strategy_thresholds_first():
    prob = col([0.9, 0.3, 0.3, 0.9, 0.1])
    assert B.binarize(prob, "merge", 0.5, 2)[:, 0].tolist() == [True, True, True, True, False]
    # at threshold 0.2 the 0.3 frames are already on; the trailing 0.1 stays off
    assert B.binarize(prob, "threshold", 0.2)[:, 0].tolist() == [True, True, True, True, False]
    with pytest.raises(ValueError):
        B.binarize(prob, "topk", 0.5)


def test_candidate_grid_order():
    grid = B.candidates()
    assert len(grid) == 5 + 5 * 7
    assert grid[0] == B.Candidate("threshold", 0.2, 0)
    assert grid[5] == B.Candidate("merge", 0.2, 2)
    assert grid[-1] == B.Candidate("merge", 0.8, 14)
    assert B.candidates(strategies=["threshold"])[-1] == B.Candidate("threshold", 0.8, 0)


def test_select_by_cs_then_gs_then_order():
    scores = [
        {"cs": 50.0, "gs": 90.0},
        {"cs": 60.0, "gs": 10.0},  # best CS so far
        {"cs": 60.0, "gs": 20.0},  # same CS, better GS -> wins
        {"cs": 60.0, "gs": 20.0},  # exact tie -> the earlier one stays
        {"cs": 59.9, "gs": 99.0},
    ]
    assert B.select(scores) == 2


def test_selection_on_probability_rolls():
    # target: C (60) struck at tick 0 and held for 8 ticks, E (64) at tick 32; the model gives
    # the true notes 0.9 and a spurious G (67) 0.3. Threshold 0.2 keeps the G (CS < 100); every
    # threshold >= 0.4 and every merge variant with tau >= 0.4 reaches CS = GS = 100, so the rule
    # picks the earliest of those: plain threshold 0.4.
    tgt = np.zeros((1, 64, 128), dtype=bool)
    tgt[0, 0:8, 60] = True
    tgt[0, 32:36, 64] = True
    prob = np.where(tgt, 0.9, 0.0).astype(np.float32)
    prob[0, 2:4, 67] = 0.3
    grid = B.candidates()
    scores = B.evaluate_grid(B.iter_chunks(prob, tgt, 1), grid, M.compute_metrics)
    assert scores[0]["cs"] < 100.0 and scores[0]["n_windows"] == 1
    best = grid[B.select(scores)]
    assert best == B.Candidate("threshold", 0.4, 0)

    # now a broken note: C at 0.9 for ticks 0-3 and 8-11 with 0.1 in between (a re-articulation
    # the target does not have). Thresholding gives two C onsets vs one (CS unchanged, cos of
    # parallel vectors) but merging with gap >= 4 gives back a single note and the right NDD;
    # CS and GS tie, so the selection still prefers plain threshold (earliest) -- while the
    # per-metric NDD winner is a merge candidate.
    tgt2 = np.zeros((1, 32, 128), dtype=bool)
    tgt2[0, 0:12, 60] = True
    prob2 = np.zeros((1, 32, 128), dtype=np.float32)
    prob2[0, 0:4, 60] = prob2[0, 8:12, 60] = 0.9
    prob2[0, 4:8, 60] = 0.1
    scores2 = B.evaluate_grid([(prob2, tgt2)], grid, M.compute_metrics)
    ndd = [s["ndd"] for s in scores2]
    assert grid[int(np.argmin(ndd))] == B.Candidate("merge", 0.2, 4)
    assert min(ndd) == 0.0 and scores2[0]["ndd"] > 0.0
    assert grid[B.select(scores2)] == B.Candidate("threshold", 0.2, 0)
