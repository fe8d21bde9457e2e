"""BIN vs TIME (or any two contexts) per PE, with the paper's significance test.

    .venv/bin/python tools/contrast.py [--results results] [--a bin] [--b time] [--rule RULE]

Reads ``results/tables/spec.json`` (the runs of the study) and every run's ``metrics.json``,
and prints, for each PE evaluated with both contexts, the mean over seeds of each metric under
context A and B, their difference and the two-sided p-value of the same test the tables use
(Levene, then Student's or Welch's t; :func:`stripes.report.ttest_p`). ``--rule`` reads the
test scores of another selection rule (``selections`` in metrics.json) instead of the primary
one. Used for docs/results-quick.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from stripes.report import ttest_p

METRICS = (("cs", "CS↑"), ("ssmd50", "SSMD↓"), ("gs", "GS↑"), ("ndd", "NDD↓"), ("bce", "BCE↓"))


def seed_scores(results: Path, pe: str, ctx: str, seeds: list[int], setting: str, rule: str | None) -> dict:
    out: dict[str, list[float]] = {}
    for s in seeds:
        m = json.loads((results / "eval" / pe / ctx / f"seed{s}" / "metrics.json").read_text())
        if m.get("status") == "failed":
            continue
        block = m["selections"][rule][setting] if rule else m[setting]
        for key, _ in METRICS:
            if block.get(key) is not None:
                out.setdefault(key, []).append(float(block[key]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results")
    ap.add_argument("--a", default="bin")
    ap.add_argument("--b", default="time")
    ap.add_argument("--rule", default=None)
    args = ap.parse_args()
    results = Path(args.results)
    spec = json.loads((results / "tables" / "spec.json").read_text())
    seeds: dict[tuple[str, str], list[int]] = {}
    for pe, ctx, s in spec["runs"]:
        seeds.setdefault((pe, ctx), []).append(int(s))
    pes = sorted({pe for pe, ctx in seeds if (pe, args.a) in seeds and (pe, args.b) in seeds})
    print(f"| PE | setting | metric | {args.a.upper()} | {args.b.upper()} | difference | p |")
    print("|---|---|---|---|---|---|---|")
    for pe in pes:
        for setting in ("test_16", "test_64"):
            a = seed_scores(results, pe, args.a, seeds[(pe, args.a)], setting, args.rule)
            b = seed_scores(results, pe, args.b, seeds[(pe, args.b)], setting, args.rule)
            for key, label in METRICS:
                if key not in a or key not in b:
                    continue
                digits = 4 if key == "bce" else 2
                ma, mb = float(np.mean(a[key])), float(np.mean(b[key]))
                p = ttest_p(a[key], b[key])
                print(f"| {pe} | {setting.split('_')[1]} | {label} | {ma:.{digits}f} | {mb:.{digits}f} | "
                      f"{ma - mb:+.{digits}f} | {p:.3g} |")


if __name__ == "__main__":
    main()
