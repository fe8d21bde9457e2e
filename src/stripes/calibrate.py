"""Metric calibration: every reading of every metric on reference predictions (paper-spec §5.2, A17).

``stripes calibrate --data-dir results/data --out-csv results/tables/metric_floor.csv
--out-md results/tables/metric_floor.md``

The papers' weakest models (NoPE, TIME contexts) predict almost nothing, so their scores are a
"no-information floor". Which reading of a metric the papers used (paper text vs the [S24]
code, ×50 vs ×100) shows in where that floor lands. This module scores reference predictions
built from each test window's own target (piano roll y) over the FULL 16- and 64-bar test sets:

================  ==================================================================
``empty``         all zeros
``target``        the target itself (the ceiling)
``shift16th``     the target delayed by one 16th (4 frames), zero-filled at the start
``keep_<f>``      a seeded random fraction f of the target's notes (a note = a maximal
                  run of active frames in one pitch row), round(f x notes) of them
``random_density`` as many active cells as the target, placed uniformly at random
``all_on``        every cell active
================  ==================================================================

One row per (setting, prediction) with the window means of every reading
(:data:`stripes.metrics.READING_NAMES`) and the onset rates; the papers' no-information rows
(from ``results/reference/paper_tables.csv``) follow as ``kind = paper`` rows, their numbers put
under every reading of the metric they report (SSMD under the ×50 columns for [S26], the ×100
ones for [F25]) so that each column reads as "measured floor vs published floor".
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

from stripes import metrics as metmod

DEFAULT_KEEP = (0.1, 0.25, 0.5)
DEFAULT_BARS = (16, 64)
#: the papers' no-information rows: (table, pe, context, setting, label)
DEFAULT_PAPER_ROWS = (
    ("s26_table2", "rope_a", "time", "test_16", "S26 Table II TIME RoPE(A)"),
    ("s26_table2", "rope_b", "time", "test_64", "S26 Table II TIME RoPE(B)"),
    ("f25_table1", "nope", "time", "test_16", "F25 Table I NoPE"),
    ("f25_table1", "nope", "time", "test_64", "F25 Table I NoPE"),
)
#: SSMD scale of each paper table (paper-spec §5.2: [S26] ×50, [F25] ×100)
SSMD_SCALE = {"s26": 50, "f25": 100}
COLUMNS = metmod.READING_NAMES + ("onset_rate_pred", "onset_rate_tgt")


def prediction_names(keep=DEFAULT_KEEP) -> list[str]:
    return ["empty", "target", "shift16th", *[f"keep_{f:g}" for f in keep], "random_density", "all_on"]


# ----------------------------------------------------------------------------- reference predictions


def notes(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Notes of a (T, P) binary roll: (pitch, start, end exclusive), a note being a maximal run of
    active frames in one pitch row; ordered by pitch, then start."""
    y = np.asarray(y) > 0
    t, p = y.shape
    edges = np.zeros((p, t + 2), dtype=np.int8)
    edges[:, 1:-1] = y.T
    d = np.diff(edges, axis=1)  # (P, T+1): +1 at a start, -1 one past an end
    pitch, start = np.nonzero(d == 1)
    _, end = np.nonzero(d == -1)  # same row-major order as the starts: they pair up
    return pitch, start, end


