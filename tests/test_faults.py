"""Nothing lost: faults and bad input, injected through the real workflow (Snakemake) where the
fault happens in a job. Unit-level versions live beside their modules and are not repeated here:
tests/test_train.py (SIGKILL + resume and NaN inside stripes.train), tests/test_tune.py (resume
inside stripes.tune), tests/test_tracking.py (8 parallel writer processes, failure records),
tests/test_config.py (bad config, 3 cases through `snakemake -n`), tests/test_data_*.py (bad data
inside the data modules), tests/test_registry.py (bad registry entries).

Fast (default set):
* bad config at `snakemake -n`: the cases test_config.py does not run through Snakemake
  (class outside the allow-list, unknown kwarg, missing kwarg, bad entry name, a table naming an
  unknown context, the scale-out storage keys);
* bad data through the data stage's jobs: wrong checksum, truncated MIDI, missing chord file;
* 8 parallel Snakemake jobs logging to the embedded MLflow DB.

Slow (@pytest.mark.slow, a few minutes together, on a mini study: 2 table rows, 1 seed, 40 songs):
* kill -9 of a training job mid-run, rerun: resumed from last.pt, metrics equal an uninterrupted run's;
* kill -9 of the tune job mid-study, rerun: finished trials kept, best params equal;
* a run that diverges (NaN): fails alone with a clear message; the rest of the study completes
  and the table shows the cell as missing (record_failures: true, the default), and with
  record_failures: false `--keep-going` still finishes the other runs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
SHARED = ROOT.parent / "shared" / "data"
POP909 = Path(os.environ.get("STRIPES_POP909", SHARED / "pop909" / "POP909"))
STRUCTURE = Path(os.environ.get("STRIPES_POP909_STRUCTURE", SHARED / "pop909-structure" / "POP909"))
needs_data = pytest.mark.skipif(not (POP909 / "001" / "001.mid").exists() or not STRUCTURE.exists(),
                                reason=f"POP909 copy not found at {POP909} (set STRIPES_POP909)")


def run_snakemake(workdir: Path, *args: str, timeout: int = 600, env: dict | None = None):
    e = dict(os.environ, PYTHONPATH=str(workdir / "src"), **(env or {}))
    return subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout, env=e)


def fresh_copy(dest: Path) -> Path:
    """The files a clean checkout has (tracked + untracked-not-ignored) + the reference tables."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file() and not f.startswith(("results/", ".snakemake/")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    shutil.copytree(ROOT / "results" / "reference", dest / "results" / "reference", dirs_exist_ok=True)
    return dest


# ====================================================================== bad config at `snakemake -n`

REGISTRY_CASES = {
    # case: (entry appended to config/pe.yaml, fragments the error must contain)
    "class_outside_allow_list": ("evil:\n  class: os.system\n",
                                 ["pe_registry", "'evil'", "outside the allow-listed prefix 'stripes.pe.'"]),
    "unknown_kwarg": ("rope_z:\n  class: stripes.pe.rope.RoPE\n  kwargs: {schedule: shared, learnable: false, colour: 3}\n",
                      ["'rope_z'", "colour"]),
    # a PE class with required kwargs (RoPE itself has defaults for all of them)
    "missing_kwarg": ("rope_z:\n  class: stripes.pe.rope._RotaryPE\n  kwargs: {schedule: shared}\n",
                      ["'rope_z'", "missing a required argument: 'learnable'"]),
    "bad_entry_name": ("Rope-Z:\n  class: stripes.pe.rope.RoPE\n  kwargs: {schedule: shared, learnable: false}\n",
                       ["'Rope-Z'", "invalid name"]),
}
OVERLAY_CASES = {
    "table_names_unknown_context": ({"tables": {"s26_table2": {"rows": [{"pes": ["rope_a"], "contexts": ["time", "tempo"]}]}}},
                                    ["tables.s26_table2.rows[0]", "unknown context 'tempo'"]),
    "optuna_rdb_without_url": ({"tune": {"storage": {"backend": "rdb"}}}, ["'url' is a required property", "storage"]),
    "tracking_uri_file_store": ({"mlflow": {"tracking_uri": "file:///tmp/mlruns"}}, ["file:///tmp/mlruns", "tracking_uri"]),
    "storage_stray_key": ({"tune": {"storage": {"backend": "journal", "lock": "open"}}}, ["lock", "storage"]),
}


