"""Reruns after something changed or broke between two `snakemake` calls: a changed training
setting, a training job killed after such a change, a deleted MLflow store, and the stale pointer
files a deleted store leaves behind.

Unit-level versions live beside their modules: tests/test_train.py (a changed config, an
unreadable or differently shaped last.pt), tests/test_tune.py (the tune job's stale MLflow parent
pointer, the "no trial completed" message, the last good best.json kept under work/).

Fast (default set): a train record or experiment.json that outlived its MLflow store.

Slow (@pytest.mark.slow, through Snakemake on tests/test_faults.py's mini study: 40 songs, one run
nope/time/seed0 of 6 x 4 steps, trained once by a module fixture and copied by each test):
* `train.epochs` changed in the overlay, rerun: the run starts over (old files archived under
  stale/) and its numbers equal a fresh run of the new config, no job fails;
* the same change, the new training job killed mid-run, rerun: it resumes, not restarts;
* `rm -r results/mlflow`, rerun of the tune jobs: every job logs to new runs in the new store (the
  mini study's one-point grid makes no tuning run; a study's stale parent pointer is tested in
  tests/test_tune.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stripes import jobs, tracking
# the mini study and the job killer of the fault tests, reused as they are (`prepared` is a fixture)
from test_faults import DATA_ENV, _clone, _kill_job_when, _overlay, prepared, run_snakemake  # noqa: F401

TARGET = "results/eval/nope/time/seed0/metrics.json"
RUN = Path("results/train/nope/time/seed0")


# ====================================================================== pointers that outlived their store (fast)


def _store(path: Path) -> Path:
    """A tracking store as the mlflow_init rule makes it; returns its experiment.json."""
    tracking.init_tracking(f"sqlite:///{path}/mlflow.db", path / "artifacts", "test", path / "experiment.json")
    return path / "experiment.json"


def test_evaluate_with_a_train_record_from_a_deleted_store_logs_to_a_new_run(tmp_path, monkeypatch, capsys):
    """The train/evaluate twin of the tune job's stale parent pointer: evaluate reopens the run named
    in the train job's mlflow_run.json, which a recreated store does not hold."""
    fake = type(sys)("stripes.evaluate")
    fake.evaluate = lambda cfg, checkpoint, out: {"test_16": {"cs": 0.5}}
    monkeypatch.setitem(sys.modules, "stripes.evaluate", fake)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"run": {"pe": "nope", "context": "time", "seed": 0}}))
    old = tracking.Tracker.from_experiment_file(_store(tmp_path / "old"))
    old_run = old.start_run("nope/time/seed0")
    experiment = _store(tmp_path / "new")  # results/mlflow deleted and created again
    tr = tracking.Tracker.from_experiment_file(experiment)
    trec = tmp_path / "train_rec.json"

    def evaluate(run_id):
        trec.write_text(json.dumps({"run_id": run_id, "status": "ok", "pe": "nope", "context": "time", "seed": 0}))
        capsys.readouterr()
        rec = jobs.evaluate_job(jobs.start_job("evaluate", experiment), cfg, tmp_path / "train", tmp_path / "eval",
                                trec, tmp_path / "eval_rec.json", log_samples=False)
        return rec, capsys.readouterr().err

    rec, err = evaluate(old_run)
    new_run = rec["run_id"]
    assert rec["status"] == "ok" and new_run != old_run
    assert err == (f"stripes evaluate: {trec} points to MLflow run {old_run}, which is not in the tracking store "
                   f"{tr.tracking_uri} (was results/mlflow deleted?); logging this evaluation to a new run {new_run}\n")
    run = tr.client.get_run(new_run)
    assert run.info.status == "FINISHED" and run.data.metrics == {"test_16.cs": 0.5}
    assert run.data.tags["stripes.missing_train_run"] == old_run and run.data.tags["stage"] == "evaluate"
    # control: a record whose run is in the store is evaluated into that very run, silently
    trained = tr.start_run("nope/time/seed0")
    rec, err = evaluate(trained)
    assert rec["run_id"] == trained and err == ""
    assert tr.client.get_run(trained).data.tags["evaluated"] == "true"


def test_experiment_file_that_outlived_its_store_says_to_delete_it(tmp_path, capsys):
    # a job must not create the DB or the experiment itself (parallel jobs on a fresh DB break), and
    # Snakemake reruns mlflow_init only when experiment.json is missing: the error says to delete it
    experiment = _store(tmp_path / "mlflow")
    info = json.loads(experiment.read_text())
    (tmp_path / "mlflow" / "mlflow.db").unlink()
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"run": {"pe": "nope", "context": "time", "seed": 0}}))
    capsys.readouterr()
    rc = jobs.main(["train", "--config", str(cfg), "--train-dir", str(tmp_path / "train"),
                            "--experiment", str(experiment), "--record", str(tmp_path / "rec.json"), "--record-failures"])
    fix = (f"delete {experiment} (or all of {tmp_path / 'mlflow'}) and rerun snakemake: the mlflow_init rule "
           "creates them again")
    assert rc == 2 and capsys.readouterr().err == (
        f"stripes train: error: {experiment} names the tracking DB {info['tracking_uri']}, which does not exist; {fix}\n")
    assert not (tmp_path / "rec.json").exists()  # not recorded as a failed run: nothing was trained
    # the experiment deleted (in the UI) while the DB stays
    experiment = _store(tmp_path / "m2")
    tr = tracking.Tracker.from_experiment_file(experiment)
    tr.client.delete_experiment(tr.experiment_id)
    with pytest.raises(tracking.TrackingStoreError) as err:
        tracking.Tracker.from_experiment_file(experiment)
    assert str(err.value) == (
        f"{experiment} names experiment 'test' (id {tr.experiment_id}), which is deleted in {tr.tracking_uri}; "
        f"delete {experiment} (or all of {tmp_path / 'm2'}) and rerun snakemake: the mlflow_init rule creates them again")


