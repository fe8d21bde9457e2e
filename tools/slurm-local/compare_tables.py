"""Compare the study tables of two result trees cell by cell (numbers numerically).

    python tools/slurm-local/compare_tables.py LOCAL/results/tables SLURM/results/tables [--tol 0]
        [--metrics LOCAL/results/eval SLURM/results/eval]

Exit 0 when every CSV table of LOCAL exists in SLURM with the same rows and columns and every
numeric cell agrees within --tol (default 0: identical); prints each differing cell otherwise.
The tables round to 4 decimals, so --metrics also compares every run's metrics.json at full
precision (wall-clock and device fields left out).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path


def _num(x: str):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def compare(a_dir: Path, b_dir: Path, tol: float = 0.0) -> tuple[int, int, list[str]]:
    cells, numeric, diffs = 0, 0, []
    tables = sorted(p.name for p in a_dir.glob("*.csv"))
    if not tables:
        return 0, 0, [f"no CSV tables in {a_dir}"]
    for name in tables:
        b = b_dir / name
        if not b.exists():
            diffs.append(f"{name}: missing in {b_dir}")
            continue
        with open(a_dir / name, newline="") as fa, open(b, newline="") as fb:
            ra, rb = list(csv.reader(fa)), list(csv.reader(fb))
        if len(ra) != len(rb) or (ra and ra[0] != rb[0]):
            diffs.append(f"{name}: shape or header differs ({len(ra)} vs {len(rb)} rows)")
            continue
        header = ra[0] if ra else []
        for i, (x, y) in enumerate(zip(ra[1:], rb[1:]), start=1):
            for j, (u, v) in enumerate(zip(x, y)):
                cells += 1
                nu, nv = _num(u), _num(v)
                if nu is not None and nv is not None:
                    numeric += 1
                    same = (math.isnan(nu) and math.isnan(nv)) or abs(nu - nv) <= tol
                else:
                    same = u == v
                if not same:
                    col = header[j] if j < len(header) else j
                    diffs.append(f"{name} row {i} [{x[0] if x else ''}] {col}: {u!r} vs {v!r}")
    return cells, numeric, diffs


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif not (k.endswith("_s") or k in ("device", "checkpoint")):
            out[key] = v
    return out


def compare_metrics(a_dir: Path, b_dir: Path) -> tuple[int, int, list[str]]:
    import json

    files = sorted(p.relative_to(a_dir) for p in a_dir.rglob("metrics.json"))
    values, diffs = 0, []
    for rel in files:
        if not (b_dir / rel).exists():
            diffs.append(f"{rel}: missing in {b_dir}")
            continue
        fa, fb = _flat(json.loads((a_dir / rel).read_text())), _flat(json.loads((b_dir / rel).read_text()))
        for k in sorted(set(fa) | set(fb)):
            values += 1
            if fa.get(k) != fb.get(k):
                diffs.append(f"{rel} {k}: {fa.get(k)!r} vs {fb.get(k)!r}")
    return len(files), values, diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--tol", type=float, default=0.0)
    ap.add_argument("--metrics", nargs=2, type=Path, metavar=("A_EVAL", "B_EVAL"))
    args = ap.parse_args(argv)
    cells, numeric, diffs = compare(args.a, args.b, args.tol)
    n_tables = len(list(args.a.glob("*.csv")))
    print(f"compared {n_tables} tables, {cells} cells ({numeric} numeric): {len(diffs)} difference(s)")
    for d in diffs[:200]:
        print("  " + d)
    bad = bool(diffs)
    if args.metrics:
        n, values, mdiffs = compare_metrics(*args.metrics)
        print(f"compared {n} metrics.json files, {values} values at full precision: {len(mdiffs)} difference(s)")
        for d in mdiffs[:200]:
            print("  " + d)
        bad = bad or bool(mdiffs) or n == 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
