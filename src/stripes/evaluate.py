"""Evaluation of a trained checkpoint (paper-spec §5.1-5.3, A16-A20).

``stripes evaluate --config run.json --checkpoint DIR/best.pt --out EVALDIR``
or ``evaluate(cfg, checkpoint, out_dir)``.

1. One forward pass per window, batched, ``model.eval()`` (the fixed FAVOR+ draw), sigmoid.
   Windows: 16-bar validation windows (for the selection), 16-bar test windows (in-domain) and
   64-bar test windows (length generalisation). Batches hold at most ``eval.max_batch_frames``
   frames (8 x 1024 or 2 x 4096 by default), so 64-bar inference fits a CPU.
2. Binarisation is selected on the validation windows over the grid of
   :func:`stripes.binarize.candidates` (``eval.strategies`` x ``eval.thresholds`` x ``eval.gaps``):
   highest mean CS, ties by GS, then grid order (A16). The chosen ``(strategy, threshold, gap)``
   is applied unchanged to both test settings. The best candidate per metric is recorded for
   reference (``binarization.per_metric``).
3. Metrics per window (piano track only, paper definitions: CS, SSMD x50 and x100, GS, NDD, plus
   the onset rates of A19; with ``eval.s24_metrics`` also the [S24]-code variants), written to
   ``windows_test_16.csv`` / ``windows_test_64.csv``; their means go to ``metrics.json``.
4. MIDI + PNG samples for ``eval.n_samples`` evenly spread windows per setting in
   ``EVALDIR/samples/``.

``metrics.json`` (docs/architecture.md), extra keys marked (+)::

    {"binarization": {"strategy", "threshold", "gap", "val_cs", "val_gs",
                      (+) "val_ssmd50", "val_ndd", "n_val_windows", "selection", "per_metric"},
     "test_16": {"cs", "ssmd50", "ssmd100", "gs", "ndd", "n_windows",
                 (+) "onset_rate_pred", "onset_rate_tgt", [gs_s24, ssmd_s24, ndd_s24]},
     "test_64": {... same ...},
     (+) "run", "checkpoint", "checkpoint_step", "metric_variant", "device", "wall_s"}

A setting without windows reports ``n_windows: 0`` and ``null`` metrics. The whole validation
grid (every candidate's mean cs, ssmd50, gs, ndd) goes to ``binarization_grid.csv``.
"""

from __future__ import annotations

import argparse
import csv
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
from stripes.train import (
    atomic_write_text,
    load_checkpoint,
    load_config,
    make_dataset,
    make_model,
    run_name,
    train_bars,
)

#: defaults of the ``eval:`` section (config/config.yaml documents each key).
EVAL_DEFAULTS: dict[str, Any] = {
    "strategies": ["threshold", "merge"],
    "thresholds": list(binmod.DEFAULT_THRESHOLDS),
    "gaps": list(binmod.DEFAULT_GAPS),
    "val_bars": None,
    "test_bars": None,
    "max_val_windows": None,
    "max_test_windows": None,
    "max_batch_frames": 8192,
    "s24_metrics": False,
    "n_samples": 4,
    "sample_settings": ["test_16", "test_64"],
    "device": "auto",
    "bf16": False,
    "num_threads": 0,
}

#: per-metric direction for the reference selection (True: higher is better)
_HIGHER_IS_BETTER = {"cs": True, "ssmd50": False, "gs": True, "ndd": False}


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
    """The ``eval`` section merged over :data:`EVAL_DEFAULTS` (unknown keys are an error)."""
    section = dict(cfg.get("eval") or {})
    unknown = set(section) - set(EVAL_DEFAULTS)
    if unknown:
        raise KeyError(f"unknown eval keys: {', '.join(sorted(unknown))}")
    return {**EVAL_DEFAULTS, **section}


@torch.no_grad()
def predict(model, ds, dev: torch.device, max_batch_frames: int = 8192, bf16: bool = False) -> dict[str, Any]:
    """Sigmoid probabilities of every window of ``ds`` (one forward pass each, batched).

    Returns:
        dict with ``prob`` float32 (N, W, 128), ``target`` bool (N, W, 128), ``song`` and
        ``start`` lists.
    """
    model.eval()
    n = len(ds)
    if n == 0:
        return {"prob": np.zeros((0, 0, 128), np.float32), "target": np.zeros((0, 0, 128), bool), "song": [], "start": []}
    window = int(ds[0]["x"].shape[0])
    bs = max(1, int(max_batch_frames) // window)
    probs, targets, songs, starts = [], [], [], []
    for i in range(0, n, bs):
        items = [ds[j] for j in range(i, min(n, i + bs))]
        x = torch.stack([torch.as_tensor(it["x"]) for it in items]).to(dev)
        pos = torch.stack([torch.as_tensor(it["pos"]) for it in items]).to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(bf16)):
            logits = model(x, pos)
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        targets.append(np.stack([np.asarray(it["y"]) > 0.5 for it in items]))
        songs += [str(it["song"]) for it in items]
        starts += [int(it["start"]) for it in items]
    return {"prob": np.concatenate(probs), "target": np.concatenate(targets), "song": songs, "start": starts}


