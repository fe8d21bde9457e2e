# tune stage: one Optuna study per unique (pe, context) of the study's tables (stripes.tune).
# Trials are serial inside a job; parallelism comes from running many studies at once.
# The study journal is an output of its own job (never shared between jobs). A one-point search
# space (the smoke overlay's) trains no trial: its job writes that point without importing torch or
# mlflow and makes no MLflow run (stripes.jobs.nothing_to_tune).


# glibc keeps freed memory for reuse instead of unmapping it (no page faults on every CPU step's
# large activations); set here, by the job, because it changes the whole process's allocator
# (stripes.device.KEEP_FREED_MEMORY_ENV explains the numbers): the MALLOC_* prefix of the shells

rule mlflow_init:
    # Creates the SQLite DB (all schema migrations) and the experiment BEFORE any parallel job
    # writes to it (design.md §3: a fresh DB hit by parallel jobs breaks). Every tracked job
    # takes experiment.json as input and reads the experiment id from it.
    output:
        EXPERIMENT,
    params:
        tracking_uri=config["mlflow"]["tracking_uri"],
        artifact_root=config["mlflow"]["artifact_root"],
        experiment=config["mlflow"]["experiment"],
    log:
        f"{RESULTS}/logs/mlflow_init.log",
    benchmark:
        f"{RESULTS}/benchmarks/mlflow_init.tsv"
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.jobs init --tracking-uri {params.tracking_uri:q}"
        " --artifact-root {params.artifact_root:q} --experiment {params.experiment:q}"
        " --out {output:q} > {log:q} 2>&1"


rule tune_config:
    # The study's resolved run config and tuning spec, passed to the tune job as files (so every
    # setting the job uses reaches it through params: and triggers a rerun when it changes).
    # A shell job of a light process (stripes.jobs imports no torch: ~0.3 s), not a run: block:
    # Snakemake 9 runs each run: job in a subprocess that parses the whole workflow again
    # (2.5-4 s a job; docs/architecture.md, "Workflow layer").
    output:
        config=f"{RESULTS}/tune/{{pe}}/{{context}}/config.json",
        spec=f"{RESULTS}/tune/{{pe}}/{{context}}/spec.json",
    params:
        config=lambda wc: as_json(
            resolve_run_config(config, wc.pe, wc.context, TUNE_SEED, "tune", PE_REGISTRY,
                               settings=PLAN.settings.get((wc.pe, wc.context)))
        ),
        spec=as_json(config.get("tune", {})),
    log:
        f"{RESULTS}/logs/tune_config/{{pe}}/{{context}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tune_config/{{pe}}/{{context}}.tsv"
    localrule: True
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.jobs write-json --json {params.config:q} --out {output.config:q}"
        " --json {params.spec:q} --out {output.spec:q} > {log:q} 2>&1"


rule tune:
    # Resumable: the working journal results/tune/{pe}/{context}/work/study.journal survives a
    # failed or killed job; a rerun counts the finished trials and runs only the missing ones.
    input:
        config=rules.tune_config.output.config,
        spec=rules.tune_config.output.spec,
        experiment=EXPERIMENT,
        data=PREPARED_DATA,
    output:
        journal=f"{RESULTS}/tune/{{pe}}/{{context}}/study.journal",
        best=f"{RESULTS}/tune/{{pe}}/{{context}}/best.json",
        trials=f"{RESULTS}/tune/{{pe}}/{{context}}/trials.csv",
        record=f"{RESULTS}/tune/{{pe}}/{{context}}/{RECORD}",
    params:
        out=lambda wc, output: str(Path(output.best).parent),
    log:
        f"{RESULTS}/logs/tune/{{pe}}/{{context}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tune/{{pe}}/{{context}}.tsv"
    threads: 1
    resources:
        gpu=GPU,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647"
        " {PYTHON} -m stripes.jobs tune --config {input.config:q} --spec {input.spec:q}"
        " --pe {wildcards.pe} --context {wildcards.context} --out {params.out:q}"
        " --experiment {input.experiment:q} --record {output.record:q} --threads {threads} > {log:q} 2>&1"


TARGETS += [f"{RESULTS}/tune/{pe}/{ctx}/best.json" for pe, ctx in PAIRS]
