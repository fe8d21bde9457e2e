"""The job layer: what every job of the workflow runs, ``stripes job <stage> ...``.

train, evaluate, tune and aggregate are pure (``stripes.train.train``, ``stripes.evaluate.evaluate``,
``stripes.tune.run_study``, ``stripes.report.aggregate``): they report through callbacks. This module
owns, for all of them:

* the job's start (:func:`start_job`): thread limits, device override, seeding, the MLflow
  tracker of the study's experiment and the failure policy; train and tune start the same way;
* the MLflow runs: a train job's run (the evaluation logs into it), a study's parent run with one
  child run per trial (:class:`TuneTracking`; none for a one-point search space, whose job imports
  neither torch nor mlflow), the aggregate step's summary run;
* the run records (``mlflow_run.json``; a failed evaluation's ``metrics.json``), written and read
  only here (:func:`write_record`, :func:`read_record`, :func:`is_failed`), and the failure policy
  (study.record_failures): a failed train or evaluate job writes a failure record and exits 0, or
  writes it and fails;
* the workflow's small glue (``write-json``, ``run-config``).

Stages (``python -m stripes.jobs <stage>`` is the same)::

    stripes job init --tracking-uri URI --artifact-root DIR --experiment NAME --out experiment.json
    stripes job train --config C --train-dir D --experiment E --record R [--record-failures]
    stripes job evaluate --config C --train-dir D --eval-dir V --train-record T --experiment E --record R
    stripes job train-eval --config C [C ...] --train-dir D [D ...] --eval-dir V [V ...] --experiment E
                           --record R [R ...] --eval-record R2 [R2 ...]
    stripes job tune --config C --spec S --pe P --context X --out DIR --experiment E --record R
    stripes job aggregate --spec S --out results --experiment E --record R [--extra-artifact F ...]
    stripes job write-json --json TEXT --out FILE [--json TEXT --out FILE ...]
    stripes job run-config --base TEXT --best best.json --out config.json

Importing this module is cheap (no torch, optuna or mlflow): ``stripes status`` and the
workflow's parse step read records through it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stripes.fileio import read_json, write_json

RECORD = "mlflow_run.json"
OK, FAILED = "ok", "failed"
#: where a study keeps the id of its MLflow parent run between attempts (not a declared output)
PARENT_POINTER = "mlflow_parent.json"


# ----------------------------------------------------------------------------- run records


def write_record(path: str | Path, status: str, **fields: Any) -> dict:
    """Write a run record: ``status`` (ok / failed) plus ``fields`` (run_id, stage, pe, error ...)."""
    if status not in (OK, FAILED):
        raise ValueError(f"record status must be {OK!r} or {FAILED!r}, not {status!r}")
    rec = {**fields, "status": status}
    write_json(rec, path)
    return rec


def read_record(path: str | Path) -> dict | None:
    """The record (or metrics file) at ``path``; None when it is missing, unreadable or not an object."""
    try:
        rec = read_json(path)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def is_failed(rec: dict | None) -> bool:
    """Whether a record (or a metrics.json) says its job failed."""
    return isinstance(rec, dict) and rec.get("status") == FAILED


# ----------------------------------------------------------------------------- job start


@dataclass
class Job:
    """What every job starts with (:func:`start_job`)."""

    stage: str
    tracker: Any = None  # stripes.tracking.Tracker of the study's experiment, or None
    record_failures: bool = False
    device: str | None = None

    def config(self, path: str | Path) -> dict:
        """The run config at ``path``, with this job's device override applied."""
        cfg = read_json(path)
        if self.device:
            for section in ("train", "eval"):
                cfg.setdefault(section, {})["device"] = self.device
        return cfg

    def failed(self, record: str | Path, base: dict, exc: BaseException) -> dict:
        """The failure policy, called in an ``except`` block: write the failure record, then
        re-raise unless failures are recorded (the job then exits 0 and the study goes on)."""
        rec = write_record(record, FAILED, **base, error=repr(exc), traceback=traceback.format_exc())
        if not self.record_failures:
            raise exc
        print(f"{self.stage} failed (recorded in {record}): {exc!r}", file=sys.stderr)
        return rec


