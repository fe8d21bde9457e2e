"""Evaluation of a trained checkpoint (paper-spec §5.1-5.3, A16-A20).

``stripes evaluate --config run.json --checkpoint DIR/best.pt --out EVALDIR``
or ``evaluate(cfg, checkpoint, out_dir)``.

1. One forward pass per window, batched, ``model.eval()`` (the fixed FAVOR+ draw), sigmoid.
   Windows: 16-bar validation windows (for the selection), 16-bar test windows (in-domain) and
   64-bar test windows (length generalisation). Batches hold at most ``eval.max_batch_frames``
   frames (8 x 1024 or 2 x 4096 by default), so 64-bar inference fits a CPU.
2. Binarisation: every candidate of the grid of :func:`stripes.binarize.candidates`
   (``eval.strategies`` x ``eval.thresholds`` x ``eval.gaps``, plus the plain threshold at
   ``eval.threshold``) is scored on the validation windows, and every selection rule of
   :data:`stripes.binarize.SELECTION_RULES` picks its candidate (``fixed``, ``max_cs``,
   ``min_ssmd``, ``max_cs_sparse``). The rule named by ``eval.selection`` is the primary one:
   its candidate scores the ``test_16`` / ``test_64`` blocks and the tables. Every rule's test
   scores are kept under ``selections`` (docs/evaluation-protocol.md compares them).
3. Metrics per window (piano track only: CS, SSMD x50 and x100, GS, NDD in their primary
   readings (docs/metric-readings.md), the onset rates of A19, the test BCE in nats per cell
   (threshold-free, beyond the paper) and the densities; with ``eval.s24_metrics`` also the
   variant readings), written to ``windows_test_16.csv`` / ``windows_test_64.csv``; their means
   go to ``metrics.json``.
4. Degenerate output is flagged: a setting whose selected prediction has more than
   ``eval.dense_ratio`` times its target's active cells per frame is ``dense``; one without a
   single active cell is ``empty``. The flags go to the setting's ``flags`` and the top-level
   ``flags``; the tables mark such cells.
5. MIDI + PNG samples for ``eval.n_samples`` evenly spread windows per setting in
   ``EVALDIR/samples/``.

``metrics.json`` (docs/architecture.md), extra keys marked (+)::

    {"binarization": {"strategy", "threshold", "gap", "val_cs", "val_gs",
                      (+) "val_ssmd50", "val_ndd", "val_density_pred", "val_density_tgt",
                      "n_val_windows", "selection", "rule", "per_metric"},
     "test_16": {"cs", "ssmd50", "ssmd100", "gs", "ndd", "n_windows",
                 (+) "onset_rate_pred", "onset_rate_tgt", "bce", "density_pred", "density_tgt",
                 "onsets_per_quarter_pred", "onsets_per_quarter_tgt", "mean_prob", "flags",
                 [variant readings]},
     "test_64": {... same ...},
     (+) "selections": {rule: {"strategy", "threshold", "gap", "val_cs", "val_ssmd50", ...,
                               "test_16": {metric means}, "test_64": {...}}},
     (+) "flags", "run", "checkpoint", "checkpoint_step", "metric_variant", "device", "wall_s"}

Units: ``bce`` nats per cell (mean over windows of the mean over frames x 128 pitches);
``density_*`` active cells per frame; ``onsets_per_quarter_*`` note onsets (any pitch) per
quarter note; ``mean_prob`` the mean predicted probability over all cells.

A setting without windows reports ``n_windows: 0`` and ``null`` metrics. The whole validation
grid (every candidate's mean cs, ssmd50, gs, ndd, densities) goes to ``binarization_grid.csv``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stripes import binarize as binmod
from stripes import device as devmod
from stripes import metrics as metmod
from stripes import samples as smpmod
from stripes.fileio import atomic_write_text
from stripes.runconfig import load_run_config
from stripes.train import (
    load_checkpoint,
    make_dataset,
    make_model,
    run_name,
    train_bars,
)

# the eval section's defaults live in the config schema (stripes.schema.defaults("eval"))


def test_bars(cfg: dict) -> list[int]:
    """Test window lengths in bars: ``eval.test_bars``, else the ``test_<bars>`` entries of
    ``run.settings``, else ``data.window_bars`` and ``data.long_window_bars`` (16 and 64)."""
    ec = eval_config(cfg)
    if ec["test_bars"]:
        return [int(b) for b in ec["test_bars"]]
    settings = (cfg.get("run") or {}).get("settings")
    if settings:
        return [int(s.split("_", 1)[1]) for s in settings if s.startswith("test_")]
    data = cfg.get("data") or {}
    return [int(data.get("window_bars") or 16), int(data.get("long_window_bars") or 64)]


def eval_config(cfg: dict) -> dict[str, Any]:
    """The ``eval`` section merged over the schema's defaults; an unknown key raises
    ``stripes.schema.UnknownKeyError`` (a KeyError) naming it and the known keys."""
    from stripes.schema import with_defaults

    return with_defaults("eval", cfg.get("eval"))


@torch.no_grad()
def predict(model, ds, dev: torch.device, max_batch_frames: int = 8192, bf16: bool = False) -> dict[str, Any]:
    """Sigmoid probabilities of every window of ``ds`` (one forward pass each, batched).

    Returns:
        dict with ``prob`` float32 (N, W, 128), ``target`` bool (N, W, 128), ``bce`` float64 (N,)
        (per-window mean BCE in nats per cell), ``song`` and ``start`` lists.
    """
    model.eval()
    n = len(ds)
    if n == 0:
        return {"prob": np.zeros((0, 0, 128), np.float32), "target": np.zeros((0, 0, 128), bool),
                "bce": np.zeros(0), "song": [], "start": []}
    window = int(ds[0]["x"].shape[0])
    bs = max(1, int(max_batch_frames) // window)
    probs, targets, bces, songs, starts = [], [], [], [], []
    for i in range(0, n, bs):
        items = [ds[j] for j in range(i, min(n, i + bs))]
        x = torch.stack([torch.as_tensor(it["x"]) for it in items]).to(dev)
        pos = torch.stack([torch.as_tensor(it["pos"]) for it in items]).to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(bf16)):
            logits = model(x, pos)
        logits = logits.float()
        y = torch.stack([torch.as_tensor(it["y"]) for it in items]).to(dev).float()
        # from the logits, not the probabilities: log(sigmoid) saturates in float32
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        bces.append(bce.double().mean(dim=(1, 2)).cpu().numpy())
        probs.append(torch.sigmoid(logits).cpu().numpy())
        targets.append(y.cpu().numpy() > 0.5)
        songs += [str(it["song"]) for it in items]
        starts += [int(it["start"]) for it in items]
    return {"prob": np.concatenate(probs), "target": np.concatenate(targets), "bce": np.concatenate(bces),
            "song": songs, "start": starts}


def density(roll: np.ndarray) -> np.ndarray:
    """Active cells per frame of each window of a binary roll (N, T, P) -> (N,)."""
    roll = np.asarray(roll)
    return roll.reshape(len(roll), -1).sum(axis=1, dtype=np.int64) / max(roll.shape[1], 1)


def onsets_per_quarter(roll: np.ndarray) -> np.ndarray:
    """Note onsets (any pitch) per quarter note of each window (N, T, P) -> (N,)."""
    on = np.asarray(metmod.onsets(roll))
    return on.reshape(len(on), -1).sum(axis=1) / max(on.shape[1] / metmod.QUARTER, 1e-12)


def grid_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """The per-window scores of one candidate on validation: metrics + densities."""
    return {**metmod.compute_metrics(pred, target), "density_pred": density(pred), "density_tgt": density(target)}


def eval_grid(ec: dict) -> list[binmod.Candidate]:
    """The candidate grid, with the ``fixed`` rule's plain threshold in it."""
    thresholds = list(ec["thresholds"])
    if float(ec["threshold"]) not in [float(t) for t in thresholds]:
        thresholds.append(float(ec["threshold"]))
    return binmod.candidates(sorted(thresholds), ec["gaps"], sorted(set(ec["strategies"]) | {"threshold"},
                                                                    key=binmod.STRATEGIES.index))


