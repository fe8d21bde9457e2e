"""Training loop: schedule pieces, end-to-end CPU run on real POP909 songs, checkpoints that load
with weights_only, same-seed determinism, exact resume after SIGKILL, NaN handling, callback.

The data fixture prepares 4 real songs (split seed 5: train 002+004, val 003, test 001) with the
real data stage and trains the real model at a tiny size; it skips when ../shared is absent."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stripes import train as T

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- pure pieces


def test_lr_factor_warmup_reaches_peak_then_steplr_from_peak():
    # 4 steps per epoch, warm-up 2 epochs (S_w = 8): the ramp ignores the decay and ends at the peak on step 7;
    # the first decay is the end of epoch 1 (the epoch of the last warm-up step), as in [S24]
    f = T.LRFactor(steps_per_epoch=4, warmup_epochs=2, gamma=0.5)
    assert [f(s) for s in range(16)] == [
        0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0,
        0.5, 0.5, 0.5, 0.5,
        0.25, 0.25, 0.25, 0.25,
    ]


def test_lr_factor_without_warmup_is_steplr():
    f = T.LRFactor(steps_per_epoch=4, warmup_epochs=0, gamma=0.5)
    assert [f(s) for s in range(16)] == [1.0] * 4 + [0.5] * 4 + [0.25] * 4 + [0.125] * 4


def test_lr_factor_partial_epoch_warmup_holds_peak_to_epoch_end():
    # S_w = 6 ends inside epoch 1: the peak is kept for the rest of that epoch, then decays
    f = T.LRFactor(steps_per_epoch=4, warmup_epochs=1.5, gamma=0.5)
    assert [f(s) for s in range(12)] == [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    # warm-up within the first epoch (the smoke config's 0.5): the decay counts from epoch 0
    g = T.LRFactor(steps_per_epoch=4, warmup_epochs=0.5, gamma=0.5)
    assert [g(s) for s in range(8)] == [0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]


def test_lr_factor_default_schedule_reaches_the_peak():
    # the defaults (3 warm-up epochs, gamma 0.85): the last warm-up step is at the peak (the
    # chained form gave 0.85**2 = 0.7225 there), the next epoch at 0.85
    f = T.LRFactor(steps_per_epoch=100, warmup_epochs=3, gamma=0.85)
    assert f(299) == 1.0
    assert f(300) == 0.85
    assert f(1499) == 0.85**12


def _scheduler_after(steps: int):
    """SGD at lr 2.0 under LambdaLR(LRFactor(4 steps/epoch, 2 warm-up epochs, gamma 0.5)), stepped ``steps`` times."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.LRFactor(4, 2, 0.5))
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt, sched


def test_lr_factor_state_roundtrips_through_lambdalr():
    # last.pt stores LambdaLR.state_dict(), which holds the factor's __dict__
    opt, a = _scheduler_after(9)
    state = a.state_dict()
    assert state["lr_lambdas"] == [{"steps_per_epoch": 4, "warmup_steps": 8, "gamma": 0.5}]
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    b = torch.optim.lr_scheduler.LambdaLR(opt2, T.LRFactor(4, 2, 0.5))
    b.load_state_dict(state)
    assert b.last_epoch == 9 and b.get_last_lr() == [1.0]
    for sched, o in ((a, opt), (b, opt2)):
        for _ in range(3):  # into epoch 3: 2.0 * 0.5**(3 - 1)
            o.step()
            sched.step()
    assert a.get_last_lr() == b.get_last_lr() == [0.5]


def test_scheduler_state_of_an_older_last_pt_loads():
    # last.pt files written before the rename hold the factor's steps per epoch as "spe"
    opt, a = _scheduler_after(9)
    old = a.state_dict()
    old["lr_lambdas"] = [{"spe": 4, "warmup_steps": 8, "gamma": 0.5}]
    b = torch.optim.lr_scheduler.LambdaLR(opt, T.LRFactor(4, 2, 0.5))
    b.load_state_dict(T._upgrade_scheduler_state(old))
    assert vars(b.lr_lambdas[0]) == {"steps_per_epoch": 4, "warmup_steps": 8, "gamma": 0.5}
    assert b.last_epoch == 9