def _dry_run_fails_with(overlay: dict, fragments: list[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(overlay))
    # in process: load_config applies what the Snakefile applies at `-n` (schema + check_study);
    # test_workflow.py checks once through Snakemake that such an error stops the dry run
    from stripes.study import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml", path)
    out = str(err.value)
    for f in fragments:
        assert f in out, f"{f!r} not in the message:\n{out[-3000:]}"


@pytest.mark.parametrize("case", sorted(REGISTRY_CASES))
def test_bad_registry_entry_fails_at_dry_run(case, tmp_path):
    entry, fragments = REGISTRY_CASES[case]
    reg = tmp_path / "pe.yaml"
    reg.write_text((ROOT / "config" / "pe.yaml").read_text() + "\n" + entry
                   + "  description: injected fault\n  reference: tests/test_faults.py\n")
    _dry_run_fails_with({"pe_registry": str(reg)}, fragments, tmp_path)


@pytest.mark.parametrize("case", sorted(OVERLAY_CASES))
def test_bad_overlay_fails_at_dry_run(case, tmp_path):
    overlay, fragments = OVERLAY_CASES[case]
    _dry_run_fails_with(overlay, fragments, tmp_path)


def test_good_storage_overlay_passes_dry_run(tmp_path):
    # the control of the cases above: the same keys, valid, are accepted (no server is contacted at -n)
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump({
        "mlflow": {"tracking_uri": "postgresql://stripes@127.0.0.1:5432/stripes_mlflow"},
        "tune": {"storage": {"backend": "rdb", "url": "postgresql://stripes@127.0.0.1:5432/stripes_optuna"}}}))
    from stripes.study import load_config

    load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml", path)


# ====================================================================== bad data through the data stage


def _farm(src: Path, dest: Path) -> Path:
    """A symlink copy of a dataset folder (cheap; single files are then replaced or removed)."""
    for dirpath, _, names in os.walk(src):
        d = dest / Path(dirpath).relative_to(src)
        d.mkdir(parents=True, exist_ok=True)
        for n in names:
            (d / n).symlink_to(Path(dirpath) / n)
    return dest


@pytest.fixture()
def datasets(tmp_path):
    pop, struct = _farm(POP909, tmp_path / "pop"), _farm(STRUCTURE, tmp_path / "struct")
    return pop, struct


def _data_settings(tmp_path, pop, struct, **extra) -> str:
    return json.dumps({"pop909_dir": str(pop), "structure_dir": str(struct), "cache_dir": str(tmp_path / "cache"),
                       "download": False, "out_dir": str(tmp_path / "data"), **extra})


def _stripes(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("STRIPES_POP909", "STRIPES_POP909_STRUCTURE")}
    e["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.run([sys.executable, "-m", "stripes.cli", *args], capture_output=True, text=True, timeout=300,
                          env=e, cwd=ROOT)


def _truncate(path: Path, n: int = 200) -> None:
    data = path.read_bytes()[:n]
    path.unlink()
    path.write_bytes(data)


@needs_data
def test_wrong_checksum_stops_the_study_at_fetch_naming_the_file(datasets, tmp_path):
    """Through Snakemake: the fetch job fails, the log names the file and the fix, no later job runs."""
    pop, struct = datasets
    target = pop / "001" / "key_audio.txt"
    data = bytearray(target.read_bytes())
    data[5] ^= 0x01  # same size, one bit flipped: only the checksum can tell
    target.unlink()
    target.write_bytes(bytes(data))
    work = fresh_copy(tmp_path / "repo")
    # (targets before --configfile: it takes every following word as a config file)
    proc = run_snakemake(work, "results/data/report.json", "--cores", "1", "--configfile", "config/smoke.yaml",
                         env={"STRIPES_POP909": str(pop), "STRIPES_POP909_STRUCTURE": str(struct)}, timeout=300)
    assert proc.returncode != 0
    log = (work / "results" / "logs" / "data" / "fetch.log").read_text()
    assert "checksum mismatch" in log and "001/key_audio.txt" in log and "Restore the file" in log, log
    assert not (work / "results" / "data" / "sources.json").exists()
    assert not (work / "results" / "data" / "report.json").exists()  # prepare never ran


