# train stage: one run per (pe, context, seed) with the tuned parameters, then its evaluation
# on the 16- and 64-bar test windows. Both log live to the same MLflow run (its id is recorded
# in results/train/{pe}/{context}/seed{seed}/mlflow_run.json). Every job runs through the job
# layer, `python -m stripes.jobs train|evaluate|train-eval` (stripes.jobs: the MLflow run, the
# run record, the failure policy), in both DAG shapes.
#
# Failures (study.record_failures: true): a job whose training or evaluation raises writes its
# outputs as failure records (status "failed" + the error) and exits 0, so the other runs and
# the tables still build; the table cell shows as missing, results/tables/failures.csv lists the
# run, the end of the Snakemake run prints it with its retry command
# (`--forcerun results/train/{pe}/{context}/seed{seed}/mlflow_run.json`, both DAG shapes) and the
# exit status is 1. With record_failures: false the
# job fails as usual and `--keep-going` finishes the other runs (the tables then wait).


# glibc keeps freed memory for reuse instead of unmapping it (no page faults on every CPU step's
# large activations); set here, by the job, because it changes the whole process's allocator
# (stripes.device.KEEP_FREED_MEMORY_ENV explains the numbers): the MALLOC_* prefix of the shells

rule resolve_run_config:
    # results/runs/{pe}/{context}/seed{seed}/config.json: the resolved run config (run, data,
    # model, train, eval, pe_entry) with the study's best parameters merged in.
    input:
        best=f"{RESULTS}/tune/{{pe}}/{{context}}/best.json",
    output:
        config=f"{RESULTS}/runs/{{pe}}/{{context}}/seed{{seed}}/config.json",
    # A light shell job (stripes.runconfig.write_run_config; see tune_config for why not run:).
    params:
        config=lambda wc: as_json(
            resolve_run_config(config, wc.pe, wc.context, int(wc.seed), "train", PE_REGISTRY,
                               settings=PLAN.settings.get((wc.pe, wc.context)))
        ),
    log:
        f"{RESULTS}/logs/resolve_run_config/{{pe}}/{{context}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/resolve_run_config/{{pe}}/{{context}}/seed{{seed}}.tsv"
    localrule: True
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.jobs run-config --base {params.config:q} --best {input.best:q} --out {output.config:q}"
        " > {log:q} 2>&1"


if not FUSE_TRAIN_EVAL:

    rule train:
        input:
            config=rules.resolve_run_config.output[0],
            experiment=EXPERIMENT,
            data=PREPARED_DATA,
        output:
            record=f"{RESULTS}/train/{{pe}}/{{context}}/seed{{seed}}/{RECORD}",
        params:
            train_dir=lambda wc, output: str(Path(output.record).parent),
            record_failures="--record-failures" if RECORD_FAILURES else "",
        log:
            f"{RESULTS}/logs/train/{{pe}}/{{context}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/train/{{pe}}/{{context}}/seed{{seed}}.tsv"
        threads: 1
        resources:
            gpu=GPU,
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
            " MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647"
            " {PYTHON} -m stripes.jobs train --config {input.config:q} --train-dir {params.train_dir:q}"
            " --experiment {input.experiment:q} --record {output.record:q} {params.record_failures}"
            " --threads {threads}"
            " > {log:q} 2>&1"


    rule evaluate:
        input:
            config=rules.resolve_run_config.output[0],
            train_record=rules.train.output.record,
            experiment=EXPERIMENT,
            data=PREPARED_DATA,
        output:
            metrics=f"{RESULTS}/eval/{{pe}}/{{context}}/seed{{seed}}/metrics.json",
            record=f"{RESULTS}/eval/{{pe}}/{{context}}/seed{{seed}}/{RECORD}",
        params:
            train_dir=lambda wc, input: str(Path(input.train_record).parent),
            eval_dir=lambda wc, output: str(Path(output.metrics).parent),
            record_failures="--record-failures" if RECORD_FAILURES else "",
            log_samples="--log-samples" if config["mlflow"].get("log_samples", True) else "",
        log:
            f"{RESULTS}/logs/evaluate/{{pe}}/{{context}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/evaluate/{{pe}}/{{context}}/seed{{seed}}.tsv"
        threads: 1
        resources:
            gpu=GPU,
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
            " MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647"
            " {PYTHON} -m stripes.jobs evaluate --config {input.config:q} --train-dir {params.train_dir:q}"
            " --eval-dir {params.eval_dir:q} --train-record {input.train_record:q}"
            " --experiment {input.experiment:q} --record {output.record:q}"
            " {params.record_failures} {params.log_samples} --threads {threads} > {log:q} 2>&1"

else:
    rule train_evaluate:
        # study.fuse_train_eval (the smoke overlay): every run of a (pe, context) pair, trained and
        # evaluated in ONE process, seed after seed, each into its own MLflow run. A process start
        # (torch, torch._dynamo, mlflow, matplotlib, the tracking store: ~5.5 s) costs more than a
        # smoke run's training and evaluation; outputs, records and retries stay per run
        # (`--forcerun` of one run's record reruns the pair: its other runs resume at their end).
        input:
            configs=expand(f"{RESULTS}/runs/{{pe}}/{{context}}/seed{{seed}}/config.json", seed=FUSED_SEEDS,
                           allow_missing=True),
            experiment=EXPERIMENT,
            data=PREPARED_DATA,
        output:
            records=expand(f"{RESULTS}/train/{{pe}}/{{context}}/seed{{seed}}/{RECORD}", seed=FUSED_SEEDS,
                           allow_missing=True),
            metrics=expand(f"{RESULTS}/eval/{{pe}}/{{context}}/seed{{seed}}/metrics.json", seed=FUSED_SEEDS,
                           allow_missing=True),
            eval_records=expand(f"{RESULTS}/eval/{{pe}}/{{context}}/seed{{seed}}/{RECORD}", seed=FUSED_SEEDS,
                                allow_missing=True),
        params:
            train_dirs=lambda wc, output: [str(Path(p).parent) for p in output.records],
            eval_dirs=lambda wc, output: [str(Path(p).parent) for p in output.metrics],
            record_failures="--record-failures" if RECORD_FAILURES else "",
            log_samples="--log-samples" if config["mlflow"].get("log_samples", True) else "",
        log:
            f"{RESULTS}/logs/train_evaluate/{{pe}}/{{context}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_evaluate/{{pe}}/{{context}}.tsv"
        threads: 1
        resources:
            gpu=GPU,
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
            " MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647"
            " {PYTHON} -m stripes.jobs train-eval --config {input.configs:q}"
            " --train-dir {params.train_dirs:q} --eval-dir {params.eval_dirs:q}"
            " --experiment {input.experiment:q} --record {output.records:q}"
            " --eval-record {output.eval_records:q} {params.record_failures} {params.log_samples}"
            " --threads {threads} > {log:q} 2>&1"


TARGETS += PLAN.run_paths(RESULTS, "eval", "metrics.json")
