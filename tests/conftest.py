"""Shared fixtures: the POP909 copy in ../shared (or $STRIPES_POP909), the `gpu` marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _pop909_dir() -> Path:
    return Path(os.environ.get("STRIPES_POP909", SHARED / "pop909" / "POP909"))


def _structure_dir() -> Path:
    return Path(os.environ.get("STRIPES_POP909_STRUCTURE", SHARED / "pop909-structure" / "POP909"))


@pytest.fixture(scope="session")
def pop909_dir() -> Path:
    path = _pop909_dir()
    if not (path / "001" / "001.mid").exists():
        pytest.skip(f"POP909 copy not found at {path} (set STRIPES_POP909)")
    return path


@pytest.fixture(scope="session")
def structure_dir() -> Path:
    path = _structure_dir()
    if not (path / "001" / "finalized_chord.txt").exists():
        pytest.skip(f"POP909 structure annotations not found at {path} (set STRIPES_POP909_STRUCTURE)")
    return path


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
