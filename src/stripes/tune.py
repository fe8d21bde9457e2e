"""Optuna tuning: one study per (PE, context), trials serial, sampler seeded from a stable hash.

``stripes tune --config run.json --pe P --context C --out DIR [--spec tune.json]``

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
* No tracking here: the study reports through :class:`StudyCallbacks`. The workflow's job
  (``stripes job tune``, :mod:`stripes.jobs`) turns them into one MLflow parent run per study and
  one child run per trial, and writes the run record.
* Only Optuna's public API is used (``Study.tell`` for the trials of a killed job,
  ``enqueue_trial`` plus the sampler's ``sample_independent`` for failed grid points); the one
  private-looking name read is the ``fixed_params`` system attribute that ``enqueue_trial``
  documents by behaviour only (no public accessor exists for a WAITING trial's parameters).
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
from stripes.metrics import higher_is_better
from stripes.runconfig import config_hash, set_dotted, stable_seed
from stripes.storage import (export_study_journal, journal_storage, open_optuna_storage, optuna_storage_settings,
                             study_name)

# the tune section's defaults (sampler, space, pruner, ...) live in the config schema:
# stripes.schema.defaults("tune")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
#: copy of the last successful best.json in DIR/work/ (see the module docstring)
LAST_GOOD = "best.json"
OBJECTIVES = ("val_selected", "best_val_loss", "last_val_loss")


class NoTrialCompleted(RuntimeError):
    """Every trial of the study failed or was pruned (the message says which, and why)."""


def selected_score(rule: str) -> tuple[str, str]:
    """(key of the ``binarization`` block, direction) that ``val_selected`` optimises under a
    selection rule: the validation SSMD for ``min_ssmd``, else the validation CS."""
    key = "val_ssmd50" if rule == "min_ssmd" else "val_cs"
    return key, "maximize" if higher_is_better(key) else "minimize"


def direction(spec: dict, base_cfg: dict) -> str:
    """``maximize`` for the validation CS of the selected binarisation, else ``minimize``."""
    if spec["objective"] == "val_selected":
        return selected_score((base_cfg.get("eval") or {}).get("selection", "fixed"))[1]
    if spec["objective"] in OBJECTIVES:
        return "minimize"
    raise ValueError(f"tune.objective: unknown objective {spec['objective']!r}; known: {', '.join(OBJECTIVES)}")


def full_spec(spec: dict | None) -> dict:
    """The ``tune`` section merged over the schema's defaults (``pruner`` key by key; a given
    ``space`` replaces the default grid). Raises ``stripes.schema.ConfigError`` before any trial
    when a key of ``space`` or ``overrides`` names no key of the run config: a trial would
    otherwise fail on it, every trial alike."""
    from stripes import schema
    from stripes.study import tune_key_problems

    given = {k: v for k, v in (spec or {}).items() if v is not None or k == "n_trials"}
    out = schema.with_defaults("tune", given, where="tune keys")
    problems = tune_key_problems(out)
    if problems:
        raise schema.ConfigError("invalid tuning spec:\n" + "\n".join(f"  {p}" for p in problems))
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
    from stripes import schema

    p = schema.with_defaults("tune.pruner", spec.get("pruner"), where="tune.pruner keys")
    if p["type"] == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(p["n_startup_trials"]),
            n_warmup_steps=int(p["n_warmup_steps"]),
            interval_steps=int(p["interval_steps"]),
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


# ----------------------------------------------------------------------------- callbacks


class StudyCallbacks:
    """What a study reports while it runs; every method does nothing here.

    The study itself stays free of tracking: the job layer (stripes.jobs) subclasses this to keep
    the MLflow parent and child runs, so run_study can run without MLflow (tests, a notebook).
    Trial methods are called by :func:`train_objective` only (a custom objective reports nothing).
    """

    def study_started(self, info: dict) -> None:
        """``info``: pe, context, fingerprint, base_cfg, spec, sampler_seed, n_trials."""

    def trial_started(self, number: int, cfg: dict, params: dict) -> None:
        pass

    def trial_log(self, number: int, metrics: dict | None = None, params: dict | None = None,
                  step: int = 0) -> None:
        pass

    def trial_finished(self, number: int, state: str) -> None:
        """``state``: COMPLETE, PRUNED or FAIL (the Optuna state the trial will end in)."""

    def study_finished(self, result: dict, out_dir: Path) -> None:
        pass

    def study_failed(self, out_dir: Path) -> None:
        pass


# ----------------------------------------------------------------------------- the objective


def train_objective(base_cfg: dict, spec: dict, out_dir: Path, callbacks: StudyCallbacks | None = None,
                    keep_checkpoints: bool = False) -> Callable[[optuna.Trial], float]:
    """Objective that trains one model per trial with stripes.train.train."""
    cb = callbacks or StudyCallbacks()

    def objective(trial: optuna.Trial) -> float:
        from stripes.train import train  # imported lazily: torch only in jobs that train

        params = suggest(trial, spec["space"])
        cfg = trial_config(base_cfg, spec, params, trial.number)
        trial_dir = out_dir / "work" / "trials" / f"trial{trial.number:03d}"
        if trial_dir.exists():
            shutil.rmtree(trial_dir)
        cb.trial_started(trial.number, cfg, params)
        losses: list[float] = []
        sign = -1.0 if direction(spec, base_cfg) == "maximize" else 1.0

        def callback(event: dict) -> None:
            val = float(event["val_loss"])
            losses.append(val)
            step = len(losses) - 1
            cb.trial_log(trial.number, {k: event[k] for k in ("val_loss", "train_loss", "lr") if k in event},
                         step=int(event.get("step", step)))
            trial.report(sign * val, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at validation {step} (val_loss={val:.4f})")

        state = "FAIL"
        try:
            summary = train(cfg, trial_dir, callback=callback) or {}
            if spec["objective"] == "val_selected":
                from stripes.evaluate import selected_validation_score

                binarization = selected_validation_score(cfg, trial_dir / "best.pt")
                binarization.pop("per_metric", None)
                trial.set_user_attr("binarization", binarization)
                value = binarization[selected_score(binarization["rule"])[0]]
                cb.trial_log(trial.number,
                             metrics={f"binarization.{k}": v for k, v in binarization.items()
                                      if k.startswith("val_") and isinstance(v, float)},
                             params={f"binarization.{k}": binarization[k] for k in ("rule", "strategy", "threshold", "gap")})
            else:
                value = objective_value(spec, losses, summary)
            if not math.isfinite(float(value)):
                raise ValueError(f"trial {trial.number}: objective {spec['objective']} is {value}")
            state = "COMPLETE"
            cb.trial_log(trial.number, {"objective": value})
            return float(value)
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            cb.trial_finished(trial.number, state)
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


def _open_storage(work_journal: Path, pe: str, context: str, fingerprint: str, settings: dict):
    """The study's storage; a working journal of another config is moved aside first."""
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
    return open_optuna_storage(settings, work_journal), name


