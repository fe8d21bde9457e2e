# report stage: the tables (CSV, Markdown, LaTeX; significance marks; the paper's numbers and
# the difference), Figure 4 (MI vs in-domain performance), an MLflow summary run and the listening
# page (results/tables/samples.html: the best row of each table, played in the --report).
# Tables are built from the metrics.json files of THIS DAG (never from all runs of the MLflow
# experiment). A failed run (failure record, see train.smk) shows as a missing cell.
# Reads only names of common.smk (MI_TABLE, TOY_FIGURE, EXPERIMENT, PLAN): any include order works.

TABLE_NAMES = PLAN.metric_tables + [n for n, t in PLAN.tables.items() if t.kind == "mutual_information"]
MI_FIGURE = f"{RESULTS}/figures/mi_vs_performance.png"
HAS_MI_FIGURE = bool(config.get("study", {}).get("mi_figure", {}).get("table"))
NEEDS_MI = HAS_MI_FIGURE or len(TABLE_NAMES) > len(PLAN.metric_tables)


rule report_spec:
    # The tables as the aggregate step reads them (rows, seeds, references): a file of the DAG,
    # rewritten when config/config.yaml changes the tables (the spec is a param: a changed param
    # reruns the rule). A light shell job (see tune_config in tune.smk for why not run:).
    output:
        spec=f"{RESULTS}/tables/spec.json",
    params:
        spec=as_json(report_spec(config, PLAN, RESULTS)),
    log:
        f"{RESULTS}/logs/report_spec.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_spec.tsv"
    localrule: True
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.jobs write-json --json {params.spec:q} --out {output.spec:q} > {log:q} 2>&1"


rule aggregate:
    # Reads every metrics.json of the plan; failure records (train.smk) become missing cells.
    input:
        spec=rules.report_spec.output[0],
        metrics=PLAN.run_paths(RESULTS, "eval", "metrics.json"),
        records=PLAN.run_paths(RESULTS, "eval", RECORD),
        reference="results/reference/paper_tables.csv",
        mi=[MI_TABLE] if NEEDS_MI else [],
        experiment=EXPERIMENT,
        toy=TOY_FIGURE,
    output:
        csv=[report(f"{RESULTS}/tables/{n}.csv", caption="../report/table.rst", category="Tables", subcategory=n, labels={"table": n}) for n in TABLE_NAMES],
        md=[f"{RESULTS}/tables/{n}.md" for n in TABLE_NAMES],
        tex=[f"{RESULTS}/tables/{n}.tex" for n in TABLE_NAMES],
        failures=f"{RESULTS}/tables/failures.csv",
        selection=[f"{RESULTS}/tables/selection_rules.csv", f"{RESULTS}/tables/selection_rules.md"],
        figure=[report(MI_FIGURE, caption="../report/mi_vs_performance.rst", category="Figures")] if HAS_MI_FIGURE else [],
        record=f"{RESULTS}/mlflow/summary_run.json",
    params:
        out=lambda wc, output: str(Path(output.failures).parent.parent),
        extra=lambda wc, input: " ".join(f"--extra-artifact {f}" for f in [input.toy, *input.mi]),
    log:
        f"{RESULTS}/logs/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.jobs aggregate --spec {input.spec:q} --out {params.out:q}"
        " --experiment {input.experiment:q} --record {output.record:q} {params.extra}"
        " > {log:q} 2>&1"


TARGETS += [rules.aggregate.output.record]


if PLAN.metric_tables:

    rule listening_page:
        # The samples one can hear in the Snakemake --report: its viewer shows HTML results but
        # offers WAV files only as downloads, so one self-contained page carries the players.
        input:
            spec=rules.report_spec.output[0],
            tables=[f"{RESULTS}/tables/{n}.csv" for n in PLAN.metric_tables],
        output:
            page=report(f"{RESULTS}/tables/samples.html", caption="../report/samples.rst", category="Samples"),
        log:
            f"{RESULTS}/logs/listening_page.log",
        benchmark:
            f"{RESULTS}/benchmarks/listening_page.tsv"
        conda:
            ENV
        shell:
            "{PYTHON} -m stripes.audio page --spec {input.spec:q} --out {output.page:q} > {log:q} 2>&1"

    TARGETS += [rules.listening_page.output.page]
