"""stripes.tracking on a tmp SQLite DB: bootstrap, tags, batched logging, parallel writers, UI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stripes import tracking

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def experiment(tmp_path):
    tracking.init_tracking(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts", "test", tmp_path / "experiment.json")
    return tmp_path / "experiment.json"


def test_init_is_idempotent_and_writes_experiment_file(tmp_path):
    a = tracking.init_tracking(f"sqlite:///{tmp_path}/m.db", tmp_path / "art", "exp", tmp_path / "e.json")
    b = tracking.init_tracking(f"sqlite:///{tmp_path}/m.db", tmp_path / "art", "exp", tmp_path / "e2.json")
    assert a["experiment_id"] == b["experiment_id"]
    info = json.loads((tmp_path / "e.json").read_text())
    assert info["tracking_uri"].startswith("sqlite:////")  # absolute path
    assert (tmp_path / "m.db").exists()


def test_stale_running_runs_of_a_killed_job_are_closed(experiment):
    tr = tracking.Tracker.from_experiment_file(experiment)
    cfg = {"run": {"pe": "rope_c", "context": "bin", "seed": 3}, "train": {"lr": 1e-3}}
    tags = tr.run_tags(cfg, "train")
    killed = tr.start_run("rope_c/bin/seed3", tags=tags)  # its job died: never ended
    other_seed = tr.start_run("rope_c/bin/seed4", tags=tr.run_tags({**cfg, "run": {**cfg["run"], "seed": 4}}, "train"))
    other_cfg = tr.start_run("rope_c/bin/seed3", tags=tr.run_tags({**cfg, "train": {"lr": 5e-4}}, "train"))
    done = tr.start_run("rope_c/bin/seed3", tags=tags)
    tr.end_run(done)
    new = tr.start_run("rope_c/bin/seed3", tags=tags)
    keys = ("pe", "context", "seed", "stage", "config_hash")
    assert tr.close_stale_runs({k: tags[k] for k in keys}, new) == [killed]
    status = {r: tr.client.get_run(r).info.status for r in (killed, other_seed, other_cfg, done, new)}
    assert status == {killed: "KILLED", other_seed: "RUNNING", other_cfg: "RUNNING", done: "FINISHED", new: "RUNNING"}
    assert tr.client.get_run(killed).data.tags["stripes.superseded_by"] == new
    # trials of a tune study: children of the reopened parent
    parent = tr.start_run("tune", tags=tr.run_tags(cfg, "tune"))
    trial = tr.start_run("trial0", tags=tr.run_tags(cfg, "tune"), parent_run_id=parent)
    assert tr.close_stale_runs({"mlflow.parentRunId": parent}, parent) == [trial]
    assert tr.client.get_run(parent).info.status == "RUNNING"


def test_run_tags_params_metrics_and_nesting(experiment, tmp_path):
    tr = tracking.Tracker.from_experiment_file(experiment)
    cfg = {"run": {"pe": "rope_c", "context": "bin", "seed": 3}, "train": {"lr": 1e-3, "sizes": [1, 2]}}
    parent = tr.start_run("tune rope_c/bin", tags=tr.run_tags(cfg, "tune"))
    child = tr.start_run("trial0", tags=tr.run_tags(cfg, "tune"), parent_run_id=parent)
    from stripes.runconfig import flatten

    tr.log_params(child, flatten(cfg))
    for step in range(3):
        tr.log_metrics(child, {"val_loss": 1.0 - step / 10, "lr": 1e-3, "nan": float("nan")}, step=step)
    (tmp_path / "a.txt").write_text("x")
    tr.log_artifact(child, tmp_path / "a.txt")
    tr.end_run(child)
    tr.end_run(parent)
    run = tr.client.get_run(child)
    assert run.info.status == "FINISHED"
    t = run.data.tags
    assert (t["pe"], t["context"], t["seed"], t["stage"]) == ("rope_c", "bin", "3", "tune")
    assert t["mlflow.parentRunId"] == parent and t["mlflow.source.name"] == "stripes tune"
    assert len(t["config_hash"]) == 12 and t["git_commit"]
    assert run.data.params["train.lr"] == "0.001" and run.data.params["train.sizes"] == "[1, 2]"
    hist = tr.client.get_metric_history(child, "val_loss")
    assert [m.step for m in hist] == [0, 1, 2]
    assert "nan" not in run.data.metrics
    assert [a.path for a in tr.client.list_artifacts(child)] == ["a.txt"]


WRITER = r"""
import sys, time
from stripes.tracking import Tracker
tr = Tracker.from_experiment_file(sys.argv[1])
i = int(sys.argv[2])
cfg = {"run": {"pe": "pe%d" % i, "context": "time", "seed": i}}
rid = tr.start_run("w%d" % i, tags=tr.run_tags(cfg, "train"))
tr.log_params(rid, {"i": i, "x": "y"})
for step in range(20):
    tr.log_metrics(rid, {"val_loss": 1.0 / (step + 1), "train_loss": 2.0}, step=step)
