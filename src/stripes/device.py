"""Device selection, seeding, determinism and RNG-state capture (for exact resume).

Every RNG state is returned as plain Python objects and torch tensors so that checkpoints load
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def select_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given.

    Raises:
        RuntimeError: CUDA was requested but is not available.
    """
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but torch.cuda.is_available() is False")
    return dev


def set_num_threads(n: int | None) -> None:
    """Set torch's intra-op threads when ``n`` is a positive integer (None/0: leave the default)."""
    if n:
        torch.set_num_threads(int(n))


#: glibc's malloc settings for CPU jobs, set in the jobs' environment (workflow/rules/train.smk,
#: tune.smk; the benchmarks' workers), never from inside the library: they change the whole
#: process's allocator, so the process that owns it decides. By default glibc serves blocks of more
#: than a few MiB with ``mmap`` and unmaps them on free, so every activation of a CPU training step
#: (the (8, 1024, 1536) qkv output is 48 MiB) comes back as fresh pages that the kernel must fault
#: in and zero: about 50,000 page faults and 0.1 s of system time per paper-size step, 5-15 % of
#: the step on 2 cores. With mmap off and a 2 GiB trim threshold the heap grows to the step's
#: high-water mark once and is reused (peak RSS of a paper-size CPU step: 1.40 GB with this, 1.43
#: GB without). Results are unchanged (only where memory comes from). These are the environment
#: forms of ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``.
KEEP_FREED_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_deterministic(flag: bool = True, device: torch.device | str | None = None) -> None:
    """Deterministic kernels for ``device``.

    On CUDA: ``torch.use_deterministic_algorithms(warn_only=True)``, fixed cuDNN algorithms and
    the cuBLAS workspace setting. On CPU the kernels this project uses (GEMM, cumsum, elementwise)
    are already deterministic for a fixed thread count, and ``use_deterministic_algorithms``
    costs ~2.5 s of imports (torch._dynamo) per process, so it is skipped there; the same-seed and
    resume tests check CPU determinism end to end.
    """
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cpu":
        return
    if flag:
        # cuBLAS needs this workspace setting for deterministic GEMMs (set before the first CUDA call)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(flag, warn_only=True)
    torch.backends.cudnn.deterministic = flag
    torch.backends.cudnn.benchmark = not flag


def rng_state() -> dict[str, Any]:
    """All global RNG states (Python, NumPy, torch CPU, torch CUDA) as weights_only-safe objects."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def module_generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """Private ``torch.Generator`` attributes of a module tree (e.g. a FAVOR+ redraw generator).

    Their states are not part of ``state_dict()``; the trainer checkpoints them separately so
    that a resumed run redraws the same features.
    """
    out: dict[str, torch.Generator] = {}
    for mname, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if isinstance(value, torch.Generator):
                out[f"{mname}.{attr}" if mname else attr] = value
    return out


def describe(device: torch.device) -> str:
    """Short human-readable description of a device (GPU name, or CPU threads)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"