@needs_data
def test_truncated_midi_fails_verification_and_is_dropped_when_unverified(datasets, tmp_path):
    pop, struct = datasets
    _truncate(pop / "002" / "002.mid")
    proc = _stripes("fetch", "--settings", _data_settings(tmp_path, pop, struct), "--out", str(tmp_path / "s.json"))
    assert proc.returncode == 1
    assert "checksum mismatch" in proc.stderr and "002/002.mid" in proc.stderr
    # the data stage's second line of defence (prepare --no-verify, or a file damaged after the
    # check): the song is dropped with its reason, the others are prepared
    proc = _stripes("prepare", "--no-verify", "--jobs", "1", "--settings",
                    _data_settings(tmp_path, pop, struct, max_songs=4))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    assert report["dropped"]["002"].startswith("unreadable MIDI 002.mid")
    assert report["songs_kept"] == 3


@needs_data
def test_missing_chord_file_fails_verification_and_is_dropped_when_unverified(datasets, tmp_path):
    pop, struct = datasets
    (struct / "003" / "finalized_chord.txt").unlink()
    proc = _stripes("fetch", "--settings", _data_settings(tmp_path, pop, struct), "--out", str(tmp_path / "s.json"))
    assert proc.returncode == 1
    assert "missing" in proc.stderr and "003/finalized_chord.txt" in proc.stderr, proc.stderr
    proc = _stripes("prepare", "--no-verify", "--jobs", "1", "--settings",
                    _data_settings(tmp_path, pop, struct, max_songs=4))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    assert "finalized_chord.txt" in report["dropped"]["003"]
    assert report["songs_kept"] == 3


# ====================================================================== 8 parallel jobs -> MLflow SQLite

PARALLEL_SNAKEFILE = textwrap.dedent('''
    # 8 jobs at once, each logging one run to the study's embedded SQLite DB. As in the study,
    # mlflow_init creates the DB and the experiment first (a fresh DB hit by parallel jobs breaks).
    rule all:
        input: expand("runs/{i}.json", i=range(8))

    rule mlflow_init:
        output: "experiment.json"
        shell: "python -m stripes.tracking init --tracking-uri sqlite:///mlflow.db --artifact-root artifacts"
               " --experiment parallel --out {output} > init.log 2>&1"

    rule log_run:
        input: "experiment.json"
        output: "runs/{i}.json"
        log: "logs/{i}.log"
        shell: "python {workflow.basedir}/writer.py {input} {wildcards.i} {output} > {log} 2>&1"
''')
WRITER = textwrap.dedent('''
    import json, sys, time
    from stripes.tracking import Tracker
    tr = Tracker.from_experiment_file(sys.argv[1])
    i = int(sys.argv[2])
    time.sleep(max(0.0, START - time.time()))  # all 8 hit the DB at the same moment
    rid = tr.start_run("job%d" % i, tags=tr.run_tags({"run": {"pe": "pe%d" % i, "context": "time", "seed": i}}, "train"))
    tr.log_params(rid, {"i": i})
    for step in range(10):
        tr.log_metrics(rid, {"val_loss": 1.0 / (step + 1), "train_loss": 2.0}, step=step)
    tr.end_run(rid, "FINISHED")
    json.dump({"run_id": rid}, open(sys.argv[3], "w"))
''')


