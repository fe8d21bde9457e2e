"""Training of one harmonizer from a resolved run config (paper-spec §4, A12, A14, A15).

``stripes train --config run.json --out DIR [--device cpu|cuda|auto] [--resume/--no-resume]``
or ``train(cfg, out_dir, callback=None)``.

What it does, step by step (a *step* is one optimiser update, counted from 0):

* **Data.** 16-bar training windows (``data.train_bars``) in a fresh order every epoch: the
  permutation of epoch e is drawn from a generator seeded with ``(seed, e)``, so a resumed run can
  jump straight to step k of an epoch. Batches of ``train.batch_size`` (the last one may be smaller).
* **Optimiser.** Adam with torch defaults (no weight decay) at peak ``train.lr``.
* **Schedule.** With ``S_w = round(warmup_epochs * steps_per_epoch)``, ``epoch(s) = s // steps_per_epoch``
  and ``E_w = epoch(S_w - 1)`` (the epoch of the last warm-up step; 0 without warm-up):
  ``lr(s) = lr * (s + 1) / S_w`` for ``s < S_w``, else ``lr * step_gamma ** (epoch(s) - E_w)``.
  As in the [S24] code the warm-up overrides the StepLR while it runs, so it reaches the peak, and
  the decay then starts from the peak at the first epoch end after it (docs/schedule.md).
* **Length curriculum.** At step ``s <= S_c = curriculum_epochs * steps_per_epoch``, x, y and
  positions are truncated to ``L_s = (W - m) * s // S_c + m`` frames (m = curriculum_min_frames).
* **Loss.** Mean BCE with logits over all cells; gradient-norm clipping at ``train.grad_clip``.
* **Validation.** ``train.val_per_epoch`` times per epoch (after steps ceil(k * n / V) of the
  epoch, k = 1..V; the last is the epoch end) on the full-length validation windows, mean loss.
* **Checkpoints.** After every validation: ``best.pt`` (model weights, when the validation loss
  improved) and then ``last.pt`` (model, optimiser, scheduler, all RNG states, step, best, curve
  history). Both are written to a temporary file and moved into place, and both load with
  ``torch.load(weights_only=True)``. A run killed at any point restarts from ``last.pt`` and ends
  bit-identical to an uninterrupted run on CPU. A ``last.pt`` it cannot continue from starts the
  run over instead of failing (a Snakemake rerun cannot pass ``--no-resume``), with one line on
  stderr: unreadable -> moved to ``stale/corrupt-<timestamp>.pt``; another config fingerprint,
  other training data or another model shape -> the old run's files moved to
  ``stale/<old fingerprint>-<timestamp>/`` (:func:`resumable_checkpoint`).
* **Outputs.** ``curves.csv`` / ``curves.png`` and the summary ``train.json``.
* **Failure.** A non-finite loss or gradient norm raises :class:`NonFiniteLossError` (naming run
  and step) before anything is written for that step.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from stripes import device as devmod

#: defaults of the ``train:`` section (config/config.yaml documents each key).
TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 5e-4,
    "batch_size": 8,
    "epochs": 15,
    "warmup_epochs": 3,
    "curriculum_epochs": 3,
    "curriculum_min_frames": 16,
    "step_gamma": 0.85,
    "grad_clip": 0.0005,
    "val_per_epoch": 20,
    "val_batch_size": 8,
    "device": "auto",
    "bf16": False,
    "deterministic": True,
    "max_train_windows": None,
    "max_val_windows": None,
    "num_threads": 0,
    "num_workers": 0,
    "progress": True,
}

#: train keys that do not change results (left out of the resume fingerprint)
_RUNTIME_KEYS = {"device", "progress", "num_threads", "num_workers"}

CURVE_FIELDS = ["step", "epoch", "train_loss", "val_loss", "lr", "frames_per_s"]


class NonFiniteLossError(FloatingPointError):
    """The training or validation loss (or the gradient norm) became NaN or infinite."""


# ---------------------------------------------------------------------------- config helpers


def train_config(cfg: dict) -> dict[str, Any]:
    """The ``train`` section merged over :data:`TRAIN_DEFAULTS` (unknown keys are an error)."""
    section = dict(cfg.get("train") or {})
    unknown = set(section) - set(TRAIN_DEFAULTS)
    if unknown:
        raise KeyError(f"unknown train keys: {', '.join(sorted(unknown))}")
    return {**TRAIN_DEFAULTS, **section}


def run_name(cfg: dict) -> str:
    run = cfg.get("run") or {}
    return f"{run.get('pe', '?')}/{run.get('context', '?')}/seed{run.get('seed', 0)}"


def fingerprint(cfg: dict) -> str:
    """Hash of everything that changes a training result (checked when resuming)."""
    tc = {k: v for k, v in train_config(cfg).items() if k not in _RUNTIME_KEYS}
    run = cfg.get("run") or {}
    data = cfg.get("data") or {}
    blob = {
        "train": tc,
        "model": cfg.get("model") or {},
        "pe_entry": cfg.get("pe_entry") or {},
        "run": {k: run.get(k) for k in ("pe", "context", "seed")},
        "data": {"bars": train_bars(cfg), "window_overlap": data.get("window_overlap")},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_config(path: str | os.PathLike) -> dict:
    """Read a resolved run config (JSON; YAML accepted for hand-written configs)."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


