"""The data stage: fetch/verify POP909 (``fetch``), MIDI -> pianorolls (``midi``), Dai et al.
annotations and alignment (``annotations``), per-song cache, split and report (``prepare``), and
``WindowDataset`` (``dataset``, the only module that imports torch; loaded lazily here so that
``stripes fetch`` / ``prepare`` / ``mi`` start fast).
"""

# (no `from __future__ import annotations` here: it would shadow the `annotations` submodule)

__all__ = ["WindowDataset", "Prepared", "prepare", "window_starts"]


def __getattr__(name: str):
    if name == "WindowDataset":
        from stripes.data import dataset

        return getattr(dataset, name)
    if name == "Prepared":
        from stripes.data.store import Prepared

        return Prepared
    if name in ("prepare", "window_starts"):
        from stripes.data import prepare as _prepare

        return getattr(_prepare, name)
    raise AttributeError(f"module 'stripes.data' has no attribute {name!r}")
