"""A non-editable install works: the wheel carries the schemas and the PE registry, and an
installed stripes trains without a checkout.

The wheel is built offline from a copy of the sources (no build isolation: setuptools of this
environment), installed with --no-deps into a fresh venv, and used from a directory outside the
repository. The venv sees this environment's third-party packages (torch, numpy, ...) through a
.pth line naming their site-packages directory: the repository's own environment is a venv, so
``--system-site-packages`` would reach the base interpreter, which lacks them. A plain path line
does not process that directory's .pth files, so the editable install of the repository stays
out of sys.path and ``import stripes`` can only find the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import stripes
    from stripes import schema
    from stripes.pe.registry import load_registry
    from stripes.train import train

    data_dir, out_dir, src = (Path(a) for a in sys.argv[1:4])
    where = Path(stripes.__file__).resolve()
    assert src not in where.parents, f"stripes imported from the checkout: {where}"
    assert "site-packages" in where.parts, where

    assert schema.defaults("model")["kernels"] == "auto"
    assert schema.defaults("tune.pruner")["n_startup_trials"] == 2
    schema.validate_schema({"study": {"seeds": {"s": [0]}}, "train": {"lr": 1e-3}})
    reg = load_registry()
    assert {"nope", "rope_c", "ropepool", "s_srpe"} <= set(reg), sorted(reg)
    entry = reg["rope_c"]

    cfg = {
        "run": {"pe": "rope_c", "context": "bin", "seed": 0, "stage": "train", "settings": ["test_16"]},
        "data": {"out_dir": str(data_dir), "window_bars": 16, "long_window_bars": 64},
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16, "n_features": 8, "chunk_size": 64},
        "train": {"lr": 2e-3, "batch_size": 2, "epochs": 1, "warmup_epochs": 0.5, "curriculum_epochs": 0.5,
                  "val_per_epoch": 1, "max_train_windows": 4, "max_val_windows": 1, "num_threads": 1,
                  "progress": False, "device": "cpu"},
        "pe_entry": {"name": "rope_c", "class": entry.class_path, "kwargs": entry.kwargs,
                     "description": entry.description, "reference": entry.reference},
    }
    summary = train(cfg, out_dir) or {}
    print(json.dumps({"stripes": str(where), "summary": {k: v for k, v in summary.items()
                                                         if isinstance(v, (int, float, str, bool))}}))
''')


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_checkout(tmp_path, prepared_data):
    # build from a copy: the build writes build/ and *.egg-info beside the sources
    src = tmp_path / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src" / "stripes", src / "src" / "stripes",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(wheels), str(src)])
    (wheel,) = wheels.glob("stripes-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "_host_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)])

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "check.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "STRIPES_PE_REGISTRY", "STRIPES_POP909", "STRIPES_POP909_STRUCTURE")}
    proc = _run([str(py), "check.py", str(prepared_data), str(outside / "run"), str(ROOT / "src")], cwd=outside,
                env=env)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert str(purelib) in report["stripes"]
    assert (outside / "run" / "last.pt").exists() and (outside / "run" / "train.json").exists()