_VAL_KEYS = (*metmod.GRID_NAMES, "density_pred", "density_tgt")


def select_binarization(prob: np.ndarray, target: np.ndarray, ec: dict) -> tuple[dict[str, Any], list[dict], dict]:
    """Score the grid on validation windows and apply every selection rule.

    Returns:
        the ``binarization`` block of metrics.json (the primary rule, ``eval.selection``), the
        whole grid (one row per candidate with its mean validation cs, ssmd50, gs, ndd and
        densities; written to ``binarization_grid.csv``) and, per rule, its chosen candidate
        with its validation scores.
    """
    grid = eval_grid(ec)
    allowed = set(ec["strategies"])
    scores = binmod.evaluate_grid(binmod.iter_chunks(prob, target, 32), grid, grid_metrics)
    # the fixed rule may add its plain threshold; the searching rules see only the configured grid
    searched = [i for i, c in enumerate(grid) if c.strategy in allowed and float(c.threshold) in
                [float(t) for t in ec["thresholds"]]]
    rules = {}
    for rule in binmod.SELECTION_RULES:
        if rule == "fixed":
            i = binmod.select_rule("fixed", grid, scores, ec["threshold"])
        else:
            j = binmod.select_rule(rule, [grid[k] for k in searched], [scores[k] for k in searched])
            i = searched[j]
        rules[rule] = {**grid[i].as_dict(), **{f"val_{k}": scores[i][k] for k in _VAL_KEYS}}
    per_metric = {}
    for name in metmod.GRID_NAMES:
        vals = [scores[k][name] for k in searched]
        j = searched[int(np.argmax(vals) if metmod.higher_is_better(name) else np.argmin(vals))]
        per_metric[name] = {**grid[j].as_dict(), "value": scores[j][name]}
    rule = ec["selection"]
    block = {
        **rules[rule],
        "n_val_windows": int(len(prob)),
        "rule": rule,
        "selection": SELECTION_TEXT[rule].format(threshold=ec["threshold"]),
        "per_metric": per_metric,
    }
    grid_rows = [{**c.as_dict(), **{k: s[k] for k in _VAL_KEYS}}
                 for c, s in zip(grid, scores)]
    return block, grid_rows, rules


