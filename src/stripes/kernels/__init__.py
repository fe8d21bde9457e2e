"""Fast kernels of the model, kept apart from the reference math they must equal.

Every PE class (``stripes.pe``), the attention (``stripes.attention``) and the model
(``stripes.model``) write their math in the plain torch form. The ops here compute the same
values and gradients faster on some device; each names, in its docstring, the reference it must
equal, and ``tests/test_pe_kernels.py`` compares the two, forward and backward.

One switch picks them: the model config key ``model.kernels``:

- ``reference``: the plain forms only;
- ``fast``: every kernel (SPE's mix in the form written for the device: blocked on CPU,
  batched elsewhere);
- ``auto`` (default): per op, the form measured or expected to be faster on the device.

``resolve(mode, device)`` turns it into a ``KernelSet``; it is the only place that does. The
model hands the mode to its PEs, attention layers and dropout at ``build_model``; they resolve it
against the device of the tensors they see, so a model built once and moved to CUDA follows.

``auto`` by device (CPU: measured on 2 cores, numbers in each op's docstring; CUDA: not measured
here, the choice follows from how the ops are built and is to be checked with
``benchmarks/bench_train.py --device cuda --kernels reference|fast|auto``):

====================  ==========================  =========  =====================================
op (KernelSet field)  kernel                      CPU auto   CUDA auto
====================  ==========================  =========  =====================================
rotary                rotary.rotate               fast       reference: one fused elementwise
                      (RoPE pair rotation)                   pass each way; the complex views only
                                                             save CPU memory traffic
pool_pairs            rotary.pool_pairs           fast       reference (same reason)
                      (RoPEPool)
cos_sin_pool          rotary.cos_sin_pool         fast       reference (same reason)
                      (F-StrIPE1 pooled)
sine_mix              sine_mix.sine_mix_blocked   blocked    batched: the blocked form loops in
                      / sine_mix_batched (SPE)               Python over heads x windows x blocks,
                                                             H*B*T/1024 small GEMMs and launches;
                                                             the batched one is one bmm each way
favor                 favor.sq_norm,              fast       reference: the ops save a cat and a
                      favor.paired_exp                       copy, which a GPU does in one kernel
split_heads           heads.split_heads           fast       reference: autograd's stack + copy is
                                                             one cheap kernel on a GPU
dropout               dropout.bit_dropout_mask    reference  reference: ``F.dropout`` is a fused
                                                             Philox kernel there. CPU: the exact
                                                             mask measured no faster than
                                                             ``F.dropout`` (see its docstring)
====================  ==========================  =========  =====================================

CPU ``auto`` is what the code did before the switch existed, bit for bit, except dropout: the
old 16-bit mask dropped with probability 0.100006 for p = 0.1; ``auto`` now uses ``F.dropout``
(rate p, as on CUDA) and ``fast`` the exact bit mask of ``stripes.kernels.dropout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

MODES = ("auto", "reference", "fast")
SINE_MIX = ("reference", "blocked", "batched")


@dataclass(frozen=True)
class KernelSet:
    """Which fast op each call site uses; False / "reference" means the plain form."""

    rotary: bool = False
    pool_pairs: bool = False
    cos_sin_pool: bool = False
    sine_mix: str = "reference"
    favor: bool = False
    split_heads: bool = False
    dropout: bool = False


REFERENCE = KernelSet()


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown kernels mode {mode!r}; use one of {MODES}")
    return mode


@lru_cache(maxsize=None)
def _resolve(mode: str, device_type: str) -> KernelSet:
    check_mode(mode)
    cpu = device_type == "cpu"
    if mode == "reference":
        return REFERENCE
    if mode == "fast":
        return KernelSet(True, True, True, "blocked" if cpu else "batched", True, True, True)
    if cpu:
        return KernelSet(True, True, True, "blocked", True, True, dropout=False)
    return KernelSet(sine_mix="batched")


def resolve(mode: str, device: torch.device | str) -> KernelSet:
    """The ``KernelSet`` of switch value ``mode`` on ``device`` (see the table above)."""
    return _resolve(mode, torch.device(device).type)


__all__ = ["MODES", "REFERENCE", "SINE_MIX", "KernelSet", "check_mode", "resolve"]