def open_study(work_journal: Path, pe: str, context: str, spec: dict, fingerprint: str,
               storage_settings: dict | None = None, study_direction: str = "minimize") -> optuna.Study:
    """Open (or resume) the study. ``storage_settings``: ``tune.storage`` (stripes.storage); the
    default is the journal file ``work_journal``; an RDB names the study with its fingerprint."""
    return _open_study(work_journal, pe, context, spec, fingerprint, storage_settings, study_direction)[0]


def _open_study(work_journal: Path, pe: str, context: str, spec: dict, fingerprint: str,
                storage_settings: dict | None, study_direction: str):
    """(study, storage): the caller keeps the storage it opened (Study has no public accessor for it)."""
    settings = optuna_storage_settings(storage_settings)
    storage, name = _open_storage(work_journal, pe, context, fingerprint, settings)
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
    fail_abandoned_trials(storage, name)
    if spec["sampler"] == "grid":
        requeue_failed_grid_points(study, spec)
    return study, storage


def fail_abandoned_trials(storage, name: str) -> list[int]:
    """Mark the trials a killed job left RUNNING as FAIL (they can never finish; they are redone).

    ``Study.tell`` does it through the public API. The study is loaded with a RandomSampler for it:
    ``tell`` calls the sampler's ``after_trial``, and GridSampler's calls ``Study.stop()`` when that
    trial holds the last unvisited grid point, which raises outside ``optimize``."""
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    numbers = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in numbers:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    return numbers


def _point(params: dict, names: list[str]) -> tuple:
    return tuple(params.get(n) for n in names)


def requeue_failed_grid_points(study: optuna.Study, spec: dict) -> list[tuple]:
    """GridSampler counts a FAILed trial's grid point as visited; enqueue those points again.

    A point is identified by its parameter values (our own grid, ``spec["space"]``), so a point
    redone by an enqueued trial counts as done. A trial killed before it suggested has no
    parameters, only the ``grid_id`` the sampler gave it; ``grid_id`` indexes the sampler's grid
    AFTER its seeded shuffle, so its values are asked from the sampler through the public
    ``sample_independent`` (found by tests/test_faults.py: with the plain product of the choices a
    SIGKILLed trial's lr was never retried). Returns the points enqueued.
    """
    from optuna.distributions import CategoricalDistribution

    grid = grid_of(spec["space"])
    names = sorted(grid)  # GridSampler orders parameters by name
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)

    def point_of(t) -> tuple | None:
        if set(t.params) == set(names):
            return _point(t.params, names)
        if t.system_attrs.get("grid_id") is None:
            return None
        return tuple(study.sampler.sample_independent(study, t, n, CategoricalDistribution(grid[n])) for n in names)

    done = {_point(t.params, names) for t in trials if t.state in FINISHED}
    # an enqueued trial keeps its parameters in the system attribute Optuna's enqueue_trial writes
    queued = {_point(t.system_attrs.get("fixed_params") or {}, names) for t in trials if t.state == state.WAITING}
    failed: list[tuple] = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != state.FAIL:
            continue
        point = point_of(t)
        if point is None or point in done or point in queued or point in failed:
            continue
        failed.append(point)
        study.enqueue_trial(dict(zip(names, point)))
    return failed