# ====================================================================== through Snakemake (slow)


def _args(work: Path, extra: dict | None = None) -> list[str]:
    # the target goes before these: --configfile takes every following word as a config file
    return ["--cores", "2", "--configfile", "config/smoke.yaml", _overlay(work, extra)]


@pytest.fixture(scope="module")
def finished(prepared, tmp_path_factory):  # noqa: F811 - the imported fixture
    """The mini study's run nope/time/seed0 tuned, trained (6 epochs) and evaluated."""
    work = _clone(prepared, tmp_path_factory.mktemp("finished") / "repo")
    proc = run_snakemake(work, TARGET, *_args(work), env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work


def _curves(path: Path) -> list[tuple]:
    from stripes.train import read_curves

    return [(r["step"], r["epoch"], r["train_loss"], r["val_loss"], r["lr"]) for r in read_curves(path)]


def _fresh_run(work: Path, out: Path) -> dict:
    """Train the run's current config.json from scratch outside Snakemake, as its job would."""
    env = dict(os.environ, PYTHONPATH=str(work / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cfg = work / "results" / "runs" / "nope" / "time" / "seed0" / "config.json"
    proc = subprocess.run([sys.executable, "-m", "stripes.train", "--config", str(cfg), "--out", str(out)], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "train.json").read_text())


def _same_numbers(a: dict, b: dict) -> None:
    for key in ("best_val_loss", "best_step", "steps", "epochs", "final_train_loss", "final_val_loss", "fingerprint"):
        assert a[key] == b[key], key


def _records_ok(work: Path) -> None:
    for stage in ("train", "eval"):
        rec = json.loads((work / "results" / stage / "nope" / "time" / "seed0" / "mlflow_run.json").read_text())
        assert rec["status"] == "ok", rec


@pytest.mark.slow
def test_changed_epochs_rerun_starts_over_with_fresh_numbers(finished, tmp_path):
    """The reported bug: after `train.epochs: 2` in an overlay every training job of the rerun
    failed with "last.pt was written with a different config ...; rerun with --no-resume"."""
    work = _clone(finished, tmp_path / "repo")
    tdir = work / RUN
    old = json.loads((tdir / "train.json").read_text())
    assert old["epochs"] == 6
    proc = run_snakemake(work, TARGET, *_args(work, {"train": {"epochs": 2}}), env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _records_ok(work)
    new = json.loads((tdir / "train.json").read_text())
    assert new["epochs"] == 2 and new["steps"] == 2 * old["steps_per_epoch"]
    # fresh numbers: those of the new config trained from scratch
    _same_numbers(new, _fresh_run(work, tmp_path / "fresh"))
    assert _curves(tdir / "curves.csv") == _curves(tmp_path / "fresh" / "curves.csv")
    # the old run is archived whole, and the job log says so in one line
    (archive,) = (tdir / "stale").iterdir()
    assert archive.name.startswith(f"{old['fingerprint']}-")
    assert sorted(p.name for p in archive.iterdir()) == sorted(["best.pt", "curves.csv", "curves.png", "last.pt",
                                                               "train.json"])
    assert json.loads((archive / "train.json").read_text()) == old
    log = (work / "results" / "logs" / "train" / "nope" / "time" / "seed0.log").read_text()
    assert (f"stripes train: run nope/time/seed0: {RUN / 'last.pt'} was written with a different config "
            f"(fingerprint {old['fingerprint']} != {new['fingerprint']}); moved the old run's files to "
            f"{RUN / 'stale' / archive.name} and starting over") in log.splitlines(), log[-3000:]


@pytest.mark.slow
def test_changed_epochs_then_killed_training_job_resumes(finished, tmp_path):
    """After the config change has set the old run aside, the new run's own checkpoint is resumed
    (same config): a kill between two reruns costs only the steps since the last validation."""
    work = _clone(finished, tmp_path / "repo")
    tdir = work / RUN
    args = [TARGET, *_args(work, {"train": {"epochs": 4}})]  # 16 steps: long enough to be killed mid-run

    def ready():  # the new run has its first checkpoint and is not finished
        if (tdir / "stale").exists() and (tdir / "last.pt").exists() and not (tdir / "train.json").exists():
            return time.time()
        return None

    rc, out, killed_at = _kill_job_when(work, args, "stripes.jobs train", ready)
    assert killed_at is not None and rc != 0, out[-3000:]
    assert not (tdir / "train.json").exists(), "training finished before the kill: the test proves nothing"
    import torch

    step_at_kill = torch.load(tdir / "last.pt", map_location="cpu", weights_only=True)["step"]
    assert 0 < step_at_kill < 16
    proc = run_snakemake(work, *args, env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _records_ok(work)
    # resumed, not restarted: no second archive, no start-over line, and the rerun's MLflow run saw
    # only the validations after the checkpoint
    assert len(list((tdir / "stale").iterdir())) == 1
    log = (work / "results" / "logs" / "train" / "nope" / "time" / "seed0.log").read_text()
    assert "starting over" not in log, log[-3000:]
    rec = json.loads((tdir / "mlflow_run.json").read_text())
    tr = tracking.Tracker.from_experiment_file(work / "results" / "mlflow" / "experiment.json")
    steps = [m.step for m in tr.client.get_metric_history(rec["run_id"], "val_loss")]
    assert steps and min(steps) > step_at_kill, (steps, step_at_kill)
    # and it ends where an uninterrupted run of the new config ends
    _same_numbers(json.loads((tdir / "train.json").read_text()), _fresh_run(work, tmp_path / "fresh"))
    assert _curves(tdir / "curves.csv") == _curves(tmp_path / "fresh" / "curves.csv")


@pytest.mark.slow
def test_deleted_mlflow_store_rerun_logs_to_new_runs(finished, tmp_path):
    """`rm -r results/mlflow`, then a rerun: every job logs to new runs in the new store.

    Snakemake does not rerun jobs whose outputs are present just because an upstream file (here
    experiment.json) is missing, so the rerun asks for the tune jobs again (`--forcerun tune`, as a
    changed config or an unfinished study would); mlflow_init then recreates the store first. The
    mini study's lr grid has one point, so its tune job makes no MLflow run at all; the reported
    crash ("Run with id=... not found", from results/tune/*/work/mlflow_parent.json) came from a
    study with trials, and tests/test_tune.py's test_parent_pointer_to_a_deleted_tracking_store_*
    reproduces it through the job's MLflow callbacks."""
    work = _clone(finished, tmp_path / "repo")
    old_train = json.loads((work / RUN / "mlflow_run.json").read_text())["run_id"]
    shutil.rmtree(work / "results" / "mlflow")
    proc = run_snakemake(work, TARGET, "--forcerun", "tune", *_args(work), env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _records_ok(work)
    tr = tracking.Tracker.from_experiment_file(work / "results" / "mlflow" / "experiment.json")
    tune_rec = json.loads((work / "results" / "tune" / "nope" / "time" / "mlflow_run.json").read_text())
    assert tune_rec["run_id"] is None and "one-point" in tune_rec["skipped"]  # the smoke grid: nothing to tune
    assert not (work / "results" / "tune" / "nope" / "time" / "work" / jobs.PARENT_POINTER).exists()
    best = json.loads((work / "results" / "tune" / "nope" / "time" / "best.json").read_text())
    assert best["params"] == {"train.lr": 1e-3} and "one-point" in best["skipped"]
    train = json.loads((work / RUN / "mlflow_run.json").read_text())["run_id"]
    assert train != old_train
    run = tr.client.get_run(train)  # in the new store, finished (evaluate reopened and closed the train run)
    assert run.info.status == "FINISHED" and run.info.experiment_id == tr.experiment_id
    assert run.data.tags["evaluated"] == "true" and "one-point" in run.data.params["run.tuned.skipped"]


# ====================================================================== params of the run: blocks (slow)


@pytest.mark.slow  # two Snakemake parses of the study in a fresh copy (~1 min on 2 busy cores)
def test_json_rules_written_by_snakemake_rerun_when_their_params_change(tmp_path):
    """tune_config and report_spec write their params as JSON in a run: block (no job process): a
    changed setting must still rerun exactly them (Snakemake's params trigger), and nothing else."""
    from test_faults import fresh_copy

    work = fresh_copy(tmp_path / "repo")
    targets = ["results/tune/nope/time/spec.json", "results/tables/spec.json"]
    proc = run_snakemake(work, *targets, "--cores", "1", "--configfile", "config/smoke.yaml", _overlay(work),
                         env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert json.loads((work / targets[0]).read_text())["n_trials"] == _overlay_n_trials(work)
    unchanged = run_snakemake(work, "-n", *targets, "--cores", "1", "--configfile", "config/smoke.yaml",
                              _overlay(work), env=DATA_ENV)
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr, unchanged.stdout[-3000:]
    changed = run_snakemake(work, "-n", *targets, "--cores", "1", "--configfile", "config/smoke.yaml",
                            _overlay(work, {"tune": {"n_trials": 2}}), env=DATA_ENV)
    out = changed.stdout + changed.stderr
    assert changed.returncode == 0, out[-3000:]
    assert "tune_config" in out and "Params have changed since last execution" in out, out[-3000:]
    assert "rule report_spec" not in out


def _overlay_n_trials(work: Path):
    import yaml

    return (yaml.safe_load((work / "fault.yaml").read_text()).get("tune") or {}).get("n_trials")