def test_run_plan_data_order_and_throughput():
    plan = T.RunPlan("p/c/seed3", "fp", seed=3, n_windows=7, batch_size=2, epochs=2)
    assert (plan.steps_per_epoch, plan.total_steps) == (4, 8)
    assert plan.data_order(5) == {"seed": 3, "epoch": 1, "batch": 1, "steps_per_epoch": 4, "n_windows": 7,
                                  "batch_size": 2}
    batches = [b["i"].tolist() for b in plan.epoch_loader([{"i": i} for i in range(7)], 1, 1, 0)]
    order = T.epoch_permutation(3, 1, 7)
    assert batches == [order[2:4], order[4:6], order[6:]]  # from batch 1 on; the last one short
    meter = T.Throughput(frames=100, seconds=1.0)  # as restored from last.pt
    meter.add(30, 0.5)
    meter.add(10, 0.5)
    assert (meter.window_fps(), meter.total_fps()) == (40.0, 70.0)
    meter.new_window()
    assert meter.window_frames == 0 and meter.total_fps() == 70.0


def test_atomic_writes_replace_whole_files(tmp_path):
    from stripes.fileio import atomic_torch_save, atomic_write_bytes, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "é\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é\n" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))
    with pytest.raises((AttributeError, pickle.PicklingError)):  # a failed write keeps the old file and leaves no temporary one
        atomic_torch_save(lambda: 0, tmp_path / "c.pt")  # a local lambda cannot be pickled
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.pt"]


def test_curriculum_length():
    # L_s = (W - m) * s // S_c + m for s <= S_c, W afterwards
    assert T.curriculum_length(0, 1024, 300, 16) == 16
    assert T.curriculum_length(150, 1024, 300, 16) == (1024 - 16) * 150 // 300 + 16
    assert T.curriculum_length(299, 1024, 300, 16) == (1024 - 16) * 299 // 300 + 16
    assert T.curriculum_length(300, 1024, 300, 16) == 1024
    assert T.curriculum_length(5, 1024, 0, 16) == 1024  # disabled


def test_validation_points_and_permutation():
    assert T.validation_points(100, 20) == list(range(5, 101, 5))
    assert T.validation_points(3, 20) == [1, 2, 3]  # fewer steps than validations: every step
    assert T.validation_points(7, 2) == [4, 7]  # the last point is always the epoch end
    p0, p0b, p1 = T.epoch_permutation(3, 0, 50), T.epoch_permutation(3, 0, 50), T.epoch_permutation(3, 1, 50)
    assert p0 == p0b and p0 != p1 and sorted(p0) == list(range(50))
    assert T.epoch_permutation(4, 0, 50) != p0  # the seed matters


def test_unknown_train_key_is_an_error():
    with pytest.raises(KeyError, match="lr_typo"):
        T.train_config({"train": {"lr_typo": 1}})


# ---------------------------------------------------------------------------- real data + model


@pytest.fixture(scope="module")
def data_dir(prepared_data):  # 4 synthetic songs (tests/conftest.py), window counts of the real 001-004
    return prepared_data


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_cfg(data_dir, seed: int = 0, pe: str = "rope_c", context: str = "bin", **train) -> dict:
    """7 training windows, batch 2 -> 4 steps per epoch; 2 validations per epoch on 2 windows."""
    from stripes.study import load_pe_registry

    registry = load_pe_registry({"pe_registry": str(ROOT / "config" / "pe.yaml")}, root=ROOT)
    tc = {"lr": 2e-3, "batch_size": 2, "epochs": 2, "warmup_epochs": 1, "curriculum_epochs": 1,
          "curriculum_min_frames": 16, "grad_clip": 1.0, "val_per_epoch": 2, "max_val_windows": 2,
          "num_threads": 1, "progress": False, "device": "cpu"}
    tc.update(train)
    return {
        "run": {"pe": pe, "context": context, "seed": seed, "stage": "train", "settings": ["test_16", "test_64"]},
        "data": {"out_dir": str(data_dir), "window_bars": 16, "long_window_bars": 64},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 32, "n_features": 16, "chunk_size": 64},
        "train": tc,
        "eval": {"n_samples": 1, "max_val_windows": 2},
        "pe_entry": {"name": pe, **registry[pe]},  # as stripes.runconfig.resolve_run_config writes it
    }


