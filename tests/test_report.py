"""stripes.report on synthetic metrics.json files: layout, marks, missing cells, reference diff."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from stripes import report

SEEDS = [0, 1, 2, 3, 4]
JITTER = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])


def write_metrics(root: Path, pe: str, ctx: str, seed: int, values: dict, settings=("test_16", "test_64"),
                  extra: dict | None = None):
    """``extra``: setting -> keys added to that block (bce, flags, ...); without it, the old layout."""
    m = {}
    for s in settings:
        m[s] = {"cs": values["cs"], "ssmd50": values.get("ssmd", 14.0), "ssmd100": 2 * values.get("ssmd", 14.0),
                "gs": values.get("gs", 20.0), "ndd": values.get("ndd", 90.0), "n_windows": 10,
                **((extra or {}).get(s) or {})}
    p = root / pe / ctx / f"seed{seed}" / "metrics.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(m))


def put(root, pe, ctx, cs_values, **kw):
    for s, v in zip(SEEDS, cs_values):
        write_metrics(root, pe, ctx, s, {"cs": float(v), **kw})


def spec_for(tmp_path, tables, runs=()):
    return {"tables": tables, "runs": [list(r) for r in runs], "runs_root": str(tmp_path / "eval"),
            "reference_csv": str(tmp_path / "ref.csv"), "mi_table": str(tmp_path / "mi.csv"), "mi_figure": {}}


def table(rows, seeds=SEEDS, **kw):
    return {"kind": "metrics", "caption": "t", "seeds": list(seeds), "ssmd_scale": 50, "reference": [],
            "select": {}, "group_by": "context", "contexts": [], "rows": rows, "best_of": [], **kw}


def row(pe, ctx, settings=("test_16", "test_64")):
    return {"pe": pe, "context": ctx, "settings": list(settings)}


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_significance_marks_exact(tmp_path):
    ev = tmp_path / "eval"
    # context time: a clearly best  -> '*'
    put(ev, "a", "time", 10 + JITTER)
    put(ev, "b", "time", 5 + JITTER)
    put(ev, "c", "time", 1 + JITTER)
    # context rep: best ~ second (not significant), best >> third -> '†'
    put(ev, "a", "rep", 10 + 3 * JITTER)
    put(ev, "b", "rep", 9.9 + 3 * JITTER[::-1])
    put(ev, "c", "rep", 2 + JITTER)
    # context key: all the same -> no mark, but a best is still marked
    put(ev, "a", "key", 7 + JITTER)
    put(ev, "b", "key", 7 + JITTER[::-1])
    put(ev, "c", "key", 7.01 + JITTER)
    rows = [row(p, c) for c in ("time", "rep", "key") for p in "abc"]
    spec = spec_for(tmp_path, {"t2": table(rows, contexts=["time", "rep", "key"])})
    report.aggregate(spec, tmp_path)
    recs = {(r["pe"], r["context"]): r for r in read_csv(tmp_path / "tables" / "t2.csv")}
    assert recs[("a", "time")]["cs_16_mark"] == "*" and recs[("a", "time")]["cs_16_best"] == "1"
    assert recs[("b", "time")]["cs_16_mark"] == "" and recs[("b", "time")]["cs_16_best"] == "0"
    assert recs[("a", "rep")]["cs_16_mark"] == "†"
    assert recs[("c", "key")]["cs_16_best"] == "1" and recs[("c", "key")]["cs_16_mark"] == ""
    assert float(recs[("a", "time")]["cs_16_mean"]) == pytest.approx(10.0)
    assert float(recs[("a", "time")]["cs_16_std"]) == pytest.approx(np.std(10 + JITTER, ddof=1), abs=1e-4)
    # SSMD is "lower is better": every row equal -> best marked, no significance
    assert sum(r["ssmd_16_best"] == "1" for r in recs.values() if r["context"] == "time") == 1
    assert recs[("a", "time")]["ssmd_16_mark"] == ""
    md = (tmp_path / "tables" / "t2.md").read_text()
    assert "**10.00 ± 0.16*** " in md or "**10.00 ± 0.16*" in md
    tex = (tmp_path / "tables" / "t2.tex").read_text()
    assert "$^{\\dagger}$" in tex and "\\underline{" in tex


def test_student_vs_welch_choice():
    a = [10.0, 10.1, 9.9, 10.2, 9.8]
    b_equal = [9.0, 9.1, 8.9, 9.2, 8.8]
    b_wide = [6.0, 12.0, 4.0, 14.0, 9.0]
    assert report.ttest_p(a, b_equal) == pytest.approx(stats.ttest_ind(a, b_equal, equal_var=True).pvalue)
    assert stats.levene(a, b_wide).pvalue < 0.05
    assert report.ttest_p(a, b_wide) == pytest.approx(stats.ttest_ind(a, b_wide, equal_var=False).pvalue)
    assert report.ttest_p(a, b_wide) != pytest.approx(stats.ttest_ind(a, b_wide, equal_var=True).pvalue)


def test_missing_cells_and_na(tmp_path):
    ev = tmp_path / "eval"
    put(ev, "a", "time", 10 + JITTER)
    put(ev, "b", "time", 5 + JITTER)
    (ev / "b" / "time" / "seed3" / "metrics.json").unlink()  # one seed missing -> the whole cell is missing
    put(ev, "c", "time", 3 + JITTER)
    (ev / "c" / "time" / "seed0" / "metrics.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    for s in SEEDS:
        write_metrics(ev, "d", "time", s, {"cs": 4.0 + s}, settings=("test_16",))
    rows = [row("a", "time"), row("b", "time"), row("c", "time"), row("d", "time", ["test_16"])]
    runs = [(p, "time", s) for p in "abcd" for s in SEEDS]
    spec = spec_for(tmp_path, {"t": table(rows)}, runs)
    report.aggregate(spec, tmp_path)
    recs = {r["pe"]: r for r in read_csv(tmp_path / "tables" / "t.csv")}
    assert recs["b"]["cs_16_mean"] == "" and recs["c"]["cs_64_mean"] == ""
    assert recs["d"]["cs_64_mean"] == "n/a" and recs["d"]["cs_16_mean"] != ""
    md = (tmp_path / "tables" / "t.md").read_text()
    b_line = next(line for line in md.splitlines() if line.startswith("| time | b |"))
    # 8 paper cells + 2 BCE cells (old metrics.json without bce)
    assert b_line.count(report.MISSING) == 10 and not any(ch.isdigit() for ch in b_line.split("| b |")[1])
    d_line = next(line for line in md.splitlines() if line.startswith("| time | d |"))
    assert d_line.count("n/a") == 5
    fails = read_csv(tmp_path / "tables" / "failures.csv")
    assert {(f["pe"], f["seed"]) for f in fails} == {("b", "3"), ("c", "0")}
    assert next(f for f in fails if f["pe"] == "c")["reason"] == "boom"
    # with only a (and d) complete, a is best but nothing to test against at 64 bars
    assert recs["a"]["cs_64_best"] == "1" and recs["a"]["cs_64_mark"] == ""


def test_best_of_selects_from_source_table_and_reference_diff(tmp_path):
    ev = tmp_path / "eval"
    for ctx, best in (("time", "rope_c"), ("bin", "rope_a")):
        for pe in ("rope_a", "rope_b", "rope_c"):
            put(ev, pe, ctx, (12 if pe == best else 6) + JITTER)
        put(ev, "ropepool", ctx, 8 + JITTER)
    t2 = table([row(p, c) for c in ("time", "bin") for p in ("rope_a", "rope_b", "rope_c")], contexts=["time", "bin"])
    t3 = table([row("ropepool", c) for c in ("time", "bin")], contexts=["time", "bin"],
               best_of=[["t2", "time"], ["t2", "bin"]], select={"metric": "cs", "setting": "test_16"},
               reference=["p3", "p2"])
    (tmp_path / "ref.csv").write_text(
        "# comment\ntable,pe,context,setting,metric,mean,std,mark\n"
        "p3,rope_c,time,test_16,cs,4.5,4.16,\n"
        "p2,rope_a,bin,test_16,cs,1.81,0.34,\n"
        "p3,ropepool,time,test_64,cs,n/a,,\n")
    spec = spec_for(tmp_path, {"t2": t2, "t3": t3})
    report.aggregate(spec, tmp_path)
    recs = read_csv(tmp_path / "tables" / "t3.csv")
    assert [(r["pe"], r["context"]) for r in recs] == [("rope_c", "time"), ("ropepool", "time"),
                                                       ("rope_a", "bin"), ("ropepool", "bin")]
    assert recs[0]["selected_from"].startswith("t2")
    assert recs[0]["cs_16_paper"] == "4.5" and float(recs[0]["cs_16_diff"]) == pytest.approx(12 - 4.5)
    assert recs[2]["cs_16_paper"] == "1.81" and float(recs[2]["cs_16_diff"]) == pytest.approx(12 - 1.81)
    assert recs[1]["cs_64_paper"] == "n/a" and recs[1]["cs_64_diff"] == ""
    assert recs[1]["ssmd_16_paper"] == ""  # not in the reference
    assert recs[0]["cs_16_mark"] == "*"  # 12 vs 8 vs 8
    md = (tmp_path / "tables" / "t3.md").read_text()
    assert "Published numbers" in md and "(Δ 7.50)" in md
    # the paper has no BCE: its two columns stay empty in the comparison
    published = md.split("Published numbers")[1]
    assert _line(published, "| time | rope_c |").endswith("(Δ 7.50) | – | – | – | – | – | – | – |  |  |")


def test_figure4_and_mi_table(tmp_path):
    ev = tmp_path / "eval"
    for ctx in ("time", "bin"):
        put(ev, "x", ctx, 5 + JITTER)
    (tmp_path / "mi.csv").write_text("context,mi_nats,bias\ntime,0.001,0.0005\nbin,0.2,0.0001\n")
    assert report.read_mi(tmp_path / "mi.csv") == {"time": 0.001, "bin": 0.2}
    spec = spec_for(tmp_path, {"t": table([row("x", "time"), row("x", "bin")]),
                               "mi": {"kind": "mutual_information", "caption": "MI", "contexts": ["bin", "time"]}})
    spec["mi_figure"] = {"table": "t", "setting": "test_16"}
    out = report.aggregate(spec, tmp_path)
    png = tmp_path / "figures" / "mi_vs_performance.png"
    assert png.exists() and png.stat().st_size > 5000 and str(png) in out["written"]
    mi_rows = read_csv(tmp_path / "tables" / "mi.csv")
    assert [r["context"] for r in mi_rows] == ["bin", "time"]
    assert (tmp_path / "tables" / "mi.md").exists() and (tmp_path / "tables" / "mi.tex").exists()


# ----------------------------------------------------------------------------- beyond the paper


def _line(text: str, prefix: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(prefix))


def test_bce_column_exact_values_and_marks(tmp_path):
    ev = tmp_path / "eval"
    k = np.arange(5)
    # time: CS ranks b > a > c while BCE (lower is better) ranks a < b < c -> a best on BCE, '*'
    cs = {"a": 5.0, "b": 10.0, "c": 1.0}
    bce = {"a": 0.050 + 0.001 * k, "b": 0.060 + 0.001 * k, "c": 0.070 + 0.001 * k}
    # rep: a ~ b (not significant), a far below c -> '†'
    rep = {"a": 0.100 + 0.03 * JITTER, "b": 0.101 + 0.03 * JITTER[::-1], "c": 0.200 + 0.01 * JITTER}
    assert report.ttest_p(rep["a"], rep["b"]) >= 0.05 and report.ttest_p(rep["a"], rep["c"]) < 0.05
    for pe in "abc":
        for s in SEEDS:
            write_metrics(ev, pe, "time", s, {"cs": cs[pe] + JITTER[s]},
                          extra={"test_16": {"bce": float(bce[pe][s])}, "test_64": {"bce": float(bce[pe][s] + 0.1)}})
            write_metrics(ev, pe, "rep", s, {"cs": 5.0 + JITTER[s]},
                          extra={"test_16": {"bce": float(rep[pe][s])}, "test_64": {"bce": float(rep[pe][s])}})
    rows = [row(p, c) for c in ("time", "rep") for p in "abc"]
    report.aggregate(spec_for(tmp_path, {"t": table(rows, contexts=["time", "rep"])}), tmp_path)
    recs = {(r["pe"], r["context"]): r for r in read_csv(tmp_path / "tables" / "t.csv")}
    a = recs[("a", "time")]
    assert (a["bce_16_mean"], a["bce_16_std"], a["bce_16_mark"], a["bce_16_best"], a["bce_16_n"]) == (
        "0.052000", "0.001581", "*", "1", "5")  # std: sqrt(2.5e-6)
    assert (a["bce_64_mean"], a["bce_64_std"], a["bce_64_mark"]) == ("0.152000", "0.001581", "*")
    b = recs[("b", "time")]
    assert (b["bce_16_mean"], b["bce_16_mark"], b["bce_16_best"]) == ("0.062000", "", "0")
    assert b["cs_16_best"] == "1" and a["cs_16_best"] == "0"  # the directions differ
    assert recs[("a", "rep")]["bce_16_mark"] == "†" and recs[("a", "rep")]["bce_16_mean"] == "0.100000"
    assert recs[("c", "rep")]["bce_16_best"] == "0"
    md = (tmp_path / "tables" / "t.md").read_text()
    assert "| BCE↓ (16; nats/cell, not in the paper) | BCE↓ (64; nats/cell, not in the paper) |" in md
    assert _line(md, "| time | a |").endswith("| **0.0520 ± 0.0016*** | **0.1520 ± 0.0016*** |")
    assert _line(md, "| rep | a |").endswith("| **0.1000 ± 0.0047†** | **0.1000 ± 0.0047†** |")
    tex = (tmp_path / "tables" / "t.tex").read_text()
    assert "\\begin{tabular}{ll" + "c" * 10 + "}" in tex
    assert "\\multicolumn{2}{c}{BCE$\\downarrow$ (nats/cell, not in the paper)} \\\\" in tex
    # best of the table at 16 bars is time/a (0.052); at 64 bars rep/a (0.100 < 0.152)
    assert _line(tex, "TIME & a &").endswith(
        "& \\textbf{\\underline{0.0520$\\pm$0.0016}}$^{*}$ & \\underline{0.1520$\\pm$0.0016}$^{*}$ \\\\")
    assert _line(tex, "REP & a &").endswith(
        "& \\underline{0.1000$\\pm$0.0047}$^{\\dagger}$ & \\textbf{\\underline{0.1000$\\pm$0.0047}}$^{\\dagger}$ \\\\")


def test_degenerate_marks_and_footnote(tmp_path):
    ev = tmp_path / "eval"
    seeds = [0, 1, 2]
    for s in seeds:
        # a: every seed dense at 16 bars; b: one empty and one dense seed at 64 bars, no flags key at 16
        write_metrics(ev, "a", "time", s, {"cs": 10.0 + 0.1 * (s - 1)},
                      extra={"test_16": {"bce": 0.1, "flags": ["dense"]}, "test_64": {"bce": 0.1, "flags": []}})
        write_metrics(ev, "b", "time", s, {"cs": 5.0 + 0.1 * (s - 1)},
                      extra={"test_16": {"bce": 0.2}, "test_64": {"bce": 0.2, "flags": {1: ["empty"], 2: ["dense"]}.get(s, [])}})
    report.aggregate(spec_for(tmp_path, {"t": table([row("a", "time"), row("b", "time")], seeds=seeds)}), tmp_path)
    recs = {r["pe"]: r for r in read_csv(tmp_path / "tables" / "t.csv")}
    assert (recs["a"]["flags_16"], recs["a"]["flags_64"]) == ("dense:3/3", "")
    assert (recs["b"]["flags_16"], recs["b"]["flags_64"]) == ("", "dense:1/3;empty:1/3")
    md = (tmp_path / "tables" / "t.md").read_text()
    a_line, b_line = _line(md, "| time | a |"), _line(md, "| time | b |")
    # the four binarised metrics of the flagged setting; BCE is threshold-free and stays unmarked
    assert a_line.count("<sup>d</sup>") == 4 and "| **10.00 ± 0.10***<sup>d</sup> |" in a_line
    assert a_line.endswith("| **0.1000 ± 0.0000*** | **0.1000 ± 0.0000*** |")
    assert b_line.count("<sup>de</sup>") == 4 and "| 5.00 ± 0.10<sup>de</sup> |" in b_line
    assert "<sup>d</sup> dense: in at least one seed the selected binarised prediction is far denser than its target." in md
    assert "<sup>e</sup> empty: in at least one seed the selected binarised prediction is empty." in md
    tex = (tmp_path / "tables" / "t.tex").read_text()
    assert "\\textbf{\\underline{10.00$\\pm$0.10}}$^{*,\\mathrm{d}}$" in _line(tex, "TIME & a &")
    assert "& 5.00$\\pm$0.10$^{\\mathrm{de}}$ &" in _line(tex, "TIME & b &")
    assert ("\\multicolumn{12}{l}{\\footnotesize $^{\\mathrm{e}}$ empty: in at least one seed the selected "
            "binarised prediction is empty (seed counts: CSV flags\\_16, flags\\_64).} \\\\") in tex.splitlines()


def test_old_metrics_json_without_new_keys_still_builds(tmp_path):
    ev = tmp_path / "eval"
    put(ev, "a", "time", 10 + JITTER)
    put(ev, "b", "time", 5 + JITTER)
    report.aggregate(spec_for(tmp_path, {"t": table([row("a", "time"), row("b", "time")])}), tmp_path)
    with open(tmp_path / "tables" / "t.csv", newline="") as fh:
        header = next(csv.reader(fh))
    legacy = ["pe", "context"] + [f"{m}_{n}_{f}" for n in ("16", "64") for m in ("cs", "ssmd", "gs", "ndd")
                                  for f in ("mean", "std", "mark", "best", "n", "paper", "paper_std", "paper_mark", "diff")]
    new = [f"bce_{n}_{f}" for n in ("16", "64") for f in ("mean", "std", "mark", "best", "n")] + ["flags_16", "flags_64"]
    assert header == legacy + ["selected_from"] + new
    recs = {r["pe"]: r for r in read_csv(tmp_path / "tables" / "t.csv")}
    assert recs["a"]["cs_16_mark"] == "*" and recs["a"]["cs_16_mean"] == "10.0000"
    assert [recs["a"][c] for c in new] == ["", "", "", "0", "0"] * 2 + ["", ""]
    md = (tmp_path / "tables" / "t.md").read_text()
    assert _line(md, "| time | a |").endswith(f"| {report.MISSING} | {report.MISSING} |")
    assert "<sup>" not in md
    tex = (tmp_path / "tables" / "t.tex").read_text()
    assert "\\mathrm{d}" not in tex and _line(tex, "TIME & a &").endswith("& -- & -- \\\\")


@pytest.mark.parametrize("scale, note", [
    ("smoke", "smoke scale: these numbers test the wiring, not the PEs"),
    ("quick", "quick scale: a learning-scale check, not the paper's scale"),
    ("full", None),
    (None, None),  # a spec written before the key existed
])
def test_scale_caption(tmp_path, scale, note):
    put(tmp_path / "eval", "a", "time", 10 + JITTER)
    spec = spec_for(tmp_path, {"t": table([row("a", "time")])})
    if scale is not None:
        spec["scale"] = scale
    report.aggregate(spec, tmp_path)
    md = (tmp_path / "tables" / "t.md").read_text().splitlines()
    tex = (tmp_path / "tables" / "t.tex").read_text().splitlines()
    if note is None:
        assert md[0] == "## t" and tex[0] == "% generated by stripes.report; t"
        assert not any("scale" in line for line in md + tex)
    else:
        assert md[0] == f"## t ({note})" and md[2] == f"**{note[0].upper()}{note[1:]}.**"
        assert tex[0] == f"% generated by stripes.report; t ({note})"
        assert f"\\multicolumn{{12}}{{l}}{{\\footnotesize \\textbf{{{note[0].upper()}{note[1:]}.}}}} \\\\" in tex


def test_report_spec_carries_the_scale():
    from stripes.study import ConfigError, load_config, report_spec, validate_schema

    root = Path(__file__).resolve().parents[1]
    base = load_config(root / "config" / "config.yaml")
    assert report_spec(base)["scale"] == "full"
    assert report_spec(load_config(root / "config" / "config.yaml", root / "config" / "smoke.yaml"))["scale"] == "smoke"
    del base["study"]["scale"]
    assert report_spec(base)["scale"] == "full"
    base["study"]["scale"] = "huge"
    with pytest.raises(ConfigError, match="study.scale"):
        validate_schema(base)
