"""stripes.tune: seeded, serial, resumable Optuna studies (fake fast objectives + a tiny real one)."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from stripes import tune
from stripes.runconfig import stable_seed

GRID = {"train.lr": {"type": "categorical", "choices": [1e-4, 5e-4, 1e-3]}}
LOSS = {"objective": "best_val_loss"}  # the fake objectives below are losses (minimised)


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
    code = "from stripes.runconfig import stable_seed; print(stable_seed('tune', 'rope_c', 'bin'))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(i)}).stdout.strip() for i in range(3)}
    assert outs == {str(stable_seed("tune", "rope_c", "bin"))}
    assert tune.sampler_seed("rope_c", "bin") != tune.sampler_seed("rope_c", "key")
    assert 0 <= tune.sampler_seed("rope_c", "bin") < 2**31


def test_grid_default_is_paper_lr_grid_and_outputs(tmp_path):
    res = tune.run_study(base_cfg(), LOSS, "rope_c", "bin", tmp_path, objective=fake_objective)
    assert res["params"] == {"train.lr": 5e-4}
    assert res["n_trials"] == 3 and res["sampler"] == "grid"
    assert (tmp_path / "study.journal").exists()
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["params"] == {"train.lr": 5e-4} and best["value"] == pytest.approx(0.1)
    lines = (tmp_path / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("number,state,value,train.lr") and len(lines) == 4
    assert sorted(float(line.split(",")[3]) for line in lines[1:]) == [1e-4, 5e-4, 1e-3]


def test_a_one_point_grid_is_its_best_without_training_a_trial(tmp_path, monkeypatch):
    # the smoke overlay's one-point lr grid: nothing to choose, so no trial trains (a training
    # run would raise here: base_cfg() has no data)
    import stripes.train

    monkeypatch.setattr(stripes.train, "train", lambda *a, **k: pytest.fail("a one-point grid trained a trial"))
    spec = {"space": {"train.lr": {"type": "categorical", "choices": [1e-3]}}}
    res = tune.run_study(base_cfg(), spec, "rope_c", "bin", tmp_path)
    assert res["params"] == {"train.lr": 1e-3} and res["n_trials"] == 0 and res["value"] is None
    assert "one-point" in res["skipped"] and not (tmp_path / "work" / "trials").exists()
    assert json.loads((tmp_path / "best.json").read_text())["params"] == {"train.lr": 1e-3}
    assert (tmp_path / "trials.csv").read_text().splitlines()[1:] == [] and (tmp_path / "study.journal").exists()
    # two points, or a sampler that is not the grid, still tune
    assert tune.only_point(tune.full_spec({"space": {"train.lr": {"type": "categorical", "choices": [1e-3, 1e-4]}}})) is None
    assert tune.only_point(tune.full_spec({**spec, "sampler": "tpe", "n_trials": 1})) is None
    assert tune.only_point(tune.full_spec({**spec, "n_trials": 2})) is None


def test_same_best_on_rerun_tpe(tmp_path):
    spec = {**LOSS, "sampler": "tpe", "n_trials": 8, "space": {
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
        tune.run_study(base_cfg(), LOSS, "rope_c", "bin", tmp_path, objective=flaky)
    assert not (tmp_path / "best.json").exists()
    calls.clear()
    res = tune.run_study(base_cfg(), LOSS, "rope_c", "bin", tmp_path, objective=fake_objective_counting(calls))
    assert len(calls) == 2  # 1 finished before the kill; 2 missing (the killed one is redone)
    assert res["resumed_with"] == 1 and res["params"] == {"train.lr": 5e-4}
    # a finished study is not rerun
    calls.clear()
    tune.run_study(base_cfg(), LOSS, "rope_c", "bin", tmp_path, objective=fake_objective_counting(calls))
    assert calls == []
    # a changed config starts afresh
    cfg = base_cfg()
    cfg["train"]["epochs"] = 3
    tune.run_study(cfg, LOSS, "rope_c", "bin", tmp_path, objective=fake_objective_counting(calls))
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
    spec = {**LOSS, "sampler": "grid", "space": {"train.lr": {"type": "categorical", "choices": [1e-4, 1e-3, 2e-3, 3e-3]}},
            "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1, "interval_steps": 1}}
    res = tune.run_study(base_cfg(), spec, "rope_c", "bin", tmp_path)
    study = optuna.load_study(study_name="rope_c.bin", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.PRUNED in states
    assert res["params"] == {"train.lr": 1e-4}
    assert res["value"] == pytest.approx(1.0 + 0.1 - 0.05)  # best_val_loss = min over validations


def _fake_train_and_selection(monkeypatch, val_cs, calls=None):
    """stripes.train.train reports a loss curve; the validation selection scores val_cs(lr)."""
    import stripes

    def fake_train(cfg, out_dir, callback=None):
        lr = cfg["train"]["lr"]
        for step in range(4):
            # the lowest loss is the largest lr, which is NOT the best CS below
            callback({"epoch": 0, "step": step, "train_loss": 1.0, "val_loss": 1.0 - lr * 100 - step * 0.01,
                      "lr": lr, "frames_per_s": 1.0})
        return {"best_val_loss": 0.0}

    def fake_score(cfg, checkpoint, device=None):
        lr = cfg["train"]["lr"]
        if calls is not None:
            calls.append((lr, str(checkpoint)))
        return {"rule": cfg["eval"]["selection"], "strategy": "threshold", "threshold": 0.5, "gap": 0,
                "val_cs": val_cs(lr), "val_ssmd50": 20.0 - val_cs(lr) / 10, "val_gs": 1.0, "per_metric": {}}

    fake = type(sys)("stripes.train")
    fake.train = fake_train
    monkeypatch.setitem(sys.modules, "stripes.train", fake)
    monkeypatch.setattr(stripes, "train", fake, raising=False)
    fake_eval = type(sys)("stripes.evaluate")
    fake_eval.selected_validation_score = fake_score
    monkeypatch.setitem(sys.modules, "stripes.evaluate", fake_eval)
    monkeypatch.setattr(stripes, "evaluate", fake_eval, raising=False)


def test_val_selected_objective_maximises_the_selected_validation_cs(tmp_path, monkeypatch):
    calls = []
    cs = {1e-4: 10.0, 5e-4: 30.0, 1e-3: 20.0}
    _fake_train_and_selection(monkeypatch, cs.__getitem__, calls)
    cfg = {**base_cfg(), "eval": {"selection": "fixed"}}
    res = tune.run_study(cfg, {}, "rope_c", "bin", tmp_path)  # default objective: val_selected
    assert res["objective"] == "val_selected" and res["direction"] == "maximize"
    assert res["params"] == {"train.lr": 5e-4} and res["value"] == 30.0
    assert res["binarization"] == {"rule": "fixed", "strategy": "threshold", "threshold": 0.5, "gap": 0,
                                   "val_cs": 30.0, "val_ssmd50": 17.0, "val_gs": 1.0}
    assert json.loads((tmp_path / "best.json").read_text())["binarization"]["val_cs"] == 30.0
    # each trial scored its own best checkpoint
    assert sorted(lr for lr, _ in calls) == [1e-4, 5e-4, 1e-3]
    assert all(ck.endswith("best.pt") for _, ck in calls)
    header = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[-5:-2] == ["binarization.strategy", "binarization.threshold", "binarization.gap"]


def test_val_selected_with_min_ssmd_rule_minimises(tmp_path, monkeypatch):
    cs = {1e-4: 10.0, 5e-4: 30.0, 1e-3: 20.0}
    _fake_train_and_selection(monkeypatch, cs.__getitem__)
    cfg = {**base_cfg(), "eval": {"selection": "min_ssmd"}}
    res = tune.run_study(cfg, {}, "rope_c", "bin", tmp_path)
    assert res["direction"] == "minimize"
    assert res["params"] == {"train.lr": 5e-4} and res["value"] == pytest.approx(17.0)


def test_val_selected_pruner_sees_the_negated_loss(tmp_path, monkeypatch):
    """Maximising CS: the MedianPruner must still prune the trials whose LOSS is worst."""
    cs = {1e-4: 10.0, 1e-3: 20.0, 2e-3: 25.0, 3e-3: 30.0}
    _fake_train_and_selection(monkeypatch, cs.__getitem__)
    spec = {"sampler": "grid", "space": {"train.lr": {"type": "categorical", "choices": sorted(cs)}},
            "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1, "interval_steps": 1}}
    tune.run_study({**base_cfg(), "eval": {"selection": "max_cs"}}, spec, "rope_c", "bin", tmp_path)
    study = optuna.load_study(study_name="rope_c.bin", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))))
    by_lr = {t.params["train.lr"]: t for t in study.trials}
    first = min(study.trials, key=lambda t: t.number)
    # the loss falls with lr: after the first trial, trials with a SMALLER lr than it are pruned
    for lr, t in by_lr.items():
        if t.number != first.number:
            expected = optuna.trial.TrialState.PRUNED if lr < first.params["train.lr"] else optuna.trial.TrialState.COMPLETE
            assert t.state == expected, (lr, t.state)
        assert all(v == pytest.approx(-(1.0 - lr * 100 - s * 0.01)) for s, v in t.intermediate_values.items())


def test_unknown_objective_is_an_error():
    with pytest.raises(ValueError, match="unknown objective"):
        tune.direction({"objective": "cs"}, base_cfg())


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

    spec = {**LOSS, "space": {"train.lr": {"type": "categorical", "choices": [1e-3, 1e-2, 1e-1]}}}
    a = tune.run_study(base_cfg(), spec, "nope", "time", tmp_path / "a", objective=objective)
    b = tune.run_study(base_cfg(), spec, "nope", "time", tmp_path / "b", objective=objective)
    assert a["params"] == b["params"] == {"train.lr": 1e-1}
    assert a["value"] == b["value"]


def test_cli_rejects_missing_args():
    with pytest.raises(SystemExit):
        tune.main(["--pe", "nope"])


# ----------------------------------------------------------------------------- failed studies

N_HEADS_ERROR = "d_model=64 is not divisible by n_heads=3"  # what stripes.model raises for that config


def _journal_trials(out):
    backend = optuna.storages.journal.JournalFileBackend(str(out / "work" / "study.journal"))
    storage = optuna.storages.JournalStorage(backend)
    return sorted(optuna.load_study(study_name="rope_c.bin", storage=storage).trials, key=lambda t: t.number)


def test_no_trial_completed_counts_failed_and_pruned_and_keeps_the_last_good_result(tmp_path):
    """The reported bug: a config whose trials all FAIL (n_heads 3 with d_model 64) said "all
    pruned", and the failed job's best.json (removed by Snakemake) was the only copy of the result."""
    good = tune.run_study(base_cfg(), LOSS, "rope_c", "bin", tmp_path, objective=fake_objective)
    kept = tmp_path / "work" / "best.json"
    assert json.loads(kept.read_text()) == good == json.loads((tmp_path / "best.json").read_text())

    def broken(trial):
        lr = trial.suggest_categorical("train.lr", [1e-4, 5e-4, 1e-3])
        if lr == 5e-4:
            raise optuna.TrialPruned("pruned at validation 0")
        raise ValueError(N_HEADS_ERROR + "\n(second line of the message, left out)")

    cfg = base_cfg()
    cfg["model"] = {"d_model": 64, "n_heads": 3}  # a changed config: the study starts afresh
    with pytest.raises(RuntimeError) as err:
        tune.run_study(cfg, LOSS, "rope_c", "bin", tmp_path, objective=broken)
    trials = _journal_trials(tmp_path)
    first = next(t for t in trials if t.state == optuna.trial.TrialState.FAIL)
    assert [t.state.name for t in trials].count("FAIL") == 2
    assert str(err.value) == (
        "tune rope_c/bin: no trial completed (0 complete, 1 pruned, 2 failed). "
        f"First failed trial: {first.number} {{'train.lr': {first.params['train.lr']}}}: ValueError: {N_HEADS_ERROR}. "
        "Fix the cause (the traceback is in the job log) and rerun. "
        f"The last good result, tuned under an earlier config, is kept in {kept} (params {{'train.lr': 0.0005}}, "
        f"value 0.1, fingerprint {good['fingerprint']}); Snakemake removes {tmp_path / 'best.json'} with the "
        "outputs of a failed job.")
    assert json.loads(kept.read_text()) == good  # the failed study did not touch it


