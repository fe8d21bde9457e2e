"""Per-run configs: resolve one run's config from the study config, hash it, flatten it.

A run config (``results/runs/<pe>/<ctx>/seed<k>/config.json``) holds the sections ``run``,
``data``, ``model``, ``train``, ``eval`` and ``pe_entry``; it is all a train, evaluate or tune job
reads. :func:`config_hash` is its fingerprint; :func:`flatten` gives MLflow its params.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from stripes.fileio import load_yaml, read_json, write_json
from stripes.study import RUN_SECTIONS, SETTINGS, load_pe_registry


def set_dotted(cfg: dict, path: str, value) -> None:
    node = cfg
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value



def resolve_run_config(
    cfg: dict,
    pe: str,
    context: str,
    seed: int,
    stage: str = "train",
    registry: dict | None = None,
    overrides: dict | None = None,
    settings: Iterable[str] | None = None,
) -> dict:
    """The resolved per-run config (architecture.md): run, data, model, train, eval, pe_entry."""
    registry = registry if registry is not None else load_pe_registry(cfg)
    run_cfg = {
        "run": {
            "pe": pe,
            "context": context,
            "seed": int(seed),
            "stage": stage,
            "settings": list(settings or SETTINGS),
        },
        **{k: copy.deepcopy(cfg.get(k) or {}) for k in RUN_SECTIONS},
        "pe_entry": {"name": pe, **copy.deepcopy(registry[pe])},
    }
    for key, value in (overrides or {}).items():
        set_dotted(run_cfg, key, value)
    return run_cfg


def load_run_config(path: str | Path) -> dict:
    """Read a resolved run config (JSON; YAML accepted for hand-written configs)."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):

        return load_yaml(text)
    return json.loads(text)


def config_hash(cfg: dict, n: int = 12) -> str:
    """Stable hash of a (run) config: sha256 of its canonical JSON."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def stable_seed(*parts: object, bits: int = 31) -> int:
    """A seed from a stable hash of ``parts`` (sha256; never Python's randomised ``hash()``)."""
    blob = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big") % (2**bits)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are JSON-encoded (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def write_run_config(base_json: str, best: str | Path, out: str | Path) -> dict:
    """rule resolve_run_config: base run config (JSON text) + the study's best parameters."""
    cfg = json.loads(base_json)
    best_d = read_json(best)
    for key, value in best_d["params"].items():
        set_dotted(cfg, key, value)
    cfg["run"]["tuned"] = {"params": best_d["params"], "value": best_d["value"], "trial": best_d["trial"]}
    if best_d.get("skipped"):  # a one-point space: no tuning run in MLflow, so the run says why
        cfg["run"]["tuned"]["skipped"] = best_d["skipped"]
    write_json(cfg, out)
    return cfg