def _curves(out: Path) -> list[tuple]:
    # everything but frames_per_s (wall-clock) must match between equivalent runs
    return [(r["step"], r["epoch"], r["train_loss"], r["val_loss"], r["lr"]) for r in T.read_curves(out / "curves.csv")]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
    """Uninterrupted 4-epoch run (16 steps, 8 validations), in process."""
    out = tmp_path_factory.mktemp("ref")
    cfg = tiny_cfg(data_dir, epochs=4)
    summary = T.train(cfg, out)
    return cfg, out, summary


@pytest.mark.data
def test_end_to_end_outputs(reference_run):
    cfg, out, summary = reference_run
    for name in ("last.pt", "best.pt", "curves.csv", "curves.png", "train.json"):
        assert (out / name).exists(), name
    js = json.loads((out / "train.json").read_text())
    assert js["finished"] is True and js["steps"] == 16 and js["epochs"] == 4 and js["steps_per_epoch"] == 4
    assert js["best_val_loss"] == min(r[3] for r in _curves(out))
    rows = T.read_curves(out / "curves.csv")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert list(rows[0]) == T.CURVE_FIELDS
    # the loss goes down on these few steps (the model learns something at all)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    # lr follows LRFactor: lr of the update that ended at step 2 is that of step 1
    assert rows[0]["lr"] == pytest.approx(2e-3 * T.LRFactor(4, 1, 0.85)(1))
    assert rows[-1]["lr"] == pytest.approx(2e-3 * 0.85**3)
    # checkpoints load with weights_only=True and hold everything needed to resume
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "step", "best_val_loss", "history", "data_order"} <= set(ck)
    assert ck["step"] == 16 and ck["data_order"]["epoch"] == 4 and ck["data_order"]["batch"] == 0
    assert {"python", "numpy", "torch", "cuda"} <= set(ck["rng"])
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert best["step"] == js["best_step"]
    assert not list(out.glob(".*tmp*"))  # no leftover temporary files


@pytest.mark.data
def test_same_seed_is_deterministic_and_seed_matters(reference_run, tmp_path):
    cfg, out, _ = reference_run
    again = tmp_path / "again"
    T.train(cfg, again)
    assert _curves(again) == _curves(out)
    assert _same_weights(again / "last.pt", out / "last.pt")
    other = tmp_path / "seed1"
    T.train({**cfg, "run": {**cfg["run"], "seed": 1}}, other)
    assert _curves(other) != _curves(out)  # the comparison above can fail


def _wait_for_step(out: Path, proc: subprocess.Popen, min_step: int, timeout: float = 120) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (out / "curves.csv").exists():
            rows = T.read_curves(out / "curves.csv")
            if rows and rows[-1]["step"] >= min_step:
                return rows[-1]["step"]
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared in time")


@pytest.mark.data
def test_resume_after_sigkill_is_exact(reference_run, tmp_path):
    cfg, ref, ref_summary = reference_run
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "stripes.train", "--config", str(cfg_path), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # kill twice at different points (shortly after a checkpoint, i.e. in the middle of later steps)
    for min_step, delay in ((4, 0.05), (8, 0.05)):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached = _wait_for_step(out, proc, min_step)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the kill must have landed before the end, or this test proves nothing
        assert not (out / "train.json").exists(), f"run finished before the kill (step {reached})"
        torch.load(out / "last.pt", map_location="cpu", weights_only=True)  # never a broken file
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    js = json.loads((out / "train.json").read_text())
    for key in ("best_val_loss", "best_step", "steps", "final_train_loss", "final_val_loss"):
        assert js[key] == ref_summary[key], key
    assert _curves(out) == _curves(ref)
    assert _same_weights(out / "last.pt", ref / "last.pt")
    assert _same_weights(out / "best.pt", ref / "best.pt")
    assert not (out / "stale").exists()  # resumed: nothing was taken for stale or corrupt


