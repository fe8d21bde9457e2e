"""Mutual information between pianoroll content and structural context (paper Table I, spec §5.5).

Each active cell (t, r) of a window's 384-row pianoroll (r = track*128 + pitch) is one sample:
X = r, Y = the context label of frame t (TIME: t; REP: per-window renumbered chord id; KEY: KEY
token; BIN: the 12-bit chroma as an integer; melody/chord/phrase; mcp: the triple). The plug-in
estimator I = sum p(x,y) log(p(x,y) / (p(x)p(y))) (nats) is reported with its first-order bias
(|X|-1)(|Y|-1)/(2N), |X|, |Y| the numbers of observed values and N the number of cells (A21).

Columns of results/tables/mutual_information.csv: context, mi_nats, bias_nats, n_cells, n_x, n_y
(all 16-bar windows, X = row), then variants: mi_train / bias_train (training windows only),
mi_melbridge / bias_melbridge (rows 0-255 only), mi_pitch / bias_pitch (X = MIDI pitch, row mod 128).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def mi_settings(given: dict | None = None) -> dict:
    """The ``mi`` section merged over the schema's defaults (stripes.schema); an unknown key
    raises ``stripes.schema.UnknownKeyError`` naming it and the known keys."""
    from stripes.schema import with_defaults

    return with_defaults("mi", given, where="mi setting(s)")


def entropy(counts: np.ndarray) -> float:
    """Plug-in entropy (nats) of a histogram."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(x: np.ndarray, y: np.ndarray) -> dict:
    """Plug-in MI (nats) of two paired non-negative integer arrays, with its bias term."""
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    nx, ny = int(xi.max()) + 1 if len(xi) else 0, int(yi.max()) + 1 if len(yi) else 0
    joint = np.bincount(xi * ny + yi, minlength=nx * ny).reshape(nx, ny) if len(xi) else np.zeros((0, 0))
    return mi_from_joint(joint)


def mi_from_joint(joint: np.ndarray) -> dict:
    """MI, bias and sizes from a joint count table (rows X, columns Y)."""
    joint = np.asarray(joint, dtype=np.float64)
    n = joint.sum()
    if n == 0:
        return {"mi_nats": 0.0, "bias_nats": 0.0, "n_cells": 0, "n_x": 0, "n_y": 0}
    px, py = joint.sum(1), joint.sum(0)
    nz = joint > 0
    # I = sum n_xy/N log(n_xy N / (n_x n_y))
    outer = np.outer(px, py)[nz]
    mi = float((joint[nz] / n * np.log(joint[nz] * n / outer)).sum())
    kx, ky = int((px > 0).sum()), int((py > 0).sum())
    return {"mi_nats": max(mi, 0.0), "bias_nats": (kx - 1) * (ky - 1) / (2 * n), "n_cells": int(n),
            "n_x": kx, "n_y": ky}


class _Joint:
    """Joint histogram of (x < 384, y >= 0) pairs keyed by code = y << 10 | x.

    Raw codes are folded in batches: into a dense count vector while codes stay below
    DENSE_LIMIT (every context but mcp), else into sorted sparse (code, count) arrays.
    """

    DENSE_LIMIT = 1 << 23

    def __init__(self):
        self.dense = np.zeros(0, np.int64)
        self.codes = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self.raw: list[np.ndarray] = []

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self.raw.append((np.asarray(y, np.int64) << 10) | x)

    def fold(self) -> None:
        if not self.raw:
            return
        new = np.concatenate(self.raw)
        self.raw = []
        top = int(new.max()) + 1 if len(new) else 0
        if top <= self.DENSE_LIMIT and len(self.codes) == 0:
            if top > len(self.dense):
                self.dense = np.concatenate([self.dense, np.zeros(top - len(self.dense), np.int64)])
            self.dense += np.bincount(new, minlength=len(self.dense))
            return
        if len(self.dense):  # switch to sparse for good
            nz = np.flatnonzero(self.dense)
            self.codes, self.counts, self.dense = nz, self.dense[nz], np.zeros(0, np.int64)
        codes = np.concatenate([self.codes, new])
        weights = np.concatenate([self.counts, np.ones(len(new), np.int64)])
        self.codes, inverse = np.unique(codes, return_inverse=True)
        self.counts = np.bincount(inverse, weights=weights).astype(np.int64)

    def table(self) -> np.ndarray:
        self.fold()
        codes, counts = (np.flatnonzero(self.dense), None) if len(self.dense) else (self.codes, self.counts)
        if counts is None:
            counts = self.dense[codes]
        _, yi = np.unique(codes >> 10, return_inverse=True)
        joint = np.zeros((384, int(yi.max()) + 1 if len(yi) else 0))  # x is a row < 384
        joint[codes & 1023, yi] = counts
        return joint


