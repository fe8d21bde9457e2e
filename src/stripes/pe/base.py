"""The common base class of every positional encoding.

Shapes: positions pos (B,T,L) float; x (B,T,d_model); per-head q, k (B,H,T,D) -> (B,H,T,D_in);
logit bias (B,H,T,T). A model forward calls ``prepare(pos)`` once and hands the result (the
"code") to every layer, so anything shared across layers (SPE noise, RoPE angles) is computed once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..kernels import KernelSet, check_mode, resolve

TARGETS = ("none", "input", "qk", "logits")
ATTENTIONS = ("linear", "exact")


def full_precision(ref: Tensor):
    """Disable autocast around angle/phase computations: bf16 positions lose integers above 256."""
    return torch.autocast(device_type=ref.device.type, enabled=False)


class PositionalEncoding(nn.Module):
    """Base class. Subclasses set the class attributes and override the hook of their target.

    target      where the PE acts: "none", "input" (added to the input embedding), "qk" (q/k
                before the feature map) or "logits" (additive bias of exact attention).
    attention   the attention it needs: "linear" (FAVOR+ + causal linear) or "exact" (softmax).
    d_in        per-head dimension handed to phi (property; = head_dim unless the PE changes it).

    Structural constructor args (supplied by the model, never by the registry entry):
    n_heads, head_dim, context_dim (L), d_model, n_layers. ``share_layers`` (registry kwarg,
    default True, A24): one instance serves all layers; False makes the model build one per layer.

    ``kernel_mode`` (the model config's ``kernels``, set by ``use_kernels`` at ``build_model``;
    "reference" for a PE built on its own): the hooks compute the plain forms written in each class
    unless ``kernels_for(tensor)`` (``stripes.kernels.resolve`` on the tensor's device) turns a
    kernel on.
    """

    target: ClassVar[str] = "none"
    attention: ClassVar[str] = "linear"
    STRUCTURAL: ClassVar[tuple[str, ...]] = ("n_heads", "head_dim", "context_dim", "d_model", "n_layers")
    kernel_mode: str = "reference"

    def __init__(self, *, n_heads: int, head_dim: int, context_dim: int, d_model: int, n_layers: int,
                 share_layers: bool = True):
        super().__init__()
        if not self.accepts(context_dim, regular_grid=True) and not self.accepts(context_dim, regular_grid=False):
            raise ValueError(f"{type(self).__name__} does not accept context dimension L={context_dim}")
        self.n_heads, self.head_dim, self.context_dim = n_heads, head_dim, context_dim
        self.d_model, self.n_layers, self.share_layers = d_model, n_layers, share_layers

    @classmethod
    def accepts(cls, context_dim: int, regular_grid: bool) -> bool:
        """Whether this PE can take a context of dimension L (regular_grid: positions = 0..T-1)."""
        return context_dim >= 1

    @classmethod
    def config_problems(cls, head_dim: int, kwargs: dict) -> list[str]:
        """What stops this PE from being built with per-head dimension ``head_dim`` and the registry
        ``kwargs``, one message per problem (default: nothing). The constructor raises on the same
        conditions, but only inside a job; stripes.study.check_study asks here so that a config
        which breaks a PE fails at ``snakemake -n`` instead."""
        return []

    @property
    def d_in(self) -> int:
        return self.head_dim

    def use_kernels(self, mode: str) -> PositionalEncoding:
        """Follow the kernel switch ``mode`` ("auto" | "reference" | "fast") from now on."""
        self.kernel_mode = check_mode(mode)
        return self

    def kernels_for(self, ref: Tensor) -> KernelSet:
        return resolve(self.kernel_mode, ref.device)

    # hooks -------------------------------------------------------------------------------------
    def prepare(self, pos: Tensor) -> Any:
        """Per-forward code shared by all layers (default: the positions themselves)."""
        return pos

    def embed(self, x: Tensor, code: Any) -> Tensor:
        """target "input": x (B,T,d_model) -> x + PE."""
        raise NotImplementedError

    def transform_qk(self, q: Tensor, k: Tensor, code: Any, layer: int) -> tuple[Tensor, Tensor]:
        """target "qk": (B,H,T,D) -> (B,H,T,d_in) each."""
        raise NotImplementedError

    def logit_bias(self, q: Tensor, code: Any, layer: int) -> Tensor:
        """target "logits": additive (B,H,T,T) bias of the exact-attention logits."""
        raise NotImplementedError