def keep_notes(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``round(fraction x n_notes)`` notes of ``y`` (halves round up), drawn without replacement."""
    pitch, start, end = notes(y)
    k = int(math.floor(fraction * len(pitch) + 0.5))
    idx = rng.choice(len(pitch), size=k, replace=False)
    t, p = y.shape
    delta = np.zeros((p, t + 1), dtype=np.int32)
    np.add.at(delta, (pitch[idx], start[idx]), 1)
    np.add.at(delta, (pitch[idx], end[idx]), -1)
    return (np.cumsum(delta, axis=1)[:, :t] > 0).T


def shift(y: np.ndarray, frames: int = metmod.SIXTEENTH) -> np.ndarray:
    """``y`` delayed by ``frames`` (zero-filled at the start, the tail dropped)."""
    out = np.zeros_like(y)
    out[frames:] = y[: len(y) - frames]
    return out


def random_density(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """As many active cells as ``y``, uniformly placed."""
    out = np.zeros(y.size, dtype=bool)
    out[rng.choice(y.size, size=int(np.count_nonzero(y)), replace=False)] = True
    return out.reshape(y.shape)


def reference_prediction(name: str, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference prediction ``name`` (see the module docstring) of one target window (T, P)."""
    y = np.asarray(y) > 0
    if name == "empty":
        return np.zeros_like(y)
    if name == "target":
        return y.copy()
    if name == "shift16th":
        return shift(y)
    if name.startswith("keep_"):
        return keep_notes(y, float(name[len("keep_"):]), rng)
    if name == "random_density":
        return random_density(y, rng)
    if name == "all_on":
        return np.ones_like(y)
    raise KeyError(f"unknown reference prediction {name!r}")


def window_rng(seed: int, bars: int, index: int, name: str) -> np.random.Generator:
    """One generator per (seed, setting, window, prediction): a window's draw does not depend on
    which other windows or predictions are scored."""
    tag = int.from_bytes(name.encode(), "little") % (2**63)
    return np.random.default_rng([int(seed), int(bars), int(index), tag])


# ----------------------------------------------------------------------------- scoring


def score(targets, names, seed: int = 0, bars: int = 0, chunk: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Per-window readings of every reference prediction.

    Args:
        targets: sequence of (T, P) binary target windows (all the same T).
        names: reference prediction names.
        seed, bars: seed the per-window draws (see :func:`window_rng`).
        chunk: windows scored per :func:`stripes.metrics.metric_readings` call.

    Returns:
        {prediction: {column: (N,) float64}} with :data:`COLUMNS`.
    """
    per = {name: {c: [] for c in COLUMNS} for name in names}
    for i0 in range(0, len(targets), chunk):
        y = np.stack([np.asarray(targets[i]) > 0 for i in range(i0, min(len(targets), i0 + chunk))])
        for name in names:
            pred = np.stack([reference_prediction(name, y[j], window_rng(seed, bars, i0 + j, name))
                             for j in range(len(y))])
            r = metmod.metric_readings(pred, y)
            for c in COLUMNS:
                per[name][c].append(r[c])
    return {name: {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in cols.items()}
            for name, cols in per.items()}


def load_targets(data_dir: str | Path, bars: int) -> list[np.ndarray]:
    """Piano rolls y (W, 128) of every test window of ``bars`` bars of the prepared data."""
    from stripes.data import WindowDataset

    # the context only matters for the positions, which are not used here
    ds = WindowDataset(data_dir, split="test", bars=int(bars), context="time")
    return [ds.window(i)[0][:, 256:] > 0 for i in range(len(ds))]


# ----------------------------------------------------------------------------- paper rows


def load_paper_rows(path: str | Path, rows=DEFAULT_PAPER_ROWS) -> list[dict]:
    """The papers' no-information rows from ``paper_tables.csv``, laid out on :data:`COLUMNS`.

    Each published number goes under every reading of its metric; SSMD goes under the ×50
    columns for [S26] tables and the ×100 columns for [F25] (the scale each paper reports).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"paper reference table {path} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(line for line in fh if not line.startswith("#"))
        need = {"table", "pe", "context", "setting", "metric", "mean"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns {sorted(need)}, found {reader.fieldnames}")
        ref = {(r["table"], r["pe"], r["context"], r["setting"], r["metric"]): r["mean"] for r in reader}
    out = []
    for table, pe, ctx, setting, label in rows:
        vals = {}
        for metric in metmod.METRICS:
            key = (table, pe, ctx, setting, metric)
            if key not in ref:
                raise KeyError(f"{path}: no row {','.join(key)}")
            try:
                vals[metric] = float(ref[key])
            except ValueError:
                raise ValueError(f"{path}: row {','.join(key)} has a non-numeric mean {ref[key]!r}") from None
        scale = SSMD_SCALE[table.split("_", 1)[0]]
        row = {"setting": setting, "kind": "paper", "prediction": f"{label} ({table}/{pe}/{ctx})",
               "n_windows": ""}
        for col in COLUMNS:
            metric = col.split("_", 1)[0]
            if metric.startswith("ssmd"):
                row[col] = vals["ssmd"] if metric == f"ssmd{scale}" else None
            elif metric in vals:
                row[col] = vals[metric]
            else:
                row[col] = None
        out.append(row)
    return out


# ----------------------------------------------------------------------------- tables


def floor_table(data_dir, bars=DEFAULT_BARS, keep=DEFAULT_KEEP, seed: int = 0, log=None) -> list[dict]:
    """The measured rows: one per (setting, reference prediction), window means of :data:`COLUMNS`."""
    rows = []
    for b in bars:
        t0 = time.perf_counter()
        targets = load_targets(data_dir, b)
        if not targets:
            # a small data set (smoke runs) may have no long test window: the other lengths stand
            if log:
                log(f"[calibrate] test_{b}: no {b}-bar test windows in {data_dir}, setting left out")
            continue
        per = score(targets, prediction_names(keep), seed=seed, bars=b)
        for name, cols in per.items():
            rows.append({"setting": f"test_{b}", "kind": "measured", "prediction": name,
                         "n_windows": len(targets), **{c: float(np.mean(v)) for c, v in cols.items()}})
        if log:
            log(f"[calibrate] test_{b}: {len(targets)} windows, {time.perf_counter() - t0:.1f} s")
    return rows


def _fmt(v) -> str:
    return "" if v is None or v == "" else (f"{v:.2f}" if isinstance(v, float) else str(v))


def write_csv(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["setting", "kind", "prediction", "n_windows", *COLUMNS]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]))
                        for k in fields})


