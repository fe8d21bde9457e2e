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
# Jobs import the package of THIS tree; a rule's `python` is the interpreter running Snakemake.
import sys  # noqa: E402

sys.path.insert(0, str(REPO / "src"))
from stripes.jobs import as_json, setup_job_environment  # noqa: E402
from stripes.runconfig import resolve_run_config  # noqa: E402
from stripes.study import ConfigError, check_study, load_pe_registry, report_spec  # noqa: E402
from stripes.report import RETRY_PREFIX_ENV, dag_runs, report_failed_runs, retry_prefix  # noqa: E402

setup_job_environment(REPO)
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
RECORD_FAILURES = bool(config.get("study", {}).get("record_failures", True))
FUSE_TRAIN_EVAL = bool(config.get("study", {}).get("fuse_train_eval", False))
# `gpu` resource requested by each tune/train/evaluate job (capped by the profile): 1 on a GPU
# machine; the CPU smoke overlay sets 0 so those jobs run in parallel on the cores.
GPU = int(config.get("study", {}).get("gpus_per_job", 1))
TUNE_SEED = int(config.get("tune", {}).get("seed", 0))


# the software of every shell job (with --use-conda); rule files name it in their rules
ENV = "../envs/stripes.yaml"


wildcard_constraints:
    pe="[a-z][a-z0-9]*(_[a-z0-9]+)*",
    context="[a-z][a-z0-9]*(_[a-z0-9]+)*",
    seed="[0-9]+",