def test_all_pruned_says_so_and_points_at_the_pruner(tmp_path):
    def pruned(trial):
        trial.suggest_categorical("train.lr", [1e-4, 5e-4, 1e-3])
        raise optuna.TrialPruned()

    with pytest.raises(RuntimeError) as err:
        tune.run_study(base_cfg(), LOSS, "rope_c", "bin", tmp_path, objective=pruned)
    assert str(err.value) == ("tune rope_c/bin: no trial completed (0 complete, 3 pruned, 0 failed). The pruner "
                              "stopped every trial: loosen tune.pruner (n_warmup_steps, n_startup_trials).")
    assert not (tmp_path / "work" / "best.json").exists()  # nothing good to keep, nothing invented


def test_a_trial_killed_with_its_job_fails_without_an_error_text(tmp_path):
    # a trial left RUNNING by a killed job is marked FAIL on the rerun: there is no error to quote
    spec = tune.full_spec({**LOSS, "space": GRID})
    from stripes.runconfig import config_hash

    fp = config_hash({"cfg": base_cfg(), "spec": spec})
    study = tune.open_study(tmp_path / "work" / "study.journal", "rope_c", "bin", spec, fp)
    study.ask().suggest_categorical("train.lr", GRID["train.lr"]["choices"])  # ... and the job dies

    def pruned(trial):
        trial.suggest_categorical("train.lr", GRID["train.lr"]["choices"])
        raise optuna.TrialPruned()

    with pytest.raises(RuntimeError) as err:
        tune.run_study(base_cfg(), {**LOSS, "space": GRID}, "rope_c", "bin", tmp_path, objective=pruned)
    killed = _journal_trials(tmp_path)[0]
    assert killed.state == optuna.trial.TrialState.FAIL and "error" not in killed.user_attrs
    assert str(err.value) == (
        "tune rope_c/bin: no trial completed (0 complete, 3 pruned, 1 failed). "
        f"First failed trial: 0 {killed.params}: no error recorded (its job was killed, or the objective "
        "returned no finite value). Fix the cause (the traceback is in the job log) and rerun.")