@pytest.mark.slow  # ~60 s on 2 busy cores: 8 jobs each import mlflow
def test_eight_parallel_snakemake_jobs_log_to_the_embedded_db(tmp_path):
    (tmp_path / "Snakefile").write_text(PARALLEL_SNAKEFILE)
    start = time.time() + 12  # past the start-up of all 8 jobs (mlflow import ~1 s each on 2 cores)
    (tmp_path / "writer.py").write_text(f"START = {start}\n" + WRITER)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([SNAKEMAKE, "--cores", "8", "--nolock"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("*.log")}
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:] + str(logs)
    # zero errors: no traceback, no "database is locked", in any job
    assert len(logs) == 8 and not [n for n, t in logs.items() if "Error" in t or "Traceback" in t or "locked" in t]
    from stripes.tracking import Tracker

    tr = Tracker.from_experiment_file(tmp_path / "experiment.json")
    runs = tr.client.search_runs([tr.experiment_id], max_results=100)
    recorded = {json.loads((tmp_path / "runs" / f"{i}.json").read_text())["run_id"] for i in range(8)}
    assert {r.info.run_id for r in runs} == recorded and len(recorded) == 8  # every run present, once
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(len(tr.client.get_metric_history(r.info.run_id, "val_loss")) == 10 for r in runs)
    # the 8 jobs really overlapped in time (else this proves nothing about concurrency)
    starts = sorted(r.info.start_time for r in runs)
    assert (starts[-1] - starts[0]) / 1000 < 10


# ====================================================================== the mini study (slow)

MINI_TABLE = "mini"
MINI_ROWS = [("nope", "time"), ("ape", "time")]
FAULT_OVERLAY = {
    # separate train and evaluate jobs, as in the full study (the smoke overlay fuses them)
    "study": {"fuse_train_eval": False},
    # long enough to be killed mid-run: 6 epochs x 4 steps, a checkpoint every 2 steps
    "train": {"epochs": 6, "val_per_epoch": 2},
    # the tuning trials stay short (1 epoch); the grid is set per test
    "tune": {"overrides": {"train.epochs": 1}},
}


