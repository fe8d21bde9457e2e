# Analysis stage: the D=2 toy kernel figure (paper Figs. 2-3, paper-spec §5.6, A22), computed
# through the project's PE classes (stripes.toy), no data needed; and the metric-floor table
# (paper-spec §5.2, A17), computed on the prepared test windows.


rule toy_kernels:
    output:
        png=report(
            TOY_FIGURE,
            caption="../report/toy_kernels.rst",
            category="Figures",
        ),
        csv="results/figures/toy_kernels.csv",
    params:
        n_freqs=33,  # f in linspace(0, 1, 33) (A22)
        seed=0,  # toy data seed (A22)
    log:
        "results/logs/toy_kernels.log",
    benchmark:
        "results/benchmarks/toy_kernels.tsv"
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.cli toy --out-png {output.png:q} --out-csv {output.csv:q}"
        " --n-freqs {params.n_freqs} --seed {params.seed} > {log:q} 2>&1"


TARGETS += rules.toy_kernels.output


rule metric_floor:
    # Every reading of every metric (papers' text vs [S24] code; SSMD x50 and x100) on reference
    # predictions built from the test targets (empty, target, 16th shift, a share of the notes,
    # random cells, all on), beside the papers' no-information rows: the evidence for the primary
    # reading of each metric (docs/metric-readings.md). Needs the prepared data (data.smk's prepare;
    # named by path, so the include order does not matter).
    input:
        report=f"{DATA_DIR}/report.json",
        songs=f"{DATA_DIR}/songs.json",
        split=f"{DATA_DIR}/split.json",
        reference=f"{RESULTS}/reference/paper_tables.csv",
    output:
        csv=f"{RESULTS}/tables/metric_floor.csv",
        md=f"{RESULTS}/tables/metric_floor.md",
    params:
        data_dir=lambda wc, input: str(Path(input.report).parent),
        bars=" ".join(
            str(config.get("data", {}).get(k, d))
            for k, d in (("window_bars", 16), ("long_window_bars", 64))
        ),
        keep="0.1 0.25 0.5",  # note fractions of the keep_<f> predictions
        seed=0,  # seed of the keep_<f> and random_density draws
    log:
        f"{RESULTS}/logs/metric_floor.log",
    benchmark:
        f"{RESULTS}/benchmarks/metric_floor.tsv"
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.cli calibrate --data-dir {params.data_dir:q} --reference {input.reference:q}"
        " --bars {params.bars} --keep {params.keep} --seed {params.seed}"
        " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


TARGETS += [rules.metric_floor.output.csv, rules.metric_floor.output.md]