# ----------------------------------------------------------------------------- stale MLflow pointers


def test_parent_pointer_to_a_deleted_tracking_store_starts_a_new_parent_run(tmp_path, capsys):
    """The reported bug: after `rm -r results/mlflow` every rerun of a tune job died with
    "Run with id=... not found" raised for results/tune/*/work/mlflow_parent.json."""
    import shutil

    from stripes import jobs, tracking

    def tracker(store=tmp_path / "mlflow"):
        if not (store / "experiment.json").exists():  # what the mlflow_init rule does
            tracking.init_tracking(f"sqlite:///{store}/mlflow.db", store / "artifacts", "test",
                                   store / "experiment.json")
        return tracking.Tracker.from_experiment_file(store / "experiment.json")

    out = tmp_path / "tune"
    pointer = out / "work" / "mlflow_parent.json"

    def study(tr):
        """The study with the tune job's MLflow callbacks; (result, parent run id)."""
        cb = jobs.TuneTracking(tr, out)
        return tune.run_study(base_cfg(), LOSS, "rope_c", "bin", out, objective=fake_objective, callbacks=cb), \
            cb.parent_run_id

    first, p1 = study(tracker())
    assert json.loads(pointer.read_text())["run_id"] == p1
    # control: the store is intact, so the rerun logs into the same parent run, silently
    capsys.readouterr()
    assert study(tracker())[1] == p1
    assert capsys.readouterr().err == ""

    shutil.rmtree(tmp_path / "mlflow")
    # a new store: in this process MLflow caches the engine of the old URI (which still writes to
    # the unlinked file), so the recreated store gets a path of its own
    tr = tracker(tmp_path / "mlflow2")
    capsys.readouterr()  # MLflow's own lines about creating the DB
    second, p2 = study(tr)
    assert p2 != p1 and second["params"] == first["params"] and second["resumed_with"] == 3
    assert capsys.readouterr().err == (
        f"stripes tune: rope_c/bin: {pointer} points to MLflow run {p1}, which is not in the tracking store "
        f"{tr.tracking_uri} (was results/mlflow deleted?); starting a new parent run and rewriting "
        "mlflow_parent.json\n")
    run = tr.client.get_run(p2)
    assert run.info.status == "FINISHED" and run.data.metrics["best_value"] == 0.1
    assert json.loads(pointer.read_text())["run_id"] == p2

    # the run deleted in the UI (or its experiment): the same way
    tr.client.delete_run(p2)
    assert study(tr)[1] not in (p1, p2)
    assert capsys.readouterr().err == (
        f"stripes tune: rope_c/bin: {pointer} points to MLflow run {p2}, which was deleted (it or its experiment); "
        "starting a new parent run and rewriting mlflow_parent.json\n")