def select_binarization(prob: np.ndarray, target: np.ndarray, ec: dict) -> tuple[dict[str, Any], list[dict]]:
    """Grid search on validation windows.

    Returns:
        the ``binarization`` block of metrics.json and the whole grid (one row per candidate with
        its mean validation cs, ssmd50, gs, ndd; written to ``binarization_grid.csv``).
    """
    grid = binmod.candidates(ec["thresholds"], ec["gaps"], ec["strategies"])
    scores = binmod.evaluate_grid(binmod.iter_chunks(prob, target, 32), grid, metmod.compute_metrics)
    best = binmod.select(scores)
    per_metric = {}
    for name, higher in _HIGHER_IS_BETTER.items():
        vals = [s[name] for s in scores]
        i = int(np.argmax(vals) if higher else np.argmin(vals))
        per_metric[name] = {**grid[i].as_dict(), "value": vals[i]}
    chosen = grid[best]
    return {
        **chosen.as_dict(),
        "val_cs": scores[best]["cs"],
        "val_gs": scores[best]["gs"],
        "val_ssmd50": scores[best]["ssmd50"],
        "val_ndd": scores[best]["ndd"],
        "n_val_windows": int(len(prob)),
        "selection": "max validation CS, ties by GS, then grid order",
        "per_metric": per_metric,
    }, [{**c.as_dict(), **{k: s[k] for k in ("cs", "ssmd50", "gs", "ndd")}} for c, s in zip(grid, scores)]


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


def read_window_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


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
    if dev.type == "cpu":
        devmod.keep_freed_memory()
    devmod.seed_everything(int((cfg.get("run") or {}).get("seed", 0)))

    ck = load_checkpoint(checkpoint)
    model = make_model(cfg)
    model.load_state_dict(ck["model"])
    model.to(dev).eval()

    val_ds = make_dataset(cfg, "val", int(ec["val_bars"] or train_bars(cfg)), ec["max_val_windows"])
    val = predict(model, val_ds, dev, ec["max_batch_frames"], ec["bf16"])
    if len(val["prob"]) == 0:
        raise ValueError(f"run {run_name(cfg)}: no validation windows to select the binarisation on")
    binarization, grid_rows = select_binarization(val["prob"], val["target"], ec)
    del val
    keys = list(grid_rows[0])
    atomic_write_text(out / "binarization_grid.csv", "\n".join(
        [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in grid_rows]) + "\n")
    chosen = binmod.Candidate(binarization["strategy"], binarization["threshold"], binarization["gap"])

    result: dict[str, Any] = {"binarization": binarization}
    sample_items = []
    for bars in test_bars(cfg):
        setting = f"test_{int(bars)}"
        ds = make_dataset(cfg, "test", int(bars), ec["max_test_windows"])
        pr = predict(model, ds, dev, ec["max_batch_frames"], ec["bf16"])
        # binarise in chunks of 32 windows (gap merging needs a few int32 copies of its input)
        pred = (np.concatenate([chosen.apply(pr["prob"][i : i + 32]) for i in range(0, len(pr["prob"]), 32)])
                if len(pr["prob"]) else pr["prob"] > 0.5)
        per_window = score_setting(pred, pr["target"], bool(ec["s24_metrics"]))
        n = int(len(pred))
        names = list(per_window) or list(metmod.METRIC_NAMES)
        block: dict[str, Any] = {k: (_finite(np.mean(per_window[k])) if n else None) for k in names}
        block["n_windows"] = n
        result[setting] = block
        write_window_csv(out / f"windows_{setting}.csv", pr["song"], pr["start"], per_window)
        if setting in ec["sample_settings"]:
            for i in smpmod.pick(n, int(ec["n_samples"])):
                sample_items.append({"setting": setting, "song": pr["song"][i], "start": pr["start"][i],
                                     "x": np.asarray(ds[i]["x"]), "pred": pred[i], "target": pr["target"][i]})
    if sample_items:
        smpmod.write_samples(out / "samples", sample_items)

    result.update({
        "run": run_name(cfg),
        "checkpoint": str(checkpoint),
        "checkpoint_step": int(ck.get("step", -1)),
        "metric_variant": "paper" + ("+s24" if ec["s24_metrics"] else ""),
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
    res = evaluate(load_config(args.config), args.checkpoint, args.out, device=args.device)
    print(json.dumps({k: res[k] for k in res if k.startswith("test_")} | {"binarization": {
        k: res["binarization"][k] for k in ("strategy", "threshold", "gap", "val_cs", "val_gs")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
