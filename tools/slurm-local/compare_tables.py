"""Compare the study tables of two result trees cell by cell (numbers numerically).

    python tools/slurm-local/compare_tables.py LOCAL/results/tables SLURM/results/tables [--tol 0]

Exit 0 when every CSV table of LOCAL exists in SLURM with the same rows and columns and every
numeric cell agrees within --tol (default 0: identical); prints each differing cell otherwise.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--tol", type=float, default=0.0)
    args = ap.parse_args(argv)
    cells, numeric, diffs = compare(args.a, args.b, args.tol)
    n_tables = len(list(args.a.glob("*.csv")))
    print(f"compared {n_tables} tables, {cells} cells ({numeric} numeric): {len(diffs)} difference(s)")
    for d in diffs[:200]:
        print("  " + d)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
