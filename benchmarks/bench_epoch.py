"""One training epoch of a full paper run, timed, and the projection of the whole study.

    .venv/bin/python benchmarks/bench_epoch.py --device cuda [--pe rope_c --context bin]
        [--train-windows 3647 --val-windows 429] [--kernels auto] [--dtype fp32|bf16]
        [--steps N]  (time only the first N steps of the epoch and scale; default: the whole epoch)

It runs the training loop's own pieces (``stripes.train.new_train_state`` and
``stripes.train.train_step``: forward, BCE, backward, clipping, Adam, scheduler) at the paper's
size (the schema's model and train defaults: d_model 512, 2 layers, 4 heads, batch 8, 16-bar
windows of T = 1024) on synthetic windows (``bench_train._synthetic_batch``), over the step count
of one epoch of the full training set, then one validation pass (eval mode, no gradient) over
the validation windows. Defaults: 3647 training and 429 validation windows, the 16-bar window
counts of the full data stage (results/data/report.json of the quick study, 866 songs).

A full run = ``train.epochs`` x (epoch + ``train.val_per_epoch`` validation passes); the study =
every tuning trial (pairs x grid points, at full length unless tune.overrides shortens them) plus
every seed run (``stripes.study.plan_study`` of config/config.yaml). Goals (issue 13): one full
run in at most 5 minutes on one H100-class GPU, the whole study in at most 12 GPU-hours. The
length curriculum (shorter windows in the first epochs) makes a real run a little faster than this
projection. This is a benchmark: it prints numbers and the machine, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import _synthetic_batch  # noqa: E402  (same folder)


def study_size(config: Path) -> dict:
    """Tuning trials and seed runs of the full study (config/config.yaml, no overlay)."""
    from stripes.study import load_config, plan_study

    cfg = load_config(config)
    plan = plan_study(cfg)
    space = (cfg.get("tune") or {}).get("space") or {}
    grid = math.prod(len(v.get("choices", [])) or 1 for v in space.values()) if space else 1
    n_trials = (cfg.get("tune") or {}).get("n_trials") or grid
    return {"pairs": len(plan.pairs), "trials": len(plan.pairs) * n_trials, "runs": len(plan.runs)}


def main(argv=None) -> int:
    import torch

    from stripes import schema
    from stripes.train import new_train_state, train_step

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pe", default="rope_c")
    ap.add_argument("--context", default="bin")
    ap.add_argument("--train-windows", type=int, default=3647)
    ap.add_argument("--val-windows", type=int, default=429)
    ap.add_argument("--kernels", default="auto", choices=["auto", "reference", "fast"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=0, help="time only this many steps and scale to the epoch (0: all)")
    ap.add_argument("--T", type=int, default=None, help="window length in frames (default: 64 x data.window_bars)")
    ap.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    tc = schema.defaults("train")
    mc = {**schema.defaults("model"), "kernels": args.kernels}
    T = args.T or 64 * int(schema.defaults("data")["window_bars"])
    dev = torch.device(args.device)
    cfg = {"run": {"pe": args.pe, "context": args.context}, "model": mc}
    bs, vbs = int(tc["batch_size"]), int(tc["val_batch_size"])
    spe = math.ceil(args.train_windows / bs)
    torch.manual_seed(0)
    state = new_train_state(cfg, tc, dev, spe)
    bf16 = args.dtype == "bf16"
    batches = [dict(zip(("x", "y", "pos"), _synthetic_batch(bs, T, args.context, i))) for i in range(4)]

    for i in range(2):  # warm-up: kernels picked, caches filled
        train_step(state, batches[i], T, dev, bf16=bf16, grad_clip=float(tc["grad_clip"]), run="bench", epoch=0)
    n = min(args.steps or spe, spe)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for i in range(n):
        train_step(state, batches[i % len(batches)], T, dev, bf16=bf16, grad_clip=float(tc["grad_clip"]),
                   run="bench", epoch=0)
    train_s = (time.perf_counter() - t0) * spe / n

    state.model.eval()
    vx, _, vpos = (t.to(dev) for t in _synthetic_batch(vbs, T, args.context, 99))
    n_val = math.ceil(args.val_windows / vbs)
    n_val_timed = min(n_val, max(4, n // 4)) if args.steps else n_val
    with torch.no_grad():
        state.model(vx, vpos)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(n_val_timed):
            state.model(vx, vpos)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    val_s = (time.perf_counter() - t0) * n_val / n_val_timed

    epochs, vpe = int(tc["epochs"]), int(tc["val_per_epoch"])
    run_s = epochs * (train_s + vpe * val_s)
    size = study_size(Path(args.config))
    study_h = (size["trials"] + size["runs"]) * run_s / 3600
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    out = {"device": card, "torch": torch.__version__, "pe": args.pe, "context": args.context, "kernels": args.kernels,
           "dtype": args.dtype, "T": T, "batch": bs, "steps_per_epoch": spe, "steps_timed": n,
           "epoch_train_s": train_s, "val_pass_s": val_s, "epochs": epochs, "val_per_epoch": vpe,
           "run_min": run_s / 60, "study": size, "study_gpu_h": study_h, "peak_mb": peak}
    print(f"device {card}, torch {torch.__version__}; {args.pe}+{args.context}, kernels {args.kernels}, {args.dtype}, "
          f"T {T}, batch {bs}")
    print(f"epoch: {spe} steps ({n} timed) {train_s:.1f} s; validation pass ({args.val_windows} windows) {val_s:.1f} s; "
          f"peak {peak:.0f} MB")
    print(f"full run = {epochs} x (epoch + {vpe} validations) = {run_s / 60:.1f} min (goal <= 5 min)")
    print(f"study = {size['trials']} tuning trials + {size['runs']} seed runs = {study_h:.1f} GPU-h (goal <= 12 GPU-h)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
