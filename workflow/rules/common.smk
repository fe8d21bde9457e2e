# Shared helpers for all rule files: every rule file appends its final outputs to TARGETS,
# which `rule all` (in the Snakefile) requests.
TARGETS = []
