"""Small file helpers shared by every stage: JSON read, and THE atomic write (:func:`atomic_path`)
with its text, bytes, JSON and torch forms."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def read_json(path: str | Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml's C loader when PyYAML has it: the same objects, and
    about ten times faster on the packaged schema, which every job and every `snakemake` start
    reads."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def write_json(obj, path: str | Path) -> None:
    """``obj`` as indented, key-sorted JSON, written atomically (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that go by the suffix still
    work) that replaces ``path`` when the block ends without an error, and is removed otherwise.

    A reader (or a run killed mid-write and restarted) sees the old file or the new one, never
    a torn one: the temporary file sits in the same folder, so ``os.replace`` is a rename on one
    disk. The one atomic-write primitive of the package; the helpers below use it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomically(path: str | os.PathLike, mode: str, write: Callable[[IO], None]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a fsynced temporary file and ``os.replace``."""
    _write_atomically(path, "w", lambda fh: fh.write(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``."""
    _write_atomically(path, "wb", lambda fh: fh.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a fsynced temporary file and ``os.replace``."""
    import torch  # here, not at the top: most stages that write files never load torch

    _write_atomically(path, "wb", lambda fh: torch.save(obj, fh))
