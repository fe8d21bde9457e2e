"""Metrics on hand-built pianorolls (paper-spec §5.2, §8.5). Every expected number is worked
out by hand in the comment next to it, so a change of definition (onsets, units, eps, scaling,
partial units) makes a test fail."""

from __future__ import annotations

import numpy as np
import pytest

from stripes import metrics as M

C, E, G = 60, 64, 67


def roll(T: int, notes) -> np.ndarray:
    """notes: (pitch, start, end_exclusive) -> (T, 128) binary roll."""
    x = np.zeros((T, 128), dtype=np.float32)
    for p, s, e in notes:
        x[s:e, p] = 1
    return x


def test_onsets_count_rearticulation_and_first_frame():
    # x(-1) = 0: a note active at frame 0 has its onset at 0; a gap re-articulates
    x = roll(6, [(C, 0, 2), (C, 3, 5)])
    on = M.onsets(x)
    assert on[:, C].tolist() == [1, 0, 0, 1, 0, 0]
    assert on.sum() == 2


def test_identity_gives_perfect_scores():
    # onsets in both half-measures (C at 0, E at 32) so every unit is non-empty
    t = roll(64, [(C, 0, 8), (E, 32, 40)])
    assert M.chroma_similarity(t, t) == pytest.approx(100.0)
    assert M.ssm_distance(t, t) == pytest.approx(0.0)
    assert M.grooving_similarity(t, t) == pytest.approx(100.0)
    assert M.note_density_distance(t, t) == pytest.approx(0.0)


def test_empty_prediction():
    t = roll(64, [(C, 0, 8), (E, 32, 40)])
    p = np.zeros_like(t)
    assert M.chroma_similarity(p, t) == pytest.approx(0.0)  # cos with an empty vector is 0
    assert M.note_density_distance(p, t) == pytest.approx(100.0)  # everything missing
    # quarters: onsets in q0 and q2 of 4 -> 2 of 4 target quarters are silent -> GS 50
    assert M.grooving_similarity(p, t) == pytest.approx(50.0)
    assert M.grooving_similarity(p, t) == pytest.approx(100.0 - M.onset_rate(t))
    # S_tgt = identity (C vs E orthogonal), S_pred = 0 -> mean |diff| = 2/4 = 0.5
    assert M.ssm_distance(p, t, scale=50) == pytest.approx(25.0)
    assert M.ssm_distance(p, t, scale=100) == pytest.approx(50.0)


def test_shift_by_a_quarter():
    # the prediction is the target delayed by 16 ticks: same chroma per half-measure, but every
    # onset lands in the other quarter and no 16th overlaps
    t = roll(64, [(C, 0, 4), (G, 32, 36)])
    p = roll(64, [(C, 16, 20), (G, 48, 52)])
    assert M.chroma_similarity(p, t) == pytest.approx(100.0)
    assert M.ssm_distance(p, t) == pytest.approx(0.0)
    assert M.grooving_similarity(p, t) == pytest.approx(0.0)  # g_t = 1010, g_p = 0101
    assert M.note_density_distance(p, t) == pytest.approx(100.0)


def test_swapped_half_measures_cs_zero_ssmd_zero():
    # C|G vs G|C: every half-measure has the wrong chroma (CS 0), the self-similarity structure
    # is identical (both identity matrices: SSMD 0)
    t = roll(64, [(C, 0, 4), (G, 32, 36)])
    p = roll(64, [(G, 0, 4), (C, 32, 36)])
    assert M.chroma_similarity(p, t) == pytest.approx(0.0)
    assert M.ssm_distance(p, t) == pytest.approx(0.0)


def test_cs_partial_overlap_and_octave_invariance():
    # one half-measure: target onsets C and E, prediction C -> cos = 1 / sqrt(2)
    t = roll(32, [(C, 0, 4), (E, 0, 4)])
    p = roll(32, [(C, 0, 4)])
    assert M.chroma_similarity(p, t) == pytest.approx(100 / np.sqrt(2))
    # C one octave up has the same chroma
    assert M.chroma_similarity(roll(32, [(C + 12, 5, 9), (E - 12, 0, 2)]), t) == pytest.approx(100.0)


