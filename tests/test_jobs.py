"""stripes.jobs, the job layer: run records, the failure policy, the train/evaluate/tune jobs with
their MLflow runs (tmp SQLite store), the CLI, and the tune study's public-API bookkeeping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from stripes import jobs, tracking, tune

ROOT = Path(__file__).resolve().parents[1]
GRID = {"train.lr": {"type": "categorical", "choices": [1e-4, 5e-4, 1e-3]}}


@pytest.fixture()
def experiment(tmp_path):
    tracking.init_tracking(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts", "test", tmp_path / "experiment.json")
    return tmp_path / "experiment.json"


def _config(path: Path, cfg: dict | None = None) -> Path:
    path.write_text(json.dumps(cfg or {"run": {"pe": "nope", "context": "time", "seed": 0}}))
    return path


# ----------------------------------------------------------------------------- records


def test_records_are_written_and_read_in_one_place(tmp_path):
    rec = jobs.write_record(tmp_path / "a.json", jobs.FAILED, stage="train", error="boom")
    assert rec == {"stage": "train", "error": "boom", "status": "failed"}
    assert jobs.read_record(tmp_path / "a.json") == rec and jobs.is_failed(rec)
    assert not jobs.is_failed(jobs.write_record(tmp_path / "b.json", jobs.OK, run_id="r"))
    assert jobs.read_record(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert jobs.read_record(tmp_path / "bad.json") is None and not jobs.is_failed(None)
    (tmp_path / "list.json").write_text("[]")
    assert jobs.read_record(tmp_path / "list.json") is None
    with pytest.raises(ValueError):
        jobs.write_record(tmp_path / "c.json", "FINISHED")


def test_job_setup_applies_the_device_override_to_the_config(tmp_path):
    job = jobs.start_job("train", device="cpu")
    assert job.tracker is None and not job.record_failures
    cfg = job.config(_config(tmp_path / "c.json", {"run": {"seed": 1}, "train": {"device": "cuda"}}))
    assert cfg["train"]["device"] == "cpu" and cfg["eval"]["device"] == "cpu"


# ----------------------------------------------------------------------------- train / evaluate


def test_train_job_records_a_failure_and_the_evaluation_follows(experiment, tmp_path, monkeypatch):
    """A training that raises: run FAILED in MLflow, failure record written, job exits cleanly; or,
    without study.record_failures, the record is written and the job fails."""
    fake = type(sys)("stripes.train")

    def train(cfg, out_dir, callback=None):
        callback({"epoch": 0, "step": 5, "train_loss": 1.0, "val_loss": 0.9, "lr": 1e-3, "frames_per_s": 10.0})
        raise RuntimeError("diverged")

    fake.train = train
    monkeypatch.setitem(sys.modules, "stripes.train", fake)
    cfg = _config(tmp_path / "config.json")
    job = jobs.start_job("train", experiment, record_failures=True)
    rec = jobs.train_job(job, cfg, tmp_path / "train", tmp_path / "rec.json")
    assert rec["status"] == "failed" and "diverged" in rec["error"] and rec["stage"] == "train"
    assert jobs.read_record(tmp_path / "rec.json") == rec
    run = job.tracker.client.get_run(rec["run_id"])
    assert run.info.status == "FAILED" and run.data.metrics["val_loss"] == 0.9
    # the evaluation of a failed training writes failure records, never numbers
    ev = jobs.evaluate_job(job, cfg, tmp_path / "train", tmp_path / "eval", tmp_path / "rec.json",
                           tmp_path / "eval_rec.json")
    assert jobs.is_failed(ev) and jobs.is_failed(jobs.read_record(tmp_path / "eval" / "metrics.json"))
    strict = jobs.start_job("train", experiment, record_failures=False)
    with pytest.raises(RuntimeError):
        jobs.train_job(strict, cfg, tmp_path / "train2", tmp_path / "rec2.json")
    assert jobs.is_failed(jobs.read_record(tmp_path / "rec2.json"))


def test_fused_train_eval_job_logs_both_into_one_run(experiment, tmp_path, monkeypatch):
    fake_train = type(sys)("stripes.train")

    def train(cfg, out_dir, callback=None):
        callback({"step": 1, "train_loss": 1.0, "val_loss": 0.8})
        return {"best_val_loss": 0.8}

    fake_train.train = train
    fake_eval = type(sys)("stripes.evaluate")
    fake_eval.evaluate = lambda cfg, checkpoint, out: {"test_16": {"cs": 0.5}}
    monkeypatch.setitem(sys.modules, "stripes.train", fake_train)
    monkeypatch.setitem(sys.modules, "stripes.evaluate", fake_eval)
    cfg = _config(tmp_path / "config.json")
    rc = jobs.main(["train-eval", "--config", str(cfg), "--train-dir", str(tmp_path / "train"),
                    "--eval-dir", str(tmp_path / "eval"), "--experiment", str(experiment),
                    "--record", str(tmp_path / "train" / "mlflow_run.json"),
                    "--eval-record", str(tmp_path / "eval" / "mlflow_run.json"), "--record-failures"])
    assert rc == 0
    t, e = (jobs.read_record(tmp_path / d / "mlflow_run.json") for d in ("train", "eval"))
    assert t["status"] == e["status"] == "ok" and t["run_id"] == e["run_id"]
    run = tracking.Tracker.from_experiment_file(experiment).client.get_run(t["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["test_16.cs"] == 0.5
    assert run.data.metrics["summary.best_val_loss"] == 0.8 and run.data.tags["evaluated"] == "true"


def test_fused_job_runs_every_seed_of_its_pair_each_in_its_own_run(experiment, tmp_path, monkeypatch):
    """study.fuse_train_eval: one process per (pe, context), its seeds one after the other; a failed
    seed is recorded (study.record_failures) and the next one still runs."""
    fake_train = type(sys)("stripes.train")

    def train(cfg, out_dir, callback=None):
        if cfg["run"]["seed"] == 0:
            raise RuntimeError("seed 0 diverged")
        callback({"step": 1, "train_loss": 1.0, "val_loss": 0.7})
        return {}

    fake_train.train = train
    fake_eval = type(sys)("stripes.evaluate")
    fake_eval.evaluate = lambda cfg, checkpoint, out: {"test_16": {"cs": float(cfg["run"]["seed"])}}
    monkeypatch.setitem(sys.modules, "stripes.train", fake_train)
    monkeypatch.setitem(sys.modules, "stripes.evaluate", fake_eval)
    seeds = (0, 1)
    configs = [str(_config(tmp_path / f"config{s}.json", {"run": {"pe": "nope", "context": "time", "seed": s}}))
               for s in seeds]

    def paths(stage, name=""):
        return [str(tmp_path / stage / f"seed{s}" / name) for s in seeds]

    args = ["train-eval", "--config", *configs, "--train-dir", *paths("train"), "--eval-dir", *paths("eval"),
            "--experiment", str(experiment), "--record", *paths("train", "mlflow_run.json"),
            "--eval-record", *paths("eval", "mlflow_run.json"), "--record-failures"]
    assert jobs.main(args) == 0
    t0, t1 = (jobs.read_record(p) for p in paths("train", "mlflow_run.json"))
    e0, e1 = (jobs.read_record(p) for p in paths("eval", "mlflow_run.json"))
    assert t0["status"] == e0["status"] == "failed" and "seed 0 diverged" in t0["error"]
    assert t1["status"] == e1["status"] == "ok" and t1["run_id"] == e1["run_id"] != t0["run_id"]
    assert jobs.is_failed(jobs.read_record(paths("eval", "metrics.json")[0]))
    client = tracking.Tracker.from_experiment_file(experiment).client
    assert client.get_run(t0["run_id"]).info.status == "FAILED"
    run = client.get_run(t1["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["test_16.cs"] == 1.0 and run.data.tags["seed"] == "1"
    with pytest.raises(SystemExit):  # one value per run for each list
        jobs.main(args[:args.index("--eval-dir")] + ["--eval-dir", paths("eval")[0]] + args[args.index("--experiment"):])


# ----------------------------------------------------------------------------- tune


def test_tune_job_keeps_a_parent_run_with_one_child_per_trial(experiment, tmp_path, monkeypatch):
    fake = type(sys)("stripes.train")

    def train(cfg, out_dir, callback=None):
        lr = cfg["train"]["lr"]
        callback({"step": 1, "train_loss": 1.0, "val_loss": abs(lr - 5e-4) * 1000 + 0.1})
        return {}

    fake.train = train
    monkeypatch.setitem(sys.modules, "stripes.train", fake)
    cfg = _config(tmp_path / "config.json", {"run": {"pe": "rope_c", "context": "bin", "seed": 0}, "train": {}})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"objective": "best_val_loss", "space": GRID}))
    out, record = tmp_path / "tune", tmp_path / "tune" / "mlflow_run.json"
    rc = jobs.main(["tune", "--config", str(cfg), "--spec", str(spec), "--pe", "rope_c", "--context", "bin",
                    "--out", str(out), "--experiment", str(experiment), "--record", str(record), "--threads", "1"])
    assert rc == 0
    rec = jobs.read_record(record)
    assert rec["status"] == "ok" and rec["stage"] == "tune"
    assert json.loads((out / "best.json").read_text())["params"] == {"train.lr": 5e-4}
    tr = tracking.Tracker.from_experiment_file(experiment)
    assert tr.client.get_run(rec["run_id"]).info.status == "FINISHED"
    children = tr.client.search_runs([tr.experiment_id], f"tags.`mlflow.parentRunId` = '{rec['run_id']}'")
    assert len(children) == 3
    assert {c.data.tags["optuna.state"] for c in children} == {"COMPLETE"}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert json.loads((out / "work" / jobs.PARENT_POINTER).read_text())["run_id"] == rec["run_id"]


def test_a_one_point_tune_job_imports_neither_torch_nor_mlflow_and_makes_no_run(experiment, tmp_path):
    """The smoke overlay's one-point lr grid: nothing to tune, so its 29 tune jobs must not pay for
    torch and mlflow (~5 s a job): best.json is the point, the record says why there is no run,
    and the runs' config carries that reason (run.tuned.skipped) into their MLflow params."""
    cfg = _config(tmp_path / "config.json", {"run": {"pe": "rope_c", "context": "bin", "seed": 0}, "train": {}})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"space": {"train.lr": {"type": "categorical", "choices": [1e-3]}}}))
    out, record = tmp_path / "tune", tmp_path / "tune" / "mlflow_run.json"
    args = ["tune", "--config", str(cfg), "--spec", str(spec), "--pe", "rope_c", "--context", "bin", "--out", str(out),
            "--experiment", str(experiment), "--record", str(record), "--threads", "1"]
    code = ("import sys; from stripes.jobs import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules)); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "['optuna']"
    assert "rope_c/bin: a one-point search space, nothing to tune" in proc.stderr
    rec = jobs.read_record(record)
    assert rec["status"] == "ok" and rec["run_id"] is None and "one-point" in rec["skipped"]
    assert json.loads((out / "best.json").read_text())["params"] == {"train.lr": 1e-3}
    tr = tracking.Tracker.from_experiment_file(experiment)
    assert tr.client.search_runs([tr.experiment_id]) == []
    from stripes.runconfig import write_run_config

    run_cfg = write_run_config(json.dumps({"run": {"pe": "rope_c"}, "train": {}}), out / "best.json", tmp_path / "r.json")
    assert run_cfg["train"]["lr"] == 1e-3 and "one-point" in run_cfg["run"]["tuned"]["skipped"]


def test_trial_killed_before_it_suggested_gets_its_grid_point_back(tmp_path):
    """A job killed between a trial's start and its suggestion: the rerun marks the trial FAIL
    (Study.tell) and re-enqueues the grid point the sampler had given it (public API only)."""
    spec = tune.full_spec({"objective": "best_val_loss", "space": GRID})
    cfg = {"run": {"pe": "rope_c", "context": "bin", "seed": 0}, "train": {}}
    from stripes.runconfig import config_hash

    fp = config_hash({"cfg": cfg, "spec": spec})
    study = tune.open_study(tmp_path / "work" / "study.journal", "rope_c", "bin", spec, fp)
    study.ask()  # the sampler picks a grid point, then the job dies

    def objective(trial):
        return trial.suggest_categorical("train.lr", GRID["train.lr"]["choices"])

    res = tune.run_study(cfg, {"objective": "best_val_loss", "space": GRID}, "rope_c", "bin", tmp_path,
                         objective=objective)
    trials = optuna.load_study(study_name="rope_c.bin", storage=tune.journal_storage(
        tmp_path / "work" / "study.journal")).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    done = sorted(t.params["train.lr"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert done == [1e-4, 5e-4, 1e-3] and res["n_complete"] == 3


def test_tune_module_reads_no_private_optuna_attribute():
    import re

    src = (ROOT / "src" / "stripes" / "tune.py").read_text()
    assert not re.findall(r"\.(_storage|_trial_id|_all_grids|_study_id)\b", src)


# ----------------------------------------------------------------------------- CLI


def test_stripes_job_is_a_command_and_writes_run_configs(tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"params": {"train.lr": 5e-4}, "value": 0.1, "trial": 1}))
    base = json.dumps({"run": {"pe": "nope"}, "train": {"lr": 1e-3}})
    proc = subprocess.run([sys.executable, "-m", "stripes.cli", "job", "run-config", "--base", base, "--best", str(best),
                           "--out", str(tmp_path / "config.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 5e-4
    assert jobs.main(["write-json", "--json", '{"a": 1}', "--out", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": 1}