# ---------------------------------------------------------------------------- data and model


def make_dataset(cfg: dict, split: str, bars: int, max_windows: int | None):
    """The :class:`stripes.data.WindowDataset` of a split for this run's context."""
    from stripes.data import WindowDataset

    return WindowDataset(
        data_dir(cfg), split=split, bars=int(bars), context=cfg["run"]["context"], max_windows=max_windows
    )


def data_dir(cfg: dict) -> str:
    """Prepared-data folder: ``data.dir`` when given, else the data stage's ``data.out_dir``."""
    data = cfg.get("data") or {}
    return str(data.get("dir") or data.get("out_dir") or "results/data")


def train_bars(cfg: dict) -> int:
    """Training-window length in bars: ``data.train_bars`` when given, else ``data.window_bars`` (16)."""
    data = cfg.get("data") or {}
    return int(data.get("train_bars") or data.get("window_bars") or 16)


def make_model(cfg: dict) -> torch.nn.Module:
    """Build the harmonizer of this run (PE, context dimension, model section).

    The PE comes from the resolved ``pe_entry`` of the run config when present (so a run does not
    depend on later edits of config/pe.yaml), else from the registry file.
    """
    from stripes.contexts import get_context
    from stripes.model import build_model

    ctx = get_context(cfg["run"]["context"])
    pe = cfg["run"]["pe"]
    registry = None
    if cfg.get("pe_entry"):
        from stripes.pe import load_registry

        entry = {k: v for k, v in cfg["pe_entry"].items() if k != "name"}
        registry = load_registry(data={pe: entry})
    return build_model(pe=pe, context_dim=ctx.dim, regular_grid=ctx.regular_grid,
                       model_cfg=dict(cfg.get("model") or {}), registry=registry)


# ---------------------------------------------------------------------------- schedule pieces