SELECTION_TEXT = {
    "fixed": "fixed threshold {threshold}",
    "max_cs": "max validation CS, ties by GS, then grid order",
    "min_ssmd": "min validation SSMD, ties by GS, then grid order",
    "max_cs_sparse": "max validation CS among candidates no denser than their targets",
}


def validation_selection(cfg: dict, model, dev: torch.device) -> tuple[dict[str, Any], list[dict], dict]:
    """Predict the validation windows and run :func:`select_binarization` (evaluation and the
    tuning objective share it)."""
    ec = eval_config(cfg)
    val_ds = make_dataset(cfg, "val", int(ec["val_bars"] or train_bars(cfg)), ec["max_val_windows"])
    val = predict(model, val_ds, dev, ec["max_batch_frames"], ec["bf16"])
    if len(val["prob"]) == 0:
        raise ValueError(f"run {run_name(cfg)}: no validation windows to select the binarisation on")
    block, grid_rows, rules = select_binarization(val["prob"], val["target"], ec)
    block["val_bce"] = _finite(np.mean(val["bce"]))
    return block, grid_rows, rules


def selected_validation_score(cfg: dict, checkpoint: str | os.PathLike, device: str | None = None) -> dict[str, Any]:
    """The ``binarization`` block (the primary rule's candidate and its validation scores) of a
    checkpoint: what a tuning trial is scored by (``tune.objective: val_selected``)."""
    ec = eval_config(cfg)
    dev = devmod.select_device(device or ec["device"])
    model, _ = load_model(cfg, checkpoint, dev)
    block, _, _ = validation_selection(cfg, model, dev)
    return block