@pytest.mark.data
def test_nan_loss_stops_with_clear_error_and_keeps_good_checkpoint(data_dir, tmp_path, monkeypatch):
    # inject NaN logits from the 6th training forward on (step 5; checkpoints exist at steps 2, 4)
    real = T.make_model
    calls = {"n": 0}

    def poisoned(cfg):
        model = real(cfg)
        forward = model.forward

        def fwd(x, pos):
            out = forward(x, pos)
            if model.training:
                calls["n"] += 1
                if calls["n"] >= 6:
                    out = out * float("nan")
            return out

        model.forward = fwd
        return model

    monkeypatch.setattr(T, "make_model", poisoned)
    cfg = tiny_cfg(data_dir)
    with pytest.raises(T.NonFiniteLossError, match=r"rope_c/bin/seed0.*step 5"):
        T.train(cfg, tmp_path)
    ck = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not (tmp_path / "train.json").exists()


@pytest.mark.data
def test_huge_lr_diverges_with_error_not_broken_checkpoint(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, lr=1e30, warmup_epochs=0, grad_clip=0, val_per_epoch=4)
    with pytest.raises(T.NonFiniteLossError, match="rope_c/bin/seed0"):
        T.train(cfg, tmp_path)
    for name in ("last.pt", "best.pt"):
        if (tmp_path / name).exists():
            ck = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
            assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.data
def test_callback_events_and_pruning_leaves_resumable_state(data_dir, tmp_path, reference_run):
    optuna = pytest.importorskip("optuna")
    events = []

    def cb(event):
        events.append(event)
        if event["step"] == 6:
            raise optuna.TrialPruned("pruned at step 6")

    cfg = tiny_cfg(data_dir, epochs=4)
    with pytest.raises(optuna.TrialPruned):
        T.train(cfg, tmp_path, callback=cb)
    assert [e["step"] for e in events] == [2, 4, 6]
    assert {"epoch", "step", "train_loss", "val_loss", "lr", "frames_per_s"} <= set(events[0])
    assert all(math.isfinite(e["val_loss"]) for e in events)
    # the checkpoint written before the callback is complete: resuming finishes like the reference
    T.train(cfg, tmp_path)
    assert _curves(tmp_path) == _curves(reference_run[1])


def _stale(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "stale").iterdir()) if (out / "stale").exists() else []


@pytest.mark.data
def test_changed_config_archives_the_old_run_and_starts_over(data_dir, tmp_path, capfd):
    """The reported bug: after `train.epochs` changed, every rerun failed with "rerun with
    --no-resume", which a Snakemake rerun cannot pass."""
    out = tmp_path / "run"
    old_cfg, new_cfg = tiny_cfg(data_dir, epochs=1), tiny_cfg(data_dir, epochs=2)
    T.train(old_cfg, out)
    old_files = {name: (out / name).read_bytes() for name in T.RUN_FILES}
    capfd.readouterr()
    summary = T.train(new_cfg, out)
    old_fp, new_fp = T.fingerprint(old_cfg), T.fingerprint(new_cfg)
    (archive,) = _stale(out)
    assert archive.startswith(f"{old_fp}-")
    assert capfd.readouterr().err == (
        f"stripes train: run rope_c/bin/seed0: {out / 'last.pt'} was written with a different config "
        f"(fingerprint {old_fp} != {new_fp}); moved the old run's files to {out / 'stale' / archive} and "
        "starting over\n")
    # the old run is kept whole, byte for byte
    assert {p.name: p.read_bytes() for p in (out / "stale" / archive).iterdir()} == old_files
    # the new run started from scratch: the same as a run of the new config in an empty folder
    fresh = tmp_path / "fresh"
    T.train(new_cfg, fresh)
    assert summary["steps"] == 8 and summary["fingerprint"] == new_fp
    assert _curves(out) == _curves(fresh)
    assert _same_weights(out / "last.pt", fresh / "last.pt")
    # an unchanged config resumes (here: an already finished run) and archives nothing more
    capfd.readouterr()
    again = T.train(new_cfg, out)
    assert capfd.readouterr().err == "" and _stale(out) == [archive]
    assert {k: again[k] for k in ("best_val_loss", "best_step", "steps")} == \
        {k: summary[k] for k in ("best_val_loss", "best_step", "steps")}
    # --no-resume still deletes instead of archiving
    T.train(new_cfg, out, resume=False)
    assert _stale(out) == [archive]