def test_cs_counts_onsets_not_frames():
    # a C held for 31 frames vs a C struck once: the same chroma onset vector -> CS 100;
    # two C onsets + one E vs one C + one E: cos((2,1),(1,1)) = 3 / (sqrt5 sqrt2)
    assert M.chroma_similarity(roll(32, [(C, 0, 31)]), roll(32, [(C, 0, 1)])) == pytest.approx(100.0)
    p = roll(32, [(C, 0, 2), (C, 4, 6), (E, 0, 2)])
    t = roll(32, [(C, 0, 2), (E, 0, 2)])
    assert M.chroma_similarity(p, t) == pytest.approx(100 * 3 / (np.sqrt(5) * np.sqrt(2)))


def test_cs_silent_target_half_measure_scores_zero_even_when_equal():
    # a note sustained over both half-measures has one onset: unit 1 is empty in both rolls and
    # contributes cos = 0, so pred == tgt gives CS 50 (the papers' and S24 code's definition)
    t = roll(64, [(C, 0, 64)])
    assert M.chroma_similarity(t, t) == pytest.approx(50.0)


def test_ssmd_structure_difference():
    # target C|C (S all ones), prediction C|G (S identity): |diff| = [[0,1],[1,0]] -> mean 0.5
    t = roll(64, [(C, 0, 4), (C, 32, 36)])
    p = roll(64, [(C, 0, 4), (G, 32, 36)])
    assert M.ssm_distance(p, t, 50) == pytest.approx(25.0)
    assert M.ssm_distance(p, t, 100) == pytest.approx(50.0)
    s = M.self_similarity(t)
    assert s.shape == (2, 2) and np.allclose(s, 1.0)


def test_gs_quarter_agreement():
    # target onsets in quarters 0 and 1, prediction in quarters 0 and 2 (of 4): g_t = 1100,
    # g_p = 1010 -> agreement at q0 and q3 -> 50
    t = roll(64, [(C, 0, 4), (E, 16, 20)])
    p = roll(64, [(G, 2, 4), (E, 33, 40)])
    assert M.grooving_similarity(p, t) == pytest.approx(50.0)
    # an onset of a different pitch still counts as an onset in that quarter
    assert M.grooving_similarity(roll(64, [(G, 5, 6), (E, 20, 21)]), t) == pytest.approx(100.0)


def test_ndd_relative_missing_cells():
    # 16th 0: target C,E,G x 4 ticks = 12 cells, prediction C x 4 = 4 -> missing 8/12
    # 16th 1: target 1 cell (C at tick 4), prediction 0 -> missing 1
    # 16th 2..: target silent, prediction plays (not penalised, and not in the mean)
    t = roll(16, [(C, 0, 4), (E, 0, 4), (G, 0, 4), (C, 4, 5)])
    p = roll(16, [(C, 0, 4), (G, 8, 16)])
    assert M.note_density_distance(p, t) == pytest.approx(100 * (8 / 12 + 1) / 2)
    # denser prediction than target: clipped at 0 missing
    assert M.note_density_distance(roll(16, [(p_, 0, 16) for p_ in range(40, 80)]), t) == pytest.approx(0.0)
    # silent target: nothing to miss
    assert M.note_density_distance(p, np.zeros_like(t)) == 0.0


def test_partial_trailing_unit_is_kept():
    # T = 40: half-measures are [0,32) and the 8-tick partial [32,40); an onset at tick 36 lies
    # in the partial unit, which counts (zero-padding): CS(pred=tgt) = (0 + 1) / 2 = 50
    t = roll(40, [(C, 36, 38)])
    assert M.chroma_onsets(t).shape == (2, 12)
    assert M.chroma_similarity(t, t) == pytest.approx(50.0)
    # quarters: 3 (last one 8 ticks); empty prediction misses only q2 -> GS 2/3
    assert M.grooving_similarity(np.zeros_like(t), t) == pytest.approx(200 / 3)