def run_study(
    base_cfg: dict,
    spec: dict | None,
    pe: str,
    context: str,
    out_dir: str | Path,
    objective: Callable[[optuna.Trial], float] | None = None,
    callbacks: StudyCallbacks | None = None,
) -> dict:
    """Run (or resume) the study of (pe, context); write study.journal, best.json, trials.csv."""
    cb = callbacks or StudyCallbacks()
    spec = full_spec(spec)
    # where the study is stored does not change its trials: not part of the fingerprint
    storage_settings = optuna_storage_settings(spec.pop("storage", None))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = config_hash({"cfg": base_cfg, "spec": spec})
    work_journal = out / "work" / "study.journal"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_direction = direction(spec, base_cfg)
    study, storage = _open_study(work_journal, pe, context, spec, fingerprint, storage_settings, study_direction)

    total = n_trials_of(spec)
    point = only_point(spec) if objective is None else None
    cb.study_started({"pe": pe, "context": context, "fingerprint": fingerprint, "base_cfg": base_cfg, "spec": spec,
                      "sampler_seed": sampler_seed(pe, context), "n_trials": 0 if point is not None else total})
    if point is not None:
        outcome = {"params": point, "value": None, "trial": None, "n_trials": 0, "n_complete": 0, "resumed_with": 0,
                   "skipped": "one-point search space: nothing to choose, no trial trained"}
    else:
        outcome = _optimize(study, objective or train_objective(base_cfg, spec, out, cb), total, pe, context,
                            out, fingerprint, study_direction, cb)
    result = {"pe": pe, "context": context, "objective": spec["objective"], "direction": study_direction,
              "sampler": spec["sampler"], "sampler_seed": sampler_seed(pe, context), "fingerprint": fingerprint,
              **outcome}
    write_trials_csv(study, out / "trials.csv")
    if storage_settings["backend"] == "journal":
        shutil.copyfile(work_journal, out / "study.journal")
    else:  # RDB: the declared output is still a self-contained journal of the study
        export_study_journal(storage, study.study_name, out / "study.journal", f"{pe}.{context}")
    cb.study_finished(result, out)
    write_json(result, out / "work" / LAST_GOOD)  # not an output: Snakemake never deletes it
    write_json(result, out / "best.json")
    return result


def only_point(spec: dict) -> dict | None:
    """The one point of a grid search space of one point run as one trial, else None.

    Such a study has nothing to choose (the smoke overlay's one-point learning-rate grid): its
    best.json is that point without training a trial, saving a training run per (pe, context);
    its job (:func:`stripes.jobs.nothing_to_tune`) imports neither torch nor mlflow.
    """
    if spec["sampler"] != "grid" or n_trials_of(spec) != 1:
        return None
    grid = grid_of(spec["space"])
    if any(len(v) != 1 for v in grid.values()):
        return None
    return {k: v[0] for k, v in grid.items()}


def _optimize(study: optuna.Study, objective: Callable[[optuna.Trial], float], total: int, pe: str, context: str,
              out: Path, fingerprint: str, study_direction: str, cb: StudyCallbacks) -> dict:
    """Run the missing trials of the study; the best completed trial's part of best.json (params,
    value, trial, counts, its binarisation)."""
    objective = _recording_errors(objective)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    missing = max(0, total - done)
    finished_ok = False
    try:
        if missing:
            # serial trials (n_jobs=1): parallel workers on one study are not reproducible (design.md §3)
            # a trial that raises is recorded FAIL (traceback in the job log) and the study goes
            # on; a rerun of the job retries failed grid points. No completed trial -> error below.
            study.optimize(objective, n_trials=missing, n_jobs=1, gc_after_trial=True, catch=(Exception,))
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise NoTrialCompleted(no_trial_completed_message(study, pe, context, out, fingerprint))
        finished_ok = True
    finally:
        if not finished_ok:
            cb.study_failed(out)
    sign = -1.0 if study_direction == "maximize" else 1.0
    best = min(complete, key=lambda t: (sign * t.value, t.number))
    result = {"params": dict(best.params), "value": best.value, "trial": best.number, "n_trials": len(finished),
              "n_complete": len(complete), "resumed_with": done}
    if "binarization" in best.user_attrs:
        result["binarization"] = best.user_attrs["binarization"]
    return result


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
    """``stripes tune``: the study alone, without MLflow (the workflow's job, with its MLflow runs and
    its run record, is ``stripes job tune``)."""
    from stripes.jobs import add_study_arguments

    ap = argparse.ArgumentParser(prog="stripes tune", description=__doc__.split("\n\n")[0])
    add_study_arguments(ap)
    args = ap.parse_args(argv)
    cfg = read_json(args.config)
    spec = read_json(args.spec) if args.spec else None
    try:
        result = run_study(cfg, spec, args.pe, args.context, args.out)
    except NoTrialCompleted as err:  # the trials' tracebacks are above in the log; this is the summary
        print(f"stripes tune: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: result[k] for k in ("pe", "context", "params", "value", "trial", "n_trials")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
