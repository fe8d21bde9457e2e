"""Tables and figures of the study (paper-spec §5.4, §5.5, §6): CSV, Markdown, LaTeX, Figure 4.

``stripes aggregate --spec results/tables/spec.json --out results`` (the aggregate rule).

The spec (written by the workflow from config/config.yaml) lists the tables, their rows, seeds
and reference tables. Every number comes from the ``metrics.json`` files of the current DAG
(``results/eval/{pe}/{context}/seed{seed}/metrics.json``), never from "all runs of the MLflow
experiment". A cell is missing ("–" in Markdown/LaTeX, empty in CSV) when any of its seeds has no
metrics (failed run, failure record, missing file) or the row does not evaluate that setting
(``n/a``, e.g. S S-RPE at 64 bars). Means over an incomplete seed set are never shown.

Statistics (paper-spec §5.4): within each group (a context, or the whole table when
``group_by: none``) and each metric/setting, rows are ranked by their mean (↑ CS, GS; ↓ SSMD, NDD).
Best vs second-best: scipy ``levene``; equal variances (p ≥ 0.05) → Student's t, otherwise
Welch's t (``ttest_ind``, two-sided). ``*`` if p < 0.05; otherwise ``†`` if best vs third-best has
p < 0.05. The best row of each group is marked (bold in Markdown, underlined in LaTeX); the best
of the whole table is bold in LaTeX. Std is the sample std over seeds (ddof=1).

Beyond the paper:

* a ``BCE`` column group (``bce`` of each setting block: mean test BCE, nats per cell, ↓), ranked
  and marked like the others. It needs no threshold, so it separates a PE that learned nothing
  from a binarisation artefact; a metrics.json without it gives a missing cell;
* degenerate runs: a setting block's ``flags`` (``dense``: the selected binarised prediction is far
  denser than its target; ``empty``: nothing predicted) mark that setting's CS/SSMD/GS/NDD cells of
  the row (superscript ``d`` / ``e``) when any of its seeds is flagged; the CSV lists the seed
  counts in ``flags_16`` / ``flags_64``. BCE is not marked (it never sees the binarisation);
* the spec's ``scale`` (smoke | quick | full) puts a warning into the captions below full scale.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stripes.fileio import read_json
from stripes.jobs import RECORD, is_failed, read_record
from stripes.metrics import METRICS, higher_is_better
from stripes.study import SETTINGS

METRIC_ORDER = tuple(METRICS)
EXTRA_METRICS = ("bce",)  # not in the paper; columns appended after the paper's
ALL_METRICS = METRIC_ORDER + EXTRA_METRICS
# bce stays out of stripes.metrics.METRICS: that dict also validates `select.metric`, whose schema
# enum is the paper's four metrics
DIRECTIONS = {m: "max" if higher_is_better(m) else "min" for m in ALL_METRICS}
DECIMALS = {"bce": 4}  # a mean BCE of sparse piano rolls is ~0.05: two decimals would hide every difference
FLAG_MARKS = {"dense": "d", "empty": "e"}
FLAG_TEXT = {
    "d": "dense: in at least one seed the selected binarised prediction is far denser than its target",
    "e": "empty: in at least one seed the selected binarised prediction is empty",
}
SCALE_NOTES = {
    "smoke": "smoke scale: these numbers test the wiring, not the PEs",
    "quick": "quick scale: a learning-scale check, not the paper's scale",
}
BCE_TITLE = "BCE↓ (nats/cell, not in the paper)"
SETTING_SHORT = {"test_16": "16", "test_64": "64"}
ALPHA = 0.05
MISSING = "–"
NA = "n/a"


# ----------------------------------------------------------------------------- reading


def metric_key(metric: str, ssmd_scale: int) -> str:
    return f"ssmd{ssmd_scale}" if metric == "ssmd" else metric


def read_metrics(path: Path) -> dict | None:
    """metrics.json, or None when missing / a failure record / unreadable (stripes.jobs records)."""
    m = read_record(path)
    return None if m is None or is_failed(m) else m


def seed_values(runs_root: Path, pe: str, context: str, seeds: list[int], setting: str, metric: str,
                ssmd_scale: int) -> list[float | None]:
    out: list[float | None] = []
    for s in seeds:
        m = read_metrics(runs_root / pe / context / f"seed{s}" / "metrics.json")
        v = None
        if m is not None:
            v = (m.get(setting) or {}).get(metric_key(metric, ssmd_scale))
        out.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None)
    return out


def seed_flags(runs_root: Path, pe: str, context: str, seeds: list[int], setting: str) -> dict[str, int]:
    """flag -> number of seeds whose ``setting`` block carries it (missing ``flags``: none)."""
    counts: dict[str, int] = {}
    for s in seeds:
        m = read_metrics(runs_root / pe / context / f"seed{s}" / "metrics.json")
        flags = (m.get(setting) or {}).get("flags") if m is not None else None
        for f in set(flags) if isinstance(flags, list) else ():
            if f in FLAG_MARKS:
                counts[f] = counts.get(f, 0) + 1
    return counts


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    state: str = "ok"  # ok | missing | na
    mark: str = ""
    flags: str = ""  # FLAG_MARKS letters of the degenerate seeds' flags
    best: bool = False
    best_overall: bool = False

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.state == "ok" else None

    @property
    def std(self) -> float | None:
        if self.state != "ok":
            return None
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0


@dataclass
class TableRow:
    pe: str
    context: str
    cells: dict[tuple[str, str], Cell]
    selected_from: str = ""
    flags: dict[str, dict[str, int]] = field(default_factory=dict)  # setting -> flag -> seeds
    n_seeds: int = 0


# ----------------------------------------------------------------------------- statistics


def ttest_p(a: list[float], b: list[float]) -> float:
    """Levene, then Student (equal variances) or Welch two-sided t-test; NaN when undefined."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # both constant: the t statistic is undefined
        return 0.0 if a[0] != b[0] else 1.0
    lev = stats.levene(a, b).pvalue
    equal_var = bool(np.isfinite(lev) and lev >= ALPHA)
    return float(stats.ttest_ind(a, b, equal_var=equal_var).pvalue)


