"""Data-stage settings: the ``data:`` section of the config, merged over the schema's defaults.

``load_settings(arg)`` merges the defaults (stripes.schema, the one place they are defined) with
``arg``: None, a JSON string (what the Snakemake rules pass through ``params:``), or a YAML/JSON
file (a whole config file is accepted; its ``data`` section is used). Unknown keys are an error
naming the key. A null download URL becomes the pinned archive of ``stripes.data.sources``.
"""

from __future__ import annotations

import json
from pathlib import Path

from stripes.fileio import load_yaml
from stripes.data.sources import SOURCES

# The authors' 43 dropped song ids (paper-spec §1.2): their 866 songs.
AUTHORS_DROPPED = (
    "034 062 102 107 152 171 173 176 203 215 231 254 280 307 311 328 360 369 379 393 412 509 "
    "584 592 624 632 653 654 662 678 689 693 744 749 756 770 775 799 801 806 843 869 872"
).split()


def load_settings(arg: str | dict | None = None) -> dict:
    given: dict = {}
    if isinstance(arg, dict):
        given = arg
    elif arg:
        text = arg.strip()
        if text.startswith("{"):
            given = json.loads(text)
        else:

            path = Path(arg)
            if not path.exists():
                raise FileNotFoundError(f"settings file {path} not found")
            given = load_yaml(path.read_text()) or {}
            if "data" in given and isinstance(given["data"], dict):
                given = given["data"]
    from stripes.schema import with_defaults

    out = with_defaults("data", given, where="data setting(s)")
    for source in SOURCES.values():
        out[source.url_key] = out[source.url_key] or source.url
    return out
