# report stage: the tables (CSV, Markdown, LaTeX; significance marks; the paper's numbers and
# the difference), Figure 4 (MI vs in-domain performance) and an MLflow summary run.
# Tables are built from the metrics.json files of THIS DAG (never from all runs of the MLflow
# experiment). A failed run (failure record, see train.smk) shows as a missing cell.

MI_TABLE = f"{RESULTS}/tables/mutual_information.csv"  # written by the data stage (data.smk)
METRIC_TABLES = PLAN.metric_tables
MI_TABLES = [n for n, t in PLAN.tables.items() if t.kind == "mutual_information"]
MI_FIGURE = f"{RESULTS}/figures/mi_vs_performance.png"
HAS_MI_FIGURE = bool(config.get("study", {}).get("mi_figure", {}).get("table"))


def table_outputs(ext, caption=None):
    names = METRIC_TABLES + MI_TABLES
    paths = [f"{RESULTS}/tables/{name}.{ext}" for name in names]
    if caption is None:
        return paths
    flag = lambda p, name: report(  # noqa: E731  (a line may not start with `report(` in a .smk)
        p, caption=caption, category="Tables", subcategory=name, labels={"table": name, "format": ext}
    )
    return [flag(p, name) for p, name in zip(paths, names)]


rule report_spec:
    # The tables as the aggregate step reads them (rows, seeds, references): a file of the DAG,
    # rewritten when config/config.yaml changes the tables.
    output:
        f"{RESULTS}/tables/spec.json",
    params:
        spec=report_spec_json(),
    log:
        f"{RESULTS}/logs/report_spec.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_spec.tsv"
    localrule: True
    run:
        from stripes.config import write_json

        write_json(json.loads(params.spec), output[0])
        Path(log[0]).write_text(f"wrote {output[0]}\n")


rule aggregate:
    input:
        spec=rules.report_spec.output[0],
        metrics=run_paths("eval", "metrics.json"),
        records=run_paths("eval", "mlflow_run.json"),
        reference="results/reference/paper_tables.csv",
        mi=[MI_TABLE] if (MI_TABLES or HAS_MI_FIGURE) else [],
        experiment=EXPERIMENT,
    output:
        csv=table_outputs("csv", "../report/table.rst"),
        md=table_outputs("md"),
        tex=table_outputs("tex"),
        failures=f"{RESULTS}/tables/failures.csv",
        figure=[report(MI_FIGURE, caption="../report/mi_vs_performance.rst", category="Figures")]
        if HAS_MI_FIGURE
        else [],
        record=f"{RESULTS}/mlflow/summary_run.json",
    params:
        out=RESULTS,
    log:
        f"{RESULTS}/logs/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    shell:
        "{PY} -m stripes.cli aggregate --spec {input.spec:q} --out {params.out:q}"
        " --experiment {input.experiment:q} --run-record {output.record:q} > {log:q} 2>&1"


TARGETS += [rules.aggregate.output.record]
