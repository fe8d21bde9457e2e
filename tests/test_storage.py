"""stripes.storage: scale-out storage choices (MLflow tracking URI, Optuna journal / RDB).

The RDB code path runs here on SQLite (Optuna's RDBStorage, the same SQLAlchemy code as on
PostgreSQL). The PostgreSQL variants run only when $STRIPES_TEST_PG_MLFLOW / $STRIPES_TEST_PG_OPTUNA
name a database (tools/slurm-local/setup.sh creates one): they need a server, CI has none.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from stripes import storage, tracking, tune

ROOT = Path(__file__).resolve().parents[1]
GRID = {"train.lr": {"type": "categorical", "choices": [1e-4, 5e-4, 1e-3]}}


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_categorical("train.lr", [1e-4, 5e-4, 1e-3])
    return abs(lr - 5e-4) * 1000 + 0.1


def base_cfg(pe="rope_c", ctx="bin"):
    return {"run": {"pe": pe, "context": ctx, "seed": 0, "stage": "tune"}, "train": {"lr": 1e-3}, "model": {}}


# ------------------------------------------------------------------ settings


def test_default_is_the_journal_and_bad_settings_name_the_key():
    assert storage.optuna_storage_settings(None) == {"backend": "journal", "url": None, "journal_lock": "symlink"}
    assert storage.optuna_storage_settings("postgresql://u@h/db")["backend"] == "rdb"  # bare URL = rdb
    for bad, key in (({"backend": "rdb"}, "tune.storage.url"),
                     ({"backend": "rdb", "url": "redis://h"}, "tune.storage.url"),
                     ({"backend": "journal", "url": "postgresql://u@h/db"}, "tune.storage.url"),
                     ({"backend": "s3"}, "tune.storage.backend"),
                     ({"journal_lock": "flock"}, "tune.storage.journal_lock"),
                     ({"urll": "x"}, "unknown key")):
        with pytest.raises(storage.StorageError, match=key):
            storage.optuna_storage_settings(bad)


def test_tracking_uri_schemes_and_redaction():
    for ok in ("sqlite:///results/mlflow/mlflow.db", "postgresql://stripes@db:5432/mlflow", "http://127.0.0.1:5000"):
        assert storage.check_tracking_uri(ok) == ok
    with pytest.raises(storage.StorageError, match="mlflow.tracking_uri"):
        storage.check_tracking_uri("file:///tmp/mlruns")  # refused by MLflow 3.17 by default
    # a password that slipped into a URL never reaches a message
    assert storage.redact("postgresql://stripes:s3cret@db:5432/x") == "postgresql://stripes:***@db:5432/x"
    with pytest.raises(storage.StorageError) as err:
        storage.check_tracking_uri("mysql://u:s3cret@h/x")
    assert "s3cret" not in str(err.value)


def test_schema_accepts_the_storage_choices_and_rejects_the_rest():
    """The JSON schema (applied by the Snakefile's validate(), so at `snakemake -n`)."""
    import copy

    import jsonschema

    schema = yaml.safe_load((ROOT / "src" / "stripes" / "resources" / "config.schema.yaml").read_text())
    v = jsonschema.Draft202012Validator(schema)
    from stripes.study import load_config

    cfg = load_config(ROOT / "config" / "config.yaml", validate=False)  # schema defaults filled, as in the workflow
    assert not list(v.iter_errors(cfg))  # the default config: SQLite + journal, unchanged

    def errors(section, key, value):
        c = copy.deepcopy(cfg)
        c[section][key] = value
        return [e.message for e in v.iter_errors(c)]

    assert errors("mlflow", "tracking_uri", "postgresql://stripes@127.0.0.1:5432/stripes_mlflow") == []
    assert errors("mlflow", "tracking_uri", "https://mlflow.example.org") == []
    assert errors("mlflow", "tracking_uri", "file:///tmp/mlruns")
    assert errors("tune", "storage", {"backend": "rdb", "url": "postgresql://stripes@db/optuna"}) == []
    assert errors("tune", "storage", {"backend": "journal", "journal_lock": "open"}) == []
    assert errors("tune", "storage", {"backend": "rdb"}) == ["'url' is a required property"]
    assert errors("tune", "storage", {"backend": "rdb", "url": "redis://h"})
    assert errors("tune", "storage", {"backend": "rdb", "url": "postgresql://u@h/db", "pool": 3})


# ------------------------------------------------------------------ Optuna on an RDB


def rdb_spec(url: str) -> dict:
    # the fake objective above is a loss (minimised)
    return {"space": GRID, "objective": "best_val_loss", "storage": {"backend": "rdb", "url": url}}


def _rdb_study(url, tmp_path, name="a"):
    return tune.run_study(base_cfg(), rdb_spec(url), "rope_c", "bin", tmp_path / name, objective=objective)


def test_rdb_study_equals_journal_study_and_exports_a_journal(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    journal = tune.run_study(base_cfg(), {"space": GRID, "objective": "best_val_loss"}, "rope_c", "bin", tmp_path / "j",
                             objective=objective)
    rdb = _rdb_study(url, tmp_path)
    keys = ("params", "value", "trial", "n_trials", "sampler_seed")
    assert {k: rdb[k] for k in keys} == {k: journal[k] for k in keys}
    # the storage is not part of the fingerprint: the same study wherever it is kept
    assert rdb["fingerprint"] == journal["fingerprint"]
    # the declared output study.journal is a self-contained copy of the study (dashboard-readable)
    st = storage.journal_storage(tmp_path / "a" / "study.journal")
    exported = optuna.load_study(study_name="rope_c.bin", storage=st)
    assert exported.best_params == rdb["params"] and len(exported.trials) == 3
    # and the DB holds the study under its fingerprinted name
    names = optuna.get_all_study_names(storage=url)
    assert names == [f"rope_c.bin.{rdb['fingerprint']}"]


def test_rdb_study_resumes_after_a_kill_and_a_config_change_starts_a_new_study(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    calls = []

    def killed(trial):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job dies in its second trial (a RUNNING trial is left)
        return objective(trial)

    with pytest.raises(KeyboardInterrupt):
        tune.run_study(base_cfg(), rdb_spec(url), "rope_c", "bin", tmp_path / "a", objective=killed)
    calls.clear()

    def counting(trial):
        calls.append(trial.number)
        return objective(trial)

    res = tune.run_study(base_cfg(), rdb_spec(url), "rope_c", "bin", tmp_path / "a", objective=counting)
    assert res["resumed_with"] == 1 and len(calls) == 2  # the finished trial is kept, 2 run
    assert res["params"] == {"train.lr": 5e-4}
    cfg = base_cfg()
    cfg["train"]["epochs"] = 3  # a different study: a new name in the same database
    calls.clear()
    tune.run_study(cfg, rdb_spec(url), "rope_c", "bin", tmp_path / "b", objective=counting)
    assert len(calls) == 3 and len(optuna.get_all_study_names(storage=url)) == 2


def test_journal_open_lock(tmp_path):
    spec = {"space": GRID, "objective": "best_val_loss", "storage": {"backend": "journal", "journal_lock": "open"}}
    res = tune.run_study(base_cfg(), spec, "rope_c", "bin", tmp_path, objective=objective)
    assert res["params"] == {"train.lr": 5e-4} and (tmp_path / "study.journal").exists()


def test_rdb_open_retries_then_names_the_url_without_its_password(tmp_path, monkeypatch):
    # a database that cannot be opened (directory missing): retried, then a StorageError
    url = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    with pytest.raises(storage.StorageError, match="cannot open the Optuna RDB storage after 2 attempts"):
        storage.rdb_storage(url, attempts=2, wait_s=0.01)


# ------------------------------------------------------------------ PostgreSQL (opt-in)

PG_MLFLOW = os.environ.get("STRIPES_TEST_PG_MLFLOW")  # e.g. postgresql://stripes@127.0.0.1:5432/stripes_mlflow
PG_OPTUNA = os.environ.get("STRIPES_TEST_PG_OPTUNA")  # e.g. postgresql://stripes@127.0.0.1:5432/stripes_optuna


@pytest.mark.skipif(not PG_OPTUNA, reason="set STRIPES_TEST_PG_OPTUNA to a PostgreSQL URL (tools/slurm-local/setup.sh)")
def test_postgresql_optuna_study(tmp_path):
    cfg = base_cfg(pe="pg" + uuid.uuid4().hex[:8])  # a fresh study name in a shared database
    res = tune.run_study(cfg, rdb_spec(PG_OPTUNA), cfg["run"]["pe"], "bin", tmp_path, objective=objective)
    assert res["params"] == {"train.lr": 5e-4}
    assert f"{cfg['run']['pe']}.bin.{res['fingerprint']}" in optuna.get_all_study_names(storage=PG_OPTUNA)


@pytest.mark.skipif(not PG_MLFLOW, reason="set STRIPES_TEST_PG_MLFLOW to a PostgreSQL URL (tools/slurm-local/setup.sh)")
def test_postgresql_mlflow_tracking(tmp_path):
    exp = "pytest-" + uuid.uuid4().hex[:8]
    info = tracking.init_tracking(PG_MLFLOW, tmp_path / "artifacts", exp, tmp_path / "experiment.json")
    assert json.loads((tmp_path / "experiment.json").read_text())["tracking_uri"] == PG_MLFLOW
    tr = tracking.Tracker.from_experiment_file(tmp_path / "experiment.json")
    rid = tr.start_run("r", tags=tr.run_tags({"run": {"pe": "nope", "context": "time", "seed": 0}}, "train"))
    tr.log_metrics(rid, {"val_loss": 0.5}, step=1)
    tr.end_run(rid)
    run = tr.client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.metrics["val_loss"] == 0.5
    assert info["experiment_id"] == run.info.experiment_id


# ------------------------------------------------------------------ the SLURM profile


def _slurm_dry_run(env_extra: dict, *overlays: str) -> dict[str, set[str]]:
    """rule -> the set of `resources:` lines of its jobs in `snakemake -n` with profiles/slurm."""
    import re
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPES_SLURM_")}
    env.update(env_extra)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--nolock", "--workflow-profile", "profiles/slurm",
           "--configfile", "config/smoke.yaml", *overlays]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        r = re.search(r"\n\s+resources: (.*)", block)
        if m and r:
            jobs.setdefault(m.group(1), set()).add(r.group(1))
    return jobs


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="needs the [slurm] extra (snakemake-executor-plugin-slurm)")
@pytest.mark.parametrize("fused", [False, True])
def test_slurm_profile_gpu_request_is_switchable_for_every_gpu_rule(tmp_path, fused):
    """Every rule that declares gpu=1 gets the profile's GPU partition and count; with
    STRIPES_SLURM_GPUS=0 none asks for a GPU (a rule missing from the profile's set-resources would
    still ask for one, and sbatch on a CPU-only cluster refuses the job)."""
    overlay = tmp_path / "fuse.yaml"
    overlay.write_text(yaml.safe_dump({"study": {"fuse_train_eval": fused}}))
    gpu_rules = {"tune", "train_evaluate"} if fused else {"tune", "train", "evaluate"}
    default = _slurm_dry_run({}, str(overlay))
    assert gpu_rules <= set(default), sorted(default)
    for rule, lines in default.items():
        for line in lines:
            if rule in gpu_rules:
                assert "gpu=1" in line and "slurm_partition=gpu" in line, (rule, line)
            else:
                assert "gpu=" not in line and "slurm_partition=cpu" in line, (rule, line)
            assert re.search(r"runtime=\d+", line), (rule, line)  # every job has a time limit
    cpu_only = _slurm_dry_run({"STRIPES_SLURM_GPUS": "0", "STRIPES_SLURM_GPU_MEM_MB": "3000"}, str(overlay))
    for rule, lines in cpu_only.items():
        for line in lines:
            assert "gpu=1" not in line and "slurm_partition=cpu" in line, (rule, line)
            if rule in gpu_rules:
                assert "mem_mb=3000" in line or "mem_mb=1500" in line, (rule, line)
