# Shared helpers for all rule files: every rule file appends its final outputs to TARGETS,
# which `rule all` (in the Snakefile) requests.
#
# Also: the study plan. stripes.config checks the merged config (schema already applied by the
# Snakefile's validate()) against what a schema cannot express (PE registry entries, contexts,
# PE x context compatibility, table references, tuning space) HERE, at parse time, so a broken
# config fails at `snakemake -n` with a message naming the entry.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

TARGETS = []

REPO = Path(workflow.main_snakefile).resolve().parent
_SRC = str(REPO / "src")
# Jobs import the package of THIS tree (not whatever copy the venv's editable install points at).
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p
)

from stripes.config import (  # noqa: E402
    ConfigError,
    check_study,
    load_pe_registry,
    report_spec,
    resolve_run_config,
)

try:
    PLAN = check_study(config, root=REPO)
except ConfigError as exc:
    raise WorkflowError(str(exc))

PE_REGISTRY = load_pe_registry(config, REPO)
PY = sys.executable  # the interpreter running Snakemake (the project's venv)
RESULTS = "results"
PAIRS = PLAN.pairs  # unique (pe, context): tuned once, shared by every table
RUNS = PLAN.runs  # (pe, context, seed): trained and evaluated once
EXPERIMENT = f"{RESULTS}/mlflow/experiment.json"
RECORD_FAILURES = bool(config.get("study", {}).get("record_failures", True))


wildcard_constraints:
    pe="[a-z][a-z0-9]*(_[a-z0-9]+)*",
    context="[a-z][a-z0-9]*(_[a-z0-9]+)*",
    seed="[0-9]+",


def prepared_data(wildcards=None):
    """The data stage's final output(s) that training reads (defined in data.smk as PREPARED_DATA)."""
    return globals().get("PREPARED_DATA", [])


def pair_settings(pe, context):
    return PLAN.settings.get((pe, context), ["test_16", "test_64"])


def tune_base_config(pe, context):
    """The resolved run config of a (pe, context) study before tuning (stage 'tune')."""
    seed = int(config.get("tune", {}).get("seed", 0))
    return resolve_run_config(
        config, pe, context, seed, stage="tune", registry=PE_REGISTRY,
        settings=pair_settings(pe, context),
    )


def run_base_config(pe, context, seed):
    """The resolved run config of one training run, before the tuned parameters are merged."""
    return resolve_run_config(
        config, pe, context, int(seed), stage="train", registry=PE_REGISTRY,
        settings=pair_settings(pe, context),
    )


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def run_paths(stage, name):
    """Paths of one file for every run of the plan, e.g. run_paths('eval', 'metrics.json')."""
    return [f"{RESULTS}/{stage}/{pe}/{ctx}/seed{seed}/{name}" for pe, ctx, seed in RUNS]


def report_spec_json():
    return as_json(report_spec(config, PLAN, RESULTS))