@pytest.mark.parametrize("T", [128, 72])  # 72: partial half-measure, quarter and no partial 16th
def test_batch_matches_single_windows(T):
    # compute_metrics is the fast path used by evaluation; every reading must agree with the
    # reference single-metric functions, including the partial-unit handling
    rng = np.random.default_rng(0)
    p = (rng.random((3, T, 128)) > 0.97).astype(np.float32)
    t = (rng.random((3, T, 128)) > 0.97).astype(np.float32)
    allm = M.compute_metrics(p, t, s24=True)
    for i in range(3):
        assert allm["cs"][i] == pytest.approx(M.chroma_similarity(p[i], t[i]), rel=1e-5)
        # primary SSMD = the [S24]-code reading, x50 and x100; the papers' text is the variant
        assert allm["ssmd50"][i] == pytest.approx(M.ssm_distance_s24(p[i], t[i], scale=50), rel=1e-9)
        assert allm["ssmd100"][i] == pytest.approx(2 * allm["ssmd50"][i])
        assert allm["ssmd50_onset"][i] == pytest.approx(M.ssm_distance(p[i], t[i], 50), rel=1e-5)
        assert allm["ssmd100_onset"][i] == pytest.approx(2 * allm["ssmd50_onset"][i])
        assert allm["gs"][i] == pytest.approx(M.grooving_similarity(p[i], t[i]), rel=1e-5)
        assert allm["ndd"][i] == pytest.approx(M.note_density_distance(p[i], t[i]), rel=1e-5)
        # float64 on both paths: the histogram overlap agrees exactly, not approximately
        assert allm["gs_s24"][i] == M.grooving_similarity_s24(p[i], t[i])
        assert allm["ndd_s24"][i] == pytest.approx(M.note_density_distance_s24(p[i], t[i]), rel=1e-5)
    assert set(allm) == set(M.METRIC_NAMES) | set(M.VARIANT_NAMES) | {"onset_rate_pred", "onset_rate_tgt"}
    assert set(M.compute_metrics(p, t)) == set(M.METRIC_NAMES) | {"onset_rate_pred", "onset_rate_tgt"}


def test_reading_names():
    # the key contract of evaluation's CSVs and of the calibration table
    assert M.METRIC_NAMES == ("cs", "ssmd50", "ssmd100", "gs", "ndd")
    assert M.VARIANT_NAMES == ("ssmd50_onset", "ssmd100_onset", "gs_s24", "ndd_s24")
    assert M.READING_NAMES == ("cs_onset", "ssmd50_onset", "ssmd100_onset", "ssmd50_s24", "ssmd100_s24",
                               "gs_quarter", "gs_s24", "ndd_missing", "ndd_s24")
    with pytest.raises(KeyError, match="ssmd_s24"):
        M.metric_readings(np.zeros((32, 128)), np.zeros((32, 128)), ["ssmd_s24"])


def test_primary_ssmd_is_the_s24_reading_hand_values():
    # T = 8: four 2-tick units and one (partial) half-measure. Target: C over units 0-1, E in
    # unit 2, unit 3 silent. [S24] reading: S_t has the 2x2 C block (4 ones) + S(2,2) = 1 -> 5 of
    # 16 entries; an empty prediction has S_p = 0 -> mean 5/16 -> x50 = 15.625, x100 = 31.25.
    # Papers'-text reading: one half-measure with onsets C, E -> S_t = [[1]] -> x50 = 50.
    t = roll(8, [(C, 0, 4), (E, 4, 6)])
    p = np.zeros_like(t)
    m = M.compute_metrics(p, t, s24=True)
    assert m["ssmd50"][0] == 50 * 5 / 16
    assert m["ssmd100"][0] == 100 * 5 / 16
    assert m["ssmd50_onset"][0] == pytest.approx(50.0)
    assert M.ssm_distance_s24(p, t, scale=50) == 50 * 5 / 16


def test_ssmd_s24_counts_active_cells_not_onsets():
    # units 0 and 1 (ticks 0-3): target C and E held over both ticks of unit 0 -> (2, 2); in unit
    # 1 E stops after one tick -> (2, 1): S_t(0, 1) = cos((2,2),(2,1)) = 6 / (sqrt8 sqrt5) = 3/sqrt10.
    # The prediction holds E over unit 1 too -> (2, 2): S_p = all ones. Same onsets, so the
    # papers'-text reading sees no difference; the [S24] reading: |diff| = 1 - 3/sqrt10 at the
    # two off-diagonal entries of 4 -> x100 = 50 (1 - 3/sqrt10).
    t = roll(4, [(C, 0, 4), (E, 0, 3)])
    p = roll(4, [(C, 0, 4), (E, 0, 4)])
    assert M.ssm_distance_s24(p, t) == pytest.approx(50 * (1 - 3 / np.sqrt(10)), rel=1e-12)
    assert M.ssm_distance(p, t) == 0.0


