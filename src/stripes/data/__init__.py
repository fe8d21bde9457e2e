"""The data stage: fetch/verify POP909 (``fetch``), MIDI -> pianorolls (``midi``), Dai et al.
annotations and alignment (``annotations``), per-song cache, split and report (``prepare``), and
``WindowDataset`` (``dataset``, the only module that imports torch; loaded lazily here so that
``stripes fetch`` / ``prepare`` / ``mi`` start fast).
"""

# (no `from __future__ import annotations` here: it would shadow the `annotations` submodule)

# `prepare` is deliberately not re-exported: it is also the name of the submodule, and importing
# the submodule rebinds the package attribute. Use `from stripes.data.prepare import prepare`.
__all__ = ["WindowDataset", "Prepared", "window_starts"]


def __getattr__(name: str):
    if name == "WindowDataset":
        from stripes.data import dataset

        return getattr(dataset, name)
    if name == "Prepared":
        from stripes.data.store import Prepared

        return Prepared
    if name == "window_starts":
        import importlib

        return importlib.import_module("stripes.data.prepare").window_starts
    raise AttributeError(f"module 'stripes.data' has no attribute {name!r}")
