"""The binarisation selection rules side by side: ``results/tables/selection_rules.{csv,md}``.

Every evaluation records, under ``selections`` in its ``metrics.json``, the candidate that each
rule of :data:`stripes.binarize.SELECTION_RULES` picks on the validation windows and that
candidate's test scores. This table puts them side by side for every (pe, context) of the
study's metrics tables, mean ± std over the seeds the tables use, so the choice of the default
rule (``eval.selection``) rests on the pattern of the paper's own tables
(docs/evaluation-protocol.md):

* the weak rows (NoPE, TIME) sit at the no-information floor;
* the best rows reach clearly above it (paper: CS 20-29, NDD 73-85 at 16 bars);
* every row is sparser than its target (``density`` = predicted / target active cells per
  frame, below 1).

Columns per setting (16, 64): ``cs``, ``ssmd``, ``gs``, ``ndd`` (primary readings, SSMD x50),
``density`` (ratio), ``threshold`` (the thresholds picked, over seeds) and ``flags``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from stripes.binarize import SELECTION_RULES
from stripes.metrics import GRID_NAMES
from stripes.report import read_metrics

COLUMNS = GRID_NAMES
SETTINGS = ("test_16", "test_64")


def _metrics(path: Path) -> dict | None:
    """metrics.json when it is usable and records the rules (older files do not), else None."""
    m = read_metrics(path)
    return m if m is not None and "selections" in m else None


def _fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def rule_rows(spec: dict, runs_root: Path) -> list[dict]:
    """One record per (pe, context, rule) with the per-seed values of every column."""
    seeds_of: dict[tuple[str, str], set[int]] = {}
    for pe, ctx, seed in spec.get("runs", []):
        seeds_of.setdefault((pe, ctx), set()).add(int(seed))
    out = []
    for (pe, ctx), seeds in sorted(seeds_of.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        found = {s: _metrics(runs_root / pe / ctx / f"seed{s}" / "metrics.json") for s in sorted(seeds)}
        ok = {s: m for s, m in found.items() if m is not None}
        for rule in SELECTION_RULES:
            rec: dict = {"pe": pe, "context": ctx, "rule": rule, "n_seeds": len(ok), "n_expected": len(seeds)}
            for setting in SETTINGS:
                short = setting.split("_")[1]
                blocks = [m["selections"].get(rule, {}).get(setting) or {} for m in ok.values()]
                sel = [m["selections"].get(rule, {}) for m in ok.values()]
                for col in COLUMNS:
                    rec[f"{col}_{short}"] = [float(b[col]) for b in blocks
                                             if isinstance(b.get(col), (int, float)) and math.isfinite(b[col])]
                rec[f"density_{short}"] = [float(b["density_pred"]) / float(b["density_tgt"]) for b in blocks
                                           if b.get("density_pred") is not None and b.get("density_tgt")]
                rec[f"flags_{short}"] = sorted({f for b in blocks for f in b.get("flags", [])})
                rec["threshold"] = sorted({(s.get("strategy"), s.get("threshold"), s.get("gap")) for s in sel},
                                          key=str)
            out.append(rec)
    return out


def _candidate(c) -> str:
    strategy, tau, gap = c
    return f"{tau}" if strategy == "threshold" else f"{tau}+gap{gap}"


def write_selection_tables(spec: dict, runs_root: Path, tables_dir: Path) -> list[str]:
    """Write ``selection_rules.csv`` (means and stds) and ``selection_rules.md``; return the paths."""
    recs = rule_rows(spec, runs_root)
    csv_path, md_path = tables_dir / "selection_rules.csv", tables_dir / "selection_rules.md"
    value_cols = [f"{c}_{s}" for s in ("16", "64") for c in (*COLUMNS, "density")]
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["pe", "context", "rule", "n_seeds", "n_expected", "candidates",
                    *[f"{c}_{k}" for c in value_cols for k in ("mean", "std")], "flags_16", "flags_64"])
        for r in recs:
            vals = []
            for c in value_cols:
                v = r[c]
                vals += [f"{np.mean(v):.6f}" if v else "", f"{np.std(v, ddof=1):.6f}" if len(v) > 1 else ("0" if v else "")]
            w.writerow([r["pe"], r["context"], r["rule"], r["n_seeds"], r["n_expected"],
                        ";".join(_candidate(c) for c in r["threshold"]), *vals,
                        ";".join(r["flags_16"]), ";".join(r["flags_64"])])
    scale = spec.get("scale", "full")
    lines = [
        "# Binarisation selection rules side by side",
        "",
        f"Scale: {scale}. Each row: one (PE, context) and one selection rule (`eval.selection`), mean ± std "
        "over seeds of the test scores with the candidate that rule picked on the validation windows. "
        "`density` = predicted / target active cells per frame (< 1: sparser than the target). "
        "SSMD ×50. docs/evaluation-protocol.md reads this table.",
        "",
        "| context | PE | rule | picked | CS16 | SSMD16 | GS16 | NDD16 | dens16 | CS64 | SSMD64 | GS64 | NDD64 | dens64 | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        cells = [_fmt(r[c], 3 if c.startswith("density") else 2) for c in value_cols]
        flags = ",".join(sorted(set(r["flags_16"]) | set(r["flags_64"])))
        seeds = "" if r["n_seeds"] == r["n_expected"] else f" ({r['n_seeds']}/{r['n_expected']} seeds)"
        lines.append(f"| {r['context']} | {r['pe']}{seeds} | {r['rule']} | "
                     f"{', '.join(_candidate(c) for c in r['threshold'])} | " + " | ".join(cells) + f" | {flags} |")
    md_path.write_text("\n".join(lines) + "\n")
    return [str(csv_path), str(md_path)]
