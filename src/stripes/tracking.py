"""MLflow tracking for the study: DB + experiment bootstrap, tagged runs, batched live logging, UI.

Facts this follows (design.md §3, MLflow 3.17):

* Store: SQLite (``sqlite:///results/mlflow/mlflow.db``), artifacts under ``results/mlflow/artifacts``.
  A fresh DB hit by parallel jobs breaks (schema-migration race), so the ``mlflow_init`` rule
  creates the DB and the experiment first (:func:`init_tracking`) and writes
  ``results/mlflow/experiment.json``; every job reads the experiment id from that file (an input).
* One ``log_batch`` per validation (about 5 ms per call on SQLite).
* Every run is tagged pe, context, seed, stage, config_hash, git_commit and its source name is set
  here (Snakemake runs scripts from temporary copies). Which runs a job starts, and the record of
  its run (``mlflow_run.json``, a file of the DAG), belong to the job layer (:mod:`stripes.jobs`);
  this module only holds the helpers. The tables never query "all runs of the experiment".
* ``stripes ui`` starts a lean MLflow server (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``,
  ``--workers 1``) on 127.0.0.1 and prints ``http://127.0.0.1:PORT/#/experiments/<id>/runs``
  (the default page opens in GenAI mode). It needs full mlflow (``make ui`` installs the
  ``[ui]`` extra, then starts it). SIGTERM/SIGINT stop the server's whole process group.

mlflow is imported lazily (about 1 s), so importing this module is cheap.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stripes.fileio import read_json, write_json
from stripes.runconfig import config_hash

PARAM_MAX = 6000  # MLflow 3 param value limit
SOURCE_NAME = "stripes"


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        if commit != "unknown" and dirty.returncode == 0 and dirty.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _abs_sqlite_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = uri[len(prefix):]
    if not path.startswith("/"):
        path = str(Path(path).resolve())
    return prefix + path


# ----------------------------------------------------------------------------- bootstrap


def init_tracking(tracking_uri: str, artifact_root: str | Path, experiment: str, out_file: str | Path) -> dict:
    """Create the SQLite DB (all migrations) and the experiment, once, before any parallel job."""
    from mlflow.tracking import MlflowClient

    uri = _abs_sqlite_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    root = Path(artifact_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = client.create_experiment(experiment, artifact_location=root.as_uri(),
                                          tags={"project": "stripes"})
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
    info = {"tracking_uri": uri, "experiment": experiment, "experiment_id": exp_id,
            "artifact_root": str(root)}
    write_json(info, out_file)
    return info


# ----------------------------------------------------------------------------- the tracker


class TrackingStoreError(RuntimeError):
    """experiment.json names a tracking DB or experiment that no longer exists."""


class Tracker:
    """Thin wrapper over MlflowClient with the study's tags and batched logging."""

    def __init__(self, tracking_uri: str, experiment_id: str, source: str = SOURCE_NAME):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment_id = str(experiment_id)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.source = source
        self._commit: str | None = None

    @classmethod
    def from_experiment_file(cls, path: str | Path, source: str = SOURCE_NAME) -> "Tracker":
        """The tracker of the experiment named in ``path`` (mlflow_init's experiment.json).

        Raises:
            TrackingStoreError: the file outlived its store (the DB or the experiment is gone). A job
                must not create them itself (parallel jobs on a fresh DB break), and Snakemake only
                reruns mlflow_init when experiment.json is missing, so the message says to delete it.
        """
        info = read_json(path)
        uri = info["tracking_uri"]
        fix = (f"delete {path} (or all of {Path(path).parent}) and rerun snakemake: the mlflow_init rule creates "
               "them again")
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
            raise TrackingStoreError(f"{path} names the tracking DB {uri}, which does not exist; {fix}")
        tracker = cls(uri, info["experiment_id"], source=source)
        from mlflow.exceptions import MlflowException

        try:
            stage = tracker.client.get_experiment(tracker.experiment_id).lifecycle_stage
        except MlflowException as err:
            if getattr(err, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
            stage = "missing"
        if stage != "active":
            raise TrackingStoreError(f"{path} names experiment {info.get('experiment')!r} "
                                     f"(id {tracker.experiment_id}), which is {stage} in {uri}; {fix}")
        return tracker

    @property
    def commit(self) -> str:
        if self._commit is None:
            self._commit = git_commit()
        return self._commit

    def run_tags(self, cfg: dict, stage: str, extra: dict | None = None) -> dict[str, str]:
        run = cfg.get("run", {})
        tags = {
            "pe": run.get("pe", ""),
            "context": run.get("context", ""),
            "seed": run.get("seed", ""),
            "stage": stage,
            "config_hash": config_hash(cfg),
            "git_commit": self.commit,
        }
        tags.update(extra or {})
        return {k: str(v) for k, v in tags.items()}

    def start_run(self, name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> str:
        from mlflow.utils.mlflow_tags import (MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_SOURCE_NAME,
                                              MLFLOW_SOURCE_TYPE)

        t = dict(tags or {})
        t[MLFLOW_SOURCE_NAME] = f"{self.source} {t.get('stage', '')}".strip()
        t[MLFLOW_SOURCE_TYPE] = "LOCAL"
        t[MLFLOW_GIT_COMMIT] = t.get("git_commit", self.commit)
        if parent_run_id:
            t[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=t, run_name=name)
        return run.info.run_id

    def close_stale_runs(self, tags: dict[str, str], superseded_by: str | None = None) -> list[str]:
        """Mark RUNNING runs whose tags all match ``tags`` as KILLED; returns their ids.

        A job killed by a signal (or a lost SLURM node) never ends its MLflow run, so without
        this the UI would show it RUNNING forever beside the run that redid its work.
        """
        def quote(v: str) -> str:
            return "'" + str(v).replace("'", "\\'") + "'"

        clauses = ["attributes.status = 'RUNNING'"] + [f"tags.`{k}` = {quote(v)}" for k, v in tags.items()]
        stale = self.client.search_runs([self.experiment_id], filter_string=" and ".join(clauses), max_results=1000)
        closed = []
        for r in stale:
            if r.info.run_id == superseded_by:
                continue
            if superseded_by:
                self.client.set_tag(r.info.run_id, "stripes.superseded_by", superseded_by)
            self.client.set_terminated(r.info.run_id, status="KILLED")
            closed.append(r.info.run_id)
        return closed

    def reopen_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def unusable_run(self, run_id: str) -> str | None:
        """Why ``run_id`` (read from a pointer file) cannot be logged to any more, or None when it can.

        Pointer files (a tune study's work/mlflow_parent.json, a train job's mlflow_run.json) outlive
        the tracking store: ``rm -r results/mlflow`` makes mlflow_init create a new, empty one.
        """
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            if getattr(err, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return f"is not in the tracking store {self.tracking_uri} (was results/mlflow deleted?)"
            raise
        if str(run.info.experiment_id) != self.experiment_id:
            return f"belongs to experiment {run.info.experiment_id}, not this study's {self.experiment_id}"
        if run.info.lifecycle_stage != "active":
            return "was deleted (it or its experiment)"
        return None

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(str(k), float(v), ts, int(step)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and v == v]  # skip NaN / None
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.client.set_tag(run_id, key, str(value))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


# ----------------------------------------------------------------------------- the UI


def ui_command(info: dict, host: str, port: int) -> tuple[list[str], dict, str]:
    url = f"http://{host}:{port}/#/experiments/{info['experiment_id']}/runs"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", info["tracking_uri"],
           "--default-artifact-root", Path(info["artifact_root"]).as_uri(), "--host", host, "--port", str(port),
           "--workers", "1"]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return cmd, env, url


def mlflow_server_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("mlflow.server") is not None and importlib.util.find_spec("flask") is not None \
            and importlib.util.find_spec("mlflow.server.js") is not None
    except ModuleNotFoundError:
        return False


def _become_subreaper() -> bool:
    """Linux: make this process the reaper of its orphaned descendants.

    When ``mlflow server`` exits, its uvicorn child is re-parented; to PID 1 by default, which
    in a container may never reap it, so a dead child would look alive to ``killpg(pgid, 0)``.
    As a subreaper ``stripes ui`` inherits and reaps them itself.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _group_alive(pgid: int) -> bool:
    try:  # reap the group's members that are (or became) our children first
        while os.waitpid(-pgid, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, sig: int, grace_s: float = 15.0) -> None:
    """Send ``sig`` to the process group, wait for all its members, SIGKILL what outlives ``grace_s``."""
    import signal

    for s, wait_s in ((sig, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, s)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def serve(cmd: list[str], env: dict, grace_s: float = 15.0) -> int:
    """Run the server in its own session; SIGTERM, SIGINT or SIGHUP stop all of it, then return.

    ``mlflow server`` does not pass a SIGTERM on to the uvicorn process it starts, so a signal
    is forwarded to the server's whole process group (a second one escalates to SIGKILL), and
    this returns only once no process of the group is left. Returns 0 when stopped by a signal,
    else the server's exit status.
    """
    import signal

    received: list[int] = []
    proc: subprocess.Popen | None = None

    def forward(signum, _frame):
        received.append(signum)
        if proc is not None:
            try:
                os.killpg(proc.pid, signum if len(received) == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        _become_subreaper()
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        if received:  # a signal that came while the server was being started
            forward(received.pop(), None)
        rc = proc.wait()
    finally:
        if proc is not None:
            stop_group(proc.pid, received[0] if received else signal.SIGTERM, grace_s)
        for s, h in previous.items():
            signal.signal(s, h)
    return 0 if received else rc


def init_main(argv: list[str]) -> int:
    """``python -m stripes.tracking init ...``: the mlflow_init step (also ``stripes job init``)."""
    from stripes.jobs import main as job_main

    return job_main(["init", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["init"]:
        return init_main(argv[1:])
    ap = argparse.ArgumentParser(prog="stripes ui", description="Start the MLflow UI on the study's tracking DB.")
    ap.add_argument("--experiment-file", default="results/mlflow/experiment.json",
                    help="written by the mlflow_init rule (default: %(default)s)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--print-url", action="store_true", help="print the URL and the command, do not start")
    args = ap.parse_args(argv)
    if not Path(args.experiment_file).exists():
        print(f"stripes ui: {args.experiment_file} not found; run the study first (snakemake --cores N)",
              file=sys.stderr)
        return 2
    info = read_json(args.experiment_file)
    cmd, env, url = ui_command(info, args.host, args.port)
    if args.print_url:
        print(url)
        print(" ".join(cmd))
        return 0
    if not mlflow_server_available() or shutil.which(sys.executable) is None:
        print("stripes ui: the MLflow UI needs full mlflow (this environment has mlflow-skinny).\n"
              "Install it with:  make ui  (or: pip install -e '.[ui]')", file=sys.stderr)
        return 3
    print(f"MLflow UI for experiment {info['experiment']!r}: {url}", flush=True)
    return serve(cmd, env)


if __name__ == "__main__":
    sys.exit(main())
