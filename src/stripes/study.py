"""The study: load and check the study config (``config/config.yaml`` + overlays), plan it.

This module is imported by ``workflow/rules/common.smk`` when the DAG is built, so every check
here runs at ``snakemake -n``: a broken entry fails before any job starts, with a message that
names the entry.

Two layers of checks:

* the JSON schema (``stripes.schema``: the packaged ``config.schema.yaml``, closed objects, types,
  enums, and every key's default);
* :func:`check_study`: what a schema cannot express (the PE exists in the registry, its class
  lies under the ``stripes.pe`` allow-list and its kwargs bind, the context exists, the PE accepts
  the context, tables name known seed sets / tables / settings, the tuning space is coherent).

:func:`plan_study` turns the ``tables`` section into the unique (pe, context) pairs to tune and
the (pe, context, seed) runs to train; :func:`report_spec` is what ``stripes aggregate`` reads.
Light imports only (no torch, no mlflow) except where a PE class has to be imported to check it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from stripes.fileio import load_yaml
from stripes import schema
from stripes.metrics import METRICS  # the metrics and their direction of "better"
from stripes.schema import ConfigError, validate_schema

#: the study config, relative to the working directory (the repository, where the workflow runs)
DEFAULT_CONFIG = Path("config") / "config.yaml"

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")  # lowercase snake_case, no "__", no "/"
SETTINGS = {"test_16": "Train 16 / Test 16", "test_64": "Train 16 / Test 64"}
RUN_SECTIONS = ("data", "model", "train", "eval")


__all__ = ["ConfigError", "validate_schema", "load_config", "load_pe_registry", "check_study", "plan_study",
           "report_spec", "deep_merge", "StudyPlan", "TableSpec", "Row"]


# ----------------------------------------------------------------------------- loading


def deep_merge(base: dict, overlay: dict) -> dict:
    """Merge like Snakemake's ``--configfile`` overlays: dicts recursively, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(*paths: str | Path, validate: bool = True) -> dict:
    """Load ``config/config.yaml`` (default) and overlays in order, fill the schema defaults
    (as the Snakefile's ``validate()`` does, so code sees what the workflow sees); optionally
    validate and check."""
    paths = paths or (DEFAULT_CONFIG,)
    cfg: dict = {}
    for p in paths:
        with open(p) as fh:
            cfg = deep_merge(cfg, load_yaml(fh.read()) or {})
    schema.fill_defaults(cfg)
    if validate:
        validate_schema(cfg)
        check_study(cfg)
    return cfg


# ----------------------------------------------------------------------------- PE registry


def pe_registry_path(cfg: dict, root: str | Path | None = None) -> Path | None:
    """The study's registry file (``pe_registry``), relative to ``root`` (else the working
    directory); None when the config names none."""
    name = cfg.get("pe_registry")
    if not name:
        return None
    path = Path(name)
    return path if path.is_absolute() else Path(root or Path.cwd()) / path


def load_pe_registry(cfg: dict, root: str | Path | None = None) -> dict:
    """The raw PE registry, name -> entry dict: the packaged entries with the study's
    ``pe_registry`` file merged over them (a new name adds a PE, an existing one replaces it)."""
    from stripes.pe.registry import RegistryError, merged_entries

    path = pe_registry_path(cfg, root)
    if path is not None and not path.exists():
        raise ConfigError(f"pe_registry: file {path} not found")
    try:
        return merged_entries(path)
    except RegistryError as exc:
        raise ConfigError(f"pe_registry: {exc}") from None


def check_pe_entry(name: str, entry: Any) -> type:
    """Check one registry entry through the PE package's own loader (stripes.pe.registry):
    name pattern, schema (closed keys), class under the ``stripes.pe.`` allow-list (checked before
    importing), subclass of PositionalEncoding, kwargs binding (unknown / missing kwargs)."""
    from stripes.pe.registry import RegistryError, load_registry

    try:
        return load_registry(data={name: entry})[name].cls
    except RegistryError as exc:
        raise ConfigError(f"pe_registry: {exc}") from None


