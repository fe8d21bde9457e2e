"""FAVOR+ random features, causal linear attention (reference + chunked) and exact attention.

Shapes (head-major, unlike fast-transformers' (B,T,H,D)): q, k (B,H,T,D_in), v (B,H,T,D_v),
features phi(q), phi(k) (B,H,T,m_f), outputs (B,H,T,D_v). Spec: paper-spec §3.2, A11.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import check_mode, resolve
from .kernels import favor as favor_kernels

EPS = 1e-6


# ---------------------------------------------------------------------------------------- FAVOR+
def draw_orthogonal_features(
    d_in: int, n_features: int, generator: torch.Generator | None = None, dtype=torch.float64
) -> Tensor:
    """Omega (d_in, n_features // 2): orthogonal blocks of d_in columns, column norms ~ chi(d_in).

    Drawn on the CPU (from ``generator``, or torch's global CPU RNG when None) so that a seed gives
    the same matrix on every device; the caller moves it.
    """
    half = n_features // 2
    n_blocks = math.ceil(half / d_in)
    g = torch.randn(n_blocks, d_in, d_in, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(g)  # one batched call: d_in = 2 (F-StrIPE1) means 32 blocks
    # sign fix makes Q Haar-distributed instead of biased by the QR convention
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    omega = q.permute(1, 0, 2).reshape(d_in, n_blocks * d_in)[:, :half]
    norms = torch.randn(d_in, half, generator=generator, dtype=dtype).norm(dim=0)
    return omega * norms.unsqueeze(0)


def sq_norm_reference(x: Tensor) -> Tensor:
    """|x|^2 over the last dim, (..., 1)."""
    return (x * x).sum(-1, keepdim=True)


def paired_exp_reference(u: Tensor, c: Tensor) -> Tensor:
    """phi = exp([u - c, -u - c]) (..., 2h) for u (..., h) and a per-row c (..., 1)."""
    return torch.cat([u - c, -u - c], -1).exp()


def _half_sq_norm(x: Tensor, m_f: int, fast: bool = False) -> Tensor:
    """|x|^2 / (2 sqrt D) + log(m_f) / 2, (..., 1): the per-row FAVOR+ exponent offset."""
    sq = favor_kernels.sq_norm(x) if fast else sq_norm_reference(x)
    return sq * (0.5 / math.sqrt(x.shape[-1])) + 0.5 * math.log(m_f)


def favor_features(x: Tensor, omega: Tensor, stabilize: bool = False) -> tuple[Tensor, Tensor | None]:
    """Positive random features phi(x) (..., m_f) for the softmax kernel exp(x.y / sqrt(D_in)).

    x is rescaled by tau^(1/2), tau = 1/sqrt(D_in). The exponent is formed before one exp, so no
    intermediate over/underflows. With ``stabilize`` each row is divided by exp(max exponent); the
    returned log-shift (..., ) lets the caller rescale epsilon so the attention output is unchanged.
    """
    d_in = x.shape[-1]
    m_f = 2 * omega.shape[-1]
    # tau^(1/2) folded into Omega and the norm: no rescaled copy of x (memory-bound at long T).
    # x @ [Omega, -Omega] instead of the cat was no faster here and doubles the FLOPs.
    u = x @ (omega * d_in**-0.25)
    expo = torch.cat([u, -u], dim=-1).sub_(_half_sq_norm(x, m_f))  # in place on the fresh cat output
    if not stabilize:
        return expo.exp_(), None
    shift = expo.detach().amax(-1, keepdim=True)
    return expo.sub_(shift).exp_(), shift.squeeze(-1)


def _project(x: Tensor, omega: Tensor) -> Tensor:
    """x (..., D) @ omega (D, h) as one GEMM over all rows (a strided x is copied once first)."""
    return (x.reshape(-1, x.shape[-1]) @ omega).view(*x.shape[:-1], omega.shape[-1])


class FavorFeatureMap(nn.Module):
    """FAVOR+ for one attention layer: fresh Omega every training forward (global RNG, so
    ``torch.manual_seed`` reproduces a run), one fixed draw from ``seed`` in eval mode (cached per
    device/dtype; it never touches the global RNG). ``kernels``: the switch of
    ``stripes.kernels`` (its ``favor`` ops replace the squared norm and the paired exp)."""

    def __init__(self, d_in: int, n_features: int = 128, seed: int = 0, kernels: str = "reference"):
        super().__init__()
        if n_features % 2:
            raise ValueError(f"n_features must be even, got {n_features}")
        self.d_in, self.n_features, self.seed = d_in, n_features, seed
        self.kernel_mode = check_mode(kernels)
        self._cache: dict[tuple, Tensor] = {}

    def omega(self, device, dtype) -> Tensor:
        if self.training:
            return draw_orthogonal_features(self.d_in, self.n_features).to(device=device, dtype=dtype)
        key = (str(device), dtype)
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self.seed)
            self._cache[key] = draw_orthogonal_features(self.d_in, self.n_features, gen).to(device, dtype)
        return self._cache[key]

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """phi(q), phi(k) (..., m_f) and the epsilon (...,) that goes with the stabilised phi(q).

        Values and gradients are those of ``favor_features(q, stabilize=True)``,
        ``favor_features(k)`` and EPS * exp(-shift) (shift detached). The query shift
        max_j(+-u_j) - n, n = |q|^2 / (2 sqrt D) + log(m_f) / 2, cancels n in the exponent, so
        phi(q) = exp(+-u - max|u|) is formed without it; n still enters as n - n.detach() (zero in
        value) so that its gradient -sum(g * phi) reaches q exactly as before. Epsilon stays out of
        the graph: when it overflows to inf (large |q| at small D, e.g. F-StrIPE1's D = 2) the row's
        output is 0 and its gradient must stay 0, not inf * 0.
        """
        fast = resolve(self.kernel_mode, q.device).favor
        paired_exp = favor_kernels.paired_exp if fast else paired_exp_reference
        omega = self.omega(q.device, q.dtype) * self.d_in**-0.25
        u_q, u_k = _project(q, omega), _project(k, omega)
        # queries only: a per-row shift is causal-safe (it is undone through epsilon);
        # a key-side shift would have to look at future keys
        lo, hi = torch.aminmax(u_q.detach(), dim=-1, keepdim=True)
        top = torch.maximum(hi, -lo)
        n_q = _half_sq_norm(q, self.n_features, fast)
        phi_q = paired_exp(u_q, top + (n_q - n_q.detach()))
        phi_k = paired_exp(u_k, _half_sq_norm(k, self.n_features, fast))
        eps = EPS * torch.exp(n_q.detach() - top).squeeze(-1)
        return phi_q, phi_k, eps

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, n_features={self.n_features}, seed={self.seed}, kernels={self.kernel_mode}"


# ------------------------------------------------------------------------- causal linear attention
def _eps_like(eps, ref: Tensor) -> Tensor:
    """epsilon as (B,H,T) or a broadcastable scalar."""
    if isinstance(eps, Tensor):
        return eps.to(ref.dtype)
    return torch.full((), float(eps), dtype=ref.dtype, device=ref.device)


def causal_linear_attention_reference(phi_q: Tensor, phi_k: Tensor, v: Tensor, eps=EPS) -> Tensor:
    """Explicit masked form: (phi_q phi_k^T ⊙ tril) v / (row sum + eps). O(T^2) memory."""
    t = phi_q.shape[-2]
    a = phi_q @ phi_k.transpose(-1, -2)
    a = a * torch.ones(t, t, dtype=torch.bool, device=a.device).tril()
    den = a.sum(-1) + _eps_like(eps, a)
    return (a @ v) / den.unsqueeze(-1)


def _rows(x: Tensor, n: int, t_pad: int) -> Tensor:
    """x (..., T, d) as a contiguous (n, t_pad, d) tensor, zero rows after T; a view when it can be."""
    t, d = x.shape[-2:]
    if t_pad == t and x.is_contiguous():
        return x.view(n, t, d)
    out = x.new_zeros(n, t_pad, d) if t_pad > t else x.new_empty(n, t, d)
    out.view(*x.shape[:-2], t_pad, d)[..., :t, :] = x
    return out


def _exclusive_scan(s: Tensor, reverse: bool = False) -> Tensor:
    """s (N, n_chunks, a, b) -> out[:, i] = sum_{j<i} s[:, j]  (j>i when reverse)."""
    out = torch.empty_like(s)
    order = list(range(s.shape[1]))
    if reverse:
        order.reverse()
    out[:, order[0]].zero_()
    for prev, i in zip(order, order[1:]):
        torch.add(out[:, prev], s[:, prev], out=out[:, i])
    return out


def _masked_blocks(q: Tensor, k: Tensor, c: int) -> Tensor:
    """tril(q_c k_c^T) for every chunk c of the (N, T, d) tensors q, k: (N * T / c, c, c)."""
    n, t, d = q.shape
    return torch.bmm(q.view(-1, c, d), k.view(-1, c, d).transpose(1, 2)).tril_()


def _chunk_numerator(q: Tensor, k: Tensor, v: Tensor, c: int, a: Tensor | None = None,
                     reverse: bool = False, scanned: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """out_m = sum_{n<=m} (q_m.k_n) v_n (n>=m when reverse) on (N, T, ·) tensors, T % c == 0, all
    chunks at once: intra-chunk a @ v with a = tril(q k^T) per chunk (given, or computed),
    inter-chunk q @ (exclusive prefix sum of the chunk states k^T v; given as ``scanned``
    (N * T / c, d_k, d_v) when the caller already has it, or computed). Returns (out, a, scanned);
    with ``reverse`` a must be given and is used transposed (the anti-causal sum).
    """
    n, t, _ = q.shape
    qc, kc, vc = (x.view(n * (t // c), c, x.shape[-1]) for x in (q, k, v))
    if a is None:
        a = _masked_blocks(q, k, c)
    out = torch.bmm(a.transpose(1, 2) if reverse else a, vc)
    if scanned is None:
        states = torch.bmm(kc.transpose(1, 2), vc).view(n, t // c, k.shape[-1], v.shape[-1])
        scanned = _exclusive_scan(states, reverse).view(-1, k.shape[-1], v.shape[-1])
    out.baddbmm_(qc, scanned)
    return out.view(n, t, v.shape[-1]), a, scanned


class _ChunkedCausalLinearAttention(torch.autograd.Function):
    """Forward and backward of causal linear attention, chunk-parallel over [v, 1].

    With v' = [v, 1] and N' = causal numerator on v' = [num, den - eps], y = num / den, the
    gradients are again (anti-)causal numerators: g' = [gy/den, -(gy.y)/den],
    d phi_q_m = sum_{n<=m} (g'_m.v'_n) k_n, d phi_k_n = sum_{m>=n} (v'_n.g'_m) q_m,
    d v_n = sum_{m>=n} (k_n.q_m) g_m. Each is one batched product per term over all
    (batch, head, chunk) blocks instead of a loop over chunks. The forward's masked blocks
    tril(phi_q phi_k^T) are kept for d v (transposed), and the blocks tril(g' v'^T) of d phi_q are
    reused, transposed, by d phi_k. The chunk-state prefix sums are shared the same way: d phi_q's
    are the forward's transposed (sum v'^T phi_k = (sum phi_k^T v')^T), and d v's are the first
    D_v rows of d phi_k's, transposed. 12 batched block products per layer and step where a
    separate numerator per gradient takes 16.
    Saved: the inputs, (y, den), one (T x chunk) block and the forward's state prefix sums
    (T / chunk x m_f x (D_v + 1)) per (batch, head); nothing O(T m_f D).
    T is zero-padded to a multiple of the chunk (padded keys add nothing; padded rows are cut).
    """

    @staticmethod
    def forward(ctx, phi_q, phi_k, v, eps, chunk):
        *lead, t, _ = phi_q.shape
        n, dv = math.prod(lead), v.shape[-1]
        c = min(chunk, t)
        tp = -(-t // c) * c
        q, k = _rows(phi_q, n, tp), _rows(phi_k, n, tp)
        vp = v.new_empty(n, tp, dv + 1)
        vp4 = vp.view(*lead, tp, dv + 1)
        vp4[..., :t, :dv] = v
        vp4[..., :t, dv] = 1.0
        if tp > t:
            vp4[..., t:, :] = 0.0
        num, a, s_fwd = _chunk_numerator(q, k, vp, c)
        num = num.view(*lead, tp, dv + 1)[..., :t, :]
        den = num[..., dv] + eps
        # (B,H,T,D) output laid out as (B,T,H,D): merging the heads afterwards is then a view
        y = v.new_empty(lead[0], t, lead[1], dv).transpose(1, 2) if len(lead) == 2 else v.new_empty(*lead, t, dv)
        torch.div(num[..., :dv], den.unsqueeze(-1), out=y)
        ctx.save_for_backward(q, k, vp, a, s_fwd, y, den)
        ctx.shape = (lead, t, tp, c)
        return y

    @staticmethod
    def backward(ctx, gy):
        q, k, vp, a, s_fwd, y, den = ctx.saved_tensors
        lead, t, tp, c = ctx.shape
        n, dv = vp.shape[0], vp.shape[-1] - 1
        gp = vp.new_empty(n, tp, dv + 1)
        gp4 = gp.view(*lead, tp, dv + 1)
        g_num = gp4[..., :t, :dv]
        torch.div(gy, den.unsqueeze(-1), out=g_num)
        g_den = gp4[..., :t, dv]
        torch.sum(g_num * y, -1, out=g_den)
        g_den.neg_()
        if tp > t:
            gp4[..., t:, :] = 0.0
        g_q = g_k = g_v = g_eps = None

        def cut(g):
            return g.view(*lead, tp, g.shape[-1])[..., :t, :]

        a1 = s_rev = None
        if ctx.needs_input_grad[0]:
            g_q, a1, _ = _chunk_numerator(gp, vp, k, c, scanned=s_fwd.transpose(1, 2))
            g_q = cut(g_q)
        if ctx.needs_input_grad[1]:
            if a1 is None:
                a1 = _masked_blocks(gp, vp, c)
            g_k, _, s_rev = _chunk_numerator(vp, gp, q, c, a=a1, reverse=True)
            g_k = cut(g_k)
        if ctx.needs_input_grad[2]:
            s_v = None if s_rev is None else s_rev[:, :dv].transpose(1, 2)
            g_v = cut(_chunk_numerator(k, q, gp[..., :dv], c, a=a, reverse=True, scanned=s_v)[0])
        if ctx.needs_input_grad[3]:
            g_eps = g_den
        return g_q, g_k, g_v, g_eps, None


def causal_linear_attention_chunked(phi_q: Tensor, phi_k: Tensor, v: Tensor, eps=EPS, chunk_size: int = 128) -> Tensor:
    """Same result as the reference; memory linear in T. eps: scalar or (B,H,T)."""
    eps_t = _eps_like(eps, phi_q).expand(phi_q.shape[:-1])
    if not eps_t.requires_grad:
        eps_t = eps_t.detach()
    return _ChunkedCausalLinearAttention.apply(phi_q, phi_k, v, eps_t, int(chunk_size))


def causal_linear_attention(phi_q, phi_k, v, eps=EPS, impl: str = "chunked", chunk_size: int = 128) -> Tensor:
    if impl == "chunked":
        return causal_linear_attention_chunked(phi_q, phi_k, v, eps, chunk_size)
    if impl == "reference":
        return causal_linear_attention_reference(phi_q, phi_k, v, eps)
    raise ValueError(f"unknown linear attention impl {impl!r}; use 'chunked' or 'reference'")


# --------------------------------------------------------------------------------- exact attention
def exact_causal_attention(q: Tensor, k: Tensor, v: Tensor, logit_bias: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(D) + bias + causal mask) v via SDPA. bias (B,H,T,T) is added as is."""
    if logit_bias is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    mask = logit_bias.to(q.dtype).masked_fill(future, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
