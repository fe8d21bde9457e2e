# Analysis stage: the D=2 toy kernel figure (paper Figs. 2-3, paper-spec §5.6, A22).
# Computed through the project's PE classes (stripes.toy); no data needed.


rule toy_kernels:
    output:
        png=report(
            "results/figures/toy_kernels.png",
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
        "python -m stripes.cli toy --out-png {output.png:q} --out-csv {output.csv:q}"
        " --n-freqs {params.n_freqs} --seed {params.seed} > {log:q} 2>&1"


TARGETS += rules.toy_kernels.output
