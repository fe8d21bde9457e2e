"""Training of one harmonizer from a resolved run config (paper-spec §4, A12, A14, A15).

``stripes train --config run.json --out DIR [--device cpu|cuda|auto] [--resume/--no-resume]``
or ``train(cfg, out_dir, callback=None)``. :func:`train` is the loop; around it :class:`RunPlan`
(identity and data order), :class:`TrainState` (what ``last.pt`` holds), :func:`train_step` (one
update), :class:`Throughput` (frames per second), :func:`save_checkpoint` and
:func:`restore_or_start_over`.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stripes import device as devmod
from stripes.fileio import atomic_path, atomic_torch_save, atomic_write_text

# the train section's defaults live in the config schema (stripes.schema.defaults("train"))

#: train keys that do not change results (left out of the resume fingerprint)
_RUNTIME_KEYS = {"device", "progress", "num_threads", "num_workers"}

CURVE_FIELDS = ["step", "epoch", "train_loss", "val_loss", "lr", "frames_per_s"]


class NonFiniteLossError(FloatingPointError):
    """The training or validation loss (or the gradient norm) became NaN or infinite."""


# ---------------------------------------------------------------------------- config helpers


def train_config(cfg: dict) -> dict[str, Any]:
    """The ``train`` section merged over the schema's defaults; an unknown key raises
    ``stripes.schema.UnknownKeyError`` (a KeyError) naming it and the known keys."""
    from stripes.schema import with_defaults

    return with_defaults("train", cfg.get("train"))


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

    ``(s + 1) / S_w`` for ``s < S_w``, else ``gamma ** (s // steps_per_epoch - E_w)`` with
    ``E_w = (S_w - 1) // steps_per_epoch`` (0 when ``S_w == 0``). In the [S24] code the per-step
    warm-up sets the lr outright, discarding the StepLR decays of the epochs it spans; once done it
    leaves the lr alone, and every later epoch end multiplies it by gamma, the first being the end
    of the epoch holding the last warm-up step.
    """

    def __init__(self, steps_per_epoch: int, warmup_epochs: float, gamma: float):
        # only these three primitives live in __dict__: LambdaLR saves and restores it in last.pt
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.warmup_steps = round(warmup_epochs * self.steps_per_epoch)
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        peak_epoch = max(0, self.warmup_steps - 1) // self.steps_per_epoch
        return self.gamma ** (step // self.steps_per_epoch - peak_epoch)


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


# ---------------------------------------------------------------------------- run state


@dataclass(frozen=True)
class RunPlan:
    """What fixes a run's sequence of steps besides the config: its identity and its data order."""

    name: str
    fingerprint: str
    seed: int
    n_windows: int
    batch_size: int
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_windows / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def data_order(self, step: int) -> dict:
        """Where step ``step`` reads: batch ``batch`` of the order epoch_permutation(seed, epoch, n_windows)."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        return {"seed": self.seed, "epoch": epoch, "batch": batch, "steps_per_epoch": self.steps_per_epoch,
                "n_windows": self.n_windows, "batch_size": self.batch_size}

    def epoch_loader(self, ds, epoch: int, first_batch: int, num_workers: int) -> torch.utils.data.DataLoader:
        order = epoch_permutation(self.seed, epoch, self.n_windows)
        return _loader(ds, _Batches(order, self.batch_size, start=first_batch), num_workers, self.seed * 1009 + epoch)


class Throughput:
    """Training frames per second (batch x frames of each update over its time; validation and
    checkpoints left out): since the last validation (curves, progress bar) and over the whole run,
    earlier processes of a resumed run included (train.json)."""

    def __init__(self, frames: int = 0, seconds: float = 0.0):
        self.frames, self.seconds = frames, seconds
        self.window_frames, self.window_seconds = 0, 0.0

    def add(self, frames: int, seconds: float) -> None:
        self.window_frames += frames
        self.window_seconds += seconds
        self.frames += frames
        self.seconds += seconds

    def window_fps(self) -> float:
        return self.window_frames / max(self.window_seconds, 1e-9)

    def total_fps(self) -> float:
        return self.frames / max(self.seconds, 1e-9)

    def new_window(self) -> None:
        self.window_frames, self.window_seconds = 0, 0.0


@dataclass
class TrainState:
    """Everything a run continues from; ``last.pt`` holds :meth:`state_dict` (with RunPlan's data order)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generators: dict[str, torch.Generator]  # RNGs owned by model modules (devmod.module_generators)
    step: int = 0  # optimiser updates done
    best_val_loss: float = math.inf
    best_step: int = -1
    history: list[dict] = field(default_factory=list)  # one curves.csv row per validation
    throughput: Throughput = field(default_factory=Throughput)
    wall_s_before: float = 0.0  # wall time of the earlier processes of a resumed run
    started: float = field(default_factory=time.perf_counter)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def wall_s(self) -> float:
        return self.wall_s_before + time.perf_counter() - self.started

    def record(self, row: dict) -> bool:
        """Append a validation row to the history; True when its loss is the best so far."""
        self.history.append(row)
        improved = row["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = row["val_loss"], row["step"]
        return improved

    def state_dict(self) -> dict:
        return {
            "model": _model_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": devmod.rng_state(),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "history": self.history,
            "wall_s": self.wall_s(),
            "train_frames": self.throughput.frames,
            "train_time_s": self.throughput.seconds,
        }

    def load_state_dict(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(_upgrade_scheduler_state(ck["scheduler"]))
        devmod.set_rng_state(ck["rng"])
        for key, state in ck.get("generators", {}).items():
            if key in self.generators:
                self.generators[key].set_state(state)
        self.step, self.best_val_loss, self.best_step = int(ck["step"]), float(ck["best_val_loss"]), int(ck["best_step"])
        self.history = list(ck["history"])
        self.throughput = Throughput(int(ck["train_frames"]), float(ck["train_time_s"]))
        self.wall_s_before, self.started = float(ck["wall_s"]), time.perf_counter()


def _upgrade_scheduler_state(state: dict) -> dict:
    # LambdaLR saves and restores LRFactor.__dict__, and last.pt files written before the rename
    # call its steps_per_epoch "spe"
    lambdas = [{("steps_per_epoch" if k == "spe" else k): v for k, v in lam.items()} if isinstance(lam, dict) else lam
               for lam in state["lr_lambdas"]]
    return {**state, "lr_lambdas": lambdas}


def new_train_state(cfg: dict, tc: dict, dev: torch.device, steps_per_epoch: int) -> TrainState:
    """Step 0: a fresh model in train mode, Adam at the peak lr, the :class:`LRFactor` schedule."""
    model = make_model(cfg).to(dev)
    model.train()
    generators = devmod.module_generators(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(tc["lr"]))
    factor = LRFactor(steps_per_epoch, float(tc["warmup_epochs"]), float(tc["step_gamma"]))
    return TrainState(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), generators)


def restore_or_start_over(out: Path, state: TrainState, plan: RunPlan, resume: bool) -> None:
    """Load ``out/last.pt`` into ``state`` when the run can continue from it, else delete the run files."""
    ck = None
    if resume:
        ck = resumable_checkpoint(out, plan.name, plan.fingerprint, plan.n_windows, plan.steps_per_epoch, state.model)
    if ck is not None:
        state.load_state_dict(ck)
        return
    for f in RUN_FILES:  # --no-resume, or what is left beside a checkpoint set aside as corrupt
        (out / f).unlink(missing_ok=True)


def save_checkpoint(out: Path, state: TrainState, plan: RunPlan, improved: bool) -> None:
    """After a validation: ``best.pt`` (weights) when it improved, then ``last.pt``, then curves.csv.

    Raises NonFiniteLossError, writing nothing, when a weight is not finite."""
    if not _all_finite(state.model):
        raise NonFiniteLossError(f"run {plan.name}: non-finite weights at step {state.step}; no checkpoint written")
    meta = {"step": state.step, "epoch": (state.step - 1) // plan.steps_per_epoch,
            "fingerprint": plan.fingerprint, "run": plan.name}
    if improved:
        atomic_torch_save({**meta, "model": _model_state(state.model), "val_loss": state.best_val_loss}, out / "best.pt")
    atomic_torch_save({**meta, **state.state_dict(), "data_order": plan.data_order(state.step)}, out / "last.pt")
    write_curves(out, state.history)


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
    with atomic_path(out_dir / "curves.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


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


def train_step(state: TrainState, batch: dict, length: int, dev: torch.device, *, bf16: bool, grad_clip: float,
               run: str, epoch: int) -> tuple[float, float, int]:
    """One optimiser update on the first ``length`` frames of a batch of windows.

    ``batch["x"]`` (B, W, 256) melody+bridge roll, ``batch["y"]`` (B, W, 128) piano roll (the target),
    ``batch["pos"]`` (B, W, context dim) positions. Returns (loss, lr of this update, frames B * length).
    Raises NonFiniteLossError, before updating anything, on a non-finite loss or gradient norm.
    """
    x, y, pos = (batch[k][:, :length].to(dev, non_blocking=True) for k in ("x", "y", "pos"))
    lr = state.lr
    with _autocast(dev, bf16):
        logits = state.model(x, pos)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y)
    loss_val = float(loss.detach())
    if not math.isfinite(loss_val):
        raise NonFiniteLossError(
            f"run {run}: training loss is {loss_val} at step {state.step} (epoch {epoch}, lr {lr:.3g}); "
            f"stopped without writing a checkpoint for this step"
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        gn = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip))
        if not math.isfinite(gn):
            raise NonFiniteLossError(
                f"run {run}: gradient norm is {gn} at step {state.step} (epoch {epoch}); "
                f"stopped without writing a checkpoint for this step"
            )
    state.optimizer.step()
    state.scheduler.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # so that the caller's clock measures the update, not its launch
    state.step += 1
    return loss_val, lr, int(x.shape[0] * x.shape[1])


def _setup_device(name: str, tc: dict, seed: int) -> torch.device:
    devmod.set_num_threads(tc["num_threads"])
    dev = devmod.select_device(name)
    devmod.set_deterministic(bool(tc["deterministic"]), dev)
    devmod.seed_everything(seed)
    return dev


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
    name, seed = run_name(cfg), int((cfg.get("run") or {}).get("seed", 0))
    dev = _setup_device(device or tc["device"], tc, seed)

    train_ds = make_dataset(cfg, "train", train_bars(cfg), tc["max_train_windows"])
    val_ds = make_dataset(cfg, "val", train_bars(cfg), tc["max_val_windows"])
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(f"run {name}: empty dataset (train {len(train_ds)}, val {len(val_ds)} windows)")
    window = int(train_ds[0]["x"].shape[0])
    plan = RunPlan(name, fingerprint(cfg), seed, len(train_ds), int(tc["batch_size"]), int(tc["epochs"]))
    state = new_train_state(cfg, tc, dev, plan.steps_per_epoch)
    restore_or_start_over(out, state, plan, resume)

    curriculum_steps = round(float(tc["curriculum_epochs"]) * plan.steps_per_epoch)
    val_points = set(validation_points(plan.steps_per_epoch, int(tc["val_per_epoch"])))
    step_options = {"bf16": tc["bf16"], "grad_clip": float(tc["grad_clip"] or 0), "run": name}
    from tqdm import tqdm

    bar = tqdm(total=plan.total_steps, initial=state.step, desc=name, unit="step", disable=not tc["progress"],
               dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    losses: list[float] = []  # of the steps since the last validation
    try:
        while state.step < plan.total_steps:
            epoch, first_batch = divmod(state.step, plan.steps_per_epoch)
            for batch in plan.epoch_loader(train_ds, epoch, first_batch, int(tc["num_workers"])):
                t0 = time.perf_counter()
                length = curriculum_length(state.step, window, curriculum_steps, int(tc["curriculum_min_frames"]))
                loss, lr, frames = train_step(state, batch, length, dev, epoch=epoch, **step_options)
                state.throughput.add(frames, time.perf_counter() - t0)
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", fps=f"{state.throughput.window_fps():.0f}",
                                refresh=False)
                if state.step - epoch * plan.steps_per_epoch not in val_points:
                    continue
                val_loss = validate(state.model, val_ds, dev, int(tc["val_batch_size"]), tc["bf16"],
                                    int(tc["num_workers"]))
                if not math.isfinite(val_loss):
                    raise NonFiniteLossError(f"run {name}: validation loss is {val_loss} at step {state.step} "
                                             f"(epoch {epoch}); stopped without writing a checkpoint")
                row = {"step": state.step, "epoch": epoch, "train_loss": sum(losses) / len(losses),
                       "val_loss": val_loss, "lr": lr, "frames_per_s": state.throughput.window_fps()}
                save_checkpoint(out, state, plan, improved=state.record(row))
                losses.clear()
                state.throughput.new_window()
                bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}", val=f"{val_loss:.4f}",
                                fps=f"{row['frames_per_s']:.0f}")
                if callback is not None:
                    callback({**row, "best_val_loss": state.best_val_loss})
    finally:
        bar.close()

    plot_curves(out, state.history, title=name)
    wall_s = state.wall_s() if state.step else time.perf_counter() - t_start
    summary = _summary(state, plan, tc, dev, window, len(val_ds), wall_s)
    atomic_write_text(out / "train.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(state: TrainState, plan: RunPlan, tc: dict, dev: torch.device, window: int, val_windows: int,
             wall_s: float) -> dict:
    """train.json."""
    last = state.history[-1] if state.history else {}
    return {
        "run": plan.name,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "steps": state.step,
        "epochs": plan.epochs,
        "steps_per_epoch": plan.steps_per_epoch,
        "train_windows": plan.n_windows,
        "val_windows": val_windows,
        "window_frames": window,
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "last_val_loss": last.get("val_loss"),
        "wall_s": wall_s,
        "frames_per_s": state.throughput.total_fps(),
        "device": devmod.describe(dev),
        "bf16": bool(tc["bf16"]),
        "n_parameters": int(sum(p.numel() for p in state.model.parameters())),
        "fingerprint": plan.fingerprint,
        "finished": True,
    }


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stripes train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="resolved run config (JSON)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, curves, train.json)")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="overrides train.device")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from OUT/last.pt when present (default: yes)")
    args = parser.parse_args(argv)
    from stripes.runconfig import load_run_config

    cfg = load_run_config(args.config)
    try:
        summary = train(cfg, args.out, device=args.device, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"stripes train: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in ("run", "best_val_loss", "best_step", "steps", "wall_s", "frames_per_s", "device")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