@pytest.mark.data
@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint", "missing_keys"])
def test_unloadable_last_pt_is_set_aside_and_the_run_starts_over(data_dir, tmp_path, capfd, damage):
    """The reported bug: a truncated last.pt ended every retry in a torch traceback naming neither
    the file nor the fix."""
    cfg = tiny_cfg(data_dir, epochs=1)
    ref = tmp_path / "ref"
    T.train(cfg, ref)
    out = tmp_path / "run"
    out.mkdir()
    last = out / "last.pt"
    if damage == "truncated":  # a copy cut short, as by a full disk
        last.write_bytes((ref / "last.pt").read_bytes()[:3000])
    elif damage == "not_a_checkpoint":
        last.write_bytes(b"\x00" * 64)
    else:  # loads, but cannot resume a run
        torch.save({"step": 3, "fingerprint": T.fingerprint(cfg)}, last)
    damaged = last.read_bytes()
    capfd.readouterr()
    T.train(cfg, out)
    (aside,) = _stale(out)
    assert aside.startswith("corrupt-") and aside.endswith(".pt")
    assert (out / "stale" / aside).read_bytes() == damaged
    err = capfd.readouterr().err
    assert err.startswith(f"stripes train: run rope_c/bin/seed0: {last} cannot be loaded (")
    assert err.endswith(f"); moved it to {out / 'stale' / aside} and starting over\n") and err.count("\n") == 1
    if damage == "missing_keys":
        assert "(KeyError: 'lacks best_step, best_val_loss, history, model, optimizer, rng, scheduler, " \
               "train_frames, train_time_s, wall_s')" in err
    # started over: identical to the undamaged run
    assert _curves(out) == _curves(ref)
    assert _same_weights(out / "last.pt", ref / "last.pt")


@pytest.mark.data
def test_checkpoint_of_a_differently_shaped_model_is_archived(data_dir, tmp_path, capfd, monkeypatch):
    # the model code changed under an unchanged config (the fingerprint cannot see code): loading
    # the old weights would fail inside load_state_dict
    cfg = tiny_cfg(data_dir, epochs=1)
    T.train(cfg, tmp_path)
    real = T.make_model
    monkeypatch.setattr(T, "make_model", lambda c: real({**c, "model": {**c["model"], "d_ff": 48}}))
    capfd.readouterr()
    summary = T.train(cfg, tmp_path)
    (archive,) = _stale(tmp_path)
    fp = T.fingerprint(cfg)
    assert capfd.readouterr().err == (
        f"stripes train: run rope_c/bin/seed0: {tmp_path / 'last.pt'} holds weights of a differently shaped model "
        f"(the model code changed); moved the old run's files to {tmp_path / 'stale' / archive} and starting over\n")
    assert archive.startswith(f"{fp}-") and summary["steps"] == 4


@pytest.mark.data
def test_cli_main(data_dir, tmp_path, capsys):
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(tiny_cfg(data_dir, epochs=1, max_train_windows=2)))
    assert T.main(["--config", str(cfg_path), "--out", str(tmp_path / "o"), "--device", "cpu", "--no-resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1


@pytest.mark.data
def test_bf16_autocast_cpu_runs_and_stays_close(data_dir, tmp_path, reference_run):
    # bf16 autocast of the forward pass (loss and attention sums in fp32): same schedule, losses
    # within a few percent of the fp32 reference on this short run
    cfg = tiny_cfg(data_dir, epochs=4, bf16=True)
    s = T.train(cfg, tmp_path)
    assert s["bf16"] is True and math.isfinite(s["best_val_loss"])
    ref = _curves(reference_run[1])
    got = _curves(tmp_path)
    assert [r[0] for r in got] == [r[0] for r in ref]
    assert max(abs(g[3] - r[3]) / r[3] for g, r in zip(got, ref)) < 0.05
    assert got != ref  # it did run in bf16


@pytest.mark.gpu
@pytest.mark.data
def test_cuda_train_bf16_checkpoints_cuda_rng(data_dir, tmp_path):
    # on CUDA with bf16 autocast: the run finishes with a finite loss and the checkpoint carries
    # the CUDA RNG states needed for an exact resume
    cfg = tiny_cfg(data_dir, epochs=2, device="cuda", bf16=True)
    s = T.train(cfg, tmp_path / "a")
    assert s["device"].startswith("cuda") and math.isfinite(s["best_val_loss"])
    ck = torch.load(tmp_path / "a" / "last.pt", map_location="cpu", weights_only=True)
    assert ck["rng"]["cuda"]  # CUDA RNG states are checkpointed
