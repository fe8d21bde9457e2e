"""The study as one Snakemake DAG: its job counts against stripes.study.plan_study, adding a PE
(slow), lint (slow), and the smoke study end to end (slow, real data) in a fresh copy of the
repository."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def fresh_copy(dest: Path) -> Path:
    """git-tracked + untracked-not-ignored files of the working tree (what CI checks out), plus
    the committed reference tables; no results, no .snakemake."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file() and not f.startswith(("results/", ".snakemake/")) or f.startswith("results/reference/"):
            if src.is_file():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / f)
    for f in (ROOT / "results" / "reference").glob("*"):
        (dest / "results" / "reference").mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / "results" / "reference" / f.name)
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(workdir / "src"), **(env or {}))
    return subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout, env=e)


def dry_run_job_list(workdir: Path, *configfiles: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job `snakemake -n` would run."""
    args = ["-n", "--nolock", "--cores", "1", "--printshellcmds", "--verbose"]
    if configfiles:
        args += ["--configfile", *configfiles]
    proc = snakemake(workdir, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m:
            continue
        w = re.search(r"wildcards: (.*)", block)
        jobs.add((m.group(1), w.group(1).strip() if w else ""))
    return jobs


# ------------------------------------------------------------------ the wiring: Snakemake vs the plan
# Every `snakemake` start re-imports torch (the Snakefile checks the PE registry at parse time), so
# the config checks themselves run in process (test_config.py, test_faults.py, test_security.py:
# stripes.study.load_config = the Snakefile's validate() + check_study()); these tests check that
# the Snakefile turns the plan into the right DAG and surfaces a check_study error at `-n`.


def expected_job_counts(plan, fused: bool) -> Counter:
    once = ["fetch", "prepare", "mutual_information", "toy_kernels", "metric_floor", "mlflow_init",
            "report_spec", "aggregate", "listening_page", "all"]
    # study.fuse_train_eval: one job per (pe, context) trains and evaluates all its seeds
    per_run = {"train_evaluate": len(plan.pairs)} if fused else dict.fromkeys(["train", "evaluate"], len(plan.runs))
    return Counter({**dict.fromkeys(once, 1), "tune_config": len(plan.pairs), "tune": len(plan.pairs),
                    "resolve_run_config": len(plan.runs), **per_run})


def dry_run_job_counts(workdir: Path, *configfiles: Path) -> Counter:
    """Jobs per rule of `snakemake -n` on an empty results/ (every job scheduled), started from
    another directory with `-s` (it once failed there with KeyError: 'mlflow')."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "results" / "reference", workdir / "results" / "reference")
    proc = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "-n", "--nolock", "--quiet",
                           "rules", "--configfile", *map(str, configfiles)], cwd=workdir.parent, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    stats = out[out.index("Job stats:"):].split("\n\n")[0]
    return Counter({rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE) if rule != "total"})


@pytest.mark.parametrize("overlay, fused", [("smoke.yaml", True), ("quick.yaml", False)], ids=["smoke", "quick"])
def test_dag_matches_the_study_plan(overlay, fused, tmp_path):
    """smoke fuses training and evaluation into one job per (pe, context), quick (like the full
    study) has a train and an evaluate job per run."""
    from stripes.study import load_config, plan_study

    configs = (ROOT / "config" / "config.yaml", ROOT / "config" / overlay)
    cfg = load_config(*configs)
    assert bool(cfg["study"].get("fuse_train_eval", False)) is fused
    plan = plan_study(cfg)
    assert dry_run_job_counts(tmp_path / "work", configs[1]) == expected_job_counts(plan, fused)


def test_full_study_plan_keeps_train_and_evaluate_separate():
    from stripes.study import load_config, plan_study

    cfg = load_config(ROOT / "config" / "config.yaml")
    assert not cfg["study"].get("fuse_train_eval", False)
    assert len(plan_study(cfg).runs) == 127


