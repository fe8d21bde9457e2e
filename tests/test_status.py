"""stripes status on a tiny fake results/ tree: exact counts, slowest jobs, tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stripes import cli, status

ROOT = Path(__file__).resolve().parents[1]
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
SPEC = {
    "tables": {
        "t2": {"kind": "metrics", "seeds": [0, 1], "best_of": [],
               "rows": [{"pe": "rope_a", "context": "time"}, {"pe": "rope_b", "context": "time"},
                        {"pe": "rope_a", "context": "bin"}]},
        # one fixed row plus the best of t2's TIME rows, with this table's (single) seed
        "t3": {"kind": "metrics", "seeds": [0], "best_of": [["t2", "time"]],
               "rows": [{"pe": "fstripe1", "context": "bin"}]},
        "mi": {"kind": "mutual_information", "seeds": [], "best_of": [], "rows": []},
    },
    "runs": [["fstripe1", "bin", 0], ["rope_a", "bin", 0], ["rope_a", "bin", 1], ["rope_a", "time", 0],
             ["rope_a", "time", 1], ["rope_b", "time", 0], ["rope_b", "time", 1]],
    "runs_root": "results/eval",
    "scale": "smoke",
}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture()
def results(tmp_path) -> Path:
    res = tmp_path / "results"
    _write(res / "tables" / "spec.json", json.dumps(SPEC))
    ev = res / "eval"
    done = json.dumps({"test_16": {"cs": 0.5}})
    _write(ev / "rope_a" / "time" / "seed0" / "metrics.json", done)
    _write(ev / "rope_a" / "time" / "seed1" / "metrics.json",
           json.dumps({"status": "failed", "error": "RuntimeError('non-finite loss at step 3')"}))
    _write(ev / "rope_b" / "time" / "seed0" / "metrics.json", done)
    # rope_b/time/seed1: missing (its folder exists, the job is running)
    (ev / "rope_b" / "time" / "seed1").mkdir(parents=True)
    _write(ev / "rope_a" / "bin" / "seed0" / "metrics.json", done)
    _write(ev / "rope_a" / "bin" / "seed1" / "metrics.json", "{truncated")
    _write(ev / "fstripe1" / "bin" / "seed0" / "metrics.json", done)
    b = res / "benchmarks"
    _write(b / "data" / "prepare.tsv", BENCH_HEADER + "100.25\t0:01:40\t1\t1\t1\t1\t0\t0\t50\t90\n")
    _write(b / "train_evaluate" / "rope_a" / "time" / "seed0.tsv",
           BENCH_HEADER + "3725.4\t1:02:05\t1\t1\t1\t1\t0\t0\t99\t3700\n")
    _write(b / "aggregate.tsv", BENCH_HEADER + "1.0\t0:00:01\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n"
                                               "3.0\t0:00:03\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
    _write(b / "report_spec.tsv", BENCH_HEADER + "NA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
    for ext in ("csv", "md", "tex"):
        _write(res / "tables" / f"t2.{ext}", "x")
    _write(res / "tables" / "mi.csv", "x")
    _write(res / "tables" / "failures.csv", "pe,context,seed,reason\n")
    return res


def test_summary_counts_runs_per_table(results):
    s = status.summarize(results)
    assert s["tables"] == {
        "t2": {"runs": 6, "done": 3, "failed": 2, "missing": 1},
        # fstripe1/bin/0 + t2's TIME rows rope_a/time/0 and rope_b/time/0, all done
        "t3": {"runs": 3, "done": 3, "failed": 0, "missing": 0},
    }
    assert s["all"] == {"runs": 7, "done": 4, "failed": 2, "missing": 1}
    assert s["failed"] == [{"run": "rope_a/bin/seed1", "reason": "unreadable metrics.json"},
                           {"run": "rope_a/time/seed1", "reason": "RuntimeError('non-finite loss at step 3')"}]
    assert s["jobs"] == [{"job": "train_evaluate/rope_a/time/seed0", "s": 3725.4}, {"job": "data/prepare", "s": 100.25},
                         {"job": "aggregate", "s": 2.0}]
    assert (s["built"], s["not_built"]) == ({"t2": ["csv", "md", "tex"], "mi": ["csv"]}, ["t3"])
    assert s["failures_csv"] == str(results / "tables" / "failures.csv")


def test_status_screen(results, capsys):
    assert cli.main(["status", "--results", str(results), "--top", "2"]) == 0
    r = str(results)
    assert capsys.readouterr().out.splitlines() == [
        f"study in {r}/ (scale: smoke)",
        "",
        "table      runs   done  failed  missing",
        "t2            6      3       2        1",
        "t3            3      3       0        0",
        "all runs      7      4       2        1",
        "",
        "failed runs (2):",
        "  rope_a/bin/seed1: unreadable metrics.json",
        "  rope_a/time/seed1: RuntimeError('non-finite loss at step 3')",
        "",
        "slowest jobs (2 of 3 benchmarked, wall clock):",
        "   1:02:05  train_evaluate/rope_a/time/seed0",
        "   0:01:40  data/prepare",
        "",
        f"tables in {r}/tables/: t2.{{csv,md,tex}}, mi.csv",
        "not built yet: t3",
        f"failures: {r}/tables/failures.csv",
    ]


def test_status_json_and_no_study(results, tmp_path, capsys):
    assert status.main(["--results", str(results), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["all"] == {"runs": 7, "done": 4, "failed": 2, "missing": 1}
    assert status.main(["--results", str(tmp_path / "nothing")]) == 2
    assert "spec.json not found" in capsys.readouterr().err


def test_table_runs_match_the_dag_plan():
    """The runs counted per table are those the DAG plans (config.StudyPlan.table_runs)."""
    from stripes.study import load_config, plan_study, report_spec

    cfg = load_config(ROOT / "config" / "config.yaml")
    plan = plan_study(cfg)
    spec = json.loads(json.dumps(report_spec(cfg, plan)))  # as the report_spec rule writes it
    assert plan.metric_tables and any(spec["tables"][n]["best_of"] for n in plan.metric_tables)
    for name in plan.metric_tables:
        assert status.table_runs(spec, name) == plan.table_runs(name), name
