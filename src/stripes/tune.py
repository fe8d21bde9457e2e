"""Optuna tuning: one study per (PE, context), trials serial, sampler seeded from a stable hash.

``stripes tune --config run.json --pe P --context C --out DIR [--spec tune.json] [--experiment E]``

* Storage: ``JournalStorage(JournalFileBackend(...))`` (design.md §3: no schema race, readable by
  optuna-dashboard). The study is written to a working journal ``DIR/work/study.journal`` that
  survives a failed or killed job (Snakemake deletes the declared outputs of a failed job), so a
  rerun resumes it: finished trials (complete or pruned) are counted and only the missing ones run;
  trials left RUNNING by a killed job are marked FAIL and redone. If the run config or the tuning
  spec changed, the old working journal is moved aside and the study starts afresh. On success the
  journal is copied to the declared output ``DIR/study.journal``. For many machines
  ``tune.storage`` may select Optuna's RDBStorage (PostgreSQL; :mod:`stripes.storage`): the study
  is then named ``pe.context.<fingerprint>`` in the database (a changed config starts a new study)
  and exported to ``DIR/study.journal`` at the end.
* Sampler: ``GridSampler`` (default; reproduces the papers' lr grid), ``TPESampler`` or
  ``RandomSampler``, seeded with :func:`stripes.runconfig.stable_seed` of (pe, context).
* Each trial trains through ``stripes.train.train(cfg, out_dir, callback)``; the callback reports
  the validation loss to the trial and raises ``optuna.TrialPruned`` when the pruner says so.
* Objective (``tune.objective``), as in the papers (paper-spec A16: the learning rate is chosen
  together with the binarisation):

  - ``val_selected`` (default): the trial's best checkpoint predicts the validation windows, the
    binarisation grid is scored there and the ``eval.selection`` rule picks a candidate; the
    objective is that candidate's validation CS (maximised), or its SSMD (minimised) for the
    ``min_ssmd`` rule. The trial keeps the chosen strategy, threshold and gap.
  - ``best_val_loss`` / ``last_val_loss``: the validation BCE (minimised), without binarisation.

  With a maximised objective the pruner is given the negated validation loss, so that the
  MedianPruner still prunes the trials whose loss is worst.
* Outputs: ``best.json`` (best params as dotted run-config paths, value, trial, the objective's
  direction and, for ``val_selected``, the chosen ``binarization``) and ``trials.csv``.
* A failed study never loses the last good result. Snakemake deletes a job's declared outputs
  twice: before the job runs (``Job.prepare`` -> ``remove_existing_output``) and after it fails
  ("Removing output files of failed job ... since they might be corrupted", unless
  ``--keep-incomplete``), so the previous ``best.json`` is gone by the time this code could read
  it. Every successful study therefore also writes its result to ``DIR/work/best.json``, which is
  not an output and is only overwritten by the next success. Restoring it into ``DIR/best.json``
  instead (by hand, or with Snakemake's ``update()`` flag, which restores an output when its job
  fails) would let a result tuned under the OLD config feed the runs of the new one as if current;
  the error of a failed study names the kept file and its fingerprint instead.
* When no trial completes the error counts the complete, pruned and failed trials and quotes the
  first failed trial's error (recorded as its ``error`` user attribute; the traceback is in the
  job log), so a broken config (e.g. ``model.n_heads`` not dividing ``d_model``) reads as failed
  trials, not as pruning.
* MLflow (optional, ``--experiment``): one parent run per study, one child run per trial. The parent's
  id is kept in ``DIR/work/mlflow_parent.json`` so that a resumed study logs into the same run; a
  pointer whose run is gone (``results/mlflow`` deleted and recreated, the run or its experiment
  deleted) starts a new parent run, with one line on stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna

from stripes.fileio import read_json, write_json
from stripes.runconfig import config_hash, set_dotted, stable_seed
from stripes.storage import (export_study_journal, journal_storage, open_optuna_storage, optuna_storage_settings,
                             study_name)

DEFAULT_SPEC: dict[str, Any] = {
    "sampler": "grid",
    "n_trials": None,
    "seed": 0,
    "objective": "val_selected",
    "space": {"train.lr": {"type": "categorical", "choices": [1e-4, 5e-4, 1e-3]}},
    "pruner": {"type": "none"},
    "overrides": {},
}
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
#: copy of the last successful best.json in DIR/work/ (see the module docstring)
LAST_GOOD = "best.json"
OBJECTIVES = ("val_selected", "best_val_loss", "last_val_loss")


class NoTrialCompleted(RuntimeError):
    """Every trial of the study failed or was pruned (the message says which, and why)."""


def selected_score(rule: str) -> tuple[str, str]:
    """(key of the ``binarization`` block, direction) that ``val_selected`` optimises under a
    selection rule: the validation SSMD for ``min_ssmd``, else the validation CS."""
    return ("val_ssmd50", "minimize") if rule == "min_ssmd" else ("val_cs", "maximize")


def direction(spec: dict, base_cfg: dict) -> str:
    """``maximize`` for the validation CS of the selected binarisation, else ``minimize``."""
    if spec["objective"] == "val_selected":
        return selected_score((base_cfg.get("eval") or {}).get("selection", "fixed"))[1]
    if spec["objective"] in OBJECTIVES:
        return "minimize"
    raise ValueError(f"tune.objective: unknown objective {spec['objective']!r}; known: {', '.join(OBJECTIVES)}")


def full_spec(spec: dict | None) -> dict:
    out = copy.deepcopy(DEFAULT_SPEC)
    for k, v in (spec or {}).items():
        if v is not None or k == "n_trials":
            out[k] = copy.deepcopy(v)
    return out


def sampler_seed(pe: str, context: str) -> int:
    return stable_seed("tune", pe, context)


def grid_of(space: dict) -> dict[str, list]:
    return {k: list(v["choices"]) for k, v in space.items()}


def n_trials_of(spec: dict) -> int:
    if spec.get("n_trials"):
        return int(spec["n_trials"])
    if spec["sampler"] == "grid":
        return math.prod(len(v["choices"]) for v in spec["space"].values())
    return 20


def make_sampler(spec: dict, seed: int) -> optuna.samplers.BaseSampler:
    kind = spec["sampler"]
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_of(spec["space"]), seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r}")


def make_pruner(spec: dict) -> optuna.pruners.BasePruner:
    p = spec.get("pruner") or {}
    if p.get("type", "none") == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(p.get("n_startup_trials", 5)),
            n_warmup_steps=int(p.get("n_warmup_steps", 0)),
            interval_steps=int(p.get("interval_steps", 1)),
        )
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: dict) -> dict[str, Any]:
    params = {}
    for name, s in space.items():
        if s["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, s["choices"])
        elif s["type"] == "float":
            params[name] = trial.suggest_float(name, s["low"], s["high"], log=bool(s.get("log", False)), step=s.get("step"))
        elif s["type"] == "int":
            params[name] = trial.suggest_int(name, int(s["low"]), int(s["high"]), step=int(s.get("step", 1)), log=bool(s.get("log", False)))
        else:
            raise ValueError(f"tune.space.{name}: unknown type {s['type']!r}")
    return params


def trial_config(base_cfg: dict, spec: dict, params: dict, trial_number: int) -> dict:
    """The run config of one trial: base + tune overrides + suggested params, stage 'tune'."""
    cfg = copy.deepcopy(base_cfg)
    for key, value in (spec.get("overrides") or {}).items():
        set_dotted(cfg, key, value)
    for key, value in params.items():
        set_dotted(cfg, key, value)
    cfg.setdefault("run", {})
    cfg["run"].update({"stage": "tune", "seed": int(spec.get("seed", 0)), "trial": trial_number})
    return cfg


# ----------------------------------------------------------------------------- the objective


def train_objective(base_cfg: dict, spec: dict, out_dir: Path, tracker=None, parent_run_id: str | None = None,
                    keep_checkpoints: bool = False) -> Callable[[optuna.Trial], float]:
    """Objective that trains one model per trial with stripes.train.train."""

    def objective(trial: optuna.Trial) -> float:
        from stripes.train import train  # imported lazily: torch only in jobs that train

        params = suggest(trial, spec["space"])
        cfg = trial_config(base_cfg, spec, params, trial.number)
        trial_dir = out_dir / "work" / "trials" / f"trial{trial.number:03d}"
        if trial_dir.exists():
            shutil.rmtree(trial_dir)
        run_id = None
        if tracker is not None:
            run_id = tracker.start_run(
                f"{cfg['run']['pe']}/{cfg['run']['context']}/trial{trial.number}",
                tags=tracker.run_tags(cfg, stage="tune", extra={"trial": trial.number}),
                parent_run_id=parent_run_id,
            )
            tracker.log_params(run_id, {**params, "trial": trial.number})
        losses: list[float] = []
        sign = -1.0 if direction(spec, base_cfg) == "maximize" else 1.0

        def callback(event: dict) -> None:
            val = float(event["val_loss"])
            losses.append(val)
            step = len(losses) - 1
            if tracker is not None:
                tracker.log_metrics(run_id, {k: event[k] for k in ("val_loss", "train_loss", "lr") if k in event},
                                    step=int(event.get("step", step)))
            trial.report(sign * val, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at validation {step} (val_loss={val:.4f})")

        status = "FAILED"
        try:
            summary = train(cfg, trial_dir, callback=callback) or {}
            if spec["objective"] == "val_selected":
                from stripes.evaluate import selected_validation_score

                binarization = selected_validation_score(cfg, trial_dir / "best.pt")
                binarization.pop("per_metric", None)
                trial.set_user_attr("binarization", binarization)
                value = binarization[selected_score(binarization["rule"])[0]]
                if tracker is not None:
                    tracker.log_params(run_id, {f"binarization.{k}": binarization[k]
                                                for k in ("rule", "strategy", "threshold", "gap")})
                    tracker.log_metrics(run_id, {f"binarization.{k}": v for k, v in binarization.items()
                                                 if k.startswith("val_") and isinstance(v, float)})
            else:
                value = objective_value(spec, losses, summary)
            if not math.isfinite(float(value)):
                raise ValueError(f"trial {trial.number}: objective {spec['objective']} is {value}")
            status = "FINISHED"
            if tracker is not None:
                tracker.log_metrics(run_id, {"objective": value})
            return float(value)
        except optuna.TrialPruned:
            status = "KILLED"
            raise
        finally:
            if tracker is not None:
                tracker.set_tag(run_id, "optuna.state", {"FINISHED": "COMPLETE", "KILLED": "PRUNED"}.get(status, "FAIL"))
                tracker.end_run(run_id, status)
            if not keep_checkpoints:
                for ckpt in trial_dir.glob("*.pt"):
                    ckpt.unlink()

    return objective


def objective_value(spec: dict, losses: list[float], summary: dict) -> float:
    if spec["objective"] == "last_val_loss":
        if losses:
            return float(losses[-1])
        return float(summary["last_val_loss"])
    if losses:
        return float(min(losses))
    return float(summary["best_val_loss"])


# ----------------------------------------------------------------------------- the study


def open_study(work_journal: Path, pe: str, context: str, spec: dict, fingerprint: str,
               storage_settings: dict | None = None, study_direction: str = "minimize") -> optuna.Study:
    """Open (or resume) the study. ``storage_settings``: ``tune.storage`` (stripes.storage); the
    default is the journal file ``work_journal``; an RDB names the study with its fingerprint."""
    settings = optuna_storage_settings(storage_settings)
    work_journal.parent.mkdir(parents=True, exist_ok=True)
    name = study_name(pe, context, settings, fingerprint)
    if settings["backend"] == "journal" and work_journal.exists():
        storage = journal_storage(work_journal, settings["journal_lock"])
        try:
            old = optuna.load_study(study_name=name, storage=storage)
            stale = old.user_attrs.get("fingerprint") != fingerprint
        except KeyError:
            stale = True
        if stale:  # the config or the spec changed: start afresh, keep the old journal aside
            work_journal.replace(work_journal.with_name(f"stale-{int(time.time())}.journal"))
    storage = open_optuna_storage(settings, work_journal)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec, sampler_seed(pe, context)),
        pruner=make_pruner(spec),
        direction=study_direction,
        load_if_exists=True,
    )
    study.set_user_attr("fingerprint", fingerprint)
    study.set_user_attr("pe", pe)
    study.set_user_attr("context", context)
    # trials left RUNNING by a killed job can never finish: mark them failed, they are redone
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
    if spec["sampler"] == "grid":
        requeue_failed_grid_points(study, spec)
    return study


def requeue_failed_grid_points(study: optuna.Study, spec: dict) -> list[int]:
    """GridSampler counts a FAILed trial's grid point as visited; enqueue those points again.

    The enqueued trial carries the grid point's ``grid_id`` (and search space) so that the
    sampler's bookkeeping sees it, and its parameters are fixed to that grid point.

    ``grid_id`` indexes the sampler's grid AFTER its seeded shuffle (GridSampler shuffles the grid
    when it has a seed), not the plain product of the choices: the point is taken from the failed
    trial's own parameters, else from the sampler's (shuffled) grid. (Found by
    tests/test_faults.py: with the plain product a SIGKILLed trial's lr was never retried.)
    """
    grid = grid_of(spec["space"])
    names = sorted(grid)  # GridSampler orders parameters by name
    sampler_grid = getattr(study.sampler, "_all_grids", None)
    trials = study.get_trials(deepcopy=False)
    done = {t.system_attrs.get("grid_id") for t in trials if t.state in FINISHED}
    queued = {t.system_attrs.get("grid_id") for t in trials if t.state == optuna.trial.TrialState.WAITING}
    failed_trials = {}
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and t.system_attrs.get("grid_id") is not None:
            failed_trials.setdefault(t.system_attrs["grid_id"], t)
    failed = sorted(set(failed_trials) - done - queued)
    for gid in failed:
        params = dict(failed_trials[gid].params)
        if set(params) != set(names):  # killed before it suggested: the sampler's own grid
            params = dict(zip(names, sampler_grid[gid]))
        study.enqueue_trial(params)
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))[-1]
        search_space = {n: list(grid[n]) for n in names}
        study._storage.set_trial_system_attr(waiting._trial_id, "search_space", search_space)
        study._storage.set_trial_system_attr(waiting._trial_id, "grid_id", gid)
    return failed


def run_study(
    base_cfg: dict,
    spec: dict | None,
    pe: str,
    context: str,
    out_dir: str | Path,
    objective: Callable[[optuna.Trial], float] | None = None,
    tracker=None,
) -> dict:
    """Run (or resume) the study of (pe, context); write study.journal, best.json, trials.csv."""
    spec = full_spec(spec)
    # where the study is stored does not change its trials: not part of the fingerprint
    storage_settings = optuna_storage_settings(spec.pop("storage", None))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = config_hash({"cfg": base_cfg, "spec": spec})
    work_journal = out / "work" / "study.journal"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_direction = direction(spec, base_cfg)
    study = open_study(work_journal, pe, context, spec, fingerprint, storage_settings, study_direction)

    parent_run_id = None
    if tracker is not None:
        parent_file = out / "work" / "mlflow_parent.json"
        parent_run_id = reusable_parent_run(tracker, parent_file, fingerprint, f"{pe}/{context}")
        if parent_run_id is not None:
            tracker.reopen_run(parent_run_id)
            # trials of the killed attempt never ended their runs; Optuna retries them anew
            tracker.close_stale_runs({"mlflow.parentRunId": parent_run_id}, parent_run_id)
        else:
            parent_run_id = tracker.start_run(f"tune {pe}/{context}",
                                              tags=tracker.run_tags(base_cfg, stage="tune", extra={"role": "study"}))
            tracker.log_params(parent_run_id, {"sampler": spec["sampler"], "sampler_seed": sampler_seed(pe, context),
                                               "n_trials": n_trials_of(spec), "objective": spec["objective"],
                                               "space": json.dumps(spec["space"], sort_keys=True)})
            write_json({"run_id": parent_run_id, "fingerprint": fingerprint}, parent_file)
    if objective is None:
        objective = train_objective(base_cfg, spec, out, tracker, parent_run_id)
    objective = _recording_errors(objective)

    total = n_trials_of(spec)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    missing = max(0, total - done)
    status = "FAILED"
    try:
        if missing:
            # serial trials (n_jobs=1): parallel workers on one study are not reproducible (design.md §3)
            # a trial that raises is recorded FAIL (traceback in the job log) and the study goes
            # on; a rerun of the job retries failed grid points. No completed trial -> error below.
            study.optimize(objective, n_trials=missing, n_jobs=1, gc_after_trial=True, catch=(Exception,))
        status = "FINISHED"
    finally:
        if tracker is not None and status != "FINISHED":
            tracker.end_run(parent_run_id, "FAILED")

    finished = study.get_trials(deepcopy=False, states=FINISHED)
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        if tracker is not None:
            tracker.end_run(parent_run_id, "FAILED")
        raise NoTrialCompleted(no_trial_completed_message(study, pe, context, out, fingerprint))
    sign = -1.0 if study_direction == "maximize" else 1.0
    best = min(complete, key=lambda t: (sign * t.value, t.number))
    result = {
        "pe": pe,
        "context": context,
        "params": dict(best.params),
        "value": best.value,
        "trial": best.number,
        "objective": spec["objective"],
        "direction": study_direction,
        "sampler": spec["sampler"],
        "sampler_seed": sampler_seed(pe, context),
        "n_trials": len(finished),
        "n_complete": len(complete),
        "resumed_with": done,
        "fingerprint": fingerprint,
    }
    if "binarization" in best.user_attrs:
        result["binarization"] = best.user_attrs["binarization"]
    write_trials_csv(study, out / "trials.csv")
    if storage_settings["backend"] == "journal":
        shutil.copyfile(work_journal, out / "study.journal")
    else:  # RDB: the declared output is still a self-contained journal of the study
        export_study_journal(study._storage, study.study_name, out / "study.journal", f"{pe}.{context}")
    if tracker is not None:
        tracker.log_metrics(parent_run_id, {"best_value": best.value, "n_complete": len(complete)})
        tracker.log_params(parent_run_id, {f"best.{k}": v for k, v in best.params.items()})
        if "binarization" in result:
            tracker.log_params(parent_run_id, {f"best.binarization.{k}": result["binarization"][k]
                                               for k in ("rule", "strategy", "threshold", "gap")})
        tracker.log_artifact(parent_run_id, out / "trials.csv")
        tracker.end_run(parent_run_id, "FINISHED")
        result["mlflow_run_id"] = parent_run_id
    write_json(result, out / "work" / LAST_GOOD)  # not an output: Snakemake never deletes it
    write_json(result, out / "best.json")
    return result


def _say(message: str) -> None:
    # the job log is stderr (the tune rule redirects 2>&1)
    print(f"stripes tune: {message}", file=sys.stderr, flush=True)


def reusable_parent_run(tracker, parent_file: Path, fingerprint: str, study: str) -> str | None:
    """The MLflow parent run of an earlier attempt of this study, when it can be logged to again.

    None (a new parent run) when there is no pointer, the study's config changed, or the run is
    gone from the tracking store: after ``rm -r results/mlflow`` the mlflow_init rule creates a new
    store and the pointer names a run it never held (reopening it raised "Run with id=... not
    found" on every rerun). A stale or unreadable pointer gets one line on stderr.
    """
    if not parent_file.exists():
        return None
    try:
        pointer = read_json(parent_file)
        run_id = str(pointer["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        _say(f"{study}: {parent_file} is unreadable ({type(err).__name__}: {err}); starting a new MLflow "
             f"parent run and rewriting it")
        return None
    if pointer.get("fingerprint") != fingerprint:
        return None  # the study started afresh (open_study archived its journal): so does its run
    why = tracker.unusable_run(run_id)
    if why is not None:
        _say(f"{study}: {parent_file} points to MLflow run {run_id}, which {why}; starting a new parent "
             f"run and rewriting {parent_file.name}")
        return None
    return run_id


def _recording_errors(objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """The objective, keeping each failed trial's error in the trial (user attribute ``error``).

    Optuna records a caught exception only in its log; the study would otherwise not know why a
    trial failed, and "no trial completed" could not say so."""

    def wrapped(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            lines = str(err).strip().splitlines()
            trial.set_user_attr("error", f"{type(err).__name__}: {lines[0] if lines else ''}"[:1000])
            raise

    return wrapped


def no_trial_completed_message(study: optuna.Study, pe: str, context: str, out: Path, fingerprint: str) -> str:
    """Why the study has no result: trial counts by state, the first failed trial's error, and
    where the last good result is kept."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    count = {s: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    S = optuna.trial.TrialState
    parts = [f"tune {pe}/{context}: no trial completed ({count[S.COMPLETE]} complete, {count[S.PRUNED]} pruned, "
             f"{count[S.FAIL]} failed)."]
    failed = [t for t in trials if t.state == S.FAIL]
    first = next((t for t in failed if "error" in t.user_attrs), failed[0] if failed else None)
    if first is not None:
        error = first.user_attrs.get("error", "no error recorded (its job was killed, or the objective "
                                               "returned no finite value)")
        parts.append(f"First failed trial: {first.number} {dict(first.params)}: {error}. Fix the cause (the "
                     f"traceback is in the job log) and rerun.")
    else:
        parts.append("The pruner stopped every trial: loosen tune.pruner (n_warmup_steps, n_startup_trials).")
    kept = out / "work" / LAST_GOOD
    if kept.exists():
        try:
            old = read_json(kept)
            which = "this config" if old.get("fingerprint") == fingerprint else "an earlier config"
            parts.append(f"The last good result, tuned under {which}, is kept in {kept} (params "
                         f"{old.get('params')}, value {old.get('value')}, fingerprint {old.get('fingerprint')}); "
                         f"Snakemake removes {out / 'best.json'} with the outputs of a failed job.")
        except (OSError, ValueError):
            parts.append(f"The last good result is kept in {kept}.")
    return " ".join(parts)


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    import csv

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = sorted({k for t in trials for k in t.params})
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        bin_keys = ("strategy", "threshold", "gap")
        w.writerow(["number", "state", "value", *keys, *(f"binarization.{k}" for k in bin_keys), "n_reports",
                    "duration_s"])
        for t in trials:
            dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
            b = t.user_attrs.get("binarization") or {}
            w.writerow([t.number, t.state.name, "" if t.value is None else repr(t.value),
                        *[t.params.get(k, "") for k in keys], *[b.get(k, "") for k in bin_keys],
                        len(t.intermediate_values), dur])


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stripes tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="resolved run config (JSON) of the study's (pe, context)")
    ap.add_argument("--pe", required=True)
    ap.add_argument("--context", required=True)
    ap.add_argument("--out", required=True, help="study directory (study.journal, best.json, trials.csv)")
    ap.add_argument("--spec", help="tuning spec JSON (the tune: section); default: the papers' lr grid")
    ap.add_argument("--experiment", help="experiment.json written by the mlflow_init rule (enables MLflow)")
    ap.add_argument("--run-record", help="write the parent MLflow run id here (JSON)")
    args = ap.parse_args(argv)

    cfg = read_json(args.config)
    spec = read_json(args.spec) if args.spec else None
    tracker = None
    if args.experiment:
        from stripes.tracking import Tracker, TrackingStoreError

        try:
            tracker = Tracker.from_experiment_file(args.experiment)
        except TrackingStoreError as err:
            print(f"stripes tune: error: {err}", file=sys.stderr)
            return 2
    try:
        result = run_study(cfg, spec, args.pe, args.context, args.out, tracker=tracker)
    except NoTrialCompleted as err:  # the trials' tracebacks are above in the log; this is the summary
        print(f"stripes tune: error: {err}", file=sys.stderr)
        return 1
    if args.run_record:
        write_json({"run_id": result.get("mlflow_run_id"), "stage": "tune", "pe": args.pe, "context": args.context,
                    "experiment_id": getattr(tracker, "experiment_id", None), "status": "FINISHED"}, args.run_record)
    print(json.dumps({k: result[k] for k in ("pe", "context", "params", "value", "trial", "n_trials")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
