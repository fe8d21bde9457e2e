"""Metric calibration (stripes.calibrate): the reference predictions keep their promises, and every
reading of every metric scores them with hand-derived exact values on a tiny synthetic window."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from stripes import calibrate as K
from stripes import metrics as M

ROOT = Path(__file__).resolve().parents[1]
C, E, G = 60, 64, 67


def roll(T: int, notes) -> np.ndarray:
    """notes: (pitch, start, end_exclusive) -> (T, 128) bool roll."""
    x = np.zeros((T, 128), dtype=bool)
    for p, s, e in notes:
        x[s:e, p] = True
    return x


# T = 64: 2 half-measures, 4 quarters, 16 sixteenths, 32 two-tick units. C over ticks 0-7
# (16ths 0-1, 2-tick units 0-3), E over ticks 16-19 (quarter 1, 16th 4, units 8-9); the second
# half-measure is silent.
TARGET = roll(64, [(C, 0, 8), (E, 16, 20)])


@pytest.fixture(scope="module")
def rows():
    per = K.score([TARGET], ["empty", "target", "all_on"], seed=0, bars=1)
    return {name: {c: float(v[0]) for c, v in cols.items()} for name, cols in per.items()}


def test_target_row(rows):
    r = rows["target"]
    # CS = share of half-measures with onsets x 100: half 0 has onsets (cos 1), half 1 none (0)
    # (values exact up to the last ulp of the cosines: 2 / (sqrt2 sqrt2) rounds to 1 - 2^-53)
    assert r["cs_onset"] == pytest.approx(50.0, rel=1e-12)
    for c in ("ssmd50_onset", "ssmd100_onset", "ssmd50_s24", "ssmd100_s24", "ndd_missing", "ndd_s24"):
        assert r[c] == 0.0, c
    assert r["gs_quarter"] == 100.0
    # histogram overlap of identical patterns = all 16 sixteenths in common bins / 20 bins
    assert r["gs_s24"] == 16 / 20
    assert r["onset_rate_pred"] == r["onset_rate_tgt"] == 50.0  # onsets in quarters 0 and 1 of 4


def test_empty_row(rows):
    r = rows["empty"]
    assert r["cs_onset"] == 0.0
    assert r["ndd_missing"] == 100.0
    # GS = 100 - onset rate of the target = 100 - 50
    assert r["gs_quarter"] == 100.0 - r["onset_rate_tgt"] == 50.0
    # cells per 16th: 4 in 16ths 0, 1 and 4, else 0 -> mean |0 - n_t| = 12 / 16
    assert r["ndd_s24"] == 12 / 16
    # half-measure S_t = [[1, 0], [0, 0]], S_p = 0 -> mean 1/4 -> x50 = 12.5
    assert r["ssmd50_onset"] == pytest.approx(12.5, rel=1e-12)
    assert r["ssmd100_onset"] == pytest.approx(25.0, rel=1e-12)
    # 2-tick units: C block 4x4 + E block 2x2 = 20 ones of 32^2 -> x50 = 50 * 20 / 1024
    assert r["ssmd50_s24"] == pytest.approx(50 * 20 / 1024, rel=1e-12)
    assert r["ssmd100_s24"] == pytest.approx(100 * 20 / 1024, rel=1e-12)
    # target 16th onsets: 1 at 16ths 0 and 4 -> 1/sqrt2 twice, 0 x 14; the prediction's 16 zeros
    # share bin 0 with the target's 14 -> 14 / 20
    assert r["gs_s24"] == 14 / 20
    assert r["onset_rate_pred"] == 0.0


def test_all_on_row(rows):
    r = rows["all_on"]
    # every pitch starts at tick 0 only: chroma onsets of half 0 = 11 for chroma 0-7, 10 for
    # 8-11 (pitches 0..127); target half 0 = C + E (chroma 0 and 4): cos = 22 / (sqrt(8*121 +
    # 4*100) sqrt2) = 22 / sqrt(2736); half 1: empty target -> 0. CS = 100 * cos / 2
    assert r["cs_onset"] == pytest.approx(50 * 22 / np.sqrt(2736), rel=1e-12)
    # onsets only in quarter 0: agrees with the target at q0, q2, q3
    assert r["gs_quarter"] == 75.0
    assert r["onset_rate_pred"] == 25.0
    assert r["ndd_missing"] == 0.0  # nothing missing
    # 512 cells per 16th: |512 - 4| x 3 + 512 x 13 = 8180 over 16
    assert r["ndd_s24"] == 8180 / 16
    # half-measure onsets: S_p = [[1, 0], [0, 0]] = S_t
    assert r["ssmd50_onset"] == 0.0
    # every 2-tick unit has the same count vector: S_p = 1 everywhere; |1 - S_t| sums to 1024 - 20
    assert r["ssmd50_s24"] == pytest.approx(50 * 1004 / 1024, rel=1e-12)


def _target_with_notes():
    # 10 written ranges but 9 notes: E 0-16 and E 16-17 touch and make one run (0, 17)
    return roll(64, [(C, 0, 4), (C, 5, 9), (C, 20, 40), (E, 0, 16), (E, 16, 17), (G, 3, 64), (48, 10, 12),
                     (50, 30, 31), (72, 60, 64), (84, 0, 64)])


def _note_set(y):
    return set(zip(*[a.tolist() for a in K.notes(y)]))


def test_notes_are_maximal_runs():
    assert _note_set(_target_with_notes()) == {
        (C, 0, 4), (C, 5, 9), (C, 20, 40), (E, 0, 17), (G, 3, 64), (48, 10, 12), (50, 30, 31), (72, 60, 64),
        (84, 0, 64)}


# round(f x 9 notes), halves up: 0.9 -> 1, 2.25 -> 2, 4.5 -> 5
@pytest.mark.parametrize("fraction, expected", [(0.1, 1), (0.25, 2), (0.5, 5), (0.0, 0), (1.0, 9)])
def test_keep_keeps_the_right_number_of_whole_notes(fraction, expected):
    y = _target_with_notes()
    kept = K.reference_prediction(f"keep_{fraction:g}", y, np.random.default_rng(3))
    # every kept note is a whole note of the target, and nothing else is active
    assert len(_note_set(kept)) == expected
    assert _note_set(kept) <= _note_set(y)
    assert not (kept & ~y).any()


def test_shift_is_exactly_one_sixteenth():
    y = _target_with_notes()
    s = K.reference_prediction("shift16th", y, np.random.default_rng(0))
    assert s.shape == y.shape
    assert not s[:4].any()
    assert np.array_equal(s[4:], y[:-4])


def test_random_density_has_the_target_cell_count():
    y = _target_with_notes()
    a = K.reference_prediction("random_density", y, K.window_rng(0, 16, 7, "random_density"))
    b = K.reference_prediction("random_density", y, K.window_rng(0, 16, 7, "random_density"))
    c = K.reference_prediction("random_density", y, K.window_rng(0, 16, 8, "random_density"))
    assert a.sum() == y.sum()
    assert np.array_equal(a, b)  # seeded per (seed, setting, window, prediction)
    assert not np.array_equal(a, c)


def test_unknown_prediction_is_an_error():
    with pytest.raises(KeyError, match="nope"):
        K.reference_prediction("nope", TARGET, np.random.default_rng(0))


def test_paper_rows_from_the_reference_csv():
    rows = K.load_paper_rows(ROOT / "results" / "reference" / "paper_tables.csv")
    by = {(r["setting"], r["prediction"].split(" (")[1]): r for r in rows}
    s26 = by[("test_16", "s26_table2/rope_a/time)")]
    assert (s26["cs_onset"], s26["gs_quarter"], s26["gs_s24"], s26["ndd_missing"]) == (2.44, 7.46, 7.46, 94.1)
    # [S26] reports SSMD x50: under the x50 columns only
    assert s26["ssmd50_onset"] == s26["ssmd50_s24"] == 14.65 and s26["ssmd100_s24"] is None
    f25 = by[("test_64", "f25_table1/nope/time)")]
    assert f25["ssmd100_s24"] == 27.60 and f25["ssmd50_s24"] is None
    assert by[("test_64", "s26_table2/rope_b/time)")]["ssmd50_s24"] == 13.8


def test_broken_reference_names_the_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        K.load_paper_rows(missing)
    bad = tmp_path / "bad.csv"
    bad.write_text("table,pe\ns26_table2,rope_a\n")
    with pytest.raises(ValueError, match="bad.csv"):
        K.load_paper_rows(bad)
    partial = tmp_path / "partial.csv"
    partial.write_text("table,pe,context,setting,metric,mean\ns26_table2,rope_a,time,test_16,cs,2.44\n")
    with pytest.raises(KeyError, match="partial.csv"):
        K.load_paper_rows(partial)


def test_cli_on_prepared_songs(prepared_data, tmp_path):
    from stripes.cli import main

    data = prepared_data
    out_csv, out_md = tmp_path / "t" / "floor.csv", tmp_path / "t" / "floor.md"
    assert main(["calibrate", "--data-dir", str(data), "--bars", "16", "--out-csv", str(out_csv),
                 "--out-md", str(out_md)]) == 0
    with open(out_csv, newline="") as fh:
        table = list(csv.DictReader(fh))
    measured = {r["prediction"]: r for r in table if r["kind"] == "measured"}
    assert list(measured) == K.prediction_names()
    assert [r["prediction"].split(" (")[1] for r in table if r["kind"] == "paper"] == [
        "s26_table2/rope_a/time)", "f25_table1/nope/time)"]
    # the table means are the window means of a direct computation
    targets = K.load_targets(data, 16)
    assert int(measured["target"]["n_windows"]) == len(targets) > 0
    direct = M.metric_readings(np.zeros((len(targets), 1024, 128), bool), np.stack(targets))
    for c in M.READING_NAMES:
        assert float(measured["empty"][c]) == pytest.approx(direct[c].mean(), abs=1e-4), c
    assert float(measured["target"]["gs_quarter"]) == 100.0 and float(measured["empty"]["ndd_missing"]) == 100.0
    assert "calibrates the metrics" in out_md.read_text()
    # a length without windows is left out (smoke data sets); no window at all is an error
    # naming the data folder
    assert main(["calibrate", "--data-dir", str(data), "--bars", "16", "4096", "--out-csv", str(out_csv),
                 "--out-md", str(out_md)]) == 0
    with open(out_csv, newline="") as fh:
        assert {r["setting"] for r in csv.DictReader(fh)} == {"test_16"}
    with pytest.raises(ValueError, match=str(data)):
        main(["calibrate", "--data-dir", str(data), "--bars", "4096", "--out-csv", str(out_csv),
              "--out-md", str(out_md)])
