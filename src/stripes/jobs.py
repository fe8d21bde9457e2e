"""Workflow glue: what the Snakemake rules call (cheap: no torch, no mlflow at import).

    python -m stripes.jobs write-json --json TEXT --out FILE [--json TEXT --out FILE ...]
    python -m stripes.jobs run-config --base TEXT --best best.json --out config.json
"""

from __future__ import annotations

import json
from pathlib import Path

from stripes.fileio import write_json
from stripes.runconfig import write_run_config


def setup_job_environment(repo: str | Path) -> None:
    """Make the jobs of this workflow import the package of THIS tree and find `python`.

    ``src/`` goes first on PYTHONPATH (an editable install may point at another checkout), and the
    interpreter running Snakemake goes first on PATH, so a rule's ``python`` is the project's
    (with ``--use-conda`` the conda activation puts the env's ``python`` first instead).
    """
    import os
    import sys

    src = str(Path(repo).resolve() / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    env = os.environ
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    env["PYTHONPATH"] = os.pathsep.join([src, *parts])
    bindir = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *path])


def main(argv: list[str] | None = None) -> int:
    """Small job entry points of the workflow (cheap: no torch, no mlflow).

    python -m stripes.jobs write-json --json TEXT --out FILE [--json TEXT --out FILE ...]
    python -m stripes.jobs run-config --base TEXT --best best.json --out config.json
    """
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m stripes.jobs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("write-json", help="write JSON text (a rule's params) to files")
    p.add_argument("--json", action="append", required=True)
    p.add_argument("--out", action="append", required=True)
    p = sub.add_parser("run-config", help="merge the tuned parameters into a run config")
    p.add_argument("--base", required=True)
    p.add_argument("--best", required=True)
    p.add_argument("--out", required=True)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "write-json":
        if len(args.json) != len(args.out):
            ap.error("give one --out per --json")
        for text, out in zip(args.json, args.out):
            write_json(json.loads(text), out)
            print(f"wrote {out}")
    else:
        cfg = write_run_config(args.base, args.best, args.out)
        print(f"wrote {args.out} (tuned: {cfg['run']['tuned']['params']})")
    return 0


def as_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


if __name__ == "__main__":
    raise SystemExit(main())
