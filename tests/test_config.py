"""stripes.study + stripes.runconfig: schema + cross-checks (each bad-config case names its entry), the study plan,
resolved run configs, hashes; a few cases end to end through `snakemake -n`."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stripes import runconfig as rc
from stripes import study as sc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full():
    return sc.load_config(ROOT / "config" / "config.yaml")


@pytest.fixture(scope="module")
def registry(full):
    return sc.load_pe_registry(full, ROOT)


def check(cfg, registry):
    sc.validate_schema(cfg)
    return sc.check_study(cfg, registry=registry)


def bad(cfg, registry, *fragments):
    with pytest.raises(sc.ConfigError) as err:
        check(cfg, registry)
    msg = str(err.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def test_full_study_plan(full, registry):
    plan = check(full, registry)
    assert len(plan.pairs) == 29  # 12 (Table II) + 8 (Table III) + 9 (F-StrIPE Table I)
    assert len(set(plan.pairs)) == len(plan.pairs)
    assert plan.seeds[("rope_c", "bin")] == [0, 1, 2, 3, 4] and plan.seeds[("fstripe", "chord")] == [0, 1, 2]
    assert len(plan.runs) == 20 * 5 + 9 * 3
    assert plan.settings[("s_srpe", "mcp")] == ["test_16"]
    t3 = plan.tables["s26_table3"]
    assert t3.best_of == [("s26_table2", c) for c in ("time", "rep", "key", "bin")]
    assert {r.pe for r in t3.candidate_rows(plan.tables)} == {"rope_a", "rope_b", "rope_c", "fstripe1", "ropepool"}
    assert plan.metric_tables == ["s26_table2", "s26_table3", "f25_table1"]


def test_smoke_overlay_keeps_every_row(full, registry):
    smoke = sc.load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml")
    p_full, p_smoke = check(full, registry), check(smoke, registry)
    assert p_smoke.pairs == p_full.pairs
    assert {s for v in p_smoke.seeds.values() for s in v} == {0, 1}
    assert len(p_smoke.runs) == 29 * 2


def test_fused_jobs_need_the_same_seeds_for_every_pair(full, registry):
    """study.fuse_train_eval runs every seed of a pair in one job, whose outputs are fixed patterns."""
    smoke = sc.load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml")
    assert sc.fused_seeds(check(smoke, registry)) == [0, 1]
    cfg = copy.deepcopy(smoke)
    cfg["study"]["seeds"]["f25"] = [0]
    msg = bad(cfg, registry, "study.fuse_train_eval: one job trains every seed of a (pe, context) pair, so all pairs "
                             "need the same seeds, and here they differ (",
              "fstripe/chord, fstripe/mcp, fstripe/melody ...: seeds [0]", ": seeds [0, 1]",
              "Give every table the same seed set (study.seeds), or set study.fuse_train_eval: false")
    assert msg.startswith("invalid study configuration:\n  study.fuse_train_eval")
    cfg["study"]["fuse_train_eval"] = False  # separate jobs per run: any seeds
    assert check(cfg, registry).seeds[("fstripe", "chord")] == [0]


def test_quick_overlay_is_the_learning_scale_study(full, registry):
    quick = sc.load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "quick.yaml")
    plan = check(quick, registry)
    assert quick["study"]["scale"] == "quick"
    # only its own table (plus Table I, MI) is built; the paper's tables stay defined
    assert plan.metric_tables == ["quick"] and set(plan.tables) == {"s26_table1", "quick"}
    assert plan.pairs == [("fstripe1", "bin"), ("nope", "time"), ("rope_c", "bin"), ("rope_c", "time"),
                          ("ropepool", "bin"), ("ropepool", "time")]
    assert len(plan.runs) == 6 * 3 and all(v == [0, 1, 2] for v in plan.seeds.values())
    # all 866 songs, every training window, the full test sets
    assert quick["data"]["max_songs"] is None and quick["data"]["song_filter"] == "authors"
    assert quick["train"]["max_train_windows"] is None and quick["train"]["max_val_windows"] is None
    assert quick["eval"]["max_test_windows"] is None and quick["eval"]["max_val_windows"] is None
    # the papers' lr grid, tuned on the selected validation score; warm-up reaches the peak
    assert quick["tune"]["space"]["train.lr"]["choices"] == [1e-4, 5e-4, 1e-3]
    assert quick["tune"]["objective"] == "val_selected"
    assert quick["train"]["warmup_epochs"] < quick["train"]["epochs"]
    run = rc.resolve_run_config(quick, "ropepool", "bin", 0, "train", registry)
    assert run["model"]["d_model"] % run["model"]["n_heads"] == 0


def test_study_tables_selects_and_names_unknown_tables(full, registry):
    cfg = copy.deepcopy(full)
    cfg["study"]["tables"] = ["s26_table2"]
    bad(cfg, registry, "study.mi_figure.table: unknown table 's26_table3' (not among study.tables)")
    cfg["study"]["mi_figure"] = {"table": "s26_table2", "setting": "test_16"}
    plan = check(cfg, registry)
    assert plan.metric_tables == ["s26_table2"] and len(plan.pairs) == 12
    cfg["study"]["tables"] = ["s26_table2", "table9"]
    bad(cfg, registry, "study.tables: unknown table 'table9'")


def test_unknown_pe(full, registry):
    cfg = copy.deepcopy(full)
    cfg["tables"]["s26_table2"]["rows"][0]["pes"].append("rope_z")
    bad(cfg, registry, "tables.s26_table2.rows[0]", "unknown PE 'rope_z'")


def test_class_outside_allow_list(full, registry):
    reg = dict(registry, evil={"class": "os.system", "kwargs": {}, "description": "x", "reference": "x"})
    bad(full, reg, "'evil'", "outside the allow-listed prefix")


def test_unknown_kwarg(full, registry):
    reg = copy.deepcopy(registry)
    reg["rope_a"]["kwargs"]["bogus"] = 1
    bad(full, reg, "'rope_a'", "do not bind")


def test_missing_kwarg(full, registry, monkeypatch):
    from stripes.pe import PositionalEncoding

    class NeedsWidth(PositionalEncoding):
        def __init__(self, *, width: int, **structural):
            super().__init__(**structural)

    mod = type(sys)("stripes.pe._test_needs_width")
    mod.NeedsWidth = NeedsWidth
    monkeypatch.setitem(sys.modules, "stripes.pe._test_needs_width", mod)
    entry = {"class": "stripes.pe._test_needs_width.NeedsWidth", "kwargs": {}, "description": "x", "reference": "x"}
    bad(full, dict(registry, needs_width=entry), "'needs_width'", "width")
    entry["kwargs"] = {"width": 3}
    check(full, dict(registry, needs_width=entry))  # binds once given


def test_bad_entry_name(full, registry):
    reg = dict(registry)
    reg["Rope-X"] = registry["rope_a"]
    bad(full, reg, "'Rope-X'", "invalid name")


def test_pe_with_context_it_cannot_take(full, registry):
    cfg = copy.deepcopy(full)
    cfg["tables"]["f25_table1"]["rows"].append({"pe": "spe_conv", "context": "rep"})
    bad(cfg, registry, "tables.f25_table1.rows[5]", "'spe_conv' cannot take context 'rep'")


def test_table_names_unknown_context(full, registry):
    cfg = copy.deepcopy(full)
    cfg["tables"]["s26_table2"]["rows"][0]["contexts"].append("tempo")
    bad(cfg, registry, "tables.s26_table2.rows[0]", "unknown context 'tempo'")


def test_stray_unknown_key_names_its_path(full, registry):
    cfg = copy.deepcopy(full)
    cfg["tables"]["s26_table2"]["colour"] = "red"
    bad(cfg, registry, "tables.s26_table2", "colour")
    cfg = copy.deepcopy(full)
    cfg["tune"]["n_trails"] = 3
    bad(cfg, registry, "tune", "n_trails")


def test_references_between_tables_and_seed_sets(full, registry):
    cfg = copy.deepcopy(full)
    cfg["tables"]["s26_table3"]["rows"][0]["best_of"] = "s26_table9"
    cfg["tables"]["f25_table1"]["seeds"] = "f99"
    bad(cfg, registry, "tables.s26_table3.rows[0].best_of: unknown table 's26_table9'",
        "tables.f25_table1.seeds: unknown seed set 'f99'")


def test_tune_space_checks(full, registry):
    cfg = copy.deepcopy(full)
    cfg["tune"]["space"] = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}, "lr": {"type": "categorical",
                                                                                          "choices": [1]}}
    bad(cfg, registry, "tune.space.train.lr: the grid sampler needs categorical choices",
        "tune.space.lr: parameter must be a dotted path")
    cfg["tune"]["sampler"] = "tpe"
    cfg["tune"]["space"] = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}
    check(cfg, registry)


def test_unknown_search_space_key_fails_naming_the_known_keys(full, registry):
    """The old commented example `train.warmup_steps` names no key: it must fail at `snakemake -n`
    (check_study), and again in stripes.tune.full_spec before any trial, naming the known keys."""
    from stripes import schema
    from stripes.tune import full_spec

    cfg = copy.deepcopy(full)
    cfg["tune"]["sampler"] = "tpe"
    cfg["tune"]["space"]["train.warmup_steps"] = {"type": "int", "low": 0, "high": 500, "step": 40}
    cfg["tune"]["overrides"] = {"eval.treshold": 0.4}
    msg = bad(cfg, registry, "tune.space.train.warmup_steps: unknown key 'warmup_steps' of section 'train'",
              "tune.overrides.eval.treshold: unknown key 'treshold' of section 'eval'")
    assert ", ".join(schema.known_keys("train")) in msg and "warmup_epochs" in msg
    with pytest.raises(schema.ConfigError, match="train.warmup_steps: unknown key 'warmup_steps'"):
        full_spec(cfg["tune"])
    cfg["tune"]["space"] = {"train.warmup_epochs": {"type": "float", "low": 0.0, "high": 3.0, "step": 0.5}}
    cfg["tune"]["overrides"] = {"eval.threshold": 0.4}
    check(cfg, registry)
    assert full_spec(cfg["tune"])["pruner"] == schema.defaults("tune.pruner")


def test_commented_search_space_examples_name_real_keys():
    """Every `section.key: {type: ...}` example in a comment of config/config.yaml names a key."""
    import re

    from stripes import schema

    examples = re.findall(r"^#\s+((?:data|model|train|eval)\.[a-z_]+): \{type:", (ROOT / "config" / "config.yaml").read_text(),
                          re.M)
    assert examples
    assert [k for k in examples if schema.dotted_key_problem(k, sc.RUN_SECTIONS)] == []


def test_schema_is_the_single_source_of_defaults():
    """Every object is closed; the modules' merged sections are the schema's defaults; config.yaml
    restates none of the run sections (their defaults live in the schema only)."""
    from stripes import schema
    from stripes.data.settings import load_settings
    from stripes.data.sources import SOURCES
    from stripes.mi import mi_settings
    from stripes.tune import full_spec

    assert schema.closed_object_problems("config") == []
    for section in ("data", "mi", "model", "train", "eval", "tune", "mlflow"):
        node = schema.section_schema(section)
        missing = [k for k, v in node["properties"].items() if "default" not in v and k != "storage"]
        assert missing == [], (section, missing)
    assert mi_settings() == schema.defaults("mi")
    assert full_spec(None) == schema.defaults("tune")
    data = schema.defaults("data")
    data.update(pop909_url=SOURCES["pop909"].url, structure_url=SOURCES["structure"].url)
    assert load_settings(None) == data
    assert schema.defaults("model")["kernels"] == "auto"
    assert schema.defaults("tune.pruner") == {"type": "none", "n_startup_trials": 2, "n_warmup_steps": 2,
                                              "interval_steps": 1}
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert not set(raw) & {"data", "mi", "model", "train", "eval", "tune", "mlflow"}, sorted(raw)


def test_with_defaults_names_key_section_and_known_keys():
    from stripes import schema

    assert schema.with_defaults("train", {"lr": 1e-3})["lr"] == 1e-3
    with pytest.raises(KeyError) as err:  # also a ConfigError (ValueError)
        schema.with_defaults("train", {"lr_typo": 1})
    msg = str(err.value)
    assert "'lr_typo'" in msg and "section 'train'" in msg and "warmup_epochs" in msg
    assert isinstance(err.value, schema.ConfigError)
    merged = schema.with_defaults("tune", {"pruner": {"type": "median"}})
    assert merged["pruner"] == {**schema.defaults("tune.pruner"), "type": "median"}
    with pytest.raises(schema.UnknownKeyError, match="tune.pruner keys: 'n_startup'"):
        schema.with_defaults("tune", {"pruner": {"n_startup": 1}})


def test_config_readme_key_reference_is_generated_from_the_schema():
    """config/README.md's key reference is what wf_config_reference.py makes of the schema."""
    proc = subprocess.run([sys.executable, str(ROOT / "workflow" / "scripts" / "wf_config_reference.py"), "--check",
                           str(ROOT / "config" / "README.md")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + "\nrun: python workflow/scripts/wf_config_reference.py --update config/README.md"


def test_study_pe_file_is_merged_over_the_packaged_registry(tmp_path):
    """pe_registry names the study's entries: a new name adds a PE, an existing one replaces it."""
    from stripes.pe.registry import DEFAULT_REGISTRY

    packaged = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    assert sc.load_pe_registry({}, tmp_path) == packaged  # no pe_registry: the packaged PEs
    assert sc.load_pe_registry({"pe_registry": "config/pe.yaml"}, ROOT) == packaged  # the study adds none yet
    mine = {"class": "stripes.pe.rope.RoPE", "kwargs": {"schedule": "shared", "learnable": True},
            "description": "mine", "reference": "here"}
    (tmp_path / "pe.yaml").write_text(yaml.safe_dump({"rope_d": mine, "rope_a": mine}))
    reg = sc.load_pe_registry({"pe_registry": "pe.yaml"}, tmp_path)
    assert reg["rope_d"] == mine and reg["rope_a"] == mine and set(reg) == set(packaged) | {"rope_d"}
    with pytest.raises(sc.ConfigError, match="pe_registry: file .*absent.yaml not found"):
        sc.load_pe_registry({"pe_registry": "absent.yaml"}, tmp_path)


def problems(cfg, registry) -> list[str]:
    """The lines of check_study's ConfigError (no schema first: it would stop some of these earlier)."""
    with pytest.raises(sc.ConfigError) as err:
        sc.check_study(cfg, registry=registry)
    head, *lines = str(err.value).splitlines()
    assert head == "invalid study configuration:"
    return [line.strip() for line in lines]


ROTARY = [("rope_a", "stripes.pe.rope.RoPE"), ("rope_b", "stripes.pe.rope.RoPE"), ("rope_c", "stripes.pe.rope.RoPE"),
          ("fstripe1", "stripes.pe.fstripe1.FStripe1"), ("ropepool", "stripes.pe.ropepool.RoPEPool")]
EVEN = "needs an even head_dim (it rotates pairs of dimensions), got {}; choose d_model and n_heads with an even d_model / n_heads"


def test_model_shapes_are_checked_naming_the_key(full, registry):
    smoke = sc.load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml")  # d_model 64, 2 heads
    cfg = copy.deepcopy(smoke)
    cfg["model"]["n_heads"] = 3
    assert problems(cfg, registry) == [
        "model.n_heads: n_heads = 3 does not divide model.d_model = 64 (each head gets d_model / n_heads "
        "dimensions); use a divisor of 64: 1, 2, 4, 8, 16, 32, 64"]
    cfg = copy.deepcopy(full)  # every PE of the paper's tables: only the rotary ones need an even head_dim
    cfg["model"]["d_model"] = 132
    assert problems(cfg, registry) == [
        f"head_dim = model.d_model / model.n_heads = 132 / 4 = 33: PE {pe!r} ({path}) {EVEN.format(33)}"
        for pe, path in ROTARY]
    cfg = copy.deepcopy(full)
    cfg["model"].update(n_features=15, chunk_size=0)
    assert problems(cfg, registry) == [
        "model.n_features: n_features = 15 must be even and at least 2 (FAVOR+ draws its random features in +/- pairs)",
        "model.chunk_size: chunk_size = 0 must be at least 1 (frames per chunk of the causal linear attention)"]


def test_model_shapes_of_tuned_and_overridden_values_are_checked(full, registry):
    cfg = copy.deepcopy(full)
    cfg["tune"]["space"]["model.n_heads"] = {"type": "categorical", "choices": [4, 5]}
    cfg["tune"]["space"]["model.colour"] = {"type": "categorical", "choices": [1]}
    cfg["tune"]["overrides"] = {"model.n_features": 7}  # the tuning trials only
    assert problems(cfg, registry) == [
        "tune.space.model.colour: unknown key 'colour' of section 'model' (known keys: d_in, d_out, d_model, n_layers, "
        "n_heads, d_ff, dropout, n_features, chunk_size, feature_seed, linear_impl, kernels)",
        "tune.overrides.model.n_features: n_features = 7 must be even and at least 2 (FAVOR+ draws its random "
        "features in +/- pairs)",
        "tune.space.model.n_heads (choice 5): n_heads = 5 does not divide model.d_model = 512 (each head gets "
        "d_model / n_heads dimensions); use a divisor of 512: 1, 2, 4, 8, 16, 32, 64, 128, 256, 512"]
    cfg = copy.deepcopy(full)
    cfg["tune"].update(sampler="tpe", space={"model.n_heads": {"type": "float", "low": 1, "high": 8},
                                             "model.d_model": {"type": "int", "low": 510, "high": 512, "step": 2}})
    assert problems(cfg, registry) == [
        "tune.space.model.n_heads: this model key is an integer; use type int or categorical, not float"]
    cfg["tune"]["space"]["model.n_heads"] = {"type": "categorical", "choices": [2]}
    assert problems(cfg, registry) == [  # 510 / 2 = 255, the only odd head_dim of the range
        f"head_dim = tune.space.model.d_model (value 510 of the int range) / tune.space.model.n_heads (choice 2) "
        f"= 510 / 2 = 255: PE {pe!r} ({path}) {EVEN.format(255)}" for pe, path in ROTARY]
    cfg["tune"]["space"]["model.d_model"]["low"] = 512
    check(cfg, registry)  # the control: 512 / 2 suits every PE


def test_pe_hook_reports_what_each_pe_needs(full, registry):
    from stripes.pe import PositionalEncoding
    from stripes.pe.fstripe import FStripe
    from stripes.pe.fstripe1 import FStripe1
    from stripes.pe.rope import RoPE
    from stripes.pe.ropepool import RoPEPool
    from stripes.pe.spe import ConvSPE, SineSPE
    from stripes.pe.srpe import SSRPE

    for cls in (RoPE, RoPEPool, FStripe1):
        assert cls.config_problems(33, {}) == [EVEN.format(33)] and cls.config_problems(32, {}) == []
    for cls in (PositionalEncoding, SineSPE, ConvSPE, FStripe, SSRPE):  # odd head_dim builds (tested by hand)
        assert cls.config_problems(33, {}) == []
    msg = "kwargs.bases has 2 entries; it needs one per structure (3: melody, chord, section)"
    assert SSRPE.config_problems(32, {"bases": [1.0, 2.0]}) == [msg]
    reg = copy.deepcopy(registry)
    reg["s_srpe"]["kwargs"]["bases"] = [7920.0, 10001.0]
    assert problems(full, reg) == [
        f"head_dim = model.d_model / model.n_heads = 512 / 4 = 128: PE 's_srpe' (stripes.pe.srpe.SSRPE) {msg}"]


def test_resolved_run_config_and_hash(full, registry):
    cfg = rc.resolve_run_config(full, "rope_c", "bin", 3, registry=registry, overrides={"train.lr": 5e-4})
    assert set(cfg) == {"run", "data", "model", "train", "eval", "pe_entry"}
    assert cfg["run"] == {"pe": "rope_c", "context": "bin", "seed": 3, "stage": "train",
                          "settings": ["test_16", "test_64"]}
    assert cfg["train"]["lr"] == 5e-4 and cfg["pe_entry"]["class"] == "stripes.pe.rope.RoPE"
    h = rc.config_hash(cfg)
    assert h == rc.config_hash(copy.deepcopy(cfg)) and len(h) == 12
    cfg["train"]["lr"] = 1e-3
    assert rc.config_hash(cfg) != h
    assert rc.flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": "[1, 2]"}


def test_stable_seed_pinned():
    import hashlib

    expected = int.from_bytes(hashlib.sha256("tune\x1frope_c\x1fbin".encode()).digest()[:8], "big") % 2**31
    assert rc.stable_seed("tune", "rope_c", "bin") == expected


# ------------------------------------------------------------------ through `snakemake -n`

CASES = {
    "unknown_pe": ({"tables": {"s26_table2": {"rows": [{"pes": ["rope_a", "rope_q"], "contexts": ["time"]}]}}},
                   ["tables.s26_table2.rows[0]", "unknown PE 'rope_q'"]),
    "stray_key": ({"mlflow": {"tracking_url": "sqlite:///x.db"}}, ["mlflow", "tracking_url"]),
    "incompatible_context": ({"tables": {"f25_table1": {"rows": [{"pe": "s_srpe", "context": "time"}]}}},
                             ["tables.f25_table1.rows[0]", "'s_srpe' cannot take context 'time'"]),
    # config/smoke.yaml has d_model 64: this failed inside the first tune job
    "heads_not_dividing_d_model": ({"model": {"n_heads": 3}},
                                   ["model.n_heads: n_heads = 3 does not divide model.d_model = 64"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_fails_at_dry_run(case, tmp_path):
    overlay, fragments = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(overlay))
    # in process: load_config applies what the Snakefile applies at `-n` (schema + check_study);
    # test_workflow.py checks once through Snakemake that such an error stops the dry run
    with pytest.raises(sc.ConfigError) as err:
        sc.load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml", path)
    for f in fragments:
        assert f in str(err.value), str(err.value)
