"""stripes.protocol: the selection rules side by side, exact values on synthetic metrics.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from stripes import protocol
from stripes.binarize import SELECTION_RULES


def block(cs, density_pred, density_tgt=4.0, flags=()):
    return {"cs": cs, "ssmd50": 14.0, "gs": 20.0, "ndd": 90.0, "density_pred": density_pred,
            "density_tgt": density_tgt, "flags": list(flags), "n_windows": 3}


def write(root: Path, pe, ctx, seed, per_rule: dict):
    sel = {}
    for rule in SELECTION_RULES:
        cs, dens, tau, flags = per_rule.get(rule, per_rule["fixed"])
        sel[rule] = {"strategy": "threshold", "threshold": tau, "gap": 0,
                     "test_16": block(cs, dens, flags=flags), "test_64": block(cs + 1, dens)}
    p = root / pe / ctx / f"seed{seed}" / "metrics.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"test_16": sel["fixed"]["test_16"], "test_64": sel["fixed"]["test_64"],
                             "selections": sel}))


def test_selection_table_exact(tmp_path):
    runs = tmp_path / "eval"
    write(runs, "rope_c", "bin", 0, {"fixed": (10.0, 2.0, 0.5, ()), "max_cs": (40.0, 12.0, 0.2, ("dense",))})
    write(runs, "rope_c", "bin", 1, {"fixed": (14.0, 3.0, 0.5, ()), "max_cs": (44.0, 10.0, 0.4, ("dense",))})
    (runs / "nope" / "time" / "seed1").mkdir(parents=True)
    (runs / "nope" / "time" / "seed1" / "metrics.json").write_text(json.dumps({"status": "failed"}))
    write(runs, "nope", "time", 0, {"fixed": (1.0, 0.0, 0.5, ("empty",))})
    spec = {"runs": [["rope_c", "bin", 0], ["rope_c", "bin", 1], ["nope", "time", 0], ["nope", "time", 1]],
            "scale": "quick"}
    paths = protocol.write_selection_tables(spec, runs, tmp_path)
    assert paths == [str(tmp_path / "selection_rules.csv"), str(tmp_path / "selection_rules.md")]
    rows = {(r["pe"], r["rule"]): r for r in csv.DictReader(open(tmp_path / "selection_rules.csv"))}
    assert len(rows) == 2 * len(SELECTION_RULES)
    f = rows[("rope_c", "fixed")]
    assert (f["cs_16_mean"], f["cs_16_std"]) == ("12.000000", "2.828427")  # mean 12, sd of (10, 14)
    assert (f["density_16_mean"], f["density_16_std"]) == ("0.625000", "0.176777")  # (2/4 + 3/4) / 2
    assert f["cs_64_mean"] == "13.000000" and f["candidates"] == "0.5" and f["flags_16"] == ""
    m = rows[("rope_c", "max_cs")]
    assert m["cs_16_mean"] == "42.000000" and m["density_16_mean"] == "2.750000"
    assert m["candidates"] == "0.2;0.4" and m["flags_16"] == "dense"
    n = rows[("nope", "fixed")]  # one of two seeds failed: counted, not hidden
    assert (n["n_seeds"], n["n_expected"]) == ("1", "2") and n["cs_16_std"] == "0" and n["flags_16"] == "empty"
    md = (tmp_path / "selection_rules.md").read_text()
    assert "Scale: quick." in md
    assert "| bin | rope_c | max_cs | 0.2, 0.4 | 42.00 ± 2.83 |" in md
    assert "| time | nope (1/2 seeds) | fixed | 0.5 | 1.00 ± 0.00 |" in md