def compute(data_dir, contexts=None, bars: int = 16, splits=("train", "val", "test"), log=print) -> list[dict]:
    """One row per context with the main estimate and the three variants (see module doc)."""
    from stripes.contexts import scalar_labels
    from stripes.data.store import Prepared, window

    t0 = time.perf_counter()
    contexts = list(contexts or mi_settings()["contexts"])
    prepared = Prepared(data_dir)
    rep_order = prepared.settings["rep_order"]
    acc = defaultdict(_Joint)  # (context, variant) -> joint
    n_windows = 0
    # the train-only variant needs the training windows even when `splits` leaves them out
    for split in dict.fromkeys([*splits, "train"]):
        in_main = split in splits
        for sid in prepared.split[split]:
            starts = prepared.starts(sid, bars)
            if len(starts) == 0:
                continue
            song = prepared.load(sid)
            for s in starts:
                roll, streams = window(song, s, 64 * bars)
                t, r = np.nonzero(roll)
                mb = r < 256
                n_windows += in_main
                for name in contexts:
                    y = scalar_labels(name, streams, rep_order)[t]
                    if in_main:
                        acc[name, "all"].add(r, y)
                        acc[name, "melbridge"].add(r[mb], y[mb])
                        acc[name, "pitch"].add(r % 128, y)
                    if split == "train":
                        acc[name, "train"].add(r, y)
                if len(acc[contexts[0], "train"].raw) + len(acc[contexts[0], "all"].raw) >= 64:
                    # bound memory: fold raw pairs into counts every 64 windows
                    for j in acc.values():
                        j.fold()
    rows = []
    for name in contexts:
        main = mi_from_joint(acc[name, "all"].table())
        row = {"context": name, **main}
        for variant in ("train", "melbridge", "pitch"):
            v = mi_from_joint(acc[name, variant].table())
            row[f"mi_{variant}"], row[f"bias_{variant}"] = v["mi_nats"], v["bias_nats"]
        rows.append(row)
    log(f"[mi] {n_windows} windows of {bars} bars, {len(contexts)} contexts, "
        f"{time.perf_counter() - t0:.1f} s")
    return rows


COLUMNS = ["context", "mi_nats", "bias_nats", "n_cells", "n_x", "n_y", "mi_train", "bias_train",
           "mi_melbridge", "bias_melbridge", "mi_pitch", "bias_pitch"]


def write_tables(rows: list[dict], csv_path: Path, md_path: Path | None = None) -> None:
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    if md_path:
        head = ("| context | MI (nats) | bias | N cells | |X| | |Y| | MI train | MI mel+bridge | MI pitch |\n"
                "|---|---|---|---|---|---|---|---|---|\n")
        body = "".join(
            f"| {r['context']} | {r['mi_nats']:.4f} | {r['bias_nats']:.4f} | {r['n_cells']} | {r['n_x']} "
            f"| {r['n_y']} | {r['mi_train']:.4f} | {r['mi_melbridge']:.4f} | {r['mi_pitch']:.4f} |\n"
            for r in rows)
        note = ("\nPlug-in MI between the pianoroll row of each active cell and the context label of "
                "its frame, over the 16-bar windows of all splits (paper Table I; spec §5.5, A21). "
                "bias = (|X|-1)(|Y|-1)/(2N). Paper's order: TIME < REP < KEY < BIN.\n")
        Path(md_path).write_text("# Mutual information between content and context\n\n" + head + body + note)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stripes mi", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="results/data")
    ap.add_argument("--settings", default=None, help="mi settings: JSON string (config mi section)")
    ap.add_argument("--out", default="results/tables/mutual_information.csv")
    args = ap.parse_args(argv)
    from stripes.schema import UnknownKeyError

    given = json.loads(args.settings) if args.settings else {}
    try:
        s = mi_settings(given)
    except UnknownKeyError as e:
        print(f"stripes mi: error: {e}", file=sys.stderr)
        return 2
    try:
        rows = compute(args.data_dir, s["contexts"], s["bars"], s["splits"])
    except FileNotFoundError as e:
        print(f"stripes mi: error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    write_tables(rows, out, out.with_suffix(".md"))
    for r in rows:
        print(f"{r['context']:>7}: MI {r['mi_nats']:.4f} nats (bias {r['bias_nats']:.4f}, N={r['n_cells']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
