"""stripes.tune: seeded, serial, resumable Optuna studies (fake fast objectives + a tiny real one)."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from stripes import tune
from stripes.config import stable_seed

GRID = {"train.lr": {"type": "categorical", "choices": [1e-4, 5e-4, 1e-3]}}


def fake_objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_categorical("train.lr", [1e-4, 5e-4, 1e-3])
    return abs(lr - 5e-4) * 1000 + 0.1


def tpe_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("train.lr", 1e-5, 1e-2, log=True)
    d = trial.suggest_float("model.dropout", 0.0, 0.3)
    return (x - 3e-3) ** 2 * 1e4 + (d - 0.1) ** 2


def base_cfg(pe="rope_c", ctx="bin"):
    return {"run": {"pe": pe, "context": ctx, "seed": 0, "stage": "tune"}, "train": {"lr": 1e-3}, "model": {}}


def test_stable_seed_is_stable_and_distinct():
    # sha256-based: the same in every process (Python's hash() is salted per process)
    code = "from stripes.config import stable_seed; print(stable_seed('tune', 'rope_c', 'bin'))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(i)}).stdout.strip() for i in range(3)}
    assert outs == {str(stable_seed("tune", "rope_c", "bin"))}
    assert tune.sampler_seed("rope_c", "bin") != tune.sampler_seed("rope_c", "key")
    assert 0 <= tune.sampler_seed("rope_c", "bin") < 2**31


def test_grid_default_is_paper_lr_grid_and_outputs(tmp_path):
    res = tune.run_study(base_cfg(), {}, "rope_c", "bin", tmp_path, objective=fake_objective)
    assert res["params"] == {"train.lr": 5e-4}
    assert res["n_trials"] == 3 and res["sampler"] == "grid"
    assert (tmp_path / "study.journal").exists()
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["params"] == {"train.lr": 5e-4} and best["value"] == pytest.approx(0.1)
    lines = (tmp_path / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("number,state,value,train.lr") and len(lines) == 4
    assert sorted(float(line.split(",")[3]) for line in lines[1:]) == [1e-4, 5e-4, 1e-3]


def test_same_best_on_rerun_tpe(tmp_path):
    spec = {"sampler": "tpe", "n_trials": 8, "space": {
        "train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3}}}
    a = tune.run_study(base_cfg(), spec, "rope_c", "bin", tmp_path / "a", objective=tpe_objective)
    b = tune.run_study(base_cfg(), spec, "rope_c", "bin", tmp_path / "b", objective=tpe_objective)
    c = tune.run_study(base_cfg(), spec, "rope_c", "key", tmp_path / "c", objective=tpe_objective)
    assert a["params"] == b["params"] and a["value"] == b["value"]
    assert a["params"] != c["params"]  # a different (pe, context) gets a different sampler seed


def test_resume_runs_only_missing_trials(tmp_path):
    calls = []

    def flaky(trial):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed during its second trial
        return fake_objective(trial)

    with pytest.raises(KeyboardInterrupt):
        tune.run_study(base_cfg(), {}, "rope_c", "bin", tmp_path, objective=flaky)
    assert not (tmp_path / "best.json").exists()
    calls.clear()
    res = tune.run_study(base_cfg(), {}, "rope_c", "bin", tmp_path, objective=fake_objective_counting(calls))
    assert len(calls) == 2  # 1 finished before the kill; 2 missing (the killed one is redone)
    assert res["resumed_with"] == 1 and res["params"] == {"train.lr": 5e-4}
    # a finished study is not rerun
    calls.clear()
    tune.run_study(base_cfg(), {}, "rope_c", "bin", tmp_path, objective=fake_objective_counting(calls))
    assert calls == []
    # a changed config starts afresh
    cfg = base_cfg()
    cfg["train"]["epochs"] = 3
    tune.run_study(cfg, {}, "rope_c", "bin", tmp_path, objective=fake_objective_counting(calls))
    assert len(calls) == 3


def fake_objective_counting(calls):
    def objective(trial):
        calls.append(trial.number)
        return fake_objective(trial)
    return objective


def test_pruning_through_the_training_callback(tmp_path, monkeypatch):
    """train_objective reports every validation and raises TrialPruned via the callback."""
    import stripes

    class FakeTrain:
        def __call__(self, cfg, out_dir, callback=None):
            lr = cfg["train"]["lr"]
            for step in range(6):
                callback({"epoch": 0, "step": step, "train_loss": 1.0, "val_loss": 1.0 + lr * 1000 - step * 0.01,
                          "lr": lr, "frames_per_s": 1.0})
            return {"best_val_loss": 0.0}

    fake = type(sys)("stripes.train")
    fake.train = FakeTrain()
    monkeypatch.setitem(sys.modules, "stripes.train", fake)
    monkeypatch.setattr(stripes, "train", fake, raising=False)
    spec = {"sampler": "grid", "space": {"train.lr": {"type": "categorical", "choices": [1e-4, 1e-3, 2e-3, 3e-3]}},
            "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1, "interval_steps": 1}}
    res = tune.run_study(base_cfg(), spec, "rope_c", "bin", tmp_path)
    study = optuna.load_study(study_name="rope_c.bin", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.PRUNED in states
    assert res["params"] == {"train.lr": 1e-4}
    assert res["value"] == pytest.approx(1.0 + 0.1 - 0.05)  # best_val_loss = min over validations


def test_tiny_real_torch_objective_is_deterministic(tmp_path):
    """A real (tiny) torch training as objective: same best params and value on rerun."""
    torch = pytest.importorskip("torch")

    def objective(trial):
        lr = trial.suggest_categorical("train.lr", [1e-3, 1e-2, 1e-1])
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(64, generator=g)
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        best = float("inf")
        for step in range(30):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
            loss.backward()
            opt.step()
            best = min(best, loss.item())
            trial.report(loss.item(), step)
        return best

    spec = {"space": {"train.lr": {"type": "categorical", "choices": [1e-3, 1e-2, 1e-1]}}}
    a = tune.run_study(base_cfg(), spec, "nope", "time", tmp_path / "a", objective=objective)
    b = tune.run_study(base_cfg(), spec, "nope", "time", tmp_path / "b", objective=objective)
    assert a["params"] == b["params"] == {"train.lr": 1e-1}
    assert a["value"] == b["value"]


def test_cli_rejects_missing_args():
    with pytest.raises(SystemExit):
        tune.main(["--pe", "nope"])