tr.end_run(rid, "FINISHED")
print(rid)
"""


@pytest.mark.slow
def test_eight_parallel_writers(experiment):
    """design.md: with the DB and experiment created first, 8 parallel writers give 0 errors."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(experiment), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(8)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1][-2000:] for o in outs]
    ids = {o[0].strip().splitlines()[-1] for o in outs}
    tr = tracking.Tracker.from_experiment_file(experiment)
    runs = tr.client.search_runs([tr.experiment_id], max_results=100)
    assert {r.info.run_id for r in runs} == ids and len(ids) == 8
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(len(tr.client.get_metric_history(r.info.run_id, "val_loss")) == 20 for r in runs)


# the train and evaluate jobs (records, failure policy): tests/test_jobs.py


def test_ui_prints_lean_command(experiment, capsys):
    assert tracking.main(["--experiment-file", str(experiment), "--port", "5123", "--print-url"]) == 0
    out = capsys.readouterr().out.splitlines()
    info = json.loads(Path(experiment).read_text())
    assert out[0] == f"http://127.0.0.1:5123/#/experiments/{info['experiment_id']}/runs"
    assert "--workers 1" in out[1] and "--host 127.0.0.1" in out[1]
    cmd, env, _ = tracking.ui_command(info, "0.0.0.0", 1)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and "0.0.0.0" in cmd


def test_ui_without_full_mlflow_says_how_to_install(experiment, capsys, monkeypatch):
    monkeypatch.setattr(tracking, "mlflow_server_available", lambda: False)
    assert tracking.main(["--experiment-file", str(experiment)]) == 3
    err = capsys.readouterr().err
    assert "make ui" in err and "pip install -e '.[ui]'" in err


def test_make_ui_installs_the_ui_extra_then_starts_the_ui(tmp_path):
    """`make ui` on a venv without the [ui] extra: installs it, then runs `stripes ui` (dry run)."""
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    venv = tmp_path / "venv"
    # under `make test` the parent's MAKELEVEL would make this make print "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "ui", f"VENV={venv}", "UI_ARGS=--port 5001"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    install = next(i for i, line in enumerate(lines) if "pip install" in line and "-e '.[dev,ui]'" in line)
    assert lines[-1].strip() == f"{venv}/bin/stripes ui --port 5001" and install < len(lines) - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_lists_the_study_runs_in_headless_chromium(experiment, tmp_path):
    """Open #/experiments/<id>/runs in headless Chromium and find the runs' names in the page."""
    if not tracking.mlflow_server_available():
        pytest.skip("full mlflow (the [ui] extra) is not installed: pip install -e '.[ui]'")
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                     if shutil.which(n)), None)
    if chromium is None:
        pytest.skip("no chromium / google-chrome binary on PATH")
    tr = tracking.Tracker.from_experiment_file(experiment)
    names = []
    for i in range(3):
        name = f"rope_c/bin/seed{i}"
        rid = tr.start_run(name, tags=tr.run_tags({"run": {"pe": "rope_c", "context": "bin", "seed": i}}, "train"))
        tr.end_run(rid)
        names.append(name)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    server = subprocess.Popen([sys.executable, "-m", "stripes.cli", "ui", "--experiment-file", str(experiment),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, start_new_session=True)
    try:
        url = server.stdout.readline().strip().split(": ", 1)[-1]
        assert url.endswith(f"/#/experiments/{tr.experiment_id}/runs")
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        dom = ""
        for _ in range(5):
            dom = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                                  "--virtual-time-budget=20000", "--dump-dom", url],
                                 capture_output=True, text=True, timeout=120).stdout
            if all(n in dom for n in names):
                break
            time.sleep(3)
        missing = [n for n in names if n not in dom]
        assert not missing, f"runs not listed in the MLflow UI page: {missing}"
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)  # the ui process and the mlflow server it started
        server.wait(timeout=30)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) of every process, from /proc."""
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            table[int(d.name)] = (int(ppid), state)
    return table


def _descendants(pid: int) -> set[int]:
    table = _proc_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (pp, _) in table.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _proc_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}  # a zombie holds no port, no memory


def _port_is_free(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def _wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"{what}: the process exited ({proc.returncode})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# A server like `mlflow server`: it starts the process that listens (like uvicorn) and dies on
# SIGTERM without passing it on. The listener ignores SIGTERM when told to, to need the SIGKILL.
LISTENER = """
import signal, socket, sys
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
while True:
    s.accept()[0].close()