def load_model(cfg: dict, checkpoint: str | os.PathLike, dev: torch.device) -> tuple[torch.nn.Module, dict]:
    """The run's model with the weights of ``checkpoint``, on ``dev``, in eval mode; and the checkpoint."""
    ck = load_checkpoint(checkpoint)
    model = make_model(cfg)
    model.load_state_dict(ck["model"])
    model.to(dev).eval()
    return model, ck


def setting_summary(pred: np.ndarray, pr: dict, per_window: dict[str, np.ndarray], dense_ratio: float) -> dict:
    """Means of the per-window metrics + densities, mean probability and flags of one setting."""
    n = int(len(pred))
    block: dict[str, Any] = {k: (_finite(np.mean(v)) if n else None) for k, v in per_window.items()}
    block["mean_prob"] = _finite(np.mean(pr["prob"], dtype=np.float64)) if n else None
    block["n_windows"] = n
    block["flags"] = degenerate_flags(block.get("density_pred"), block.get("density_tgt"), dense_ratio)
    return block


def degenerate_flags(density_pred: float | None, density_tgt: float | None, dense_ratio: float) -> list[str]:
    """``["empty"]`` when nothing is predicted, ``["dense"]`` when the prediction has more than
    ``dense_ratio`` times the target's active cells per frame, else ``[]``."""
    if density_pred is None or density_tgt is None:
        return []
    if density_pred == 0:
        return ["empty"]
    if density_pred > dense_ratio * density_tgt:
        return ["dense"]
    return []


def score_windows(pred: np.ndarray, pr: dict, s24: bool) -> dict[str, np.ndarray]:
    """Per-window metrics, test BCE and densities of one setting."""
    per_window = score_setting(pred, pr["target"], s24)
    if not len(pred):
        return per_window
    per_window["bce"] = np.asarray(pr["bce"], dtype=np.float64)
    per_window["density_pred"] = density(pred)
    per_window["density_tgt"] = density(pr["target"])
    per_window["onsets_per_quarter_pred"] = onsets_per_quarter(pred)
    per_window["onsets_per_quarter_tgt"] = onsets_per_quarter(pr["target"])
    return per_window


def binarize_all(cand: binmod.Candidate, prob: np.ndarray) -> np.ndarray:
    # in chunks of 32 windows: gap merging needs a few int32 copies of its input
    if not len(prob):
        return prob > 0.5
    return np.concatenate([cand.apply(prob[i: i + 32]) for i in range(0, len(prob), 32)])


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(float(v)) else None


def score_setting(pred: np.ndarray, target: np.ndarray, s24: bool) -> dict[str, np.ndarray]:
    """Per-window metrics, computed in chunks of 32 windows."""
    parts = [metmod.compute_metrics(pred[i : i + 32], target[i : i + 32], s24=s24) for i in range(0, len(pred), 32)]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def write_window_csv(path: Path, songs: list, starts: list, per_window: dict[str, np.ndarray]) -> None:
    keys = list(per_window)
    lines = [",".join(["window", "song", "start", *keys])]
    for i, (song, start) in enumerate(zip(songs, starts)):
        lines.append(",".join([str(i), str(song), str(start), *(f"{per_window[k][i]:.6f}" for k in keys)]))
    atomic_write_text(path, "\n".join(lines) + "\n")


