# data stage: fetch + verify POP909 and the Dai et al. annotations, prepare pianorolls / label
# streams / split / windows, and the mutual-information table (paper Table I).
# Every setting reaches the jobs through params: (a JSON dump of config["data"] / config["mi"]),
# so editing a key reruns exactly the jobs that depend on it.

DATA_SETTINGS = as_json(config.get("data", {}))
# fetch only depends on where the data come from: other data keys must not rerun it
FETCH_KEYS = ("pop909_dir", "structure_dir", "pop909_url", "structure_url", "cache_dir", "download")
FETCH_SETTINGS = as_json({k: v for k, v in config.get("data", {}).items() if k in FETCH_KEYS})
MI_SETTINGS = as_json(config.get("mi", {}))
# DATA_DIR, PREPARED_DATA and MI_TABLE: common.smk


rule fetch:
    # Resolves both datasets (local folder / env override, else the pinned download) and checks
    # every file against the checksum lists committed in src/stripes/resources/.
    output:
        f"{DATA_DIR}/sources.json",
    params:
        settings=FETCH_SETTINGS,
    log:
        f"{RESULTS}/logs/data/fetch.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/fetch.tsv"
    threads: 4
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.cli fetch --settings {params.settings:q} --jobs {threads}"
        " --out {output:q} > {log:q} 2>&1"


rule prepare:
    # Per-song cache in {DATA_DIR}/songs/ (keyed on source checksums + settings): a rerun after a
    # settings change only redoes what changed. The report lists every dropped song and why.
    input:
        sources=rules.fetch.output[0],
    output:
        report=f"{DATA_DIR}/report.json",
        report_md=f"{DATA_DIR}/report.md",
        split=f"{DATA_DIR}/split.json",
        songs=f"{DATA_DIR}/songs.json",
    params:
        settings=DATA_SETTINGS,
    log:
        f"{RESULTS}/logs/data/prepare.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/prepare.tsv"
    threads: workflow.cores
    conda:
        ENV
    shell:
        # prepare re-checks the sources too (a stat pass against fetch's verification record,
        # ~0.1 s): its per-song cache is keyed on the manifest checksums, valid only if they hold
        "{PYTHON} -m stripes.cli prepare --settings {params.settings:q} --jobs {threads}"
        " > {log:q} 2>&1"


rule mutual_information:
    input:
        report=rules.prepare.output.report,
        songs=rules.prepare.output.songs,
    output:
        csv=MI_TABLE,
        md=f"{RESULTS}/tables/mutual_information.md",
    params:
        settings=MI_SETTINGS,
        data_dir=lambda wc, input: str(Path(input.report).parent),
    log:
        f"{RESULTS}/logs/data/mutual_information.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/mutual_information.tsv"
    conda:
        ENV
    shell:
        "{PYTHON} -m stripes.cli mi --data-dir {params.data_dir:q} --settings {params.settings:q}"
        " --out {output.csv:q} > {log:q} 2>&1"


TARGETS += [rules.prepare.output.report, rules.mutual_information.output.csv]