def pe_accepts(cls: type, context) -> bool:
    accepts = getattr(cls, "accepts", None)
    if accepts is None:
        return True
    return bool(accepts(context.dim, context.regular_grid))


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Row:
    """One (pe, context) row of a table; ``settings`` restricts the evaluated settings."""

    pe: str
    context: str
    settings: tuple[str, ...] = tuple(SETTINGS)


@dataclass
class TableSpec:
    name: str
    kind: str
    caption: str
    seeds: list[int]
    ssmd_scale: int
    reference: str | None
    rows: list[Row] = field(default_factory=list)  # fixed rows
    best_of: list[tuple[str, str]] = field(default_factory=list)  # (source table, context)
    select: dict = field(default_factory=dict)
    contexts: list[str] = field(default_factory=list)  # row-group order
    group_by: str = "context"  # significance groups: per context, or "none" (whole table)

    def candidate_rows(self, tables: dict[str, "TableSpec"]) -> list[Row]:
        """Every row whose runs this table reads (fixed rows + candidates of best_of groups)."""
        rows = list(self.rows)
        for src, ctx in self.best_of:
            rows += [r for r in tables[src].all_rows(tables) if r.context == ctx and r not in rows]
        return rows

    def all_rows(self, tables: dict[str, "TableSpec"]) -> list[Row]:
        return self.candidate_rows(tables)


@dataclass
class StudyPlan:
    tables: dict[str, TableSpec]
    pairs: list[tuple[str, str]]  # unique (pe, context), tuned once, shared by tables
    seeds: dict[tuple[str, str], list[int]]  # seeds per pair (union over tables)
    settings: dict[tuple[str, str], list[str]]  # evaluated settings per pair (union)

    @property
    def runs(self) -> list[tuple[str, str, int]]:
        return [(pe, ctx, s) for pe, ctx in self.pairs for s in self.seeds[(pe, ctx)]]

    @property
    def metric_tables(self) -> list[str]:
        return [n for n, t in self.tables.items() if t.kind == "metrics"]

    def run_paths(self, results: str, stage: str, name: str) -> list[str]:
        """One file of every run, e.g. run_paths('results', 'eval', 'metrics.json')."""
        return [f"{results}/{stage}/{pe}/{ctx}/seed{seed}/{name}" for pe, ctx, seed in self.runs]

    def table_runs(self, name: str) -> list[tuple[str, str, int]]:
        t = self.tables[name]
        out = []
        for r in t.candidate_rows(self.tables):
            out += [(r.pe, r.context, s) for s in t.seeds]
        return out