def evaluate(cfg: dict, checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, device: str | None = None) -> dict:
    """Evaluate ``checkpoint`` (best.pt or last.pt of :func:`stripes.train.train`).

    Writes ``metrics.json``, ``windows_test_16.csv``, ``windows_test_64.csv`` and ``samples/``
    into ``out_dir`` and returns the metrics dict.
    """
    t0 = time.perf_counter()
    ec = eval_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    devmod.set_num_threads(ec["num_threads"])
    dev = devmod.select_device(device or ec["device"])
    devmod.seed_everything(int((cfg.get("run") or {}).get("seed", 0)))

    model, ck = load_model(cfg, checkpoint, dev)

    binarization, grid_rows, rules = validation_selection(cfg, model, dev)
    keys = list(grid_rows[0])
    atomic_write_text(out / "binarization_grid.csv", "\n".join(
        [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in grid_rows]) + "\n")
    primary = ec["selection"]
    cands = {r: binmod.Candidate(v["strategy"], v["threshold"], v["gap"]) for r, v in rules.items()}
    selections: dict[str, Any] = {r: dict(v) for r, v in rules.items()}

    result: dict[str, Any] = {"binarization": binarization}
    sample_items = []
    s24 = bool(ec["s24_metrics"])
    for bars in test_bars(cfg):
        setting = f"test_{int(bars)}"
        ds = make_dataset(cfg, "test", int(bars), ec["max_test_windows"])
        pr = predict(model, ds, dev, ec["max_batch_frames"], ec["bf16"])
        scored: dict[binmod.Candidate, dict] = {}
        for rule, cand in cands.items():
            if cand not in scored:  # rules that agree share one scoring
                pred = binarize_all(cand, pr["prob"])
                per_window = score_windows(pred, pr, s24)
                scored[cand] = {"pred": pred, "per_window": per_window,
                                "block": setting_summary(pred, pr, per_window, float(ec["dense_ratio"]))}
            selections[rule][setting] = {k: v for k, v in scored[cand]["block"].items()}
        chosen = scored[cands[primary]]
        pred, per_window = chosen["pred"], chosen["per_window"]
        if not per_window:
            block = {k: None for k in metmod.METRIC_NAMES} | {"n_windows": 0, "flags": []}
        else:
            block = chosen["block"]
        result[setting] = block
        write_window_csv(out / f"windows_{setting}.csv", pr["song"], pr["start"], per_window)
        n = int(len(pred))
        if setting in ec["sample_settings"]:
            for i in smpmod.pick(n, int(ec["n_samples"])):
                sample_items.append({"setting": setting, "song": pr["song"][i], "start": pr["start"][i],
                                     "x": np.asarray(ds[i]["x"]), "pred": pred[i], "target": pr["target"][i]})
        del scored, pr
    result["selections"] = selections
    result["flags"] = sorted({f for k, v in result.items() if k.startswith("test_") for f in v.get("flags", [])})
    if sample_items:
        smpmod.write_samples(out / "samples", sample_items, audio_settings=ec["audio_settings"])

    result.update({
        "run": run_name(cfg),
        "checkpoint": str(checkpoint),
        "checkpoint_step": int(ck.get("step", -1)),
        # which reading each plain key holds (docs/metric-readings.md), and whether variants follow
        "metric_variant": "primary:" + ",".join(f"{m}={r[0]}" for m, r in metmod.READINGS.items())
                          + ("+variants" if ec["s24_metrics"] else ""),
        "device": devmod.describe(dev),
        "wall_s": time.perf_counter() - t0,
    })
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stripes evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="resolved run config (JSON)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by `stripes train` (best.pt)")
    parser.add_argument("--out", required=True, help="output folder (metrics.json, per-window CSVs, samples/)")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="overrides eval.device")
    args = parser.parse_args(argv)
    res = evaluate(load_run_config(args.config), args.checkpoint, args.out, device=args.device)
    print(json.dumps({k: res[k] for k in res if k.startswith("test_")} | {"binarization": {
        k: res["binarization"][k] for k in ("strategy", "threshold", "gap", "val_cs", "val_gs")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