def mark_group(cells: list[Cell], metric: str) -> None:
    """Set best / '*' / '†' over the cells of one group (one metric, one setting)."""
    ok = [c for c in cells if c.state == "ok"]
    if not ok:
        return
    sign = -1.0 if DIRECTIONS[metric] == "max" else 1.0
    ranked = sorted(ok, key=lambda c: sign * c.mean)
    best = ranked[0]
    best.best = True
    if len(ranked) >= 2 and ttest_p(best.values, ranked[1].values) < ALPHA:
        best.mark = "*"
    elif len(ranked) >= 3 and ttest_p(best.values, ranked[2].values) < ALPHA:
        best.mark = "†"


# ----------------------------------------------------------------------------- building


def select_best(rows: list[TableRow], metric: str, setting: str) -> TableRow | None:
    """The row with the best mean on (metric, setting); ties broken by GS, then by name."""
    sign = -1.0 if DIRECTIONS[metric] == "max" else 1.0
    cands = [r for r in rows if r.cells[(setting, metric)].state == "ok"]
    if not cands:
        return None
    def key(r):
        gs = r.cells.get((setting, "gs"))
        return (sign * r.cells[(setting, metric)].mean, -(gs.mean if gs and gs.state == "ok" else -np.inf), r.pe)
    return min(cands, key=key)


