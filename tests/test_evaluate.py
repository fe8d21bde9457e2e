"""Evaluation: metrics.json contract, selection on validation applied unchanged to both test
settings, per-window CSVs consistent with a recomputation, MIDI/PNG samples that round-trip.

Four synthetic POP909 songs (conftest.prepared_data: the real data stage) and the real model at a
tiny size."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stripes import binarize as B
from stripes import evaluate as E
from stripes import metrics as M
from stripes import samples as S
from stripes import train as T

ROOT = Path(__file__).resolve().parents[1]
# SSMD is quadratic in the window length and is scored for every binarization candidate on every
# validation window: tests that do not look at the selection score one candidate
ONE_CANDIDATE = {"thresholds": [0.5], "gaps": [2], "strategies": ["threshold"]}


def test_roll_to_midi_round_trip(tmp_path):
    # two C notes with a one-frame gap stay two notes; a note reaching the window end is closed
    roll = np.zeros((64, 128), dtype=bool)
    roll[0:4, 60] = roll[5:9, 60] = True
    roll[60:64, 67] = True
    assert S.roll_to_notes(roll) == [(0, 4, 60, 80), (5, 9, 60, 80), (60, 64, 67, 80)]
    bridge = np.zeros_like(roll)
    bridge[10:20, 50] = True
    path = S.write_midi(tmp_path / "a.mid", {"MELODY": roll, "BRIDGE": bridge, "PIANO": roll})
    from miditoolkit.midi.parser import MidiFile

    midi = MidiFile(str(path))
    assert midi.ticks_per_beat == 16
    assert [i.name for i in midi.instruments] == ["MELODY", "BRIDGE", "PIANO"]
    assert _roll_of(midi, "PIANO", 64).tolist() == roll.tolist()
    assert _roll_of(midi, "BRIDGE", 64).tolist() == bridge.tolist()


def _roll_of(midi, name: str, T_: int) -> np.ndarray:
    """Pianoroll of the instrument called ``name`` (miditoolkit drops note-less tracks on reading)."""
    x = np.zeros((T_, 128), dtype=bool)
    for inst in midi.instruments:
        if inst.name == name:
            for n in inst.notes:
                x[n.start : n.end, n.pitch] = True
    return x


@pytest.fixture(scope="module")
def evaluated(prepared_data, tmp_path_factory):
    from stripes.study import load_pe_registry

    base = tmp_path_factory.mktemp("eval")
    data = prepared_data
    registry = load_pe_registry({"pe_registry": str(ROOT / "config" / "pe.yaml")}, root=ROOT)
    cfg = {
        "run": {"pe": "rope_c", "context": "bin", "seed": 0, "stage": "train", "settings": ["test_16", "test_64"]},
        "data": {"out_dir": str(data), "window_bars": 16, "long_window_bars": 64},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 32, "n_features": 16, "chunk_size": 64},
        "train": {"lr": 3e-3, "batch_size": 2, "epochs": 2, "warmup_epochs": 1, "curriculum_epochs": 1,
                  "grad_clip": 1.0, "val_per_epoch": 1, "max_val_windows": 2, "num_threads": 1,
                  "progress": False, "device": "cpu"},
        "eval": {"n_samples": 1, "max_val_windows": 2, "s24_metrics": True, "device": "cpu",
                 "max_batch_frames": 4096},
        "pe_entry": {"name": "rope_c", **registry["rope_c"]},
    }
    n = torch.get_num_threads()
    T.train(cfg, base / "train")
    res = E.evaluate(cfg, base / "train" / "best.pt", base / "ev")
    torch.set_num_threads(n)
    return cfg, base, res


def test_metrics_json_contract(evaluated):
    cfg, base, res = evaluated
    js = json.loads((base / "ev" / "metrics.json").read_text())
    assert js == json.loads(json.dumps(res))
    b = js["binarization"]
    assert b["strategy"] in ("threshold", "merge") and b["threshold"] in (0.2, 0.4, 0.5, 0.6, 0.8)
    assert (b["gap"] == 0) == (b["strategy"] == "threshold")
    for k in ("val_cs", "val_gs"):
        assert isinstance(b[k], float)
    # the 4 test songs' split (song 001): 4 windows of 16 bars, 1 of 64 bars
    assert js["test_16"]["n_windows"] == 4 and js["test_64"]["n_windows"] == 1
    for setting in ("test_16", "test_64"):
        block = js[setting]
        for k in ("cs", "ssmd50", "ssmd100", "gs", "ndd", *M.VARIANT_NAMES, "onset_rate_pred"):
            assert isinstance(block[k], float), (setting, k)
        assert 0 <= block["cs"] <= 100 and 0 <= block["gs"] <= 100 and 0 <= block["ndd"] <= 100
        assert block["ssmd100"] == pytest.approx(2 * block["ssmd50"])


def test_selection_rules_on_validation_grid(evaluated):
    _, base, res = evaluated
    b = res["binarization"]
    grid = [{k: (v if k == "strategy" else float(v)) for k, v in r.items()}
            for r in csv.DictReader(open(base / "ev" / "binarization_grid.csv"))]
    assert len(grid) == 40 and b["n_val_windows"] == 2
    # the primary rule (default: fixed) is the plain threshold 0.5
    assert b["rule"] == "fixed" and (b["strategy"], b["threshold"], b["gap"]) == ("threshold", 0.5, 0)
    fixed = next(g for g in grid if g["strategy"] == "threshold" and g["threshold"] == 0.5)
    assert b["val_cs"] == pytest.approx(fixed["cs"])
    # max_cs: highest CS, ties by GS, then grid order
    best_cs = max(g["cs"] for g in grid)
    top = [g for g in grid if round(g["cs"], 9) == round(best_cs, 9)]
    best_gs = max(g["gs"] for g in top)
    first = next(g for g in top if round(g["gs"], 9) == round(best_gs, 9))
    mc = res["selections"]["max_cs"]
    assert (mc["strategy"], mc["threshold"], mc["gap"]) == (first["strategy"], first["threshold"], first["gap"])
    assert mc["val_cs"] == pytest.approx(best_cs)
    ms = res["selections"]["min_ssmd"]
    assert ms["val_ssmd50"] == pytest.approx(min(g["ssmd50"] for g in grid))
    sp = res["selections"]["max_cs_sparse"]
    sparse = [g for g in grid if g["density_pred"] <= g["density_tgt"]]
    if sparse:
        assert sp["val_cs"] == pytest.approx(max(g["cs"] for g in sparse))
    else:
        assert sp["val_density_pred"] == pytest.approx(min(g["density_pred"] for g in grid))
    assert b["per_metric"]["ndd"]["value"] == pytest.approx(min(g["ndd"] for g in grid))
    # every rule's test scores are recorded; the primary one is the test block itself
    for rule in ("fixed", "max_cs", "min_ssmd", "max_cs_sparse"):
        for setting in ("test_16", "test_64"):
            assert res["selections"][rule][setting]["n_windows"] == res[setting]["n_windows"]
    for setting in ("test_16", "test_64"):
        assert res["selections"]["fixed"][setting] == res[setting]


def test_bce_density_and_flags_recomputed(evaluated):
    cfg, base, res = evaluated
    model, _ = E.load_model(cfg, base / "train" / "best.pt", torch.device("cpu"))
    for bars in (16, 64):
        ds = T.make_dataset(cfg, "test", bars, None)
        x = torch.stack([torch.as_tensor(ds[i]["x"]) for i in range(len(ds))])
        pos = torch.stack([torch.as_tensor(ds[i]["pos"]) for i in range(len(ds))])
        y = torch.stack([torch.as_tensor(ds[i]["y"]) for i in range(len(ds))]).float()
        with torch.no_grad():
            logits = model(x, pos).double()
        p = torch.sigmoid(logits)
        # BCE by its definition, in float64 from the probabilities
        bce = -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean(dim=(1, 2)).numpy()
        block = res[f"test_{bars}"]
        rows = list(csv.DictReader(open(base / "ev" / f"windows_test_{bars}.csv")))
        np.testing.assert_allclose([float(r["bce"]) for r in rows], bce, rtol=1e-4)
        assert block["bce"] == pytest.approx(bce.mean(), rel=1e-4)
        pred = p.numpy() >= 0.5
        tgt = y.numpy() > 0.5
        assert block["density_pred"] == pytest.approx(pred.sum() / (len(ds) * pred.shape[1]), rel=1e-6)
        assert block["density_tgt"] == pytest.approx(tgt.sum() / (len(ds) * tgt.shape[1]), rel=1e-6)
        assert block["mean_prob"] == pytest.approx(float(p.mean()), rel=1e-4)
        assert block["flags"] == E.degenerate_flags(block["density_pred"], block["density_tgt"], 2.0)
    assert res["flags"] == sorted({f for s in ("test_16", "test_64") for f in res[s]["flags"]})


def test_degenerate_flags_exact():
    assert E.degenerate_flags(0.0, 3.0, 2.0) == ["empty"]
    assert E.degenerate_flags(6.0, 3.0, 2.0) == []  # exactly twice: not flagged
    assert E.degenerate_flags(6.01, 3.0, 2.0) == ["dense"]
    assert E.degenerate_flags(1.0, 3.0, 2.0) == []
    assert E.degenerate_flags(None, 3.0, 2.0) == []


def test_density_and_onsets_per_quarter_exact():
    roll = np.zeros((1, 32, 128), dtype=bool)
    roll[0, 0:4, 60] = True   # one note of 4 frames
    roll[0, 8:24, 64] = True  # one note of 16 frames
    roll[0, 8:10, 67] = True  # one note of 2 frames
    assert E.density(roll).tolist() == [22 / 32]
    assert E.onsets_per_quarter(roll).tolist() == [3 / 2]  # 3 onsets over 2 quarters


def test_select_rule_exact():
    grid = B.candidates([0.2, 0.5], [2], ["threshold", "merge"])
    # grid order: thr 0.2, thr 0.5, merge 0.2/2, merge 0.5/2
    scores = [
        {"cs": 30.0, "gs": 50.0, "ssmd50": 20.0, "density_pred": 9.0, "density_tgt": 4.0},
        {"cs": 20.0, "gs": 40.0, "ssmd50": 15.0, "density_pred": 3.0, "density_tgt": 4.0},
        {"cs": 30.0, "gs": 60.0, "ssmd50": 25.0, "density_pred": 11.0, "density_tgt": 4.0},
        {"cs": 22.0, "gs": 45.0, "ssmd50": 15.0, "density_pred": 4.0, "density_tgt": 4.0},
    ]
    assert B.select_rule("fixed", grid, scores, 0.5) == 1
    assert B.select_rule("max_cs", grid, scores) == 2        # CS tie 30/30 broken by GS
    assert B.select_rule("min_ssmd", grid, scores) == 3      # SSMD tie 15/15 broken by GS
    assert B.select_rule("max_cs_sparse", grid, scores) == 3  # only 1 and 3 are no denser than the target
    dense = [dict(s, density_pred=s["density_pred"] + 10) for s in scores]
    assert B.select_rule("max_cs_sparse", grid, dense) == 1  # none sparse: the sparsest
    with pytest.raises(ValueError, match="no plain threshold at 0.6"):
        B.select_rule("fixed", grid, scores, 0.6)
    with pytest.raises(ValueError, match="unknown selection rule"):
        B.select_rule("best", grid, scores)


def test_window_csvs_match_a_recomputation_with_the_chosen_binarization(evaluated):
    cfg, base, res = evaluated
    model, _ = E.load_model(cfg, base / "train" / "best.pt", torch.device("cpu"))
    chosen = B.Candidate(res["binarization"]["strategy"], res["binarization"]["threshold"], res["binarization"]["gap"])
    for bars in (16, 64):
        rows = list(csv.DictReader(open(base / "ev" / f"windows_test_{bars}.csv")))
        ds = T.make_dataset(cfg, "test", bars, None)
        pr = E.predict(model, ds, torch.device("cpu"), 4096)
        m = M.compute_metrics(chosen.apply(pr["prob"]), pr["target"])
        assert len(rows) == len(ds) == res[f"test_{bars}"]["n_windows"]
        for key in ("cs", "ssmd50", "gs", "ndd"):
            col = np.array([float(r[key]) for r in rows])
            np.testing.assert_allclose(col, m[key], atol=1e-4)
            assert res[f"test_{bars}"][key] == pytest.approx(col.mean(), abs=1e-5)
        assert [r["song"] for r in rows] == pr["song"]


def test_samples_written_and_consistent(evaluated):
    cfg, base, res = evaluated
    from miditoolkit.midi.parser import MidiFile

    sdir = base / "ev" / "samples"
    for setting, W in (("test_16", 1024), ("test_64", 4096)):
        mids = sorted(sdir.glob(f"{setting}_*_pred.mid"))
        assert len(mids) == 1
        stem = mids[0].name[: -len("_pred.mid")]
        assert (sdir / f"{stem}_target.mid").exists() and (sdir / f"{stem}.png").stat().st_size > 1000
        song, start = stem.split("_")[2], int(stem.split("_")[3])
        ds = T.make_dataset(cfg, "test", W // 64, None)
        item = next(ds[i] for i in range(len(ds)) if ds[i]["song"] == song and ds[i]["start"] == start)
        target = MidiFile(str(sdir / f"{stem}_target.mid"))
        pred = MidiFile(str(sdir / f"{stem}_pred.mid"))
        # melody/bridge identical in both files and equal to the input; target piano = ground truth
        assert _roll_of(target, "MELODY", W).tolist() == (item["x"][:, :128] > 0).numpy().tolist()
        assert _roll_of(pred, "BRIDGE", W).tolist() == (item["x"][:, 128:] > 0).numpy().tolist()
        assert _roll_of(target, "PIANO", W).tolist() == (item["y"] > 0).numpy().tolist()
        # predicted piano = the chosen binarisation of the model's probabilities for that window
        ck = T.load_checkpoint(base / "train" / "best.pt")
        model = T.make_model(cfg)
        model.load_state_dict(ck["model"])
        b = res["binarization"]
        i = next(i for i in range(len(ds)) if ds[i]["song"] == song and ds[i]["start"] == start)
        prob = E.predict(model, torch.utils.data.Subset(ds, [i]), torch.device("cpu"), W)["prob"]
        expected = B.Candidate(b["strategy"], b["threshold"], b["gap"]).apply(prob)[0]
        assert _roll_of(pred, "PIANO", W).tolist() == expected.tolist()


def test_missing_setting_reports_zero_windows(evaluated, tmp_path):
    cfg, base, _ = evaluated
    cfg = {**cfg, "eval": {**cfg["eval"], "test_bars": [128], "s24_metrics": False, "n_samples": 0,
                           "max_val_windows": 1, **ONE_CANDIDATE}}
    res = E.evaluate(cfg, base / "train" / "best.pt", tmp_path)
    assert res["test_128"] == {**{k: None for k in M.METRIC_NAMES}, "n_windows": 0, "flags": []}
    assert json.loads((tmp_path / "metrics.json").read_text())["test_128"]["cs"] is None


def test_cli_main(evaluated, tmp_path, capsys):
    cfg, base, _ = evaluated
    cfg = {**cfg, "eval": {**cfg["eval"], "s24_metrics": False, "n_samples": 0, "max_val_windows": 1, **ONE_CANDIDATE}}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    rc = E.main(["--config", str(tmp_path / "run.json"), "--checkpoint", str(base / "train" / "best.pt"),
                 "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert rc == 0 and (tmp_path / "ev" / "metrics.json").exists()
    assert "test_16" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
