# stripes: the whole study as one DAG.
#   snakemake --cores N                              full study (config/config.yaml)
#   snakemake --cores N --configfile config/smoke.yaml   smoke scale (minutes on a laptop)
# Stages: fetch -> prepare -> mutual information -> tune -> train -> evaluate -> aggregate.
# From another directory: snakemake -s path/to/Snakefile ... runs the study in this directory.
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# Every path of the study is relative to the repository: results/ (with the committed
# results/reference/), the data folders of config/config.yaml, config/pe.yaml. So the study always
# runs here, wherever snakemake was started (--directory still overrides it).
workdir: workflow.basedir


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, "src/stripes/resources/config.schema.yaml")  # the schema the stripes package ships


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        TARGETS,
    default_target: True


# A run that failed with study.record_failures left failure records and exited 0, so Snakemake
# reports success: name those runs (reason, log, retry command) at the end, and exit 1 once every
# other job has finished, so scripts and CI notice (config/README.md, study.record_failures).
onsuccess:
    n_failed = report_failed_runs(dag_runs(workflow.dag.jobs), RESULTS, sys.argv)
    if n_failed:
        raise WorkflowError(f"{n_failed} failed run{'s' if n_failed > 1 else ''} of the study (listed above); "
                            "every other job finished. Retry with the command above.")


onerror:
    report_failed_runs(dag_runs(workflow.dag.jobs), RESULTS, sys.argv)
