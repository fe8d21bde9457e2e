"""Small file helpers shared by every stage: JSON read, atomic writes (JSON, text, bytes, torch)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def read_json(path: str | Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def write_json(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    tmp.replace(path)


def _write_atomically(path: str | os.PathLike, mode: str, write: Callable[[IO], None]) -> None:
    # a reader (or a run killed mid-write and restarted) sees the old file or the new one, never a
    # torn one: the temporary file sits in the same folder, so os.replace is a rename on one disk
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
