"""`stripes status`: one screen on where the study stands, read from the files of results/ only.

* Runs per metrics table, as the DAG plans them (``results/tables/spec.json``, written by the
  ``report_spec`` rule): a run is *done* when ``results/eval/{pe}/{context}/seed{s}/metrics.json``
  exists and is not a failure record, *failed* when it is one (read with
  :func:`stripes.jobs.read_record` / :func:`stripes.jobs.is_failed`, the job layer that writes them), *missing* otherwise (not run yet, or running).
* The slowest jobs, from Snakemake's benchmark files (``results/benchmarks/**/*.tsv``, column
  ``s``: wall-clock seconds; the mean when a job was benchmarked more than once).
* Which tables are built, and where.

No MLflow, no Snakemake import: it answers in well under a second on a study of any size.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from stripes.jobs import is_failed, read_record

STATES = ("done", "failed", "missing")
TABLE_EXTS = ("csv", "md", "tex")


def run_state(eval_root: Path, pe: str, context: str, seed: int) -> tuple[str, str]:
    """(state, reason) of one run; the reason says why a run is not done."""
    path = Path(eval_root) / pe / context / f"seed{seed}" / "metrics.json"
    if not path.is_file():
        return "missing", "no metrics.json"
    metrics = read_record(path)
    if metrics is None:
        return "failed", "unreadable metrics.json"
    if is_failed(metrics):
        return "failed", str(metrics.get("error", "failed"))
    return "done", ""


def table_rows(spec: dict, name: str, _seen: frozenset = frozenset()) -> list[tuple[str, str]]:
    """The (pe, context) rows a metrics table reads, as the DAG plans them
    (``TableSpec.candidate_rows``): its fixed rows, then every row of a ``best_of`` source
    table in that context."""
    t = spec["tables"][name]
    rows = [(r["pe"], r["context"]) for r in t.get("rows", [])]
    for src, ctx in t.get("best_of", []):
        if src in _seen:  # a cycle cannot pass config validation; guard against a hand-edited spec
            continue
        rows += [r for r in table_rows(spec, src, _seen | {name}) if r[1] == ctx and r not in rows]
    return rows


def table_runs(spec: dict, name: str) -> list[tuple[str, str, int]]:
    """Every (pe, context, seed) a metrics table reads: its rows, each with the table's seeds."""
    return [(pe, ctx, int(s)) for pe, ctx in table_rows(spec, name) for s in spec["tables"][name].get("seeds", [])]


def job_times(bench_root: Path) -> list[tuple[str, float]]:
    """(job, seconds) of every Snakemake benchmark file, slowest first."""
    out = []
    for f in sorted(Path(bench_root).rglob("*.tsv")):
        try:
            with open(f, newline="") as fh:
                vals = []
                for row in csv.DictReader(fh, delimiter="\t"):
                    try:
                        vals.append(float(row.get("s") or "nan"))
                    except ValueError:  # Snakemake writes NA for what it could not measure
                        continue
        except OSError:
            continue
        vals = [v for v in vals if v == v]
        if vals:
            out.append((f.relative_to(bench_root).with_suffix("").as_posix(), sum(vals) / len(vals)))
    return sorted(out, key=lambda jt: (-jt[1], jt[0]))


def summarize(results: str | Path = "results") -> dict:
    """Everything `stripes status` prints, as a dict (raises FileNotFoundError without spec.json)."""
    results = Path(results)
    spec = json.loads((results / "tables" / "spec.json").read_text())
    eval_root = results / "eval"
    states: dict[tuple[str, str, int], tuple[str, str]] = {}

    def state(run):
        if run not in states:
            states[run] = run_state(eval_root, *run)
        return states[run]

    def count(runs) -> dict:
        c = {"runs": len(runs)} | {s: 0 for s in STATES}
        for run in runs:
            c[state(run)[0]] += 1
        return c

    tables = {}
    for name, t in spec["tables"].items():
        if t.get("kind", "metrics") == "metrics":
            tables[name] = count(table_runs(spec, name))
    all_runs = [(pe, ctx, int(s)) for pe, ctx, s in spec.get("runs", [])]
    tables_dir = results / "tables"
    built = {name: [e for e in TABLE_EXTS if (tables_dir / f"{name}.{e}").is_file()] for name in spec["tables"]}
    return {
        "results": str(results),
        "scale": spec.get("scale", "full"),
        "tables": tables,
        "all": count(all_runs),
        "failed": [{"run": f"{pe}/{ctx}/seed{s}", "reason": state((pe, ctx, s))[1]}
                   for pe, ctx, s in all_runs if state((pe, ctx, s))[0] == "failed"],
        "jobs": [{"job": j, "s": s} for j, s in job_times(results / "benchmarks")],
        "tables_dir": str(tables_dir),
        "built": {n: e for n, e in built.items() if e},
        "not_built": [n for n, e in built.items() if not e],
        "failures_csv": str(tables_dir / "failures.csv") if (tables_dir / "failures.csv").is_file() else None,
    }


def hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_status(summary: dict, top: int = 5, max_failed: int = 5) -> str:
    lines = [f"study in {summary['results']}/ (scale: {summary['scale']})", ""]
    width = max([len(n) for n in summary["tables"]] + [len("all runs")])
    lines.append(f"{'table':<{width}}  {'runs':>5}  {'done':>5}  {'failed':>6}  {'missing':>7}")
    for name, c in [*summary["tables"].items(), ("all runs", summary["all"])]:
        lines.append(f"{name:<{width}}  {c['runs']:>5}  {c['done']:>5}  {c['failed']:>6}  {c['missing']:>7}")
    failed = summary["failed"]
    if failed:
        lines += ["", f"failed runs ({len(failed)}):"]
        lines += [f"  {f['run']}: {f['reason'][:100]}" for f in failed[:max_failed]]
        if len(failed) > max_failed:
            lines.append(f"  ... {len(failed) - max_failed} more: see {summary['failures_csv'] or 'the records'}")
    jobs = summary["jobs"]
    lines.append("")
    if jobs:
        lines.append(f"slowest jobs ({min(top, len(jobs))} of {len(jobs)} benchmarked, wall clock):")
        lines += [f"  {hms(j['s']):>8}  {j['job']}" for j in jobs[:top]]
    else:
        lines.append("slowest jobs: no benchmark files yet")
    lines.append("")
    built = [f"{n}.{e[0]}" if len(e) == 1 else f"{n}.{{{','.join(e)}}}" for n, e in summary["built"].items()]
    lines.append(f"tables in {summary['tables_dir']}/: {', '.join(built) if built else 'none built yet'}")
    if summary["not_built"]:
        lines.append(f"not built yet: {', '.join(summary['not_built'])}")
    if summary["failures_csv"]:
        lines.append(f"failures: {summary['failures_csv']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stripes status",
                                 description="Runs done / failed / missing per table, the slowest jobs, the tables.")
    ap.add_argument("--results", default="results", help="the study's results folder (default: %(default)s)")
    ap.add_argument("--top", type=int, default=5, help="how many of the slowest jobs to list (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    args = ap.parse_args(argv)
    try:
        summary = summarize(args.results)
    except FileNotFoundError:
        print(f"stripes status: {Path(args.results) / 'tables' / 'spec.json'} not found; start the study first "
              "(make smoke, or snakemake --cores N)", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1) if args.json else format_status(summary, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
