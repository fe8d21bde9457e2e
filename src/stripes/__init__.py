"""stripes: structure-informed positional encodings for efficient music Transformers.

Reproduces "Of All StrIPEs" (Agarwal, Wang, Richard; arXiv 2504.05364) and F-StrIPE
(ICASSP 2025): melody harmonization on POP909 with every positional encoding crossed with
every structural context. The logic lives here; Snakemake rules are thin adapters.
"""

__version__ = "0.1.0"
