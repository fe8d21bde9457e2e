# stripes: the whole study as one DAG.
#   snakemake --cores N                              full study (config/config.yaml)
#   snakemake --cores N --configfile config/smoke.yaml   smoke scale (minutes on a laptop)
# Stages: fetch -> prepare -> mutual information -> tune -> train -> evaluate -> aggregate.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


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