def start_job(stage: str, experiment: str | Path | None = None, record_failures: bool = False,
              threads: int | None = None, device: str | None = None, seed: int | None = None) -> Job:
    """Start a job: the same for train, evaluate and tune.

    ``threads`` caps the math libraries' pools before torch is imported (a rule may set them in
    its shell line too; that wins). ``seed`` seeds Python, NumPy and torch once at the start
    (train() reseeds every model from its run config). The tracker fails with TrackingStoreError
    when experiment.json outlived its store: never written as a failure record.
    """
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(int(threads)))
    if seed is not None:
        from stripes.device import seed_everything

        seed_everything(int(seed))
    tracker = None
    if experiment:
        from stripes.tracking import Tracker

        tracker = Tracker.from_experiment_file(experiment)
    return Job(stage, tracker, record_failures, device)


def _run_seed(cfg: dict) -> int:
    return int((cfg.get("run") or {}).get("seed", 0))


def _run_name(run: dict) -> str:
    return f"{run.get('pe')}/{run.get('context')}/seed{run.get('seed')}"


# ----------------------------------------------------------------------------- train / evaluate


def train_job(job: Job, config: str | Path, train_dir: str | Path, record: str | Path) -> dict:
    """Train one run with stripes.train.train, logging live into a new MLflow run."""
    from stripes.runconfig import flatten

    cfg = job.config(config)
    out = Path(train_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = cfg["run"]
    tracker = job.tracker
    tags = tracker.run_tags(cfg, "train")
    run_id = tracker.start_run(_run_name(run), tags=tags)
    # an earlier attempt of this very job that was killed (same config hash): the resumed run replaces it
    tracker.close_stale_runs({k: tags[k] for k in ("pe", "context", "seed", "stage", "config_hash")}, run_id)
    base = {"run_id": run_id, "experiment_id": tracker.experiment_id, "stage": "train",
            "pe": run["pe"], "context": run["context"], "seed": run["seed"]}
    tracker.log_params(run_id, flatten(cfg))
    tracker.log_artifact(run_id, config)
    events: list[dict] = []

    def callback(event: dict) -> None:
        events.append(dict(event))
        tracker.log_metrics(run_id, {k: v for k, v in event.items() if k != "step"},
                            step=int(event.get("step", len(events))))

    try:
        from stripes.train import train

        summary = train(cfg, out, callback=callback) or {}
        for name in ("curves.png", "curves.csv", "train.json"):
            tracker.log_artifact(run_id, out / name)
        summary_metrics = {f"summary.{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
        tracker.log_metrics(run_id, summary_metrics, step=int(events[-1].get("step", 0)) if events else 0)
        tracker.end_run(run_id, "FINISHED")
        return write_record(record, OK, **base)
    except Exception as exc:  # noqa: BLE001 - the failure policy decides
        tracker.set_tag(run_id, "error", repr(exc)[:5000])
        tracker.end_run(run_id, "FAILED")
        return job.failed(record, base, exc)


def evaluate_job(job: Job, config: str | Path, train_dir: str | Path, eval_dir: str | Path,
                 train_record: str | Path, record: str | Path, log_samples: bool = True) -> dict:
    """Evaluate best.pt with stripes.evaluate.evaluate and log the results into the training's run."""
    from stripes.runconfig import flatten

    cfg = job.config(config)
    out = Path(eval_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    trec = read_record(train_record) or {}
    tracker = job.tracker
    run_id = trec.get("run_id")
    base = {"run_id": run_id, "experiment_id": tracker.experiment_id, "stage": "evaluate",
            "pe": trec.get("pe"), "context": trec.get("context"), "seed": trec.get("seed")}
    if trec.get("status") != OK:
        write_record(metrics_path, FAILED, error=f"training failed: {trec.get('error')}")
        return write_record(record, FAILED, **base, error="training failed")
    why = tracker.unusable_run(run_id) if run_id else "is missing from the record"
    if why is None:
        tracker.reopen_run(run_id)
    else:  # the evaluation still gets a run of its own, tagged with the training run it could not reach
        new_id = tracker.start_run(_run_name(trec), tags=tracker.run_tags(
            cfg, "evaluate", extra={"stripes.missing_train_run": run_id}))
        print(f"stripes evaluate: {train_record} points to MLflow run {run_id}, which {why}; logging this "
              f"evaluation to a new run {new_id}", file=sys.stderr, flush=True)
        run_id = base["run_id"] = new_id
    try:
        from stripes.evaluate import evaluate

        metrics = evaluate(cfg, Path(train_dir) / "best.pt", out)
        if not metrics_path.exists():
            write_json(metrics, metrics_path)
        flat = flatten(read_json(metrics_path))
        tracker.log_metrics(run_id, {k: v for k, v in flat.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.log_params(run_id, {k: v for k, v in flat.items() if k.startswith("binarization.") and isinstance(v, str)})
        tracker.log_artifact(run_id, metrics_path)
        if log_samples and (out / "samples").is_dir():
            tracker.log_artifact(run_id, out / "samples", "samples")
        tracker.set_tag(run_id, "evaluated", "true")
        tracker.end_run(run_id, "FINISHED")
        return write_record(record, OK, **base)
    except Exception as exc:  # noqa: BLE001 - the failure policy decides
        tracker.set_tag(run_id, "error", repr(exc)[:5000])
        tracker.end_run(run_id, "FAILED")
        if job.record_failures:
            write_record(metrics_path, FAILED, error=repr(exc))
        else:  # the job fails: no metrics file may look like an output of it
            metrics_path.unlink(missing_ok=True)
        return job.failed(record, base, exc)


def train_eval_job(job: Job, config: str | Path, train_dir: str | Path, eval_dir: str | Path,
                   record: str | Path, eval_record: str | Path, log_samples: bool = True) -> dict:
    """Train and evaluate one run in this process, logging both into one MLflow run."""
    train_job(job, config, train_dir, record)
    return evaluate_job(job, config, train_dir, eval_dir, record, eval_record, log_samples)


def train_eval_runs(job: Job, runs: list[tuple], log_samples: bool = True) -> list[dict]:
    """study.fuse_train_eval: every run of one (pe, context) pair, trained and evaluated in this
    process, one after the other; ``runs`` holds :func:`train_eval_job`'s (config, train_dir,
    eval_dir, record, eval_record) of each (its own MLflow run, records and failure policy). It
    saves the start of a process per run and per stage: importing torch, torch._dynamo, mlflow and
    matplotlib and opening the tracking store took ~5.5 s, more than a smoke run's training and
    evaluation. Each run reseeds from its own config (train()), so a run gets the numbers it gets
    in a job of its own."""
    return [train_eval_job(job, *run, log_samples=log_samples) for run in runs]


# ----------------------------------------------------------------------------- tune


def _say(stage: str, message: str) -> None:
    # the job log is stderr (the rules redirect 2>&1)
    print(f"stripes {stage}: {message}", file=sys.stderr, flush=True)


class TuneTracking:
    """The MLflow runs of one study (stripes.tune.StudyCallbacks): a parent run per study, a child
    run per trial. The parent's id is kept in ``DIR/work/mlflow_parent.json`` so that a resumed
    study logs into the same run; a pointer whose run is gone (``results/mlflow`` deleted and
    recreated, the run or its experiment deleted) starts a new parent run, with one line on stderr.
    """

    def __init__(self, tracker, out_dir: str | Path):
        self.tracker = tracker
        self.pointer = Path(out_dir) / "work" / PARENT_POINTER
        self.parent_run_id: str | None = None
        self._study = ""
        self._trials: dict[int, str] = {}

    def study_started(self, info: dict) -> None:
        tr = self.tracker
        self._study = f"{info['pe']}/{info['context']}"
        run_id = self.reusable_parent_run(info["fingerprint"])
        if run_id is not None:
            tr.reopen_run(run_id)
            # trials of the killed attempt never ended their runs; Optuna retries them anew
            tr.close_stale_runs({"mlflow.parentRunId": run_id}, run_id)
        else:
            spec = info["spec"]
            run_id = tr.start_run(f"tune {self._study}",
                                  tags=tr.run_tags(info["base_cfg"], stage="tune", extra={"role": "study"}))
            tr.log_params(run_id, {"sampler": spec["sampler"], "sampler_seed": info["sampler_seed"],
                                   "n_trials": info["n_trials"], "objective": spec["objective"],
                                   "space": json.dumps(spec["space"], sort_keys=True)})
            write_json({"run_id": run_id, "fingerprint": info["fingerprint"]}, self.pointer)
        self.parent_run_id = run_id

    def reusable_parent_run(self, fingerprint: str) -> str | None:
        """The parent run of an earlier attempt of this study, when it can be logged to again.

        None (a new parent run) when there is no pointer, the study's config changed, or the run is
        gone from the tracking store: after ``rm -r results/mlflow`` the mlflow_init rule creates a
        new store and the pointer names a run it never held (reopening it raised "Run with id=...
        not found" on every rerun). A stale or unreadable pointer gets one line on stderr.
        """
        if not self.pointer.exists():
            return None
        pointer = read_record(self.pointer)
        if pointer is None or not pointer.get("run_id"):
            _say("tune", f"{self._study}: {self.pointer} is unreadable; starting a new MLflow parent run and "
                         f"rewriting it")
            return None
        if pointer.get("fingerprint") != fingerprint:
            return None  # the study started afresh (open_study archived its journal): so does its run
        run_id = str(pointer["run_id"])
        why = self.tracker.unusable_run(run_id)
        if why is not None:
            _say("tune", f"{self._study}: {self.pointer} points to MLflow run {run_id}, which {why}; starting a "
                         f"new parent run and rewriting {self.pointer.name}")
            return None
        return run_id

    def trial_started(self, number: int, cfg: dict, params: dict) -> None:
        tr = self.tracker
        self._trials[number] = tr.start_run(f"{cfg['run']['pe']}/{cfg['run']['context']}/trial{number}",
                                            tags=tr.run_tags(cfg, stage="tune", extra={"trial": number}),
                                            parent_run_id=self.parent_run_id)
        tr.log_params(self._trials[number], {**params, "trial": number})

    def trial_log(self, number: int, metrics: dict | None = None, params: dict | None = None, step: int = 0) -> None:
        run_id = self._trials[number]
        if params:
            self.tracker.log_params(run_id, params)
        if metrics:
            self.tracker.log_metrics(run_id, metrics, step=step)

    def trial_finished(self, number: int, state: str) -> None:
        run_id = self._trials.pop(number)
        self.tracker.set_tag(run_id, "optuna.state", state)
        self.tracker.end_run(run_id, {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))

    def study_finished(self, result: dict, out_dir: Path) -> None:
        tr, run_id = self.tracker, self.parent_run_id
        tr.log_metrics(run_id, {"best_value": result["value"], "n_complete": result["n_complete"]})
        if result.get("skipped"):
            tr.set_tag(run_id, "tune.skipped", result["skipped"])
        tr.log_params(run_id, {f"best.{k}": v for k, v in result["params"].items()})
        if "binarization" in result:
            tr.log_params(run_id, {f"best.binarization.{k}": result["binarization"][k]
                                   for k in ("rule", "strategy", "threshold", "gap")})
        tr.log_artifact(run_id, Path(out_dir) / "trials.csv")
        tr.end_run(run_id, "FINISHED")

    def study_failed(self, out_dir: Path) -> None:
        if self.parent_run_id is not None:
            self.tracker.end_run(self.parent_run_id, "FAILED")


def nothing_to_tune(spec: str | Path | None) -> bool:
    """Whether the tuning spec at ``spec`` is a one-point grid (:func:`stripes.tune.only_point`):
    its study trains no trial, so its job needs neither torch nor an MLflow run."""
    from stripes.tune import full_spec, only_point

    return only_point(full_spec(read_json(spec) if spec else None)) is not None


def tune_job(job: Job, config: str | Path, spec: str | Path | None, pe: str, context: str, out_dir: str | Path,
             record: str | Path | None = None) -> dict:
    """One study (stripes.tune.run_study) with its MLflow runs; on success, its run record.

    A study with no completed trial raises NoTrialCompleted whatever study.record_failures says:
    the runs it was to configure cannot start without its best.json."""
    from stripes.tune import run_study

    cfg = job.config(config)
    callbacks = TuneTracking(job.tracker, out_dir) if job.tracker is not None else None
    result = run_study(cfg, read_json(spec) if spec else None, pe, context, out_dir, callbacks=callbacks)
    if record:
        extra = {"skipped": result["skipped"]} if result.get("skipped") else {}
        write_record(record, OK, run_id=callbacks.parent_run_id if callbacks else None, stage="tune", pe=pe,
                     context=context, experiment_id=getattr(job.tracker, "experiment_id", None), **extra)
    return result


# ----------------------------------------------------------------------------- aggregate


def log_summary(tracker, files: list[str | Path], record: str | Path, tags: dict | None = None) -> dict:
    """The aggregate step's summary run: every table and figure as an artifact."""
    t = {"stage": "aggregate", "git_commit": tracker.commit, **(tags or {})}
    run_id = tracker.start_run("summary", tags={k: str(v) for k, v in t.items()})
    for f in files:
        f = Path(f)
        sub = "figures" if f.suffix in (".png", ".pdf", ".svg") else "tables"
        tracker.log_artifact(run_id, f, sub)
    tracker.end_run(run_id, "FINISHED")
    return write_record(record, OK, run_id=run_id, experiment_id=tracker.experiment_id, stage="aggregate")


def aggregate_job(job: Job, spec: str | Path, out: str | Path, record: str | Path | None = None,
                  extra_artifacts: list[str] = ()) -> dict:
    """The tables and figures (stripes.report.aggregate), then a summary run with all of them."""
    from stripes.report import aggregate

    summary = aggregate(read_json(spec), out)
    if job.tracker is not None:
        files = summary["written"] + [f for f in extra_artifacts if f and Path(f).is_file()]
        rec = log_summary(job.tracker, files, record or Path(out) / "mlflow" / "summary_run.json")
        summary["mlflow_run_id"] = rec["run_id"]
    return summary


# ----------------------------------------------------------------------------- CLI


def _job_options(p, record_failures: bool = True) -> None:
    p.add_argument("--experiment", help="experiment.json of the mlflow_init rule (MLflow runs)")
    p.add_argument("--threads", type=int, help="cap the math libraries' threads")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device and eval.device")
    if record_failures:
        p.add_argument("--record-failures", action="store_true",
                       help="a failed run writes a failure record and exits 0 (study.record_failures)")


def add_study_arguments(ap) -> None:
    """The options of one study, shared by ``stripes tune`` and ``stripes job tune``."""
    ap.add_argument("--config", required=True, help="resolved run config (JSON) of the study's (pe, context)")
    ap.add_argument("--pe", required=True)
    ap.add_argument("--context", required=True)
    ap.add_argument("--out", required=True, help="study directory (study.journal, best.json, trials.csv)")
    ap.add_argument("--spec", help="tuning spec JSON (the tune: section); default: the papers' lr grid")


def parser():
    import argparse

    ap = argparse.ArgumentParser(prog="stripes job", description="The jobs of the workflow (stripes.jobs).")
    sub = ap.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("init", help="create the tracking DB and the experiment (before any parallel job)")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--artifact-root", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True)
    for name in ("train", "evaluate", "train-eval"):
        p = sub.add_parser(name, help={"train": "train one run", "evaluate": "evaluate one trained run",
                                       "train-eval": "train and evaluate runs one after the other in one process"
                                       }[name])
        _job_options(p)
        # train-eval takes one value per run for each of these, in the same order
        many = {"nargs": "+"} if name == "train-eval" else {}
        p.add_argument("--config", required=True, help="resolved run config (JSON)", **many)
        p.add_argument("--train-dir", required=True, **many)
        p.add_argument("--record", required=True, help=f"this job's run record ({RECORD})", **many)
        if name == "evaluate":
            p.add_argument("--train-record", required=True)
        if name != "train":
            p.add_argument("--eval-dir", required=True, **many)
            p.add_argument("--log-samples", action="store_true")
        if name == "train-eval":
            p.add_argument("--eval-record", required=True, **many)
    p = sub.add_parser("tune", help="one Optuna study (pe, context)")
    add_study_arguments(p)
    _job_options(p, record_failures=False)
    p.add_argument("--record", help=f"the study's run record ({RECORD})")
    p = sub.add_parser("aggregate", help="the tables and figures, and an MLflow summary run")
    p.add_argument("--spec", required=True, help="report spec JSON (results/tables/spec.json)")
    p.add_argument("--out", default="results", help="results root (tables/ and figures/ below it)")
    p.add_argument("--experiment", help="experiment.json: log a summary run with every table and figure")
    p.add_argument("--record", help="the summary run's record")
    p.add_argument("--extra-artifact", action="append", default=[], help="more files for the summary run")
    p = sub.add_parser("write-json", help="write JSON text (a rule's params) to files")
    p.add_argument("--json", action="append", required=True)
    p.add_argument("--out", action="append", required=True)
    p = sub.add_parser("run-config", help="merge the tuned parameters into a run config")
    p.add_argument("--base", required=True)
    p.add_argument("--best", required=True)
    p.add_argument("--out", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    stage = args.stage
    if stage == "write-json":
        if len(args.json) != len(args.out):
            ap.error("give one --out per --json")
        for text, out in zip(args.json, args.out):
            write_json(json.loads(text), out)
            print(f"wrote {out}")
        return 0
    if stage == "run-config":
        from stripes.runconfig import write_run_config

        cfg = write_run_config(args.base, args.best, args.out)
        print(f"wrote {args.out} (tuned: {cfg['run']['tuned']['params']})")
        return 0
    if stage == "init":
        from stripes.tracking import init_tracking

        print(json.dumps(init_tracking(args.tracking_uri, args.artifact_root, args.experiment, args.out)))
        return 0

    if stage == "train-eval":
        per_run = [args.config, args.train_dir, args.eval_dir, args.record, args.eval_record]
        if len({len(x) for x in per_run}) != 1:
            ap.error("train-eval: give one --train-dir, --eval-dir, --record and --eval-record per --config, "
                     "in its order")

    from stripes.tracking import TrackingStoreError

    config = getattr(args, "config", None)
    first_config = config[0] if isinstance(config, list) else config
    seed = _run_seed(read_json(first_config)) if first_config else None
    experiment = getattr(args, "experiment", None)
    if stage == "tune" and nothing_to_tune(args.spec):
        # no trial, so no torch, no seeding and no MLflow run: ~0.5 s instead of ~5 s a job
        _say("tune", f"{args.pe}/{args.context}: a one-point search space, nothing to tune; best.json is that "
                     "point, and no MLflow run is made (the runs log it as run.tuned.skipped)")
        experiment = seed = None
    try:
        job = start_job(stage, experiment, getattr(args, "record_failures", False),
                        getattr(args, "threads", None), getattr(args, "device", None), seed)
        if stage == "train":
            rec = train_job(job, args.config, args.train_dir, args.record)
        elif stage == "evaluate":
            rec = evaluate_job(job, args.config, args.train_dir, args.eval_dir, args.train_record, args.record,
                               args.log_samples)
        elif stage == "train-eval":
            recs = train_eval_runs(job, list(zip(*per_run)), args.log_samples)
            rec = {"runs": [{k: r.get(k) for k in ("pe", "context", "seed", "status", "run_id")} for r in recs]}
        elif stage == "tune":
            from stripes.tune import NoTrialCompleted

            try:
                result = tune_job(job, args.config, args.spec, args.pe, args.context, args.out, args.record)
            except NoTrialCompleted as err:  # the trials' tracebacks are above in the log; this is the summary
                _say("tune", f"error: {err}")
                return 1
            rec = {k: result[k] for k in ("pe", "context", "params", "value", "trial", "n_trials")}
        else:
            rec = aggregate_job(job, args.spec, args.out, args.record, args.extra_artifact)
    except TrackingStoreError as err:  # not a failure of the run: never written as a failure record
        _say(stage, f"error: {err}")
        return 2
    print(json.dumps({k: v for k, v in rec.items() if k != "traceback"}, indent=1 if stage == "aggregate" else None))
    return 0


# ----------------------------------------------------------------------------- workflow helpers


def as_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


if __name__ == "__main__":
    from stripes.cli import exit_fast

    exit_fast(main())