def build_rows(spec: dict, tname: str, runs_root: Path, cache: dict) -> list[TableRow]:
    """The rows of one metrics table, in display order (grouped by context)."""
    if tname in cache:
        return cache[tname]
    t = spec["tables"][tname]
    seeds, scale = t["seeds"], t["ssmd_scale"]

    def make(pe, ctx, settings) -> TableRow:
        cells = {}
        flags = {}
        for s in SETTINGS:
            flags[s] = seed_flags(runs_root, pe, ctx, seeds, s) if s in settings else {}
            letters = "".join(FLAG_MARKS[f] for f in FLAG_MARKS if flags[s].get(f))
            for m in ALL_METRICS:
                if s not in settings:
                    cells[(s, m)] = Cell(state="na")
                    continue
                vals = seed_values(runs_root, pe, ctx, seeds, s, m, scale)
                if any(v is None for v in vals) or not vals:
                    cells[(s, m)] = Cell(state="missing")
                else:
                    cells[(s, m)] = Cell(values=[float(v) for v in vals])
                if m in METRIC_ORDER:
                    cells[(s, m)].flags = letters
        return TableRow(pe, ctx, cells, flags=flags, n_seeds=len(seeds))

    fixed = [make(r["pe"], r["context"], r.get("settings", list(SETTINGS))) for r in t["rows"]]
    best_rows: dict[str, TableRow] = {}
    sel = {"metric": "cs", "setting": "test_16", **(t.get("select") or {})}
    for src, ctx in t.get("best_of", []):
        src_t = spec["tables"][src]
        cand = [make(r["pe"], r["context"], r.get("settings", list(SETTINGS))) for r in _source_rows(spec, src)
                if r["context"] == ctx]
        # selection uses the source table's evaluated metrics with THIS table's seeds
        best = select_best(cand, sel["metric"], sel["setting"])
        if best is None:
            best = TableRow(f"best_of:{src}", ctx, {(s, m): Cell(state="missing") for s in SETTINGS for m in ALL_METRICS},
                            n_seeds=len(seeds))
        best.selected_from = f"{src} ({sel['metric']}, {sel['setting']})"
        best_rows[ctx] = best
        del src_t
    order = t.get("contexts") or []
    for r in fixed:
        if r.context not in order:
            order.append(r.context)
    rows: list[TableRow] = []
    for ctx in order:
        if ctx in best_rows:
            rows.append(best_rows[ctx])
        rows += [r for r in fixed if r.context == ctx]
    # marks
    groups: dict[str, list[TableRow]] = {}
    for r in rows:
        groups.setdefault(r.context if t.get("group_by", "context") == "context" else "", []).append(r)
    for s in SETTINGS:
        for m in ALL_METRICS:
            for g in groups.values():
                mark_group([r.cells[(s, m)] for r in g], m)
            ok = [r.cells[(s, m)] for r in rows if r.cells[(s, m)].state == "ok"]
            if ok:
                sign = -1.0 if DIRECTIONS[m] == "max" else 1.0
                min(ok, key=lambda c: sign * c.mean).best_overall = True
    cache[tname] = rows
    return rows


def _source_rows(spec: dict, tname: str) -> list[dict]:
    return spec["tables"][tname]["rows"]


# ----------------------------------------------------------------------------- reference


def load_reference(path: Path) -> dict[tuple, dict]:
    """results/reference/paper_tables.csv -> {(table, pe, context, setting, metric): row}."""
    ref: dict[tuple, dict] = {}
    if not path.exists():
        return ref
    with open(path, newline="") as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            ref[(row["table"], row["pe"], row["context"], row["setting"], row["metric"])] = row
    return ref


def reference_value(ref: dict, tables: list[str], pe: str, ctx: str, setting: str, metric: str):
    for t in tables:
        row = ref.get((t, pe, ctx, setting, metric))
        if row is not None:
            if row["mean"] in ("", "n/a"):
                return NA, None, ""
            return float(row["mean"]), float(row["std"]) if row["std"] not in ("",) else None, row.get("mark", "")
    return None, None, ""


# ----------------------------------------------------------------------------- writing


def fmt(x: float | None, nd: int = 2) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def cell_text(c: Cell, bold: str = "**", nd: int = 2) -> str:
    if c.state == "na":
        return NA
    if c.state == "missing":
        return MISSING
    s = f"{c.mean:.{nd}f} ± {c.std:.{nd}f}{c.mark}"
    s = f"{bold}{s}{bold}" if c.best and bold else s
    return s + (f"<sup>{c.flags}</sup>" if c.flags else "")


def flags_text(row: TableRow, setting: str) -> str:
    """CSV form of a row's degenerate seeds in one setting, e.g. ``dense:3/3;empty:1/3``."""
    counts = row.flags.get(setting) or {}
    return ";".join(f"{f}:{counts[f]}/{row.n_seeds}" for f in FLAG_MARKS if counts.get(f))


def scale_note(spec: dict) -> str:
    return SCALE_NOTES.get(spec.get("scale", "full"), "")


def caption_text(spec: dict, t: dict, tname: str) -> str:
    note = scale_note(spec)
    cap = t.get("caption", tname)
    return f"{cap} ({note})" if note else cap


def flagged_marks(rows: list[TableRow]) -> list[str]:
    """The FLAG_MARKS letters used anywhere in the table, in FLAG_MARKS order."""
    used = {f for r in rows for counts in r.flags.values() for f, n in counts.items() if n}
    return [FLAG_MARKS[f] for f in FLAG_MARKS if f in used]



def cell_columns(rec: dict, col: str, c: Cell, digits: int) -> None:
    """The CSV columns ``{col}_mean/_std/_mark/_best/_n`` of one cell."""
    rec[f"{col}_mean"] = fmt(c.mean, digits) if c.state == "ok" else (NA if c.state == "na" else "")
    rec[f"{col}_std"] = fmt(c.std, digits) if c.state == "ok" else ""
    rec[f"{col}_mark"] = c.mark
    rec[f"{col}_best"] = int(c.best)
    rec[f"{col}_n"] = len(c.values)


