"""Security properties of the study (fast, CPU):

* classes load only from the allow-listed package ``stripes.pe.`` -- and the check happens
  BEFORE anything is imported, so a registry entry cannot run a module's import-time code;
* configuration files are parsed safely (no YAML python tags -> no code execution);
* checkpoints load with ``torch.load(weights_only=True)`` everywhere: a pickle payload in a
  checkpoint is refused by training resume and by evaluation;
* the MLflow UI binds to 127.0.0.1 unless told otherwise;
* no password in the committed configuration (PostgreSQL credentials live in ~/.pgpass).

Each test carries a positive control (the same payload DOES act when the protection is off), so
it cannot pass because the payload was inert.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "stripes"


class _Payload:
    """Unpickling this writes a marker file (stands for arbitrary code execution)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"model": {}, "step": 0, "evil": _Payload(marker)}, path)
    return path


# ------------------------------------------------------------------ checkpoints


def _torch_load_calls():
    """(file, line, has weights_only=True) for every torch.load(...) call in src/stripes."""
    found = []
    for f in SRC.rglob("*.py"):
        tree = ast.parse(f.read_text(), filename=str(f))
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "torch"
                   for a in n.names if a.name == "load"}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            is_load = (isinstance(fn, ast.Attribute) and fn.attr == "load" and isinstance(fn.value, ast.Name)
                       and fn.value.id == "torch") or (isinstance(fn, ast.Name) and fn.id in aliases)
            if is_load:
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
                found.append((f.relative_to(ROOT), node.lineno, ok))
    return found


def test_every_torch_load_in_the_package_uses_weights_only_true():
    calls = _torch_load_calls()
    assert calls, "no torch.load call found: the scan is broken (the checkpoint loader must be in src/stripes)"
    bad = [f"{f}:{line}" for f, line, ok in calls if not ok]
    assert not bad, f"torch.load without weights_only=True (arbitrary code on load): {bad}"


def test_pickle_payload_in_a_checkpoint_is_refused(tmp_path):
    from stripes.train import load_checkpoint

    marker = tmp_path / "pwned"
    ck = _evil_checkpoint(tmp_path / "evil.pt", marker)
    # positive control: an unsafe load DOES run the payload (so the refusal below means something)
    torch.load(ck, map_location="cpu", weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        load_checkpoint(ck)
    assert not marker.exists()


def test_evaluate_refuses_a_poisoned_best_checkpoint(tmp_path):
    from stripes.evaluate import evaluate

    marker = tmp_path / "pwned"
    ck = _evil_checkpoint(tmp_path / "best.pt", marker)
    cfg = {"run": {"pe": "nope", "context": "time", "seed": 0, "stage": "train"}, "eval": {"device": "cpu"}}
    with pytest.raises(pickle.UnpicklingError):
        evaluate(cfg, ck, tmp_path / "eval")
    assert not marker.exists()


# ------------------------------------------------------------------ the PE allow-list


EVIL_MODULE = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\nclass Evil:\n    pass\n"


@pytest.mark.parametrize("class_path", [
    "evil_mod_{tag}.Evil",                 # any importable module outside the package
    "stripes.pex.evil_mod_{tag}.Evil",     # a look-alike prefix
    "stripes.pe..evil_mod_{tag}.Evil",     # relative-import trick
])
def test_registry_refuses_classes_outside_the_allow_list_before_importing(class_path, tmp_path, monkeypatch):
    from stripes.pe.registry import RegistryError, load_registry

    tag = os.urandom(4).hex()
    marker = tmp_path / "imported"
    (tmp_path / f"evil_mod_{tag}.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    # positive control: the module is importable and its import-time code runs
    subprocess.run([sys.executable, "-c", f"import evil_mod_{tag}"], cwd=tmp_path, check=True)
    assert marker.exists()
    marker.unlink()
    entry = {"class": class_path.format(tag=tag), "kwargs": {}, "description": "x"}
    with pytest.raises(RegistryError, match="outside the allow-listed prefix 'stripes.pe.'") as err:
        load_registry(data={"evil": entry})
    assert "'evil'" in str(err.value)  # names the entry
    assert not marker.exists() and f"evil_mod_{tag}" not in sys.modules


def test_yaml_python_tags_do_not_execute(tmp_path):
    """The registry, the config overlays and the profile are YAML: a python/object tag is an
    error, never a call (yaml.safe_load / Snakemake's config loader)."""
    from stripes.pe.registry import RegistryError, load_registry

    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    # positive control: PyYAML's unsafe loader would run it
    yaml.unsafe_load(f"x: {payload}")
    assert marker.exists()
    marker.unlink()
    reg = tmp_path / "pe.yaml"
    reg.write_text(f"evil:\n  class: {payload}\n  kwargs: {{}}\n  description: x\n")
    with pytest.raises((RegistryError, yaml.YAMLError)):
        load_registry(reg)
    assert not marker.exists()
    overlay = tmp_path / "evil.yaml"
    overlay.write_text(f"study:\n  record_failures: {payload}\n")
    # Snakemake reads every --configfile with this function (snakemake.settings.types), in process
    from snakemake.common.configfile import load_configfile
    from snakemake_interface_common.exceptions import WorkflowError

    with pytest.raises(WorkflowError):
        load_configfile(str(overlay))
    assert not marker.exists(), "a python tag in a --configfile overlay executed"
    from stripes.study import load_config

    with pytest.raises(yaml.YAMLError):
        load_config(ROOT / "config" / "config.yaml", overlay)
    assert not marker.exists(), "a python tag in a config overlay executed"


# ------------------------------------------------------------------ the UI binds to localhost


def _ui_cmd(monkeypatch, tmp_path, *args) -> list[str]:
    from stripes import cli, tracking

    exp = tmp_path / "experiment.json"
    exp.write_text('{"tracking_uri": "sqlite:////tmp/x.db", "experiment": "e", "experiment_id": "1", '
                   '"artifact_root": "/tmp/a"}')
    seen = {}
    monkeypatch.setattr(tracking, "mlflow_server_available", lambda: True)
    monkeypatch.setattr(tracking, "serve", lambda cmd, env, grace_s=15.0: seen.setdefault("cmd", cmd) and 0)
    assert cli.main(["ui", "--experiment-file", str(exp), *args]) == 0
    return seen["cmd"]


def test_ui_binds_to_localhost_by_default(monkeypatch, tmp_path):
    cmd = _ui_cmd(monkeypatch, tmp_path)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_ui_binds_elsewhere_only_when_told(monkeypatch, tmp_path):
    cmd = _ui_cmd(monkeypatch, tmp_path, "--host", "0.0.0.0")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"


def test_no_wildcard_bind_default_in_the_package():
    hits = [f"{f.relative_to(ROOT)}" for f in SRC.rglob("*.py") if re.search(r"""default=["']0\.0\.0\.0""", f.read_text())]
    assert not hits, hits


# ------------------------------------------------------------------ no secrets in the repository


def test_no_password_in_committed_configuration():
    """Database URLs in config/ and profiles/ carry no password (``user:secret@host``); the
    PostgreSQL password of tools/slurm-local goes to ~/.pgpass (libpq reads it there)."""
    pat = re.compile(r"[a-z+]+://[^/\s:@]+:[^@/\s]+@")
    files = [*ROOT.glob("config/*.yaml"), *ROOT.glob("profiles/*/config.yaml"), *ROOT.glob("tools/slurm-local/*.sh")]
    assert files
    bad = [(str(f.relative_to(ROOT)), m.group(0)) for f in files for m in pat.finditer(f.read_text())]
    assert not bad, bad
