"""The harmonizer (paper-spec §4, A23, A28): x (B,T,d_in), pos (B,T,L) -> logits (B,T,d_out).

Input Linear(d_in, d_model) [+ input PE] -> n_layers post-LN causal encoder layers
(x <- LN(x + Drop(Attn(x))); x <- LN(x + Drop(FFN(x))), ReLU FFN) -> Linear(d_model, d_out).
No final norm, no input dropout, no dropout inside attention. Attention is FAVOR+ causal linear
attention (chunked by default) or exact softmax attention, as the PE requires.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import FavorFeatureMap, causal_linear_attention, exact_causal_attention
from .pe import PositionalEncoding, get_entry

DEFAULTS: dict[str, Any] = {
    "d_in": 256,  # melody + bridge pianoroll rows
    "d_out": 128,  # piano logits (A1)
    "d_model": 512,
    "n_layers": 2,
    "n_heads": 4,
    "d_ff": 512,  # A13
    "dropout": 0.1,  # residual branches and FFN (A28)
    "n_features": 128,  # FAVOR+ m_f (A11)
    "chunk_size": 128,  # chunk of the chunked causal linear attention
    "feature_seed": 0,  # seed of the eval-mode FAVOR+ draw (layer l uses feature_seed + l)
    "linear_impl": "chunked",  # "chunked" (memory linear in T) | "reference" (explicit T x T)
}


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a faster CPU mask: 16 random bits per element instead of ``bernoulli_``.

    On CPU, ``F.dropout`` spends most of its time drawing the Bernoulli mask: forward + backward
    on an (8,1024,512) fp32 tensor took 43 ms on 2 cores against 16 ms here, where applying a mask
    costs about 3 ms. So the mask is cut from one full-range 64-bit ``random_`` draw per 4
    elements: element i is kept when its int16 lane is >= k - 32768, k = round(p * 65536). The
    drop rate is therefore k / 65536 (0.1 -> 0.100006) and the scale 1 / (1 - k / 65536), held
    in the float32 mask (0 or scale) that backward multiplies by. ``residual(x, branch)`` is
    x + dropout(branch) as one ``addcmul``. Other devices use ``F.dropout`` (a fused kernel
    there). Both draw from torch's global RNG, so ``torch.manual_seed`` and a restored RNG state
    reproduce it.
    """

    def _cpu_mask(self, x: Tensor) -> Tensor | None:
        """The scaled CPU mask for x, or None where ``F.dropout`` (or nothing) applies."""
        if x.device.type != "cpu" or self.p >= 1:
            return None
        return bit_dropout_mask(x.shape, self.p, x.device)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        m = self._cpu_mask(x)
        if m is None:
            return F.dropout(x, self.p, True)
        return (x * m).to(x.dtype)

    def residual(self, x: Tensor, branch: Tensor) -> Tensor:
        """x + dropout(branch); on CPU one pass (``addcmul``) instead of three."""
        if not self.training or self.p == 0:
            return x + branch
        m = self._cpu_mask(branch)
        if m is None:
            return x + F.dropout(branch, self.p, True)
        return torch.addcmul(x, branch, m)


def bit_dropout_mask(shape, p: float, device=None) -> Tensor:
    """float32 mask of ``shape``: 0 with probability round(p * 65536) / 65536, else 1 / (1 - that)."""
    k = round(p * 65536)
    if k >= 65536:
        return torch.zeros(shape, device=device)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    # comparing straight into float32 is one pass; a bool mask and torch.where take three
    mask = torch.empty(shape, device=device)
    torch.ge(words.view(torch.int16)[:n].view(shape), k - 32768, out=mask)
    return mask.mul_(65536 / (65536 - k))


def bit_dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode dropout of CPU tensor x with drop rate round(p * 65536) / 65536 (see Dropout)."""
    if round(p * 65536) == 0:
        return x
    return (x * bit_dropout_mask(x.shape, p, x.device)).to(x.dtype)


class _SplitHeads(torch.autograd.Function):
    """qkv (B,T,3*H*D) -> q, k, v (B,H,T,D) views of it.

    Autograd's own backward of view/permute/unbind stacks the three gradients and then copies
    the stack into the (B,T,3,H,D) order; here each gradient is copied once, straight into it.
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, n_heads: int):
        b, t, c = qkv.shape
        ctx.shape = (b, t, 3, n_heads, c // (3 * n_heads))
        return qkv.view(ctx.shape).permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        g = torch.empty(ctx.shape, dtype=gq.dtype, device=gq.device)
        for i, gi in enumerate((gq, gk, gv)):
            g[:, :, i] = gi.transpose(1, 2)
        return g.flatten(2), None


def split_heads(qkv: Tensor, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B,H,T,D) views of the packed projection qkv (B,T,3*H*D)."""
    return _SplitHeads.apply(qkv, n_heads)


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
        if self.linear:
            self.features = FavorFeatureMap(pe.d_in, cfg["n_features"], cfg["feature_seed"] + layer)

    def forward(self, x: Tensor, pe: PositionalEncoding, code: Any) -> Tensor:
        b, t, _ = x.shape
        q, k, v = split_heads(self.qkv(x), self.n_heads)
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
        self.drop = Dropout(dropout)

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
    cfg = dict(DEFAULTS)
    unknown = sorted(set(model_cfg or {}) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg.update(model_cfg or {})
    return cfg


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
                           d_model=cfg["d_model"], n_layers=cfg["n_layers"])

    return Harmonizer(factory, context_dim, cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "DEFAULTS", "Dropout", "Harmonizer", "bit_dropout", "bit_dropout_mask", "build_model", "count_parameters",
    "resolve_model_cfg", "split_heads",
]