def test_s24_variants_hand_values():
    # raw density: 16th 0 has |4 - 12| = 8, 16th 1 has |0 - 1| = 1, 16ths 2, 3: |8 - 0| = 8 -> 17/4
    t = roll(16, [(C, 0, 4), (E, 0, 4), (G, 0, 4), (C, 4, 5)])
    p = roll(16, [(C, 0, 4), (G, 8, 16)])
    assert M.note_density_distance_s24(p, t) == pytest.approx(17 / 4)
    # identical rolls: SSMD 0; histogram overlap = all 16ths in common bins / 20 bins
    assert M.ssm_distance_s24(t, t) == pytest.approx(0.0)
    assert M.grooving_similarity_s24(t, t) == pytest.approx(4 / 20)


def _onsets_per_16th(counts, T=16):
    """A roll whose 16th u has counts[u] onsets (distinct pitches struck at its first tick)."""
    return roll(T, [(40 + k, 4 * u, 4 * u + 1) for u, c in enumerate(counts) for k in range(c)])


def test_gs_s24_is_float64_at_bin_edges():
    # Per-16th onset counts: prediction (4, 2, 2, 1), norm 5 -> (0.8, 0.4, 0.4, 0.2); target
    # (6, 3, 2, 0), norm 7 -> (6/7, 3/7, 2/7, 0). Joint range [0, 6/7], 20 bins of width 3/70:
    #   prediction: 0.2 = 14/70 -> bin 4; 0.4 = 28/70 -> bin 9 (twice); 0.8 = 56/70 -> bin 18;
    #   target: 0 -> bin 0; 2/7 = 20/70 -> bin 6; 6/7 -> bin 19 (last bin is closed);
    #   3/7 = 30/70 lies exactly on edge 10. In float64 (the authors' code: numpy float64 rolls,
    #   torch normalize of a float64 tensor, np.histogram) edge 10 = 10 * (6/7) / 20 rounds to
    #   0.42857142857142860315, one ulp above the double 3/7 = 0.42857142857142854764, so 3/7
    #   falls in bin 9 with the prediction's two 0.4: overlap min(2, 1) = 1 -> GS = 1/20 = 0.05.
    #   In float32, 3/7 and edge 10 round to the same float and 3/7 lands in bin 10: GS 0.
    p = _onsets_per_16th([4, 2, 2, 1])
    t = _onsets_per_16th([6, 3, 2, 0])
    assert M.grooving_similarity_s24(p, t) == 0.05
    assert M.compute_metrics(p, t, s24=True)["gs_s24"][0] == 0.05
    # the rolls going in as float32 or bool must not change that
    assert M.grooving_similarity_s24(p.astype(bool), t.astype(bool)) == 0.05


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        M.chroma_similarity(np.zeros((32, 128)), np.zeros((64, 128)))


def test_ssm_sum_over_distinct_unit_pairs_equals_the_plain_u_by_u_mean():
    # _ssm_mean_abs_diff sums over the distinct (target, prediction) unit pairs with their counts;
    # the plain formula builds both U x U cosine matrices. Held chords repeat pairs, noise and
    # empty units add distinct and zero rows.
    rng = np.random.default_rng(3)
    ct = np.repeat(rng.integers(0, 3, (2, 12, 12)), 8, axis=1).astype(np.float64)  # (2, 96, 12)
    cp = ct.copy()
    cp[rng.random(cp.shape) < 0.02] += 1
    cp[:, :8] = 0
    unit = lambda c: c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), M.EPS)  # noqa: E731
    for block in (5, 256):
        for i in range(2):
            st, sp = unit(ct[i]) @ unit(ct[i]).T, unit(cp[i]) @ unit(cp[i]).T
            got = M._ssm_mean_abs_diff(cp[i : i + 1], ct[i : i + 1], block=block)[0]
            assert got == pytest.approx(np.abs(st - sp).mean(), rel=1e-12, abs=1e-15)
    assert M._ssm_mean_abs_diff(ct, ct).tolist() == [0.0, 0.0]