def table_records(spec: dict, tname: str, rows: list[TableRow], ref: dict) -> list[dict]:
    t = spec["tables"][tname]
    refs = t.get("reference") or []
    refs = [refs] if isinstance(refs, str) else list(refs)
    out = []
    for r in rows:
        rec = {"pe": r.pe, "context": r.context}
        for s in SETTINGS:
            short = SETTING_SHORT[s]
            for m in METRIC_ORDER:
                c = r.cells[(s, m)]
                col = f"{m}_{short}"
                cell_columns(rec, col, c, 4)
                pv, ps, pm = reference_value(ref, refs, r.pe, r.context, s, m) if refs else (None, None, "")
                rec[f"{col}_paper"] = "" if pv is None else (pv if pv == NA else f"{pv:g}")
                rec[f"{col}_paper_std"] = "" if ps is None else f"{ps:g}"
                rec[f"{col}_paper_mark"] = pm
                rec[f"{col}_diff"] = fmt(c.mean - pv, 4) if (c.state == "ok" and isinstance(pv, float)) else ""
        rec["selected_from"] = r.selected_from
        for s in SETTINGS:
            for m in EXTRA_METRICS:
                c = r.cells[(s, m)]
                col = f"{m}_{SETTING_SHORT[s]}"
                cell_columns(rec, col, c, 6)
        for s in SETTINGS:
            rec[f"flags_{SETTING_SHORT[s]}"] = flags_text(r, s)
        out.append(rec)
    return out


def write_csv(records: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(records[0]) if records else ["pe", "context"])
        w.writeheader()
        w.writerows(records)


def _md_header() -> list[str]:
    cols = ["context", "PE"]
    for s in SETTINGS:
        cols += [f"{m.upper()}{'↑' if METRICS[m] == 'max' else '↓'} ({SETTING_SHORT[s]})" for m in METRIC_ORDER]
    cols += [f"BCE↓ ({SETTING_SHORT[s]}; nats/cell, not in the paper)" for s in SETTINGS]
    return cols


def _row_cells(r: TableRow) -> list[str]:
    """Markdown cells of one row: the paper's groups, then the extra metrics per setting."""
    out = [cell_text(r.cells[(s, m)]) for s in SETTINGS for m in METRIC_ORDER]
    return out + [cell_text(r.cells[(s, m)], nd=DECIMALS.get(m, 2)) for m in EXTRA_METRICS for s in SETTINGS]


