# Shared state for all rule files: every rule file appends its final outputs to TARGETS,
# which `rule all` (in the Snakefile) requests.
#
# Also the study plan: stripes.study checks the merged config (the Snakefile's validate() has
# applied the JSON schema) against what a schema cannot express (PE registry entries, contexts,
# PE x context compatibility, table references, tuning space, model shapes) HERE, at parse time,
# so a broken config fails at `snakemake -n` with a message naming the entry. No logic lives here:
# helpers are in stripes.study, stripes.runconfig and stripes.jobs (and the failed-run report in stripes.report).
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError

TARGETS = []

REPO = Path(workflow.main_snakefile).resolve().parent
# The package comes from the environment (the project venv's editable install, or the conda env of
# workflow/envs/stripes.yaml with --use-conda); nothing here edits sys.path, PYTHONPATH or PATH.
import sys  # noqa: E402

from snakemake_interface_executor_plugins.settings import DeploymentMethod  # noqa: E402

from stripes.jobs import RECORD, as_json  # noqa: E402
from stripes.runconfig import resolve_run_config  # noqa: E402
from stripes.study import ConfigError, check_study, fused_seeds, load_pe_registry, report_spec  # noqa: E402
from stripes.report import RETRY_PREFIX_ENV, dag_runs, report_failed_runs, retry_prefix  # noqa: E402

if workflow.is_main_process:
    # the aggregate job prints the same retry commands as the handlers (Snakefile): it learns this
    # invocation from the environment, which (unlike params) does not make it rerun when it changes
    os.environ[RETRY_PREFIX_ENV] = json.dumps(retry_prefix(sys.argv))

try:
    PLAN = check_study(config, root=REPO)
except ConfigError as exc:
    raise WorkflowError(str(exc))

PE_REGISTRY = load_pe_registry(config, REPO)

RESULTS = "results"

if workflow.is_main_process:
    # also before the DAG is built: a rerun with nothing left to do ends without the handlers
    report_failed_runs(PLAN.runs, RESULTS, sys.argv, note=" in an earlier run")

report: "../report/workflow.rst"

PAIRS = PLAN.pairs  # unique (pe, context): tuned once, shared by every table
RUNS = PLAN.runs  # (pe, context, seed): trained and evaluated once
EXPERIMENT = f"{RESULTS}/mlflow/experiment.json"
# Files one rule file writes and another reads, named here so that no rule file depends on the
# order of the includes (a rule's input names the file; Snakemake finds its producer after parsing).
DATA_DIR = config.get("data", {}).get("out_dir", f"{RESULTS}/data")
PREPARED_DATA = [f"{DATA_DIR}/report.json"]  # what training reads; written by data.smk's prepare
MI_TABLE = f"{RESULTS}/tables/mutual_information.csv"  # data.smk's mutual_information
TOY_FIGURE = f"{RESULTS}/figures/toy_kernels.png"  # analysis.smk's toy_kernels (paper Figs. 2-3)
RECORD_FAILURES = bool(config.get("study", {}).get("record_failures", True))
FUSE_TRAIN_EVAL = bool(config.get("study", {}).get("fuse_train_eval", False))
# with it, one job per (pe, context) runs these seeds (check_study has checked that all pairs share them)
FUSED_SEEDS = fused_seeds(PLAN) if FUSE_TRAIN_EVAL else []
# `gpu` resource requested by each tune/train/evaluate job (capped by the profile): 1 on a GPU
# machine; the CPU smoke overlay sets 0 so those jobs run in parallel on the cores.
GPU = int(config.get("study", {}).get("gpus_per_job", 1))
TUNE_SEED = int(config.get("tune", {}).get("seed", 0))


# the software of every shell job (with --use-conda); rule files name it in their rules
ENV = "../envs/stripes.yaml"
# The interpreter of the jobs, named in shell commands as {PYTHON} (a global: neither a param nor
# part of the command's text, so switching it never reruns a job). With --use-conda the env's
# activation puts its `python` first on PATH; without, it is the interpreter running Snakemake
# (the project venv), whose bin/ need not be on PATH.
PYTHON = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable


wildcard_constraints:
    pe="[a-z][a-z0-9]*(_[a-z0-9]+)*",
    context="[a-z][a-z0-9]*(_[a-z0-9]+)*",
    seed="[0-9]+",