def test_cli_ends_a_study_of_failed_trials_with_one_line(tmp_path, monkeypatch, capsys):
    # the real train_objective, with a training that fails as build_model does for n_heads 3, d_model 64
    import stripes

    def train(cfg, out_dir, callback=None):
        raise ValueError(N_HEADS_ERROR)

    fake = type(sys)("stripes.train")
    fake.train = train
    monkeypatch.setitem(sys.modules, "stripes.train", fake)
    monkeypatch.setattr(stripes, "train", fake, raising=False)
    (tmp_path / "config.json").write_text(json.dumps(base_cfg()))
    (tmp_path / "spec.json").write_text(json.dumps({**LOSS, "space": GRID}))
    out = tmp_path / "out"
    rc = tune.main(["--config", str(tmp_path / "config.json"), "--spec", str(tmp_path / "spec.json"), "--pe", "rope_c",
                    "--context", "bin", "--out", str(out)])
    first = _journal_trials(out)[0]
    assert rc == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "stripes tune: error: tune rope_c/bin: no trial completed (0 complete, 0 pruned, 3 failed). "
        f"First failed trial: 0 {{'train.lr': {first.params['train.lr']}}}: ValueError: {N_HEADS_ERROR}. "
        "Fix the cause (the traceback is in the job log) and rerun.")
    assert not (out / "best.json").exists() and not (out / "work" / "best.json").exists()