def write_markdown(spec: dict, tname: str, rows: list[TableRow], records: list[dict], path: Path) -> None:
    t = spec["tables"][tname]
    cols = _md_header()
    note = scale_note(spec)
    lines = [f"## {caption_text(spec, t, tname)}", ""]
    if note:
        lines += [f"**{note[0].upper() + note[1:]}.**", ""]
    lines += [f"Mean ± std over seeds {t['seeds']}; groups: {', '.join(SETTINGS.values())}. "
              f"SSMD ×{t['ssmd_scale']}. Bold: best of its group; * best vs second p<0.05, "
              f"† best vs third p<0.05 (Levene, then Student/Welch t-test). {MISSING}: missing run, {NA}: not evaluated. "
              f"{BCE_TITLE}: mean test binary cross-entropy, threshold-free.",
              "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        pe = r.pe + (" (best RoPE)" if r.selected_from else "")
        lines.append("| " + " | ".join([r.context, pe] + _row_cells(r)) + " |")
    marks = flagged_marks(rows)
    if marks:
        lines += [""] + [f"<sup>{k}</sup> {FLAG_TEXT[k]}." for k in marks] + [
            "Seed counts per setting: CSV columns flags_16 / flags_64. BCE is threshold-free and never marked."]
    if t.get("reference"):
        lines += ["", "### Published numbers and difference (ours − paper)", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for rec in records:
            cells = []
            for s in SETTINGS:
                for m in METRIC_ORDER:
                    col = f"{m}_{SETTING_SHORT[s]}"
                    p = rec[f"{col}_paper"]
                    if p == "":
                        cells.append(MISSING)
                    elif p == NA:
                        cells.append(NA)
                    else:
                        d = rec[f"{col}_diff"]
                        dd = f"{float(d):.2f}" if d else MISSING
                        cells.append(f"{p} ± {rec[f'{col}_paper_std']}{rec[f'{col}_paper_mark']} (Δ {dd})")
            cells += [""] * (len(EXTRA_METRICS) * len(SETTINGS))  # the paper has no BCE
            lines.append("| " + " | ".join([rec["context"], rec["pe"]] + cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_latex(spec: dict, tname: str, rows: list[TableRow], path: Path) -> None:
    t = spec["tables"][tname]
    head = " & ".join(f"{m.upper()}$\\{'uparrow' if METRICS[m] == 'max' else 'downarrow'}$" for m in METRIC_ORDER)
    n_extra = len(EXTRA_METRICS) * len(SETTINGS)
    n_cols = 2 + len(METRIC_ORDER) * len(SETTINGS) + n_extra
    extra_head = " & ".join(SETTING_SHORT[s] for _ in EXTRA_METRICS for s in SETTINGS)
    lines = [
        "% generated by stripes.report; " + caption_text(spec, t, tname),
        "\\begin{tabular}{ll" + "c" * (n_cols - 2) + "}", "\\toprule",
        " & & \\multicolumn{4}{c}{Train 16 / Test 16} & \\multicolumn{4}{c}{Train 16 / Test 64}"
        f" & \\multicolumn{{{n_extra}}}{{c}}{{BCE$\\downarrow$ (nats/cell, not in the paper)}} \\\\",
        f"Context & PE & {head} & {head} & {extra_head} \\\\", "\\midrule",
    ]
    prev = None
    for r in rows:
        if prev is not None and r.context != prev:
            lines.append("\\midrule")
        prev = r.context
        keys = [(s, m) for s in SETTINGS for m in METRIC_ORDER] + [(s, m) for m in EXTRA_METRICS for s in SETTINGS]
        cells = [_latex_cell(r.cells[k], DECIMALS.get(k[1], 2)) for k in keys]
        pe = r.pe.replace("_", "\\_")
        lines.append(f"{r.context.upper()} & {pe} & " + " & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    notes = ["BCE: mean test binary cross-entropy in nats per cell, threshold-free; not in the paper."]
    notes += [f"$^{{\\mathrm{{{k}}}}}$ {FLAG_TEXT[k]} (seed counts: CSV flags\\_16, flags\\_64)." for k in flagged_marks(rows)]
    note = scale_note(spec)
    if note:
        notes.append(f"\\textbf{{{note[0].upper() + note[1:]}.}}")
    lines += [f"\\multicolumn{{{n_cols}}}{{l}}{{\\footnotesize {n}}} \\\\" for n in notes]
    lines.append("\\end{tabular}")
    path.write_text("\n".join(lines) + "\n")


def _latex_cell(c: Cell, nd: int) -> str:
    if c.state != "ok":
        return "--" if c.state == "missing" else "n/a"
    marks = {"*": "*", "†": "\\dagger"}.get(c.mark, "")
    if c.flags:
        marks += ("," if marks else "") + f"\\mathrm{{{c.flags}}}"
    txt = f"{c.mean:.{nd}f}$\\pm${c.std:.{nd}f}"
    if c.best:
        txt = f"\\underline{{{txt}}}"
    if c.best_overall:
        txt = f"\\textbf{{{txt}}}"
    return txt + (f"$^{{{marks}}}$" if marks else "")


# ----------------------------------------------------------------------------- Figure 4


def read_mi(path: Path) -> dict[str, float]:
    """context -> MI (nats) from the data stage's table (columns: context + mi/mi_nats/...)."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    with open(path, newline="") as fh:
        reader = csv.DictReader(line for line in fh if not line.startswith("#"))
        fields = reader.fieldnames or []
        col = next((c for c in ("mi", "mi_nats", "mutual_information", "MI") if c in fields), None)
        if col is None:
            col = next((c for c in fields if c.lower().startswith("mi") and "bias" not in c.lower()), None)
        for row in reader:
            try:
                out[row["context"]] = float(row[col])
            except (KeyError, TypeError, ValueError):
                continue
    return out


def figure4(rows: list[TableRow], mi: dict[str, float], setting: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for ax, m in zip(axes, ("cs", "gs", "ssmd", "ndd")):
        for r in rows:
            c = r.cells[(setting, m)]
            x = mi.get(r.context)
            if c.state != "ok" or x is None or x <= 0:
                continue
            ax.errorbar([x], [c.mean], yerr=[c.std], fmt="o", color="black", alpha=0.4, capsize=3, ms=5)
        ctxs = sorted({r.context for r in rows if mi.get(r.context, 0) > 0}, key=lambda k: mi[k])
        ax.set_xscale("log")
        if ctxs:
            ax.set_xticks([mi[k] for k in ctxs])
            ax.set_xticklabels([k.upper() for k in ctxs], rotation=45, ha="right", fontsize=8)
            ax.minorticks_off()
        ax.set_title(f"{m.upper()} {'↑' if METRICS[m] == 'max' else '↓'}")
        ax.set_xlabel("MI(content; context) [nats], log scale")
    axes[0].set_ylabel(f"in-domain ({SETTINGS[setting]})")
    if not mi:
        fig.suptitle("mutual-information table missing: no markers", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mi_table(src: Path, t: dict, tname: str, tables_dir: Path) -> list[str]:
    """Table I: the data stage's MI table, restricted to (and ordered by) the table's contexts."""
    rows: list[dict] = []
    fields: list[str] = ["context"]
    if src.exists():
        with open(src, newline="") as fh:
            reader = csv.DictReader(line for line in fh if not line.startswith("#"))
            fields = list(reader.fieldnames or fields)
            rows = list(reader)
    wanted = t.get("contexts") or [r.get("context") for r in rows]
    by_ctx = {r.get("context"): r for r in rows}
    out_rows = [by_ctx.get(c) or {"context": c} for c in wanted]
    paths = [tables_dir / f"{tname}.{ext}" for ext in ("csv", "md", "tex")]
    with open(paths[0], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(out_rows)

    def val(r, f):
        v = r.get(f, "")
        if v in ("", None):
            return MISSING
        try:
            return f"{float(v):.4g}"
        except ValueError:
            return str(v)

    md = [f"## {t.get('caption', tname)}", "", f"Source: {src}", "", "| " + " | ".join(fields) + " |",
          "|" + "---|" * len(fields)]
    md += ["| " + " | ".join(val(r, f) for f in fields) + " |" for r in out_rows]
    paths[1].write_text("\n".join(md) + "\n")
    tex = ["% generated by stripes.report; " + t.get("caption", tname), "\\begin{tabular}{" + "l" * len(fields) + "}",
           "\\toprule", " & ".join(f.replace("_", "\\_") for f in fields) + " \\\\", "\\midrule"]
    tex += [" & ".join(val(r, f).replace("_", "\\_") for f in fields) + " \\\\" for r in out_rows]
    tex += ["\\bottomrule", "\\end{tabular}"]
    paths[2].write_text("\n".join(tex) + "\n")
    return [str(p) for p in paths]


# ----------------------------------------------------------------------------- failed runs
# With study.record_failures a failed run's job exits 0 (so the rest of the study builds) and leaves
# failure records; nothing else tells the user. These functions name each failed run, its reason,
# its log and the command that retries it: for the aggregate step (its log and failures.csv) and
# for the Snakefile's onsuccess/onerror handlers (the console, and the exit status).

# JSON list: the retry command's prefix, set by the workflow (common.smk) for its jobs
RETRY_PREFIX_ENV = "STRIPES_RETRY_PREFIX"
# when the invocation is unknown (a job run by hand, an API call): every core, the default config
FALLBACK_PREFIX = ["snakemake", "--cores", "all"]
_FORCE_FLAGS = {"-F", "--forceall", "-f", "--force"}
_FORCE_LISTS = {"-R", "--forcerun"}
_DRY_RUN = {"-n", "--dry-run", "--dryrun"}
# invocations that neither run nor plan jobs: no failure note for them
_NOT_RUNNING = {"--unlock", "--lint", "--list-rules", "-l", "--list-target-rules", "--lt", "--summary", "-S",
                "--detailed-summary", "-D", "--dag", "--rulegraph", "--filegraph", "--report", "--cleanup-metadata",
                "--list-changes", "--lc", "--delete-all-output", "--delete-temp-output", "--archive", "--containerize",
                "--export-cwl", "--print-compilation", "--version", "-v", "--help", "-h"}


def retry_prefix(argv: list[str] | None) -> list[str]:
    """The Snakemake command line ``argv`` (sys.argv of the Snakemake process) as the start of a
    retry command: the same options (cores, config files, profile, -s, targets), so the retry
    builds the same DAG, minus its own forcing options, so the retry forces only the failed runs."""
    if not argv or "snakemake" not in str(argv[0]):
        return list(FALLBACK_PREFIX)
    out, rest = ["snakemake"], list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg in _FORCE_FLAGS or arg in _DRY_RUN or arg.startswith("--forcerun="):
            continue
        if re.fullmatch(r"-[npk]{2,}", arg) and "n" in arg:  # -np: a dry run that prints commands
            arg = arg.replace("n", "")
        if arg in _FORCE_LISTS:  # nargs="*": every following word up to the next option is its value
            while rest and not rest[0].startswith("-"):
                rest.pop(0)
            continue
        out.append(arg)
    return out


def retry_command(prefix: list[str], records: list[str]) -> str:
    """Force the jobs that write ``records``: a file target names the job in either DAG shape (separate
    train and evaluate jobs, or study.fuse_train_eval's one job), where a rule name does not; its
    downstream jobs (evaluation, tables) rerun because their input is new."""
    import shlex

    return shlex.join([*prefix, "--forcerun", *records])


def run_failure(results: str | Path, pe: str, context: str, seed: int) -> dict | None:
    """The failure of run (pe, context, seed) from its records, or None when none says failed.

    The stage that failed decides what the retry forces: training (its record, which reruns the
    evaluation too) or only the evaluation. ``log`` is the log of the job that failed (whichever of
    the split and fused jobs' logs exists)."""
    results = Path(results)
    run = f"{pe}/{context}/seed{seed}"
    train_rec, eval_rec = (results / stage / run / RECORD for stage in ("train", "eval"))
    train, ev, metrics = (read_record(p) for p in (train_rec, eval_rec, results / "eval" / run / "metrics.json"))
    if is_failed(train):
        stage, record, reason = "train", train_rec, train.get("error")
    elif is_failed(ev):
        stage, record, reason = "evaluate", eval_rec, ev.get("error")
    elif is_failed(metrics):
        stage, record, reason = "evaluate", eval_rec, metrics.get("error")
    else:
        return None
    # study.fuse_train_eval's one job per (pe, context) writes one log for the pair's runs
    logs = [results / "logs" / "train_evaluate" / f"{pe}/{context}.log",
            results / "logs" / stage / f"{pe}/{context}/seed{seed}.log"]
    log = next((p for p in logs if p.exists()), logs[1])
    return {"pe": pe, "context": context, "seed": int(seed), "stage": stage,
            "reason": _one_line(reason or "failed"), "record": str(record), "log": str(log)}


def _one_line(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def failed_runs(runs, results: str | Path = "results") -> list[dict]:
    """run_failure of every (pe, context, seed) of ``runs`` that failed, in order."""
    return [f for f in (run_failure(results, pe, ctx, seed) for pe, ctx, seed in runs) if f]


def failure_report(failures: list[dict], prefix: list[str], note: str = "") -> str:
    """The failed runs as text: each with its reason, log and retry command; then one command that
    retries them all when there are several."""
    if not failures:
        return ""
    n = len(failures)
    lines = [f"stripes: {n} run{'s' if n > 1 else ''} of the study failed{note}; "
             f"{'their' if n > 1 else 'its'} table cells show {MISSING} until retried:"]
    for f in failures:
        lines += [f"  {f['pe']}/{f['context']}/seed{f['seed']} ({f['stage']} failed): {f['reason']}",
                  f"    log:   {f['log']}",
                  f"    retry: {retry_command(prefix, [f['record']])}"]
    if n > 1:
        lines.append(f"  retry all: {retry_command(prefix, [f['record'] for f in failures])}")
    return "\n".join(lines)


def report_failed_runs(runs, results: str | Path, argv: list[str] | None, note: str = "") -> int:
    """Print failure_report of ``runs`` to stderr (for the Snakefile's handlers); the number failed.
    Quiet for an invocation that neither runs nor plans jobs (--unlock, --lint, ...)."""
    if argv and any(a in _NOT_RUNNING or a.startswith("--report=") for a in argv[1:]):
        return 0
    failures = failed_runs(runs, results)
    if failures:
        print(failure_report(failures, retry_prefix(argv), note), file=sys.stderr, flush=True)
    return len(failures)


# the jobs of one run (pe, context, seed) in either DAG shape
RUN_RULES = ("train", "evaluate", "train_evaluate")


def dag_runs(jobs) -> list[tuple[str, str, int]]:
    """(pe, context, seed) of every run with a job among ``jobs`` (Snakemake's workflow.dag.jobs): the
    handlers report the runs of this invocation only, not those its targets leave out."""
    runs = set()
    for j in jobs:
        if j.rule.name not in RUN_RULES:
            continue
        w = j.wildcards_dict
        if "seed" in w:
            runs.add((w["pe"], w["context"], int(w["seed"])))
        else:  # study.fuse_train_eval: one job per (pe, context); its outputs name its runs' seeds
            runs |= {(w["pe"], w["context"], int(s)) for s in re.findall(r"/seed(\d+)/", " ".join(map(str, j.output)))}
    return sorted(runs)


def _env_prefix() -> list[str]:
    try:
        prefix = json.loads(os.environ.get(RETRY_PREFIX_ENV, ""))
    except ValueError:
        return list(FALLBACK_PREFIX)
    return [str(a) for a in prefix] if isinstance(prefix, list) and prefix else list(FALLBACK_PREFIX)


# ----------------------------------------------------------------------------- driver


def aggregate(spec: dict, out_root: str | Path = "results") -> dict:
    out_root = Path(out_root)
    runs_root = Path(spec.get("runs_root", out_root / "eval"))
    tables_dir = out_root / "tables"
    figures_dir = out_root / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    ref = load_reference(Path(spec.get("reference_csv", "results/reference/paper_tables.csv")))
    cache: dict = {}
    written: list[str] = []
    for tname, t in spec["tables"].items():
        if t.get("kind", "metrics") == "mutual_information":
            written += mi_table(Path(spec.get("mi_table", tables_dir / "mutual_information.csv")), t, tname, tables_dir)
            continue
        if t.get("kind", "metrics") != "metrics":
            continue
        rows = build_rows(spec, tname, runs_root, cache)
        records = table_records(spec, tname, rows, ref)
        for ext, writer in (("csv", None), ("md", None), ("tex", None)):
            p = tables_dir / f"{tname}.{ext}"
            if ext == "csv":
                write_csv(records, p)
            elif ext == "md":
                write_markdown(spec, tname, rows, records, p)
            else:
                write_latex(spec, tname, rows, p)
            written.append(str(p))
    from stripes.protocol import write_selection_tables

    written += write_selection_tables(spec, runs_root, tables_dir)
    # failures: every expected run without usable metrics
    failures = []
    prefix = _env_prefix()
    for pe, ctx, seed in spec.get("runs", []):
        p = runs_root / pe / ctx / f"seed{seed}" / "metrics.json"
        if read_metrics(p) is None:
            f = run_failure(runs_root.parent, pe, ctx, seed)
            if f is None:  # no failure record: the file is missing or not a metrics file
                reason = "unreadable metrics.json" if p.exists() else "missing metrics.json"
                record = runs_root / pe / ctx / f"seed{seed}" / RECORD
                f = {"pe": pe, "context": ctx, "seed": seed, "stage": "evaluate", "reason": reason,
                     "record": str(record), "log": ""}
            failures.append(f)
    fail_path = tables_dir / "failures.csv"
    with open(fail_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["pe", "context", "seed", "stage", "reason", "log", "retry"])
        w.writeheader()
        w.writerows({**{k: f[k] for k in ("pe", "context", "seed", "stage", "reason", "log")},
                     "retry": retry_command(prefix, [f["record"]])} for f in failures)
    written.append(str(fail_path))
    if failures:  # into the aggregate job's log; the Snakefile's handlers put it on the console
        print(failure_report(failures, prefix), file=sys.stderr)
    fig_spec = spec.get("mi_figure") or {}
    if fig_spec.get("table") in spec["tables"]:
        rows = build_rows(spec, fig_spec["table"], runs_root, cache)
        mi = read_mi(Path(spec.get("mi_table", tables_dir / "mutual_information.csv")))
        p = figures_dir / spec.get("mi_figure_name", "mi_vs_performance.png")
        figure4(rows, mi, fig_spec.get("setting", "test_16"), p)
        written.append(str(p))
    summary = {"written": written, "n_failures": len(failures)}
    return summary


def main(argv: list[str] | None = None) -> int:
    # without MLflow: the workflow's job, with its summary run, is `stripes job aggregate` (stripes.jobs)
    ap = argparse.ArgumentParser(prog="stripes aggregate", description="Build the study's tables and figures.")
    ap.add_argument("--spec", required=True, help="report spec JSON written by the workflow (results/tables/spec.json)")
    ap.add_argument("--out", default="results", help="results root (tables/ and figures/ below it)")
    args = ap.parse_args(argv)
    spec = read_json(args.spec)
    summary = aggregate(spec, args.out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