def markdown(rows: list[dict]) -> str:
    head = ["prediction", "n", *COLUMNS]
    lines = [
        "# Metric floors: every metric reading on reference predictions",
        "",
        "This table calibrates the metrics: it scores trivial predictions built from each test "
        "window's own target (empty, the target itself, a 16th-note shift, a random share of its "
        "notes, random cells at its density, every cell on) under every reading of every metric "
        "(paper text vs the [S24] code; SSMD at x50 and x100), so that the papers' "
        "no-information rows (listed after each setting) show which reading and scale they used.",
        "",
        "Columns: `<metric>_<reading>`: `onset` = half-measure chroma onset vectors (paper text), "
        "`s24` = the [S24] code (SSMD: chroma of active-cell counts per 2-tick unit; GS: "
        "histogram overlap of L2-normalised 16th onset counts; NDD: mean absolute cell-count "
        "difference per 16th), `quarter` = quarter-note onset agreement (paper GS), `missing` = "
        "share of the target's cells missing per 16th (paper NDD); `onset_rate_*` = % of quarter "
        "notes with an onset. Paper rows give each published number under every reading of its "
        "metric (SSMD under x50 for [S26], x100 for [F25]).",
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        sub = [r for r in rows if r["setting"] == setting]
        n = next((r["n_windows"] for r in sub if r["kind"] == "measured"), "")
        lines += ["", f"## {setting} ({n} windows)", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for r in sub:
            label = r["prediction"] if r["kind"] == "measured" else f"*paper: {r['prediction']}*"
            lines.append("| " + " | ".join([label, _fmt(r["n_windows"]), *[_fmt(r.get(c)) for c in COLUMNS]]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stripes calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="results/data", help="prepared data (stripes prepare)")
    ap.add_argument("--reference", default="results/reference/paper_tables.csv",
                    help="published numbers (the papers' no-information rows come from here)")
    ap.add_argument("--out-csv", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--bars", type=int, nargs="+", default=list(DEFAULT_BARS), help="test window lengths")
    ap.add_argument("--keep", type=float, nargs="+", default=list(DEFAULT_KEEP),
                    help="note fractions of the keep_<f> predictions")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for f in args.keep:
        if not 0.0 <= f <= 1.0:
            ap.error(f"--keep {f}: a fraction must lie in [0, 1]")
    t0 = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    paper = load_paper_rows(args.reference)  # fail on a broken reference before the long part
    rows = floor_table(args.data_dir, args.bars, args.keep, args.seed, log=log)
    if not rows:
        raise ValueError(f"{args.data_dir}: no test windows of {', '.join(map(str, args.bars))} bars")
    settings = [f"test_{b}" for b in args.bars if any(r["setting"] == f"test_{b}" for r in rows)]
    rows += [r for r in paper if r["setting"] in settings]
    rows.sort(key=lambda r: settings.index(r["setting"]))  # stable: measured rows, then paper rows
    write_csv(rows, args.out_csv)
    Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_md).write_text(markdown(rows))
    log(f"[calibrate] wrote {args.out_csv}, {args.out_md} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