class LRFactor:
    """Multiplier of the peak lr at (0-based) step s: linear warm-up, then StepLR from the peak.

    ``(s + 1) / S_w`` for ``s < S_w``, else ``gamma ** (s // spe - E_w)`` with ``E_w = (S_w - 1) // spe``
    (0 when ``S_w == 0``). In the [S24] code the per-step warm-up sets the lr outright, discarding the
    StepLR decays of the epochs it spans; once done it leaves the lr alone, and every later epoch end
    multiplies it by gamma, the first being the end of the epoch holding the last warm-up step.
    """

    def __init__(self, steps_per_epoch: int, warmup_epochs: float, gamma: float):
        # only these three primitives live in __dict__: LambdaLR saves and restores it in last.pt
        self.spe = max(1, int(steps_per_epoch))
        self.warmup_steps = int(round(warmup_epochs * self.spe))
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        peak_epoch = max(0, self.warmup_steps - 1) // self.spe
        return self.gamma ** (step // self.spe - peak_epoch)


def curriculum_length(step: int, window: int, curriculum_steps: int, min_frames: int) -> int:
    """``L_s = (W - m) * s // S_c + m`` for ``s <= S_c``, else W (no curriculum when S_c <= 0)."""
    if curriculum_steps <= 0 or step >= curriculum_steps:
        return window
    m = min(int(min_frames), window)
    return (window - m) * step // curriculum_steps + m


def validation_points(steps_per_epoch: int, val_per_epoch: int) -> list[int]:
    """Steps within an epoch (1-based counts of completed steps) after which to validate."""
    v = max(1, int(val_per_epoch))
    return sorted({max(1, math.ceil(k * steps_per_epoch / v)) for k in range(1, v + 1)})


def epoch_permutation(seed: int, epoch: int, n: int) -> list[int]:
    """The training order of epoch ``epoch``: a permutation of range(n) seeded by (seed, epoch)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x5EED])
    return rng.permutation(n).tolist()


class _Batches(torch.utils.data.Sampler):
    """Batches of a fixed order, starting at batch ``start`` (for resuming inside an epoch)."""

    def __init__(self, order: list[int], batch_size: int, start: int = 0):
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)][start:]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _loader(ds, batches: _Batches, num_workers: int, seed: int) -> torch.utils.data.DataLoader:
    # a private generator: creating a DataLoader iterator draws a base seed from it, which would
    # otherwise consume the global torch RNG (and shift dropout after a resume)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=num_workers, generator=gen)


# ---------------------------------------------------------------------------- checkpoints


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`train` (``weights_only=True``, on CPU)."""
    return torch.load(path, map_location="cpu", weights_only=True)


#: the files of one training run in its folder (what a start-over archives or removes)
RUN_FILES = ("last.pt", "best.pt", "train.json", "curves.csv", "curves.png")
#: what last.pt must hold to resume from it (besides the fingerprint, checked on its own)
_RESUME_KEYS = {"model", "optimizer", "scheduler", "rng", "step", "best_val_loss", "best_step", "history",
                "wall_s", "train_frames", "train_time_s"}


def _say(message: str) -> None:
    # the job log is stderr (the Snakemake rules redirect 2>&1), so one line there is the record
    print(f"stripes train: {message}", file=sys.stderr, flush=True)


def _free_name(path: Path) -> Path:
    """``path``, or ``path`` with ``-1``, ``-2``, ... before its suffix: two start-overs in one second
    must not overwrite each other's archive."""
    k, candidate = 0, path
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


def archive_run(out: Path, label: str) -> Path:
    """Move the run files of ``out`` into a new ``out/stale/<label>-<timestamp>/``; returns that folder."""
    safe = "".join(c for c in str(label) if c.isalnum() or c in "-_") or "unknown"
    dest = _free_name(out / "stale" / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}")
    dest.mkdir(parents=True)
    for name in RUN_FILES:
        if (out / name).exists():
            os.replace(out / name, dest / name)
    return dest


def resumable_checkpoint(out: Path, run: str, fp: str, n_windows: int, steps_per_epoch: int,
                         model: torch.nn.Module) -> dict | None:
    """``out/last.pt`` loaded when this run can continue from it, else None (the run starts over).

    Snakemake reruns a job with the same command line, so a checkpoint that cannot be resumed must not
    stop the job (``--no-resume`` is out of its reach); it is kept aside, never deleted:

    * a file that cannot be loaded (truncated, corrupted, not a checkpoint) is moved to
      ``out/stale/corrupt-<timestamp>.pt`` (the rest of its unfinished run is replaced by the new one);
    * one written with another config (fingerprint), for other training data, or holding weights of
      another model shape (the model code changed), is moved with the other files of its run to
      ``out/stale/<its fingerprint>-<timestamp>/``, as tuning keeps a stale journal aside.

    Either way one line on stderr names the file, the reason and where it went.
    """
    last = out / "last.pt"
    if not last.exists():
        return None
    try:
        ck = load_checkpoint(last)
        if not isinstance(ck, dict):
            raise TypeError(f"holds a {type(ck).__name__}, not a checkpoint dict")
        missing = sorted(_RESUME_KEYS - set(ck))
        if missing:
            raise KeyError(f"lacks {', '.join(missing)}")
    except Exception as err:  # noqa: BLE001 - any unreadable file is set aside the same way
        dest = _free_name(out / "stale" / f"corrupt-{time.strftime('%Y%m%d-%H%M%S')}.pt")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(last, dest)
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        _say(f"run {run}: {last} cannot be loaded ({type(err).__name__}: {reason}); moved it to {dest} "
             f"and starting over")
        return None
    old_fp = ck.get("fingerprint")
    order = ck.get("data_order") or {}
    own = model.state_dict()
    why = None
    if old_fp != fp:
        why = f"was written with a different config (fingerprint {old_fp} != {fp})"
    elif order and (order.get("n_windows") != n_windows or order.get("steps_per_epoch") != steps_per_epoch):
        why = (f"was written for other training data ({order.get('n_windows')} windows, now {n_windows}; "
               f"{order.get('steps_per_epoch')} steps per epoch, now {steps_per_epoch})")
    elif set(ck["model"]) != set(own) or any(tuple(ck["model"][k].shape) != tuple(v.shape) for k, v in own.items()):
        why = "holds weights of a differently shaped model (the model code changed)"
    if why is None:
        return ck
    dest = archive_run(out, old_fp or "unknown")
    _say(f"run {run}: {last} {why}; moved the old run's files to {dest} and starting over")
    return None


def _model_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ---------------------------------------------------------------------------- curves


def write_curves(out_dir: Path, history: list[dict]) -> None:
    lines = [",".join(CURVE_FIELDS)]
    for row in history:
        lines.append(",".join(repr(row[k]) if isinstance(row[k], float) else str(row[k]) for k in CURVE_FIELDS))
    atomic_write_text(out_dir / "curves.csv", "\n".join(lines) + "\n")


def read_curves(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def plot_curves(out_dir: Path, history: list[dict], title: str = "") -> None:
    """curves.png: train and validation loss against step, lr on a second axis."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["train_loss"] for r in history], label="train loss (mean since last val)")
    ax.plot(steps, [r["val_loss"] for r in history], label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("BCE")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in history], color="0.6", lw=0.8, ls="--", label="lr")
    ax2.set_ylabel("lr")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    tmp = out_dir / ".curves.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_dir / "curves.png")


# ---------------------------------------------------------------------------- the loop


def _autocast(dev: torch.device, enabled: bool):
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(enabled))


@torch.no_grad()
def validate(model, ds, dev, batch_size: int, bf16: bool = False, num_workers: int = 0) -> float:
    """Mean BCE over all cells of all validation windows (model.eval(), full length)."""
    was_training = model.training
    model.eval()
    total, cells = 0.0, 0
    batches = _Batches(list(range(len(ds))), batch_size)
    for batch in _loader(ds, batches, num_workers, 0):
        x, y, pos = (batch[k].to(dev, non_blocking=True) for k in ("x", "y", "pos"))
        with _autocast(dev, bf16):
            logits = model(x, pos)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="sum")
        total += float(loss)
        cells += y.numel()
    model.train(was_training)
    return total / max(cells, 1)


def train(
    cfg: dict,
    out_dir: str | os.PathLike,
    callback: Callable[[dict], None] | None = None,
    *,
    device: str | None = None,
    resume: bool = True,
) -> dict:
    """Train one model; returns the summary also written to ``out_dir/train.json``.

    Args:
        cfg: resolved run config (keys run, data, model, train, eval, pe_entry).
        out_dir: output folder (created); holds last.pt, best.pt, curves.csv/png, train.json.
        callback: called after every validation (and after its checkpoint is on disk) with
            ``{"epoch", "step", "train_loss", "val_loss", "lr", "frames_per_s", "best_val_loss"}``.
            Exceptions it raises (e.g. ``optuna.TrialPruned``) propagate unchanged.
        device: overrides ``train.device`` ("auto", "cpu", "cuda").
        resume: continue from ``out_dir/last.pt`` when it exists and fits this config (default; a
            stale or unreadable one is set aside under ``out_dir/stale/``); False deletes the run
            files and starts over.

    Raises:
        NonFiniteLossError: NaN/inf training loss, gradient norm or validation loss.
    """
    t_start = time.perf_counter()
    tc = train_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = run_name(cfg)
    seed = int((cfg.get("run") or {}).get("seed", 0))
    fp = fingerprint(cfg)

    devmod.set_num_threads(tc["num_threads"])
    dev = devmod.select_device(device or tc["device"])
    if dev.type == "cpu":
        devmod.keep_freed_memory()
    devmod.set_deterministic(bool(tc["deterministic"]), dev)
    devmod.seed_everything(seed)

    bars = train_bars(cfg)
    train_ds = make_dataset(cfg, "train", bars, tc["max_train_windows"])
    val_ds = make_dataset(cfg, "val", bars, tc["max_val_windows"])
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(f"run {name}: empty dataset (train {len(train_ds)}, val {len(val_ds)} windows)")
    window = int(train_ds[0]["x"].shape[0])

    model = make_model(cfg).to(dev)
    model.train()
    gens = devmod.module_generators(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(tc["lr"]))
    bs = int(tc["batch_size"])
    n = len(train_ds)
    spe = math.ceil(n / bs)
    total_steps = int(tc["epochs"]) * spe
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LRFactor(spe, float(tc["warmup_epochs"]), float(tc["step_gamma"])))
    s_curr = int(round(float(tc["curriculum_epochs"]) * spe))
    val_points = set(validation_points(spe, int(tc["val_per_epoch"])))

    step, best_val, best_step, history, elapsed_prev, frames_prev, time_prev = 0, math.inf, -1, [], 0.0, 0, 0.0
    last_path, best_path = out / "last.pt", out / "best.pt"
    ck = resumable_checkpoint(out, name, fp, n, spe, model) if resume else None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        devmod.set_rng_state(ck["rng"])
        for key, state in ck.get("generators", {}).items():
            if key in gens:
                gens[key].set_state(state)
        step, best_val, best_step = int(ck["step"]), float(ck["best_val_loss"]), int(ck["best_step"])
        history = list(ck["history"])
        elapsed_prev, frames_prev, time_prev = float(ck["wall_s"]), int(ck["train_frames"]), float(ck["train_time_s"])
    else:
        for f in RUN_FILES:  # --no-resume, or what is left beside a checkpoint set aside as corrupt
            (out / f).unlink(missing_ok=True)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, desc=name, unit="step", disable=not tc["progress"],
               dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    loss_sum, loss_n = 0.0, 0
    win_frames, win_time = 0, 0.0
    train_frames, train_time = frames_prev, time_prev
    ckpt_elapsed = elapsed_prev
    segment_start = time.perf_counter()

    def checkpoint(improved: bool) -> None:
        if not _all_finite(model):
            raise NonFiniteLossError(f"run {name}: non-finite weights at step {step}; no checkpoint written")
        meta = {"step": step, "epoch": (step - 1) // spe, "fingerprint": fp, "run": name}
        if improved:
            atomic_torch_save({**meta, "model": _model_state(model), "val_loss": best_val}, best_path)
        atomic_torch_save(
            {
                **meta,
                "model": _model_state(model),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": devmod.rng_state(),
                "generators": {k: g.get_state() for k, g in gens.items()},
                # the order of epoch e is epoch_permutation(seed, e, n_windows); resume at batch b
                "data_order": {"seed": seed, "epoch": step // spe, "batch": step % spe,
                               "steps_per_epoch": spe, "n_windows": n, "batch_size": bs},
                "best_val_loss": best_val,
                "best_step": best_step,
                "history": history,
                "wall_s": ckpt_elapsed + time.perf_counter() - segment_start,
                "train_frames": train_frames,
                "train_time_s": train_time,
            },
            last_path,
        )
        write_curves(out, history)

    try:
        while step < total_steps:
            epoch, k0 = divmod(step, spe)
            order = epoch_permutation(seed, epoch, n)
            loader = _loader(train_ds, _Batches(order, bs, start=k0), int(tc["num_workers"]), seed * 1009 + epoch)
            for batch in loader:
                t0 = time.perf_counter()
                length = curriculum_length(step, window, s_curr, int(tc["curriculum_min_frames"]))
                x = batch["x"][:, :length].to(dev, non_blocking=True)
                y = batch["y"][:, :length].to(dev, non_blocking=True)
                pos = batch["pos"][:, :length].to(dev, non_blocking=True)
                lr_now = opt.param_groups[0]["lr"]
                with _autocast(dev, tc["bf16"]):
                    logits = model(x, pos)
                loss = F.binary_cross_entropy_with_logits(logits.float(), y)
                loss_val = float(loss.detach())
                if not math.isfinite(loss_val):
                    raise NonFiniteLossError(
                        f"run {name}: training loss is {loss_val} at step {step} (epoch {epoch}, lr {lr_now:.3g}); "
                        f"stopped without writing a checkpoint for this step"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc["grad_clip"] and float(tc["grad_clip"]) > 0:
                    gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc["grad_clip"])))
                    if not math.isfinite(gn):
                        raise NonFiniteLossError(
                            f"run {name}: gradient norm is {gn} at step {step} (epoch {epoch}); "
                            f"stopped without writing a checkpoint for this step"
                        )
                opt.step()
                sched.step()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                dt = time.perf_counter() - t0
                step += 1
                frames = int(x.shape[0] * x.shape[1])
                loss_sum += loss_val
                loss_n += 1
                win_frames += frames
                win_time += dt
                train_frames += frames
                train_time += dt
                fps = win_frames / max(win_time, 1e-9)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss_val:.4f}", fps=f"{fps:.0f}", refresh=False)

                if (step - epoch * spe) in val_points:
                    val_loss = validate(model, val_ds, dev, int(tc["val_batch_size"]), tc["bf16"], int(tc["num_workers"]))
                    if not math.isfinite(val_loss):
                        raise NonFiniteLossError(
                            f"run {name}: validation loss is {val_loss} at step {step} (epoch {epoch}); "
                            f"stopped without writing a checkpoint"
                        )
                    row = {
                        "step": step,
                        "epoch": epoch,
                        "train_loss": loss_sum / max(loss_n, 1),
                        "val_loss": val_loss,
                        "lr": lr_now,
                        "frames_per_s": fps,
                    }
                    history.append(row)
                    improved = val_loss < best_val
                    if improved:
                        best_val, best_step = val_loss, step
                    checkpoint(improved)
                    loss_sum, loss_n, win_frames, win_time = 0.0, 0, 0, 0.0
                    bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}", val=f"{val_loss:.4f}",
                                    fps=f"{fps:.0f}")
                    if callback is not None:
                        callback({**row, "best_val_loss": best_val})
    finally:
        bar.close()

    plot_curves(out, history, title=name)
    summary = {
        "run": name,
        "best_val_loss": best_val,
        "best_step": best_step,
        "steps": step,
        "epochs": int(tc["epochs"]),
        "steps_per_epoch": spe,
        "train_windows": n,
        "val_windows": len(val_ds),
        "window_frames": window,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_val_loss": history[-1]["val_loss"] if history else None,
        "last_val_loss": history[-1]["val_loss"] if history else None,
        "wall_s": ckpt_elapsed + time.perf_counter() - segment_start if step else time.perf_counter() - t_start,
        "frames_per_s": train_frames / max(train_time, 1e-9),
        "device": devmod.describe(dev),
        "bf16": bool(tc["bf16"]),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "fingerprint": fp,
        "finished": True,
    }
    atomic_write_text(out / "train.json", json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stripes train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="resolved run config (JSON)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, curves, train.json)")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="overrides train.device")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from OUT/last.pt when present (default: yes)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    try:
        summary = train(cfg, args.out, device=args.device, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"stripes train: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in ("run", "best_val_loss", "best_step", "steps", "wall_s", "frames_per_s", "device")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
