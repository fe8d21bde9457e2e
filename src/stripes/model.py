"""The harmonizer (paper-spec §4, A23, A28): x (B,T,d_in), pos (B,T,L) -> logits (B,T,d_out).

Input Linear(d_in, d_model) [+ input PE] -> n_layers post-LN causal encoder layers
(x <- LN(x + Drop(Attn(x))); x <- LN(x + Drop(FFN(x))), ReLU FFN) -> Linear(d_model, d_out).
No final norm, no input dropout, no dropout inside attention. Attention is FAVOR+ causal linear
attention (chunked by default) or exact softmax attention, as the PE requires.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import schema
from .attention import FavorFeatureMap, causal_linear_attention, exact_causal_attention
from .kernels import check_mode, resolve
from .kernels import dropout as dropout_kernels
from .kernels import heads as head_kernels
from .pe import PositionalEncoding, get_entry

#: the model section's defaults, read from the config schema (the one place they are defined;
#: stripes.schema.defaults("model") gives a fresh copy)
DEFAULTS: dict[str, Any] = schema.defaults("model")


class Dropout(nn.Dropout):
    """``nn.Dropout`` (``F.dropout``), or with the dropout kernel the mask of
    ``stripes.kernels.dropout.bit_dropout_mask`` (same drop probability p, a faster CPU draw).

    ``residual(x, branch)`` is x + dropout(branch); with the kernel one ``addcmul``. Both draw from
    torch's global RNG, so ``torch.manual_seed`` and a restored RNG state reproduce them.
    ``kernels``: the switch of ``stripes.kernels``.
    """

    def __init__(self, p: float = 0.5, kernels: str = "reference"):
        super().__init__(p)
        self.kernel_mode = check_mode(kernels)

    def _kernel(self, x: Tensor) -> bool:
        return self.p < 1 and resolve(self.kernel_mode, x.device).dropout

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self._kernel(x):
            return dropout_kernels.bit_dropout(x, self.p)
        return F.dropout(x, self.p, True)

    def residual(self, x: Tensor, branch: Tensor) -> Tensor:
        """x + dropout(branch)."""
        if not self.training or self.p == 0:
            return x + branch
        if self._kernel(branch):
            return dropout_kernels.residual_dropout(x, branch, self.p)
        return x + F.dropout(branch, self.p, True)


def split_heads_reference(qkv: Tensor, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B,H,T,D) views of the packed projection qkv (B,T,3*H*D)."""
    b, t, c = qkv.shape
    return qkv.view(b, t, 3, n_heads, c // (3 * n_heads)).permute(2, 0, 3, 1, 4).unbind(0)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, pe: PositionalEncoding, layer: int, cfg: dict):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.layer = n_heads, d_model // n_heads, layer
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.linear = pe.attention == "linear"
        self.impl, self.chunk_size = cfg["linear_impl"], cfg["chunk_size"]
        self.kernel_mode = check_mode(cfg["kernels"])
        if self.linear:
            self.features = FavorFeatureMap(pe.d_in, cfg["n_features"], cfg["feature_seed"] + layer,
                                            self.kernel_mode)

    def forward(self, x: Tensor, pe: PositionalEncoding, code: Any) -> Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x)
        split = head_kernels.split_heads if resolve(self.kernel_mode, x.device).split_heads else split_heads_reference
        q, k, v = split(qkv, self.n_heads)
        v_dtype = v.dtype
        if self.linear:
            # PE transform, features and prefix sums in float32 even under autocast: exp() and
            # the running sums are too coarse in bf16; the projections around stay in bf16
            with torch.autocast(device_type=x.device.type, enabled=False):
                dtype = torch.promote_types(q.dtype, torch.float32)
                q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
                if pe.target == "qk":
                    q, k = pe.transform_qk(q, k, code, self.layer)
                phi_q, phi_k, eps = self.features(q, k)
                y = causal_linear_attention(phi_q, phi_k, v, eps, self.impl, self.chunk_size)
        else:
            bias = pe.logit_bias(q, code, self.layer) if pe.target == "logits" else None
            y = exact_causal_attention(q, k, v, bias)
        return self.out(y.transpose(1, 2).reshape(b, t, -1).to(v_dtype))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, pe: PositionalEncoding,
                 layer: int, cfg: dict):
        super().__init__()
        self.attn = CausalSelfAttention(d_model, n_heads, pe, layer, cfg)
        self.ff1, self.ff2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = Dropout(dropout, cfg["kernels"])

    def forward(self, x, pe, code):
        x = self.norm1(self.drop.residual(x, self.attn(x, pe, code)))
        ff = self.ff2(self.drop(F.relu(self.ff1(x))))
        return self.norm2(self.drop.residual(x, ff))


class Harmonizer(nn.Module):
    """The model. ``pes`` holds one PE shared by all layers, or one per layer (share_layers False)."""

    def __init__(self, pe_factory, context_dim: int, cfg: dict):
        super().__init__()
        self.cfg = cfg
        d, h = cfg["d_model"], cfg["n_heads"]
        first = pe_factory()
        shared = first.share_layers
        self.pes = nn.ModuleList([first] + ([] if shared else [pe_factory() for _ in range(cfg["n_layers"] - 1)]))
        self.context_dim = context_dim
        self.inp = nn.Linear(cfg["d_in"], d)
        self.layers = nn.ModuleList(
            EncoderLayer(d, h, cfg["d_ff"], cfg["dropout"], first, i, cfg) for i in range(cfg["n_layers"])
        )
        self.head = nn.Linear(d, cfg["d_out"])

    @property
    def pe(self) -> PositionalEncoding:
        return self.pes[0]

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        if pos.shape[:2] != x.shape[:2] or pos.shape[-1] != self.context_dim:
            raise ValueError(f"pos {tuple(pos.shape)} does not match x {tuple(x.shape)} and L={self.context_dim}")
        x = self.inp(x)
        codes = [pe.prepare(pos) if pe.target != "none" else None for pe in self.pes]
        if self.pe.target == "input":
            x = self.pe.embed(x, codes[0])
        for i, layer in enumerate(self.layers):
            j = 0 if len(self.pes) == 1 else i
            x = layer(x, self.pes[j], codes[j])
        return self.head(x)


def resolve_model_cfg(model_cfg: dict | None) -> dict:
    """The model section merged over the schema's defaults; an unknown key raises
    ``stripes.schema.UnknownKeyError`` (a ValueError) naming it and the known keys."""
    return schema.with_defaults("model", model_cfg, where="model config keys")


def build_model(pe: str, context_dim: int, regular_grid: bool, model_cfg: dict | None = None,
                registry: dict | None = None) -> Harmonizer:
    """The harmonizer with the registered PE ``pe`` for a context of dimension L = context_dim.

    Raises ValueError when the PE does not accept the context (e.g. convSPE on a non-grid context).
    """
    cfg = resolve_model_cfg(model_cfg)
    entry = get_entry(pe, registry)
    if not entry.cls.accepts(context_dim, regular_grid):
        raise ValueError(f"PE {pe!r} does not accept a context with L={context_dim}, regular_grid={regular_grid}")
    head_dim = cfg["d_model"] // cfg["n_heads"]

    def factory():
        return entry.build(n_heads=cfg["n_heads"], head_dim=head_dim, context_dim=context_dim,
                           d_model=cfg["d_model"], n_layers=cfg["n_layers"]).use_kernels(cfg["kernels"])

    return Harmonizer(factory, context_dim, cfg)


__all__ = [
    "DEFAULTS", "Dropout", "Harmonizer", "build_model", "resolve_model_cfg",
    "split_heads_reference",
]
