"""Failed runs are reported and retried: with study.record_failures a failed run's job exits 0, so
the study must say so itself (the aggregate step's log and failures.csv, the console at the end of
the Snakemake run, exit status 1) and print a retry command that works in both DAG shapes
(separate train/evaluate jobs, or study.fuse_train_eval's one job). Also the unlock command the
README gives after a `kill -9` of Snakemake.

Fast (default set): the retry command built from a Snakemake command line, the failure of a run
read from its records, the report text, failures.csv, `snakemake --unlock --cores 1`.

Slow (@pytest.mark.slow, on tests/test_faults.py's mini study: 40 songs, nope/time and ape/time,
seed 0, 1 epoch): per DAG shape, a run made to diverge fails alone; the run ends with status 1
after building the tables and prints the failed run with its retry command; a rerun has nothing
to do but names the failure; the printed command, run as printed, reruns that run only and the
study ends complete (status 0).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from stripes import report
# the mini study of the fault tests, reused as it is (`prepared` is a fixture)
from test_faults import DATA_ENV, MINI_ROWS, MINI_TABLE, SNAKEMAKE, _clone, _overlay, prepared, run_snakemake  # noqa: F401
from test_report import read_csv, spec_for

ROOT = Path(__file__).resolve().parents[1]
RECORD = "results/train/ape/time/seed0/mlflow_run.json"


# ====================================================================== the retry command (fast)


@pytest.mark.parametrize("argv, prefix", [
    (["/x/.venv/bin/snakemake", "--cores", "2", "--configfile", "config/smoke.yaml", "fault.yaml"],
     ["snakemake", "--cores", "2", "--configfile", "config/smoke.yaml", "fault.yaml"]),
    # its own forcing goes (a retry forces the failed runs only); -R takes every word up to an option
    (["snakemake", "-R", "train", "results/x.json", "--cores", "4", "-F", "--forcerun=tune", "-f", "results/t.csv"],
     ["snakemake", "--cores", "4", "results/t.csv"]),
    # a dry run's note prints a command that runs
    (["snakemake", "-np", "--cores", "2", "-n", "--dry-run"], ["snakemake", "-p", "--cores", "2"]),
    (["/usr/bin/python", "-m", "pytest"], ["snakemake", "--cores", "all"]),  # not the CLI: the fallback
])
def test_retry_prefix_is_the_invocation_without_its_forcing(argv, prefix):
    assert report.retry_prefix(argv) == prefix


def test_retry_command_forces_the_records_as_files():
    prefix = ["snakemake", "-s", "../Snakefile", "--cores", "2"]
    assert report.retry_command(prefix, [RECORD, "results/eval/a b/mlflow_run.json"]) == (
        "snakemake -s ../Snakefile --cores 2 --forcerun results/train/ape/time/seed0/mlflow_run.json "
        "'results/eval/a b/mlflow_run.json'")


def test_dag_runs_are_the_runs_of_the_train_and_evaluate_jobs():
    from types import SimpleNamespace

    def job(rule, output=(), **wc):
        return SimpleNamespace(rule=SimpleNamespace(name=rule), wildcards_dict=wc, output=list(output))

    # study.fuse_train_eval's job has no seed wildcard: one job per (pe, context), its seeds in its outputs
    fused = [f"results/{stage}/nope/bin/seed{s}/{name}" for s in (3, 4)
             for stage, name in (("train", "mlflow_run.json"), ("eval", "metrics.json"), ("eval", "mlflow_run.json"))]
    jobs = [job("train", pe="ape", context="time", seed="0"), job("evaluate", pe="ape", context="time", seed="0"),
            job("train_evaluate", fused, pe="nope", context="bin"), job("tune", pe="spe", context="time"),
            job("resolve_run_config", pe="spe", context="time", seed="1"), job("aggregate")]
    assert report.dag_runs(jobs) == [("ape", "time", 0), ("nope", "bin", 3), ("nope", "bin", 4)]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _failed_run(results: Path, pe: str, stage: str, error: str, fused: bool) -> None:
    """The records a failed run leaves (stripes.jobs): a failed training fails its evaluation too."""
    run = f"{pe}/time/seed0"
    if stage == "train":
        _write(results / "train" / run / "mlflow_run.json", {"status": "failed", "error": error})
        _write(results / "eval" / run / "mlflow_run.json", {"status": "failed", "error": "training failed"})
        _write(results / "eval" / run / "metrics.json", {"status": "failed", "error": f"training failed: {error}"})
    else:
        _write(results / "train" / run / "mlflow_run.json", {"status": "ok"})
        _write(results / "eval" / run / "mlflow_run.json", {"status": "failed", "error": error})
        _write(results / "eval" / run / "metrics.json", {"status": "failed", "error": error})
    # study.fuse_train_eval: one job, and one log, per (pe, context)
    log = results / "logs" / "train_evaluate" / f"{pe}/time.log" if fused else results / "logs" / stage / f"{run}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")


def test_run_failure_names_the_stage_that_failed_and_its_log(tmp_path):
    res = tmp_path / "results"
    _failed_run(res, "ape", "train", "NonFiniteLossError('run ape/time/seed0:\n non-finite loss')", fused=False)
    _failed_run(res, "spe", "evaluate", "RuntimeError('out of memory')", fused=True)
    _write(res / "train" / "nope/time/seed0" / "mlflow_run.json", {"status": "ok"})
    _write(res / "eval" / "nope/time/seed0" / "mlflow_run.json", {"status": "ok"})
    _write(res / "eval" / "nope/time/seed0" / "metrics.json", {"test_16": {"cs": 1.0}})
    assert report.run_failure(res, "ape", "time", 0) == {
        "pe": "ape", "context": "time", "seed": 0, "stage": "train",
        "reason": "NonFiniteLossError('run ape/time/seed0: non-finite loss')",  # one line
        "record": str(res / "train/ape/time/seed0/mlflow_run.json"),
        "log": str(res / "logs/train/ape/time/seed0.log")}
    # only the evaluation failed: the retry forces the evaluation's record (the fused job's log)
    assert report.run_failure(res, "spe", "time", 0) == {
        "pe": "spe", "context": "time", "seed": 0, "stage": "evaluate", "reason": "RuntimeError('out of memory')",
        "record": str(res / "eval/spe/time/seed0/mlflow_run.json"),
        "log": str(res / "logs/train_evaluate/spe/time.log")}
    assert report.run_failure(res, "nope", "time", 0) is None
    assert report.run_failure(res, "rope_a", "time", 0) is None  # not run yet: not a failure
    runs = [("ape", "time", 0), ("nope", "time", 0), ("rope_a", "time", 0), ("spe", "time", 0)]
    assert [f["pe"] for f in report.failed_runs(runs, res)] == ["ape", "spe"]


def test_failure_report_names_each_run_its_log_and_retry():
    failures = [
        {"pe": "ape", "context": "time", "seed": 0, "stage": "train", "reason": "NonFiniteLossError('x')",
         "record": RECORD, "log": "results/logs/train/ape/time/seed0.log"},
        {"pe": "spe", "context": "time", "seed": 1, "stage": "evaluate", "reason": "RuntimeError('oom')",
         "record": "results/eval/spe/time/seed1/mlflow_run.json", "log": "results/logs/evaluate/spe/time/seed1.log"},
    ]
    prefix = ["snakemake", "--cores", "2"]
    assert report.failure_report(failures, prefix).splitlines() == [
        "stripes: 2 runs of the study failed; their table cells show – until retried:",
        "  ape/time/seed0 (train failed): NonFiniteLossError('x')",
        "    log:   results/logs/train/ape/time/seed0.log",
        "    retry: snakemake --cores 2 --forcerun results/train/ape/time/seed0/mlflow_run.json",
        "  spe/time/seed1 (evaluate failed): RuntimeError('oom')",
        "    log:   results/logs/evaluate/spe/time/seed1.log",
        "    retry: snakemake --cores 2 --forcerun results/eval/spe/time/seed1/mlflow_run.json",
        "  retry all: snakemake --cores 2 --forcerun results/train/ape/time/seed0/mlflow_run.json "
        "results/eval/spe/time/seed1/mlflow_run.json",
    ]
    assert report.failure_report(failures[:1], prefix, " in an earlier run").splitlines()[0] == \
        "stripes: 1 run of the study failed in an earlier run; its table cells show – until retried:"
    assert report.failure_report([], prefix) == ""


def test_report_failed_runs_prints_and_counts_unless_nothing_runs(tmp_path, capsys):
    res = tmp_path / "results"
    _failed_run(res, "ape", "train", "NonFiniteLossError('x')", fused=False)
    runs = [("ape", "time", 0)]
    assert report.report_failed_runs(runs, res, ["snakemake", "--cores", "2"]) == 1
    err = capsys.readouterr().err
    assert f"    retry: snakemake --cores 2 --forcerun {res}/train/ape/time/seed0/mlflow_run.json\n" in err
    assert report.report_failed_runs(runs, res, ["snakemake", "--unlock", "--cores", "1"]) == 0
    assert report.report_failed_runs([("nope", "time", 0)], res, ["snakemake", "--cores", "2"]) == 0
    assert capsys.readouterr().err == ""


def test_aggregate_lists_the_failure_with_the_workflows_retry_command(tmp_path, monkeypatch, capsys):
    _failed_run(tmp_path, "ape", "train", "NonFiniteLossError('x')", fused=True)
    # what common.smk exports for the jobs of `snakemake --cores 2 --configfile config/smoke.yaml`
    monkeypatch.setenv(report.RETRY_PREFIX_ENV, json.dumps(["snakemake", "--cores", "2", "--configfile",
                                                            "config/smoke.yaml"]))
    report.aggregate(spec_for(tmp_path, {}, [("ape", "time", 0)]), tmp_path)
    retry = f"snakemake --cores 2 --configfile config/smoke.yaml --forcerun {tmp_path}/train/ape/time/seed0/mlflow_run.json"
    assert read_csv(tmp_path / "tables" / "failures.csv") == [{
        "pe": "ape", "context": "time", "seed": "0", "stage": "train", "reason": "NonFiniteLossError('x')",
        "log": f"{tmp_path}/logs/train_evaluate/ape/time.log", "retry": retry}]
    assert f"    retry: {retry}\n" in capsys.readouterr().err  # the aggregate job's log


# ====================================================================== unlock after a kill -9 (fast)


def test_unlock_command_of_the_readme_unlocks(tmp_path):
    """Snakemake's own hint after a kill -9, `snakemake --unlock`, stops while parsing this workflow
    (a rule's threads need the core count); the README gives the form that works."""
    command = "snakemake --unlock --cores 1"
    assert f"`{command}`" in (ROOT / "README.md").read_text()
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("results/data/report.json\n")  # what a killed run leaves
    (locks / "0.output.lock").write_text("results/tables/mini.csv\n")
    # -s/-d: the same command, on a scratch directory instead of the shared checkout
    proc = subprocess.run([SNAKEMAKE, *shlex.split(command)[1:], "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Unlocked working directory." in out, out[-3000:]
    assert list(locks.glob("*.lock")) == []  # (Snakemake removes the folder too)


# ====================================================================== report and retry through Snakemake (slow)


@pytest.fixture(scope="module")
def tuned(prepared, tmp_path_factory):  # noqa: F811 - the imported fixture
    """The mini study tuned and its run configs resolved (shared by both DAG shapes: neither the
    tuning nor the run configs depend on study.fuse_train_eval); training takes 1 epoch."""
    work = _clone(prepared, tmp_path_factory.mktemp("tuned") / "repo")
    configs = [f"results/runs/{pe}/{c}/seed0/config.json" for pe, c in MINI_ROWS]
    proc = run_snakemake(work, *configs, "--cores", "2", "--configfile", "config/smoke.yaml",
                         _overlay(work, {"train": {"epochs": 1}}), env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work


def _table(work: Path) -> dict[str, dict]:
    with open(work / "results" / "tables" / f"{MINI_TABLE}.csv", newline="") as fh:
        return {r["pe"]: r for r in csv.DictReader(fh)}


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["split_jobs", "fused_train_eval"])
def test_failed_run_is_reported_and_the_printed_retry_reruns_it(tuned, tmp_path, fused):
    work = _clone(tuned, tmp_path / "repo")
    overlay = _overlay(work, {"study": {"fuse_train_eval": fused}, "train": {"epochs": 1}})
    base = ["--cores", "2", "--configfile", "config/smoke.yaml", overlay]
    # ape/time/seed0 diverges (lr 1e30, no clipping): injected into its resolved config, whose
    # mtime is kept so that the restored config below does not rerun it by itself
    cfg_path = work / "results" / "runs" / "ape" / "time" / "seed0" / "config.json"
    good, st = cfg_path.read_text(), cfg_path.stat()
    cfg = json.loads(good)
    cfg["train"].update({"lr": 1e30, "grad_clip": 0, "warmup_epochs": 0})
    cfg_path.write_text(json.dumps(cfg))
    os.utime(cfg_path, ns=(st.st_atime_ns, st.st_mtime_ns))

    proc = run_snakemake(work, *base, env=DATA_ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]  # failed runs: status 1 ...
    table = _table(work)  # ... after the rest of the study was built
    float(table["nope"]["cs_16_mean"])
    assert table["ape"]["cs_16_mean"] == ""
    rec = json.loads((work / RECORD).read_text())
    assert rec["status"] == "failed" and "NonFiniteLossError" in rec["error"]
    log = "results/logs/train_evaluate/ape/time.log" if fused else "results/logs/train/ape/time/seed0.log"
    retry = f"snakemake --cores 2 --configfile config/smoke.yaml {overlay} --forcerun {RECORD}"
    end = out[out.rindex("stripes: 1 run of the study failed"):].splitlines()
    assert end[:4] == ["stripes: 1 run of the study failed; its table cells show – until retried:",
                       f"  ape/time/seed0 (train failed): {report._one_line(rec['error'])}",
                       f"    log:   {log}",
                       f"    retry: {retry}"], "\n".join(end)
    assert "1 failed run of the study (listed above); every other job finished" in out
    assert "NonFiniteLossError" in (work / log).read_text()
    assert [(f["pe"], f["stage"], f["log"], f["retry"]) for f in read_csv(work / "results/tables/failures.csv")] == \
        [("ape", "train", log, retry)]
    assert f"    retry: {retry}\n" in (work / "results" / "logs" / "aggregate.log").read_text()

    # the cause goes away; Snakemake alone sees nothing to do, but names the failure before saying so
    cfg_path.write_text(good)
    os.utime(cfg_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = run_snakemake(work, "-n", *base, env=DATA_ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Nothing to be done" in out, out[-4000:]
    assert "stripes: 1 run of the study failed in an earlier run; its table cells show – until retried:" in out
    assert f"    retry: {retry}\n" in out

    # the printed command, as printed: only the failed run (and the tables) rerun
    healthy = work / "results" / "eval" / "nope" / "time" / "seed0" / "metrics.json"
    healthy_mtime = healthy.stat().st_mtime_ns
    proc = run_snakemake(work, *shlex.split(retry)[1:], env=DATA_ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # named once more when the retry starts, and no longer at its end
    assert "stripes: 1 run of the study failed in an earlier run;" in out
    assert "stripes: 1 run of the study failed;" not in out and "failed run of the study" not in out
    for stage in ("train", "eval"):
        assert json.loads((work / f"results/{stage}/ape/time/seed0/mlflow_run.json").read_text())["status"] == "ok"
    float(_table(work)["ape"]["cs_16_mean"])
    assert read_csv(work / "results/tables/failures.csv") == []
    assert healthy.stat().st_mtime_ns == healthy_mtime
