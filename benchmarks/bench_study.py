"""Benchmark a whole study DAG: run it in a fresh copy of the working tree and print its wall time.

    .venv/bin/python benchmarks/bench_study.py [--configfile config/smoke.yaml] [--cores 2] [--keep DIR]

Copies the git-tracked and untracked-not-ignored files (what a clean clone has, plus
`results/reference/`) into a temporary folder, runs `snakemake --cores N --configfile ...` there
and prints the wall time, the CPU time of all jobs, the number of jobs, the machine and the load
average, then the ten slowest jobs read from Snakemake's `benchmark:` files. Targets: the smoke
study in at most 5 minutes on 2 cores (issue 14), `config/quick.yaml` in at most 90 minutes (issue 12).
This is a benchmark, not a test: nothing asserts the time.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_prepare import cpu_model  # noqa: E402  (same folder: the script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


def fresh_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file() and (not f.startswith(("results/", ".snakemake/")) or f.startswith("results/reference/")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def slowest_jobs(results: Path, n: int = 10) -> list[tuple[float, str]]:
    rows = []
    for f in (results / "benchmarks").rglob("*.tsv"):
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh, delimiter="\t"):
                rows.append((float(r["s"]), str(f.relative_to(results / "benchmarks"))))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/smoke.yaml")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_study_"))
    fresh_copy(work)
    snakemake = str(Path(sys.executable).parent / "snakemake")
    env = dict(os.environ, PYTHONPATH=str(work / "src"))
    print(f"machine: nproc={os.cpu_count()} cpu={cpu_model()!r} python={platform.python_version()}")
    print(f"command: snakemake --cores {args.cores} --configfile {args.configfile}   (in {work})")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([snakemake, "--cores", str(args.cores), "--configfile", args.configfile],
                          cwd=work, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    (work / "bench_study.log").write_text(proc.stdout + proc.stderr)
    out = proc.stdout + proc.stderr
    steps = [line for line in out.splitlines() if "steps (100%) done" in line]
    print(f"rc={proc.returncode} wall_s={wall:.1f} cpu_s={kids.ru_utime + kids.ru_stime:.1f} "
          f"{steps[-1].strip() if steps else ''}")
    print(f"1-min load average before/after: {load0:.2f}/{os.getloadavg()[0]:.2f}")
    print("slowest jobs (s, benchmark file):")
    for s, name in slowest_jobs(work / "results"):
        print(f"  {s:8.1f}  {name}")
    if proc.returncode != 0:
        print(out[-4000:])
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