def _as_list(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def active_tables(cfg: dict) -> dict:
    """The ``tables`` the study builds: all of them, or those named by ``study.tables`` (an
    overlay such as config/quick.yaml keeps its own tables without deleting the paper's)."""
    tables = cfg.get("tables") or {}
    only = (cfg.get("study") or {}).get("tables")
    if only is None:
        return dict(tables)
    return {name: tables[name] for name in only if name in tables}


def plan_study(cfg: dict) -> StudyPlan:
    """Expand the ``tables`` section into tables, unique pairs, seeds and settings (no checks)."""
    study = cfg.get("study", {})
    seed_sets = study.get("seeds", {})
    tables: dict[str, TableSpec] = {}
    for name, given in active_tables(cfg).items():
        spec = schema.with_defaults("tables.*", given, where=f"tables.{name} keys")
        kind = spec["kind"]
        seeds_key = spec.get("seeds")
        seeds = list(seed_sets.get(seeds_key, [])) if isinstance(seeds_key, str) else _as_list(seeds_key)
        t = TableSpec(
            name=name,
            kind=kind,
            caption=spec.get("caption", name),
            seeds=[int(s) for s in seeds],
            ssmd_scale=int(spec["ssmd_scale"]),
            reference=spec["reference"],
            select=dict(spec["select"]),
            group_by=spec["group_by"],
        )
        for row in spec.get("rows") or []:
            contexts = _as_list(row.get("context")) + _as_list(row.get("contexts"))
            settings = tuple(row.get("settings") or SETTINGS)
            for ctx in contexts:
                if ctx not in t.contexts:
                    t.contexts.append(ctx)
            if "best_of" in row:
                t.best_of += [(row["best_of"], ctx) for ctx in contexts]
                continue
            for pe in _as_list(row.get("pe")) + _as_list(row.get("pes")):
                for ctx in contexts:
                    r = Row(pe, ctx, settings)
                    if r not in t.rows:
                        t.rows.append(r)
        if kind == "mutual_information":
            t.contexts = _as_list(spec.get("contexts")) or t.contexts
        tables[name] = t

    pairs: list[tuple[str, str]] = []
    seeds: dict[tuple[str, str], set[int]] = {}
    settings: dict[tuple[str, str], set[str]] = {}
    for t in tables.values():
        if t.kind != "metrics":
            continue
        for r in t.candidate_rows(tables):  # best_of candidates: rows of their source table
            key = (r.pe, r.context)
            if key not in pairs:
                pairs.append(key)
            seeds.setdefault(key, set()).update(t.seeds)
            settings.setdefault(key, set()).update(r.settings)
    pairs.sort()
    return StudyPlan(
        tables=tables,
        pairs=pairs,
        seeds={k: sorted(v) for k, v in seeds.items()},
        settings={k: [s for s in SETTINGS if s in v] for k, v in settings.items()},
    )


def report_spec(cfg: dict, plan: StudyPlan | None = None, results: str = "results") -> dict:
    """The JSON spec read by ``stripes aggregate`` (passed through the DAG as a file)."""
    plan = plan or plan_study(cfg)
    tables = {}
    for name, t in plan.tables.items():
        refs = t.reference
        tables[name] = {
            "kind": t.kind,
            "caption": t.caption,
            "seeds": t.seeds,
            "ssmd_scale": t.ssmd_scale,
            "reference": [refs] if isinstance(refs, str) else list(refs or []),
            "select": t.select,
            "group_by": t.group_by,
            "contexts": list(t.contexts),
            "rows": [{"pe": r.pe, "context": r.context, "settings": list(r.settings)} for r in t.rows],
            "best_of": [list(b) for b in t.best_of],
        }
    study = cfg.get("study", {})
    return {
        "tables": tables,
        "runs": [list(r) for r in plan.runs],
        "runs_root": f"{results}/eval",
        "mi_table": f"{results}/tables/mutual_information.csv",
        "mi_figure": study.get("mi_figure") or {},
        "reference_csv": f"{results}/reference/paper_tables.csv",
        "scale": study.get("scale", "full"),
    }


# ----------------------------------------------------------------------------- cross-checks


def check_study(cfg: dict, registry: dict | None = None, root: str | Path | None = None) -> StudyPlan:
    """Cross-checks that the JSON schema cannot express. Raises ConfigError naming every entry."""
    from stripes.contexts import CONTEXTS

    errors: list[str] = []
    if registry is None:
        try:
            registry = load_pe_registry(cfg, root)
        except ConfigError as exc:
            raise ConfigError(str(exc)) from None

    study = cfg.get("study", {})
    seed_sets = study.get("seeds", {})
    for name, seeds in seed_sets.items():
        if len(set(seeds)) != len(seeds):
            errors.append(f"study.seeds.{name}: duplicate seeds {seeds}")

    for name in study.get("tables") or []:
        if name not in (cfg.get("tables") or {}):
            errors.append(f"study.tables: unknown table {name!r} (tables has {', '.join(sorted(cfg.get('tables') or {}))})")
    tables_cfg = active_tables(cfg)
    pe_classes: dict[str, type] = {}
    pe_errors: dict[str, str] = {}
    used_pes: dict[str, type] = {}  # PEs the tables build (best_of candidates are rows of active tables too)

    def pe_class(pe: str):
        if pe in pe_classes:
            return pe_classes[pe]
        if pe in pe_errors:
            return None
        try:
            pe_classes[pe] = check_pe_entry(pe, registry[pe])
            return pe_classes[pe]
        except ConfigError as exc:
            pe_errors[pe] = str(exc)
            errors.append(str(exc))
            return None

    # every registry entry is checked (a broken entry fails even before a table names it)
    for pe in registry:
        pe_class(pe)

    for tname, spec in tables_cfg.items():
        where = f"tables.{tname}"
        if not NAME_RE.match(tname):
            errors.append(f"{where}: bad table name (lowercase snake_case)")
        kind = spec.get("kind", "metrics")
        seeds_key = spec.get("seeds")
        if kind == "metrics":
            if isinstance(seeds_key, str) and seeds_key not in seed_sets:
                errors.append(f"{where}.seeds: unknown seed set {seeds_key!r} (study.seeds has {sorted(seed_sets)})")
            if seeds_key is None:
                errors.append(f"{where}.seeds: missing (name a set of study.seeds)")
            if not spec.get("rows"):
                errors.append(f"{where}.rows: a metrics table needs rows")
        sel = spec.get("select") or {}
        if sel.get("setting") and sel["setting"] not in SETTINGS:
            errors.append(f"{where}.select.setting: unknown setting {sel['setting']!r}")
        for ctx in _as_list(spec.get("contexts")):
            if ctx not in CONTEXTS:
                errors.append(f"{where}.contexts: unknown context {ctx!r} (known: {', '.join(CONTEXTS)})")
        for i, row in enumerate(spec.get("rows") or []):
            rw = f"{where}.rows[{i}]"
            pes = _as_list(row.get("pe")) + _as_list(row.get("pes"))
            contexts = _as_list(row.get("context")) + _as_list(row.get("contexts"))
            has_best = "best_of" in row
            if has_best == bool(pes):
                errors.append(f"{rw}: give exactly one of pe/pes or best_of")
            if not contexts:
                errors.append(f"{rw}: give context or contexts")
            for s in row.get("settings") or []:
                if s not in SETTINGS:
                    errors.append(f"{rw}.settings: unknown setting {s!r} (known: {', '.join(SETTINGS)})")
            for ctx in contexts:
                if ctx not in CONTEXTS:
                    errors.append(f"{rw}: unknown context {ctx!r} (known: {', '.join(CONTEXTS)})")
            if has_best:
                src = row["best_of"]
                if src not in tables_cfg:
                    errors.append(f"{rw}.best_of: unknown table {src!r}")
                elif src == tname:
                    errors.append(f"{rw}.best_of: a table cannot select from itself")
                elif (tables_cfg[src].get("kind", "metrics")) != "metrics":
                    errors.append(f"{rw}.best_of: table {src!r} is not a metrics table")
                else:
                    src_ctx = set()
                    for r in tables_cfg[src].get("rows") or []:
                        src_ctx.update(_as_list(r.get("context")) + _as_list(r.get("contexts")))
                    for ctx in contexts:
                        if ctx in CONTEXTS and ctx not in src_ctx:
                            errors.append(f"{rw}.best_of: table {src!r} has no rows for context {ctx!r}")
                if not sel.get("metric"):
                    pass  # defaults apply (cs on test_16)
            for pe in pes:
                if pe not in registry:
                    source = "the packaged PEs" + (f" + {cfg['pe_registry']}" if cfg.get("pe_registry") else "")
                    errors.append(f"{rw}: unknown PE {pe!r} (the registry, {source}, has: {', '.join(registry)})")
                    continue
                cls = pe_class(pe)
                if cls is None:
                    continue
                used_pes[pe] = cls
                for ctx in contexts:
                    if ctx in CONTEXTS and not pe_accepts(cls, CONTEXTS[ctx]):
                        c = CONTEXTS[ctx]
                        errors.append(
                            f"{rw}: PE {pe!r} cannot take context {ctx!r} "
                            f"(dim={c.dim}, regular_grid={c.regular_grid}; {registry[pe]['class']}.accepts is False)"
                        )
        if sel.get("metric") and sel["metric"] not in METRICS:
            errors.append(f"{where}.select.metric: unknown metric {sel['metric']!r}")

    fig = study.get("mi_figure") or {}
    if fig.get("table") and fig["table"] not in tables_cfg:
        where = " (not among study.tables)" if fig["table"] in (cfg.get("tables") or {}) else ""
        errors.append(f"study.mi_figure.table: unknown table {fig['table']!r}{where}")

    errors += _check_tune(cfg.get("tune") or {})
    errors += _check_model(cfg, {pe: (cls, registry[pe]) for pe, cls in used_pes.items()})
    if errors:
        # unique, in order
        seen: list[str] = []
        for e in errors:
            if e not in seen:
                seen.append(e)
        raise ConfigError("invalid study configuration:\n" + "\n".join(f"  {e}" for e in seen))
    plan = plan_study(cfg)
    if study.get("fuse_train_eval"):
        fused_seeds(plan)  # raises when the pairs' seeds differ
    return plan


def fused_seeds(plan: StudyPlan) -> list[int]:
    """The seeds of every (pe, context) pair, which ``study.fuse_train_eval`` needs to be the same:
    its one job per pair declares one output per seed, and a Snakemake rule's outputs are fixed
    patterns. Raises ConfigError naming the pairs whose seeds differ and how to fix it."""
    sets: dict[tuple[int, ...], list[tuple[str, str]]] = {}
    for pair, seeds in sorted(plan.seeds.items()):
        sets.setdefault(tuple(seeds), []).append(pair)
    if len(sets) > 1:
        which = "; ".join(f"{', '.join(f'{pe}/{c}' for pe, c in pairs[:3])}{' ...' if len(pairs) > 3 else ''}: "
                          f"seeds {list(seeds)}" for seeds, pairs in sets.items())
        raise ConfigError(
            "invalid study configuration:\n  study.fuse_train_eval: one job trains every seed of a (pe, context) "
            f"pair, so all pairs need the same seeds, and here they differ ({which}). Give every table the same "
            "seed set (study.seeds), or set study.fuse_train_eval: false")
    return list(next(iter(sets), ()))


def tune_key_problems(tune: dict) -> list[str]:
    """Keys of ``tune.space`` and ``tune.overrides`` that name no key of the run config's schema
    (a trial would set a key that training rejects, or that nothing reads)."""
    errors = []
    for sec in ("space", "overrides"):
        for key in (tune.get(sec) or {}):
            problem = schema.dotted_key_problem(key, RUN_SECTIONS)
            if problem and problem.startswith("must be"):
                problem = "parameter " + problem
            if problem:
                errors.append(f"tune.{sec}.{key}: {problem}")
    return errors


def _check_tune(tune: dict) -> list[str]:
    errors = tune_key_problems(tune)
    space = tune.get("space") or {}
    for key, spec in space.items():
        if spec.get("type") in ("float", "int") and spec.get("low", 0) > spec.get("high", 0):
            errors.append(f"tune.space.{key}: low > high")
        if tune.get("sampler", "grid") == "grid" and spec.get("type") != "categorical":
            errors.append(f"tune.space.{key}: the grid sampler needs categorical choices")
    return errors


# the model keys whose values can make stripes.model.build_model raise (all integers)
SHAPE_KEYS = ("d_model", "n_heads", "n_features", "chunk_size")


def _space_values(spec: dict, label: str, errors: list[str]) -> list[tuple[Any, str]]:
    """(value, label) for every value a tune.space entry can give an integer model key."""
    kind = spec.get("type")
    if kind == "categorical":
        return [(v, f"{label} (choice {v!r})") for v in spec.get("choices") or []]
    if kind == "int":
        low, high = int(spec.get("low", 0)), int(spec.get("high", 0))
        return [(v, f"{label} (value {v} of the int range)") for v in range(low, high + 1, int(spec.get("step") or 1))]
    errors.append(f"{label}: this model key is an integer; use type int or categorical, not {kind}")
    return []


def _check_model(cfg: dict, pes: dict[str, tuple[type, dict]]) -> list[str]:
    """What stripes.model would raise inside a job, checked here at `snakemake -n`: heads that do not
    divide d_model, an odd or too small FAVOR+ feature count, a chunk size below 1, and what each
    PE the tables use needs of head_dim (PositionalEncoding.config_problems). Every model the study
    builds is checked: the model section as the final training gets it with each tuned value of
    tune.space, and as the tuning trials get it (tune.overrides too). ``pes``: name -> (class,
    registry entry)."""
    errors: list[str] = []
    tune = cfg.get("tune") or {}
    known = schema.known_keys("model")  # unknown keys are reported by _check_tune
    space, overrides = ({k[len("model."):]: v for k, v in (tune.get(sec) or {}).items()
                         if k.startswith("model.") and k[len("model."):] in known}
                        for sec in ("space", "overrides"))
    try:
        model = schema.with_defaults("model", cfg.get("model"))
    except schema.UnknownKeyError:  # the JSON schema reports it, naming the key
        model = {**schema.defaults("model"), **{k: v for k, v in (cfg.get("model") or {}).items() if k in known}}

    def values(key: str) -> dict[str, list[tuple[Any, str]]]:
        """stage -> (value, label of the key that sets it): the final training takes the tuned
        value, a tuning trial the tuned value, else the override, else the model section's."""
        base = [(model[key], f"model.{key}")]
        tuned = _space_values(space[key], f"tune.space.model.{key}", errors) if key in space else None
        trial = [(overrides[key], f"tune.overrides.model.{key}")] if key in overrides else base
        return {"train": base, "tune": trial} if tuned is None else {"train": tuned, "tune": tuned}

    vals = {key: values(key) for key in SHAPE_KEYS}
    not_int = [f"{label}: {key} must be an integer, got {v!r}" for key in SHAPE_KEYS for stage in vals[key].values()
               for v, label in stage if not isinstance(v, int) or isinstance(v, bool)]
    if not_int:  # the arithmetic below needs integers
        return errors + not_int

    def once(pairs):  # the (value, label) of both stages, each value once
        seen: dict = {}
        for v, label in pairs:
            seen.setdefault(v, label)
        return seen.items()

    for v, label in once(vals["n_features"]["train"] + vals["n_features"]["tune"]):
        if v < 2 or v % 2:
            errors.append(f"{label}: n_features = {v} must be even and at least 2 "
                          "(FAVOR+ draws its random features in +/- pairs)")
    for v, label in once(vals["chunk_size"]["train"] + vals["chunk_size"]["tune"]):
        if v < 1:
            errors.append(f"{label}: chunk_size = {v} must be at least 1 (frames per chunk of the causal linear attention)")
    head_dims: dict[int, tuple] = {}
    for stage in ("train", "tune"):
        for d, d_label in vals["d_model"][stage]:
            for h, h_label in vals["n_heads"][stage]:
                if d < 1 or h < 1 or d % h:
                    divisors = ", ".join(str(n) for n in range(1, d + 1) if d % n == 0) if d >= 1 else "none"
                    errors.append(f"{h_label}: n_heads = {h} does not divide {d_label} = {d} (each head gets "
                                  f"d_model / n_heads dimensions); use a divisor of {d}: {divisors}")
                else:
                    head_dims.setdefault(d // h, (d, d_label, h, h_label))
    for head_dim, (d, d_label, h, h_label) in head_dims.items():
        for pe, (cls, entry) in pes.items():
            for problem in cls.config_problems(head_dim, dict(entry.get("kwargs") or {})):
                errors.append(f"head_dim = {d_label} / {h_label} = {d} / {h} = {head_dim}: "
                              f"PE {pe!r} ({entry['class']}) {problem}")
    return errors


# ----------------------------------------------------------------------------- run configs