def test_a_check_study_error_stops_the_dry_run(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tables": {"s26_table2": {"rows": [{"pes": ["rope_a", "rope_q"], "contexts": ["time"]}]}}}))
    proc = snakemake(ROOT, "-n", "--nolock", "--configfile", "config/smoke.yaml", str(bad), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "tables.s26_table2.rows[0]" in out and "unknown PE 'rope_q'" in out, out[-3000:]


# The one lint we keep on purpose: the job interpreter is one global of common.smk, PYTHON (the
# venv's python, or the conda env's `python` under --use-conda), so that switching between the two
# never reruns a job, which a params: entry would.
ACCEPTED_LINTS = {"Shell command directly uses variable PYTHON from outside of the rule:": None}


@pytest.mark.slow
def test_lint_is_clean_for_the_study_rules():
    # two configs: the rules of train.smk depend on study.fuse_train_eval
    for configs in (["--configfile", "config/smoke.yaml"], []):
        proc = snakemake(ROOT, "--lint", "--nolock", *configs, timeout=300)
        out = proc.stdout + proc.stderr
        problems = []
        for block in re.split(r"\n(?=Lints for )", out):
            m = re.match(r"Lints for (rule (\w+)|snakefile \S+)", block)
            if not m:
                continue
            rule = m.group(2)
            for lint in re.findall(r"^\s+\* (.+)$", block, re.MULTILINE):
                allowed = ACCEPTED_LINTS.get(lint.strip(), ())
                if not (lint.strip() in ACCEPTED_LINTS and (allowed is None or rule in allowed)):
                    problems.append(f"{m.group(1)}: {lint.strip()}")
        assert not problems, "\n".join(problems) + "\n" + out[-3000:]


@pytest.mark.slow
def test_adding_a_pe_schedules_only_its_jobs(tmp_path):
    """In a copy where the smoke study is complete (outputs touched), adding a PE to a table
    schedules only that PE's tune/train/evaluate jobs (and config resolution) plus aggregation."""
    work = fresh_copy(tmp_path / "repo")
    # 1) mark the whole smoke study complete without running it: create every output listed by
    #    --summary, then `--touch` so that snakemake sees an up-to-date tree.
    proc = snakemake(work, "-n", "--nolock", "--configfile", "config/smoke.yaml", "--summary", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [line.split("\t")[0] for line in proc.stdout.splitlines()[1:] if "\t" in line]
    assert outputs
    for f in outputs:
        p = work / f
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            p.write_text("{}\n")
    proc = snakemake(work, "--cores", "1", "--configfile", "config/smoke.yaml", "--touch", "all", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = dry_run_job_list(work, "config/smoke.yaml")
    assert not any(rule in ("tune", "train", "evaluate") for rule, _ in before), sorted(before)[:20]
    # 2) the user adds a PE: one registry entry (an existing class) + a table row
    reg = yaml.safe_load((work / "config" / "pe.yaml").read_text()) or {}  # the study's entries (none yet)
    reg["rope_d"] = {"class": "stripes.pe.rope.RoPE", "kwargs": {"schedule": "shared", "learnable": False},
                     "description": "walk-through example: RoPE(A) under a new name", "reference": "config/README.md"}
    (work / "config" / "pe.yaml").write_text(yaml.safe_dump(reg, sort_keys=False))
    overlay = work / "config" / "add_pe.yaml"
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    rows = cfg["tables"]["s26_table2"]["rows"] + [{"pe": "rope_d", "contexts": ["time", "bin"]}]
    overlay.write_text(yaml.safe_dump({"tables": {"s26_table2": {"rows": rows}}}))
    after = dry_run_job_list(work, "config/smoke.yaml", str(overlay))
    heavy = {(r, w) for r, w in after
             if r in ("tune", "train", "evaluate", "train_evaluate", "tune_config", "resolve_run_config")}
    assert heavy and all("pe=rope_d" in w for _, w in heavy), sorted(heavy)
    counts = Counter(r for r, _ in heavy)
    # the smoke overlay fuses training and evaluation into one job per pair (study.fuse_train_eval)
    assert counts == {"tune_config": 2, "tune": 2, "resolve_run_config": 4, "train_evaluate": 2}
    others = {r for r, _ in after} - {r for r, _ in heavy}
    assert others <= {"report_spec", "aggregate", "listening_page", "all"}, others
    assert "aggregate" in others


# ------------------------------------------------------------------ the smoke study, end to end


def _fewer_rows(work: Path) -> None:
    """Every table of config/config.yaml kept, with fewer rows: the MI table, a product table
    (2 PEs), a best-of table (that table's best RoPE and one more PE, on another context) and the
    F-StrIPE table (S-SRPE's 16-bar-only row, on MCP); 4 (pe, context) pairs x 2 seeds instead of
    29 x 2, so the end-to-end test runs every rule of the smoke study in a fraction of its time
    (benchmarks/bench_study.py runs and times the whole smoke study)."""
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    t = cfg["tables"]
    t["s26_table2"]["rows"] = [{"pes": ["rope_a", "rope_c"], "contexts": ["time"]}]
    t["s26_table3"]["rows"] = [{"best_of": "s26_table2", "contexts": ["time"]}, {"pe": "fstripe1", "context": "rep"}]
    t["f25_table1"]["rows"] = [{"pe": "s_srpe", "context": "mcp", "settings": ["test_16"]}]
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.slow
def test_smoke_study_end_to_end(pop909_dir, structure_dir, tmp_path):
    env = {"STRIPES_POP909": str(pop909_dir), "STRIPES_POP909_STRUCTURE": str(structure_dir)}
    work = fresh_copy(tmp_path / "repo")
    _fewer_rows(work)
    # No wall-clock assertion in a test: benchmarks/bench_study.py measures the whole smoke study's time.
    proc = snakemake(work, "--cores", "2", "--configfile", "config/smoke.yaml", env=env, timeout=3600)
    (tmp_path / "snakemake.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    from stripes.study import load_config, plan_study

    cfg = load_config(work / "config" / "config.yaml", work / "config" / "smoke.yaml")
    plan = plan_study(cfg)
    res = work / "results"
    # every table: one row per configured (pe, context); every cell a number
    for name in plan.metric_tables:
        t = plan.tables[name]
        with open(res / "tables" / f"{name}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        expected = {(r.pe, r.context) for r in t.rows} | {("*", c) for _, c in t.best_of}
        got = {(r["pe"] if not r["selected_from"] else "*", r["context"]) for r in rows}
        assert got == expected, (name, got ^ expected)
        assert len(rows) == len(expected)
        by_pe = {(r.pe, r.context): r.settings for r in t.rows}
        for r in rows:
            settings = by_pe.get((r["pe"], r["context"]), ("test_16", "test_64"))
            for s, short in (("test_16", "16"), ("test_64", "64")):
                for m in ("cs", "ssmd", "gs", "ndd"):
                    v = r[f"{m}_{short}_mean"]
                    if s in settings:
                        float(v)  # a number (raises on "" = missing)
                        assert r[f"{m}_{short}_std"] != ""
                    else:
                        assert v == "n/a"
    for name in (n for n, t in plan.tables.items() if t.kind == "mutual_information"):
        assert (res / "tables" / f"{name}.csv").exists()
    assert (res / "figures" / "mi_vs_performance.png").stat().st_size > 5000
    with open(res / "tables" / "failures.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 0

    # MLflow: one finished run per (pe, context, seed) + the summary run; no tuning run (one-point grid)
    db = sqlite3.connect(res / "mlflow" / "mlflow.db")
    tags = {}
    for run_uuid, key, value in db.execute("select run_uuid, key, value from tags"):
        tags.setdefault(run_uuid, {})[key] = value
    status = dict(db.execute("select run_uuid, status from runs where lifecycle_stage = 'active'"))
    train_runs = Counter((t["pe"], t["context"], t["seed"]) for rid, t in tags.items()
                         if t.get("stage") == "train" and rid in status)
    assert set(train_runs) == {(pe, c, str(s)) for pe, c, s in plan.runs}
    assert all(n == 1 for n in train_runs.values())
    assert all(status[rid] == "FINISHED" for rid, t in tags.items() if t.get("stage") == "train")
    study_runs = [rid for rid, t in tags.items() if t.get("stage") == "tune" and t.get("role") == "study"]
    trial_runs = [rid for rid, t in tags.items() if t.get("stage") == "tune" and "mlflow.parentRunId" in t]
    # the smoke overlay's one-point lr grid: each study writes that point without a trial
    # (stripes.tune.only_point) and without an MLflow run; the runs say so in their params
    assert study_runs == [] and trial_runs == []
    skipped = dict(db.execute("select run_uuid, value from params where key = 'run.tuned.skipped'"))
    assert all("one-point" in skipped.get(rid, "") for rid, t in tags.items() if t.get("stage") == "train")
    # each run records its id in a file of the DAG
    for pe, c, s in plan.runs:
        rec = json.loads((res / "train" / pe / c / f"seed{s}" / "mlflow_run.json").read_text())
        assert rec["status"] == "ok" and tags[rec["run_id"]]["pe"] == pe
    summary = json.loads((res / "mlflow" / "summary_run.json").read_text())
    assert status[summary["run_id"]] == "FINISHED"

    # the HTML report holds the tables and figures
    proc = snakemake(work, "--cores", "1", "--configfile", "config/smoke.yaml", "--report", "report.html", timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (work / "report.html").stat().st_size > 10000
    # ... and the listening page, one player per table's best row with the sample and its target
    page = (res / "tables" / "samples.html").read_text()
    assert page.count("<audio controls") == 2 * len(plan.metric_tables) and "no audio" not in page
    assert "samples.html" in (work / "report.html").read_text(errors="replace")

    # a second run does nothing
    proc = snakemake(work, "--cores", "2", "--configfile", "config/smoke.yaml", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
