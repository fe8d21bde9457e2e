"""Benchmark the data stage: prepare all POP909 songs cold (empty cache), then warm (cache hit).

    .venv/bin/python benchmarks/bench_prepare.py [--jobs N] [--songs N] [--out DIR]

Prints songs/s, wall time and peak memory (max RSS of this process and of its worker processes,
from resource.getrusage), plus the machine (nproc, CPU model). The POP909 copy is found as by
`stripes prepare` (config defaults, $STRIPES_POP909, $STRIPES_POP909_STRUCTURE). Targets:
cold < 60 s on 2 cores, warm < 5 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_mb() -> tuple[float, float]:
    """(self, largest child) max RSS in MiB (Linux reports KiB)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def cpu_seconds() -> float:
    """User+system CPU time of this process and its reaped workers (contention-independent)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--songs", type=int, default=None, help="limit to the first N songs (default: all)")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one, removed)")
    args = ap.parse_args()

    from stripes.data.prepare import prepare

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_prepare_"))
    # every song of POP909 (no filter): the report lists what could not be used
    settings = {"out_dir": str(out / "data"), "cache_dir": str(out / "cache"), "song_filter": "all",
                "max_songs": args.songs}
    print(f"machine: nproc={os.cpu_count()} cpu={cpu_model()!r} python={platform.python_version()}")
    print(f"jobs={args.jobs} out={out}")
    rows, load0 = [], os.getloadavg()[0]
    for label in ("cold", "warm"):
        t0, c0 = time.perf_counter(), cpu_seconds()
        report = prepare(settings, jobs=args.jobs, verify_files=True, log=lambda *a: None)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        # songs that went through preparation (kept or failed), not those cut by --songs
        n = report["songs_found"] - sum(r.startswith("beyond") for r in report["dropped"].values())
        rows.append((label, n, report["processed_songs"], wall, cpu, *peak_mb()))
    print(f"1-min load average before/after: {load0:.2f}/{os.getloadavg()[0]:.2f} "
          "(other processes on the machine slow the wall time; cpu_s does not depend on them)")
    print(f"{'run':<5} {'songs':>6} {'processed':>9} {'wall_s':>8} {'cpu_s':>7} {'songs/s':>8} "
          f"{'peak_self_MiB':>13} {'peak_child_MiB':>14}")
    for label, n, processed, wall, cpu, me, kids in rows:
        print(f"{label:<5} {n:>6} {processed:>9} {wall:>8.2f} {cpu:>7.1f} {n / wall:>8.1f} {me:>13.0f} {kids:>14.0f}")
    print(f"windows: {report['windows']}")
    if args.out is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