def _mini_config(work: Path) -> None:
    """Rewrite the copy's config/config.yaml to a mini study: one table, 2 rows, seed 0."""
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    cfg["tables"] = {MINI_TABLE: {"caption": "fault-injection mini table", "seeds": "mini", "ssmd_scale": 100,
                                  "reference": None, "group_by": "none",
                                  "rows": [{"pe": pe, "context": c} for pe, c in MINI_ROWS]}}
    cfg["study"]["seeds"] = {"mini": [0]}
    cfg["study"].pop("mi_figure", None)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    smoke = yaml.safe_load((work / "config" / "smoke.yaml").read_text())
    smoke["study"]["seeds"] = {"mini": [0]}
    (work / "config" / "smoke.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))


def _overlay(work: Path, extra: dict | None = None) -> str:
    ov = json.loads(json.dumps(FAULT_OVERLAY))
    for k, v in (extra or {}).items():
        ov.setdefault(k, {}).update(v)
    (work / "fault.yaml").write_text(yaml.safe_dump(ov))
    return "fault.yaml"


DATA_ENV = {"STRIPES_POP909": str(POP909), "STRIPES_POP909_STRUCTURE": str(STRUCTURE)}


@pytest.fixture(scope="module")
def prepared(pop909_dir, structure_dir, tmp_path_factory):  # the fixtures: conftest marks the users real_data
    """A mini-study tree whose data stage has run (copied by each test: prepare runs once)."""
    if not (POP909 / "001" / "001.mid").exists():
        pytest.skip(f"POP909 copy not found at {POP909} (set STRIPES_POP909)")
    work = fresh_copy(tmp_path_factory.mktemp("prepared") / "repo")
    _mini_config(work)
    proc = run_snakemake(work, "results/data/report.json", "results/mlflow/experiment.json",
                         "--cores", "2", "--configfile", "config/smoke.yaml", _overlay(work), env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work


def _clone(prepared: Path, dest: Path) -> Path:
    shutil.copytree(prepared, dest, symlinks=True)  # copy2 keeps mtimes: nothing upstream reruns
    return dest


def _descendant(proc: subprocess.Popen, needle: str):
    """The python process of the job (not the bash wrapper whose command line contains it too)."""
    import psutil

    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
                if cmd and "python" in Path(cmd[0]).name and needle in " ".join(cmd):
                    return child
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        return None
    return None


def _kill_job_when(work: Path, args: list[str], needle: str, ready, timeout: float = 300):
    """Start snakemake; when ready() holds, SIGKILL the job process whose command line contains
    needle (only that process: the controller sees a failed job). Returns (snakemake result, info)."""
    e = dict(os.environ, PYTHONPATH=str(work / "src"), **DATA_ENV)
    proc = subprocess.Popen([SNAKEMAKE, *args], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=e)
    t0, info = time.time(), None
    try:
        while time.time() - t0 < timeout and proc.poll() is None:
            info = ready()
            if info is not None:
                job = _descendant(proc, needle)
                if job is not None:
                    job.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, info


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())


def _no_timing(d):
    if isinstance(d, dict):
        return {k: _no_timing(v) for k, v in d.items() if not (k.endswith("_s") or "time" in k)}
    return d


@pytest.fixture(scope="module")
def nan_study(prepared, tmp_path_factory):
    """The mini study with one diverging run (ape/time/seed0: lr 1e30, no clipping) injected into
    its resolved run config; record_failures: true (default). Also the uninterrupted reference
    for nope/time/seed0."""
    work = _clone(prepared, tmp_path_factory.mktemp("nan") / "repo")
    ov = _overlay(work)
    base = ["--cores", "2", "--configfile", "config/smoke.yaml", ov]
    proc = run_snakemake(work, "results/runs/ape/time/seed0/config.json",
                         "results/runs/nope/time/seed0/config.json", *base, env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    cfg_path = work / "results" / "runs" / "ape" / "time" / "seed0" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["train"].update({"lr": 1e30, "grad_clip": 0, "warmup_epochs": 0})
    cfg_path.write_text(json.dumps(cfg))
    t0 = time.time()
    proc = run_snakemake(work, *base, env=DATA_ENV)
    return work, proc, time.time() - t0


@pytest.mark.slow
def test_diverging_run_fails_alone_and_the_table_shows_it_missing(nan_study):
    work, proc, wall = nan_study
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]  # record_failures: the study completes, then exits 1 (a run failed)
    res = work / "results"
    rec = json.loads((res / "train" / "ape" / "time" / "seed0" / "mlflow_run.json").read_text())
    assert rec["status"] == "failed" and "NonFiniteLossError" in rec["error"] and "ape/time/seed0" in rec["error"]
    assert json.loads((res / "eval" / "nope" / "time" / "seed0" / "mlflow_run.json").read_text())["status"] == "ok"
    with open(res / "tables" / "failures.csv", newline="") as fh:
        failures = list(csv.DictReader(fh))
    assert len(failures) == 1 and "ape" in json.dumps(failures[0]), failures
    with open(res / "tables" / f"{MINI_TABLE}.csv", newline="") as fh:
        rows = {r["pe"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"nope", "ape"}
    float(rows["nope"]["cs_16_mean"])  # the healthy run: a number
    assert rows["ape"]["cs_16_mean"] in ("", "–", "-", "nan", "NaN"), rows["ape"]  # the diverged one: missing
    print(f"mini study with one NaN run: {wall:.0f} s")


@pytest.mark.slow
def test_diverging_run_without_failure_records_keep_going_finishes_the_rest(prepared, tmp_path):
    work = _clone(prepared, tmp_path / "repo")
    ov = _overlay(work, {"study": {"record_failures": False}})
    base = ["--cores", "2", "--configfile", "config/smoke.yaml", ov]
    targets = [f"results/eval/{pe}/{c}/seed0/metrics.json" for pe, c in MINI_ROWS]
    proc = run_snakemake(work, *[t.replace("eval", "runs").replace("metrics", "config") for t in targets], *base,
                         env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    cfg_path = work / "results" / "runs" / "ape" / "time" / "seed0" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["train"].update({"lr": 1e30, "grad_clip": 0, "warmup_epochs": 0})
    cfg_path.write_text(json.dumps(cfg))
    proc = run_snakemake(work, *targets, "--keep-going", *base, env=DATA_ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0  # the diverged job fails as a job ...
    assert (work / "results" / "eval" / "nope" / "time" / "seed0" / "metrics.json").exists()  # ... alone
    assert not (work / "results" / "eval" / "ape" / "time" / "seed0" / "metrics.json").exists()
    log = (work / "results" / "logs" / "train" / "ape" / "time" / "seed0.log").read_text()
    assert "NonFiniteLossError" in log and "ape/time/seed0" in log, log[-2000:]  # a clear message
    assert "Error in rule train" in out


@pytest.mark.slow
def test_training_job_killed_mid_run_resumes_from_its_checkpoint(prepared, nan_study, tmp_path):
    ref_work = nan_study[0]
    work = _clone(prepared, tmp_path / "repo")
    args = ["results/eval/nope/time/seed0/metrics.json", "--cores", "2", "--configfile", "config/smoke.yaml",
            _overlay(work)]
    tdir = work / "results" / "train" / "nope" / "time" / "seed0"

    def ready():  # the first checkpoint is on disk and training is not finished
        if (tdir / "last.pt").exists() and not (tdir / "train.json").exists():
            return time.time()
        return None

    rc, out, killed_at = _kill_job_when(work, args, "stripes.jobs train", ready)
    assert killed_at is not None and rc != 0, out[-3000:]
    assert not (tdir / "train.json").exists(), "training finished before the kill: the test proves nothing"
    import torch

    step_at_kill = torch.load(tdir / "last.pt", map_location="cpu", weights_only=True)["step"]
    assert 0 < step_at_kill < 24
    # rerun: snakemake redoes the failed job, stripes.train resumes from last.pt
    proc = run_snakemake(work, *args, env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ref = ref_work / "results"
    got = work / "results"
    # every metric identical (CPU training is deterministic per seed); only wall-clock fields differ
    assert _no_timing(_metrics(got / "eval/nope/time/seed0/metrics.json")) == \
        _no_timing(_metrics(ref / "eval/nope/time/seed0/metrics.json"))
    a = json.loads((got / "train/nope/time/seed0/train.json").read_text())
    b = json.loads((ref / "train/nope/time/seed0/train.json").read_text())
    for key in ("best_val_loss", "best_step", "steps", "final_train_loss", "final_val_loss"):
        assert a[key] == b[key], key
    # proof that it resumed (a restart from scratch would give the same numbers): the rerun's
    # MLflow run only saw validations after the checkpoint
    from stripes.tracking import Tracker

    rec = json.loads((got / "train/nope/time/seed0/mlflow_run.json").read_text())
    tr = Tracker.from_experiment_file(got / "mlflow/experiment.json")
    steps = [m.step for m in tr.client.get_metric_history(rec["run_id"], "val_loss")]
    assert steps and min(steps) > step_at_kill, (steps, step_at_kill)
    # the killed attempt's run does not stay RUNNING in the UI: KILLED, pointing at its successor
    runs = tr.client.search_runs([tr.experiment_id], "tags.stage = 'train'", max_results=100)
    assert "RUNNING" not in [r.info.status for r in runs], [(r.info.run_name, r.info.status) for r in runs]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all(r.data.tags["stripes.superseded_by"] == rec["run_id"] for r in killed), \
        [(r.info.run_name, r.info.status, r.data.tags.get("stripes.superseded_by")) for r in runs]


@pytest.mark.slow
def test_tune_job_killed_mid_study_keeps_finished_trials(prepared, tmp_path):
    grid = {"tune": {"space": {"train.lr": {"type": "categorical", "choices": [1e-4, 5e-4, 1e-3]}}}}
    target = "results/tune/nope/time/best.json"
    ref = _clone(prepared, tmp_path / "ref")
    proc = run_snakemake(ref, target, "--cores", "2", "--configfile", "config/smoke.yaml", _overlay(ref, grid),
                         env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    work = _clone(prepared, tmp_path / "repo")
    args = [target, "--cores", "2", "--configfile", "config/smoke.yaml", _overlay(work, grid)]
    trials = work / "results" / "tune" / "nope" / "time" / "work" / "trials"

    def ready():  # trial 1 started, so trial 0 is finished and in the journal
        return 1 if (trials / "trial001").exists() else None

    rc, out, info = _kill_job_when(work, args, "stripes.jobs tune", ready)
    assert info is not None and rc != 0, out[-3000:]
    assert not (work / target).exists()
    assert (work / "results" / "tune" / "nope" / "time" / "work" / "study.journal").exists()  # survives the failed job
    proc = run_snakemake(work, *args, env=DATA_ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    a = json.loads((work / target).read_text())
    b = json.loads((ref / target).read_text())
    assert 1 <= a["resumed_with"] < 3, a  # finished trials kept, not rerun
    assert b["resumed_with"] == 0
    # the same optimum (the trial NUMBER differs: the killed point is retried as a new trial)
    for key in ("params", "value", "n_complete", "sampler_seed", "fingerprint"):
        assert a[key] == b[key], key
    with open(work / "results/tune/nope/time/trials.csv", newline="") as fh:
        states = [r["state"] for r in csv.DictReader(fh)]
    # the killed trial is FAIL (kept in the record), the grid is complete
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states
    # and no MLflow run of the killed attempt stays RUNNING
    from stripes.tracking import Tracker

    tr = Tracker.from_experiment_file(work / "results/mlflow/experiment.json")
    runs = tr.client.search_runs([tr.experiment_id], max_results=100)
    assert "RUNNING" not in [r.info.status for r in runs], [r.info.status for r in runs]
    superseded = [r for r in runs if "stripes.superseded_by" in r.data.tags]
    assert superseded and all(r.info.status == "KILLED" for r in superseded), \
        [(r.info.run_name, r.info.status) for r in runs]


# ====================================================================== tune: a SIGKILLed grid trial (fast)


def test_grid_point_of_a_killed_trial_is_retried_not_a_duplicate(tmp_path):
    """Unit-level twin of test_tune_job_killed_mid_study_keeps_finished_trials (which found the
    bug): a job SIGKILLed during a grid trial leaves that trial RUNNING in the journal; the rerun
    marks it FAIL and must retry THAT grid point. GridSampler shuffles its grid with its seed, so
    mapping grid_id through the plain product of the choices retried a wrong point (a duplicate)
    and the killed point was never evaluated."""
    import optuna

    from stripes import tune

    lrs = [1e-4, 5e-4, 1e-3]
    # the fake objective below is a loss (minimised)
    spec = tune.full_spec({"space": {"train.lr": {"type": "categorical", "choices": lrs}},
                           "objective": "best_val_loss"})
    cfg = {"run": {"pe": "nope", "context": "time", "seed": 0, "stage": "tune"}, "train": {}, "model": {}}
    from stripes.runconfig import config_hash

    fp = config_hash({"cfg": cfg, "spec": spec})
    journal = tmp_path / "work" / "study.journal"
    for killed_at in range(3):  # the kill lands in the 1st, 2nd or 3rd trial
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
        study = tune.open_study(journal, "nope", "time", spec, fp)
        for _ in range(killed_at):
            t = study.ask()
            study.tell(t, t.suggest_categorical("train.lr", lrs))
        t = study.ask()
        t.suggest_categorical("train.lr", lrs)  # ... and the process dies here (trial left RUNNING)
        del study
        seen = []

        def objective(trial):
            lr = trial.suggest_categorical("train.lr", lrs)
            seen.append(lr)
            return lr

        res = tune.run_study(cfg, {"space": spec["space"], "objective": "best_val_loss"}, "nope", "time", tmp_path,
                             objective=objective)
        st = optuna.load_study(study_name="nope.time", storage=tune.journal_storage(journal))
        done = sorted(t.params["train.lr"] for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE)
        assert done == lrs, (killed_at, done)  # every grid point evaluated exactly once
        assert res["params"] == {"train.lr": 1e-4} and res["resumed_with"] == killed_at
