"""Data-stage settings: the defaults of the ``data:`` section of config/config.yaml.

``load_settings(arg)`` merges the defaults with ``arg``: None, a JSON string (what the Snakemake
rules pass through ``params:``), or a YAML/JSON file (a whole config file is accepted; its
``data`` section is used). Unknown keys are an error naming the key.
"""

from __future__ import annotations

import json
from pathlib import Path

from stripes.data.fetch import DEFAULTS as FETCH_DEFAULTS

# The authors' 43 dropped song ids (paper-spec §1.2): their 866 songs.
AUTHORS_DROPPED = (
    "034 062 102 107 152 171 173 176 203 215 231 254 280 307 311 328 360 369 379 393 412 509 "
    "584 592 624 632 653 654 662 678 689 693 744 749 756 770 775 799 801 806 843 869 872"
).split()

DEFAULTS: dict = {
    **FETCH_DEFAULTS,
    "out_dir": "results/data",
    "song_filter": "authors",  # "authors" (43 ids dropped -> 866) | "index_4_4" (index.xlsx -> 857) | "all"
    "max_songs": None,  # keep only the first N kept songs (smoke runs); None = all
    "chord_source": "dai",  # "dai" (finalized_chord.txt, aligned) | "pop909" (chord_midi.txt)
    "rep_order": "rank",  # REP renumbering: "rank" (A6 literal) | "first" (first appearance)
    "min_agreement": 0.5,  # alignment agreement below this is reported
    "exclude_low_agreement": False,  # also drop those songs (the authors kept all 866)
    "ticks_per_quarter": 16,
    "split_seed": 0,
    "split_fractions": [0.8, 0.1, 0.1],
    "window_bars": 16,
    "window_overlap": 128,
    "long_window_bars": 64,
    "long_window_overlap": 512,
}


def load_settings(arg: str | dict | None = None) -> dict:
    given: dict = {}
    if isinstance(arg, dict):
        given = arg
    elif arg:
        text = arg.strip()
        if text.startswith("{"):
            given = json.loads(text)
        else:
            import yaml

            path = Path(arg)
            if not path.exists():
                raise FileNotFoundError(f"settings file {path} not found")
            given = yaml.safe_load(path.read_text()) or {}
            if "data" in given and isinstance(given["data"], dict):
                given = given["data"]
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise KeyError(f"unknown data setting(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **given}
