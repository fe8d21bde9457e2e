"""Toy D=2 kernel analysis: PE-class scores equal the paper's closed forms; CLI writes outputs."""

import csv

import numpy as np

from stripes import toy


def test_dataset_matches_a22():
    d = toy.make_toy(seed=0)
    assert len(d.psi) == 30 and set(np.unique(d.context)) == set(range(5))
    np.testing.assert_allclose(np.unique(d.xi), np.arange(1, 6) * np.pi / 6)
    assert d.context[d.query] == 2
    assert np.abs(d.psi - d.xi).max() < 0.5


def test_pe_scores_equal_closed_forms():
    d = toy.make_toy(seed=1)
    freqs = np.linspace(0, 1, 5)
    ref = toy.closed_forms(d, freqs)
    for name in toy.PANELS:
        np.testing.assert_allclose(toy.pe_scores(name, d, freqs), ref[name], atol=1e-12)
    # the three kernels are genuinely different at f > 0 and RoPE = F-StrIPE1 = cos(dpsi) at f = 0
    assert not np.allclose(ref["RoPE"][1:], ref["F-StrIPE1"][1:])
    np.testing.assert_allclose(ref["RoPE"][0], ref["F-StrIPE1"][0])


def test_fstripe1_keeps_same_context_keys_on_top():
    d, freqs, scores = toy.compute(n_freqs=9)
    same = d.context == d.context[d.query]
    s = scores["F-StrIPE1"]
    assert (s[:, same].min(1) > s[:, ~same].max(1)).all()


def test_cli_writes_png_and_csv(tmp_path):
    png, out = tmp_path / "fig.png", tmp_path / "fig.csv"
    assert toy.main(["--out-png", str(png), "--out-csv", str(out), "--n-freqs", "5"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 * 5 * 30 and {r["panel"] for r in rows} == set(toy.PANELS)