"""
FAKE_SERVER = f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {LISTENER!r}, sys.argv[1], sys.argv[2]])
time.sleep(3600)
"""
DRIVER = """
import os, sys
from stripes import tracking
cmd = [sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]]
sys.exit(tracking.serve(cmd, dict(os.environ), grace_s=1.0))
"""


@pytest.mark.parametrize("listener", ["obeys", "ignore"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_ui_signal_stops_the_server_and_its_children(listener, sig):
    """serve(): a signal to `stripes ui` reaches every process of the server's group; one that
    ignores it is killed after the grace period; nothing is left listening or alive."""
    import signal

    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    ui = subprocess.Popen([sys.executable, "-c", DRIVER, FAKE_SERVER, str(port), listener], env=env,
                          start_new_session=True)
    tree: set[int] = set()
    try:
        _wait_for(lambda: not _port_is_free(port), 60, "the fake server to listen", ui)
        tree = _descendants(ui.pid)
        assert len(tree) == 2  # the server and its listener
        os.kill(ui.pid, getattr(signal, sig))
        assert ui.wait(timeout=30) == 0
        assert _port_is_free(port)
        assert _alive(tree) == set()
    finally:
        for pid in _alive(tree | {ui.pid}):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_ui_sigterm_stops_mlflow_server_and_frees_the_port(experiment, tmp_path):
    """`stripes ui` with the real MLflow server: SIGTERM leaves no server process and a free port."""
    import signal
    import urllib.request

    if not tracking.mlflow_server_available():
        pytest.skip("full mlflow (the [ui] extra) is not installed: pip install -e '.[ui]'")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    log = tmp_path / "ui.log"
    with open(log, "w") as fh:
        ui = subprocess.Popen([sys.executable, "-m", "stripes.cli", "ui", "--experiment-file", str(experiment),
                               "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    tree: set[int] = set()
    try:
        _wait_for(healthy, 180, "the MLflow server to answer /health", ui)
        tree = _descendants(ui.pid)
        assert len(tree) >= 2, f"expected `mlflow server` and its uvicorn child, found {tree}"
        os.kill(ui.pid, signal.SIGTERM)
        assert ui.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert _port_is_free(port)
        assert _alive(tree) == set()
    finally:
        for pid in _alive(tree | {ui.pid}):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_tracking_through_an_mlflow_server_http_uri(tmp_path):
    """mlflow.tracking_uri: http://... -- the study's tracker against a real `mlflow server`."""
    if not tracking.mlflow_server_available():
        pytest.skip("full mlflow (the [ui] extra) is not installed: pip install -e '.[ui]'")
    port = _free_port()
    art = tmp_path / "artifacts"
    art.mkdir()
    # the same server command that `stripes ui` starts, on a DB of its own
    cmd, env, _ = tracking.ui_command({"tracking_uri": f"sqlite:///{tmp_path}/server.db", "artifact_root": str(art),
                                       "experiment_id": "0"}, "127.0.0.1", port)
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, "mlflow server did not come up"
            time.sleep(1)
        info = tracking.init_tracking(uri, art, "study", tmp_path / "experiment.json")
        assert info["tracking_uri"] == uri
        again = tracking.init_tracking(uri, art, "study", tmp_path / "experiment2.json")
        assert again["experiment_id"] == info["experiment_id"]
        tr = tracking.Tracker.from_experiment_file(tmp_path / "experiment.json")
        cfg = {"run": {"pe": "rope_c", "context": "bin", "seed": 0}, "train": {"lr": 1e-3}}
        tags = tr.run_tags(cfg, "train")
        stale = tr.start_run("rope_c/bin/seed0", tags=tags)
        rid = tr.start_run("rope_c/bin/seed0", tags=tags)
        assert tr.close_stale_runs(tags, rid) == [stale]
        from stripes.runconfig import flatten

        tr.log_params(rid, flatten(cfg))
        tr.log_metrics(rid, {"val_loss": 0.5, "train_loss": 0.7}, step=3)
        (tmp_path / "metrics.json").write_text('{"test_16": {"cs": 1.0}}')
        tr.log_artifact(rid, tmp_path / "metrics.json")
        tr.end_run(rid)
        from mlflow.tracking import MlflowClient

        other = MlflowClient(tracking_uri=uri)  # what the UI and another node see
        run = other.get_run(rid)
        assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.001"
        assert run.data.metrics == {"val_loss": 0.5, "train_loss": 0.7}
        assert run.data.tags["pe"] == "rope_c" and run.data.tags["stage"] == "train"
        assert [a.path for a in other.list_artifacts(rid)] == ["metrics.json"]
        assert other.get_run(stale).info.status == "KILLED"
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
