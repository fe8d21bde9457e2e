"""Kernel identities of the PE zoo in float64 (paper-spec §8.1-8.2), and every fast op of
``stripes.kernels`` against the reference form it must equal (values and gradients)."""

import math
from fractions import Fraction

import pytest
import torch

from stripes.pe.ape import APE
from stripes.pe.fstripe import FStripe
from stripes.pe.fstripe1 import FStripe1
from stripes.pe.rope import RoPE, rope_frequencies
from stripes.pe.ropepool import RoPEPool
from stripes.pe.spe import SineSPE, sine_features, sine_mix_reference
from stripes.pe.srpe import SSRPE, s24_sinusoid

H, D = 2, 8


def _make(cls, L=1, **kw):
    return cls(n_heads=H, head_dim=D, context_dim=L, d_model=H * D, n_layers=2, **kw).double()


def _qk(t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, H, t, D, generator=g, dtype=torch.float64) for _ in range(2))


def _pos(t=6, L=1, seed=1):
    return torch.randint(0, 40, (1, t, L), generator=torch.Generator().manual_seed(seed)).double()


def _scores(pe, q, k, pos):
    qt, kt = pe.transform_qk(q, k, pe.prepare(pos), 0)
    return qt @ kt.transpose(-1, -2)  # (1,H,T,T)


def _random_freqs(pe, seed=5):
    with torch.no_grad():
        pe.angles.omega.copy_(torch.rand(pe.angles.omega.shape, generator=torch.Generator().manual_seed(seed)) * 2)


def test_rope_frequency_schedules():
    a = rope_frequencies(4, 64, "shared")
    b = rope_frequencies(4, 64, "interleaved")
    assert torch.equal(a[0], a[3]) and torch.allclose(a[0, 1], torch.tensor(10000 ** (-2 / 128), dtype=a.dtype))
    torch.testing.assert_close(b[0], a[0])
    # interleaved: the 4 heads together cover 256 distinct, log-spaced frequencies
    allf = b.T.flatten()
    assert allf.unique().numel() == 256 and torch.all(allf[1:] < allf[:-1])


@pytest.mark.parametrize("L", [1, 3])
def test_rope_equals_eq14(L):
    pe = _make(RoPE, L, learnable=True)
    _random_freqs(pe)
    q, k = _qk()
    pos = _pos(L=L)
    theta = pe.angles(pos)[0]  # (H,T,D/2)
    q1, q2, k1, k2 = q[0, ..., 0::2], q[0, ..., 1::2], k[0, ..., 0::2], k[0, ..., 1::2]
    dm = theta[:, :, None, :] - theta[:, None, :, :]  # (H,m,n,d)
    expected = ((q1[:, :, None] * k1[:, None] + q2[:, :, None] * k2[:, None]) * torch.cos(dm)
                + (q1[:, :, None] * k2[:, None] - q2[:, :, None] * k1[:, None]) * torch.sin(dm)).sum(-1)
    torch.testing.assert_close(_scores(pe, q, k, pos)[0], expected)


@pytest.mark.parametrize("cls,L", [(RoPE, 1), (RoPE, 12), (FStripe1, 1), (FStripe1, 3)])
def test_scores_depend_only_on_position_differences(cls, L):
    kw = {"unpooled": True} if cls is FStripe1 else {}
    pe = _make(cls, L, **kw)
    q, k = _qk()
    g = torch.Generator().manual_seed(3)
    # non-monotone structural streams (labels jump back and forth), vector positions
    pos = torch.randint(0, 12, (1, 6, L), generator=g).double()
    shift = torch.randn(1, 1, L, generator=g, dtype=torch.float64) * 7
    torch.testing.assert_close(_scores(pe, q, k, pos + shift), _scores(pe, q, k, pos))
    # and content-independent positions matter: a permuted stream changes the scores
    assert not torch.allclose(_scores(pe, q, k, pos.flip(1)), _scores(pe, q, k, pos))


def test_ropepool_equals_eq23_and_eq26():
    pe = _make(RoPEPool)
    _random_freqs(pe)
    q, k = _qk()
    pos = _pos()
    theta = pe.angles(pos)[0]
    q1, q2, k1, k2 = (x[:, :, None] if i < 2 else x[:, None] for i, x in
                      enumerate((q[0, ..., 0::2], q[0, ..., 1::2], k[0, ..., 0::2], k[0, ..., 1::2])))
    dm = theta[:, :, None] - theta[:, None]
    dp = theta[:, :, None] + theta[:, None]
    eq23 = ((q1 * k1 + q2 * k2) * torch.cos(dm) + (q1 * k2 - q2 * k1) * torch.sin(dm)
            + (q1 * k1 - q2 * k2) * torch.sin(dp) + (q1 * k2 + q2 * k1) * torch.cos(dp)).sum(-1)
    scores = _scores(pe, q, k, pos)[0]
    torch.testing.assert_close(scores, eq23)
    assert pe.d_in == D // 2
    # eq. 26: unit pairs at angles psi -> sum_d 2 cos(psi_q + theta_m - pi/4) cos(psi_k + theta_n - pi/4)
    g = torch.Generator().manual_seed(4)
    psi_q, psi_k = (torch.rand(1, H, 6, D // 2, generator=g, dtype=torch.float64) * 6 for _ in range(2))
    qu = torch.stack([torch.cos(psi_q), torch.sin(psi_q)], -1).flatten(-2)
    ku = torch.stack([torch.cos(psi_k), torch.sin(psi_k)], -1).flatten(-2)
    a = psi_q[0][:, :, None] + theta[:, :, None] - math.pi / 4
    b = psi_k[0][:, None] + theta[:, None] - math.pi / 4
    eq26 = (2 * torch.cos(a) * torch.cos(b)).sum(-1)
    torch.testing.assert_close(_scores(pe, qu, ku, pos)[0], eq26)
    # Delta+ terms: unlike RoPE, shifting all positions changes the scores
    assert not torch.allclose(_scores(pe, q, k, pos + 3.0), scores)


@pytest.mark.parametrize("L", [1, 3])
def test_fstripe_diagonal_is_rff_mixture_and_full_is_cross_sum(L):
    pe = _make(FStripe, L, num_sines=4)
    q, k = _qk()
    pos = _pos(L=L)
    oq, ok = pe.prepare(pos)  # (1,H,T,D,2N)
    f = torch.sigmoid(pe.freq_logit) / 2  # (H,D,N,L)
    lam2 = torch.nn.functional.softplus(pe.gain_logit) ** 2
    dpos = pos[0][:, None] - pos[0][None]  # (m,n,L)
    mix = (lam2[:, None, None] * torch.cos(2 * math.pi * torch.einsum("mnl,hdkl->hmndk", dpos, f)
                                            + pe.phase[:, None, None])).mean(-1)  # (H,m,n,D)
    diag = torch.einsum("hmdj,hndj->hmnd", oq[0], ok[0])
    torch.testing.assert_close(diag, mix)
    cross = torch.einsum("hmd,hne,hmdj,hnej->hmn", q[0], k[0], oq[0], ok[0])
    torch.testing.assert_close(_scores(pe, q, k, pos)[0], cross)
    # cross terms are not zero: the pooled kernel differs from the diagonal-only one
    assert not torch.allclose(cross, torch.einsum("hmd,hnd,hmnd->hmn", q[0], k[0], diag))


def test_fstripe1_pooled_and_unpooled():
    pe = _make(FStripe1)
    _random_freqs(pe)
    q, k = _qk()
    pos = _pos()
    theta = pe.angles(pos)[0]  # (H,T,D)
    dm = theta[:, :, None, :, None] - theta[:, None, :, None, :]  # (H,m,n,d,d')
    full = torch.einsum("hmd,hne,hmnde->hmn", q[0], k[0], torch.cos(dm))
    torch.testing.assert_close(_scores(pe, q, k, pos)[0], full)
    assert pe.d_in == 2
    pe.unpooled = True
    diag = torch.einsum("hmd,hnd,hmnd->hmn", q[0], k[0], torch.cos(torch.diagonal(dm, dim1=-2, dim2=-1)))
    torch.testing.assert_close(_scores(pe, q, k, pos)[0], diag)
    assert pe.d_in == 2 * D


def test_spe_monte_carlo_converges_to_sine_mixture():
    R, K = 256, 3
    pe = _make(SineSPE, realizations=R, num_sines=K, gated=False).train()
    pos = torch.arange(5, dtype=torch.float64).view(1, 5, 1)
    torch.manual_seed(0)
    n = 40  # x R realisations each: 10k samples of every code product
    acc = 0
    for _ in range(n):
        qb, kb = pe.realisations(pe.prepare(pos))  # (1,H,T,D,R)
        acc = acc + torch.einsum("hmdr,hndr->hmnd", qb[0], kb[0]) / n
    f = torch.sigmoid(pe.freq_logit[..., 0]) / 2  # (H,D,K)
    lam2 = torch.nn.functional.softplus(pe.gain_logit) ** 2
    lag = pos[0, :, 0][:, None] - pos[0, :, 0][None]
    kernel = (lam2[:, None, None] * torch.cos(2 * math.pi * lag[None, :, :, None, None] * f[:, None, None]
                                              + pe.phase[:, None, None])).sum(-1)
    kernel = kernel * R / (2 * K * math.sqrt(R * D))  # the code's (R D)^(-1/4) scaling on both sides
    err = (acc - kernel).abs().max().item()
    scale = kernel.abs().max().item()
    assert err < 0.1 * scale, (err, scale)


def test_spe_eval_noise_fixed_train_noise_fresh():
    pe = _make(SineSPE, realizations=4, num_sines=2)
    pos = _pos()
    pe.eval()
    a = pe.prepare(pos).zk
    assert torch.equal(a, pe.prepare(pos).zk)
    pe.train()
    assert not torch.equal(pe.prepare(pos).zk, pe.prepare(pos).zk)


def test_ssrpe_sinusoid_and_bias():
    delta = torch.tensor([0.0, 3.0, -250.0], dtype=torch.float64)
    e = s24_sinusoid(delta, 8, 7920)
    for j in range(8):
        w = 7920 ** (-2 * ((j + 1) // 2) / 8)
        fn = math.sin if j % 2 == 0 else math.cos
        torch.testing.assert_close(e[:, j], torch.tensor([fn(d * w) for d in delta.tolist()], dtype=torch.float64))
    pe = _make(SSRPE, L=3)
    q, _ = _qk()
    pos = _pos(L=3)
    bias = pe.logit_bias(q, pe.prepare(pos), layer=1)
    m, n = 4, 1
    es = sum(pe.layer_proj[1](pe.structure_proj[s](s24_sinusoid(pos[0, m, s] - pos[0, n, s], H * D, pe.bases[s])))
             for s in range(3))
    for h in range(H):
        torch.testing.assert_close(bias[0, h, m, n], q[0, h, m] @ es[h::H] / math.sqrt(D))


def test_ape_adds_vaswani_table():
    pe = _make(APE)
    pos = torch.arange(5, dtype=torch.float64).view(1, 5, 1)
    out = pe.embed(torch.zeros(1, 5, 16, dtype=torch.float64), pos)
    i = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(out[0, 3, 0::2], torch.sin(3 / 10000 ** (2 * i / 16)))
    torch.testing.assert_close(out[0, 3, 1::2], torch.cos(3 / 10000 ** (2 * i / 16)))


def test_spe_phase_folded_into_noise_equals_phased_query_features():
    pe = _make(SineSPE, L=2, realizations=3, num_sines=4, gated=False)
    pos = _pos(L=2)
    code = pe.prepare(pos)
    qbar, kbar = pe.realisations(code)
    f = torch.sigmoid(pe.freq_logit) / 2
    ang = 2 * math.pi * torch.einsum("btl,hdkl->bhtdk", pos, f)
    angq = ang + pe.phase[:, None]
    oq = torch.stack([torch.cos(angq), torch.sin(angq)], -1).flatten(-2)  # (B,H,T,D,2K), phase on q
    ok = torch.stack([torch.cos(ang), torch.sin(ang)], -1).flatten(-2)
    # the code's noise (H, [cos_1..cos_K, sin_1..sin_K] x D, R) in this test's (cos, sin) pair order
    zk = code.zk.view(H, 2, 4, D, 3).permute(0, 3, 2, 1, 4).reshape(H, D, 8, 3)
    torch.testing.assert_close(qbar, torch.einsum("bhtdj,hdjr->bhtdr", oq, zk))
    torch.testing.assert_close(kbar, torch.einsum("bhtdj,hdjr->bhtdr", ok, zk))
    q, k = _qk()
    qh, kh = pe.transform_qk(q, k, code, 0)
    torch.testing.assert_close(qh, torch.einsum("bhtd,bhtdr->bhtr", q, qbar))
    torch.testing.assert_close(kh, torch.einsum("bhtd,bhtdr->bhtr", k, kbar))


def test_gated_spe_equals_gating_q_and_k_twice():
    """The gate on the noise ([sqrt(1-g) Z; sqrt(g) U] against [Omega; 1]) equals the SPE form
    sum_d sqrt(1-g_d) q_d Qbar_d + sqrt(g_d) q_d U_d, per layer."""
    pe = _make(SineSPE, L=1, realizations=3, num_sines=2, gated=True)
    pos = _pos()
    code = pe.prepare(pos)
    qbar, kbar = pe.realisations(code)
    q, k = _qk()
    for layer in range(2):
        gate = torch.sigmoid(pe.gate[layer])[:, None]  # (H,1,D)
        a, b = (1 - gate).sqrt(), gate.sqrt()
        qh, kh = pe.transform_qk(q, k, code, layer)
        for x, xbar, out in ((q, qbar, qh), (k, kbar, kh)):
            ref = torch.einsum("bhtd,bhtdr->bhtr", x * a, xbar) + torch.einsum("bhtd,hdr->bhtr", x * b, code.u)
            torch.testing.assert_close(out, ref)


# ------------------------------------------- stripes.kernels: each fast op against its reference
# fp64: to rounding; fp32: a few ulps of the largest terms (angles of up to ~100 rad in SPE);
# bf16 only where the model hands an op bf16 under autocast (the head split of the bf16 qkv
# projection; the PE and FAVOR+ ops run in float32 there), against fp64 on the same rounded inputs
TOL = {torch.float64: {}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.bfloat16: {"rtol": 1e-2, "atol": 1e-2}}
DTYPES = [torch.float64, torch.float32]


def _check(reference, fast, inputs, dtype, seed=0):
    """fast(*inputs) against reference(*inputs) in ``dtype``: output and the gradient of every
    input; bf16 is compared with the fp64 reference."""
    g = torch.Generator().manual_seed(seed)
    ref_dtype = torch.float64 if dtype is torch.bfloat16 else dtype
    xs_ref = [x.detach().to(dtype).to(ref_dtype).requires_grad_() for x in inputs]
    xs_fast = [x.detach().to(dtype).requires_grad_() for x in inputs]
    ref, out = reference(*xs_ref), fast(*xs_fast)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (ref * gy.to(ref.dtype)).sum().backward()
    (out * gy.to(out.dtype)).sum().backward()
    tol = TOL[dtype]
    torch.testing.assert_close(out.to(ref_dtype), ref.detach(), **tol)
    for a, b in zip(xs_fast, xs_ref):
        torch.testing.assert_close(a.grad.to(ref_dtype), b.grad, **tol)


def _head_view(b, t, h, d, dtype, seed):
    """q as the model hands it over: a strided head view of one fused qkv projection."""
    qkv = torch.randn(b, t, 3, h, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return qkv.permute(2, 0, 3, 1, 4)[1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_rotate_equals_rotate_pairs(dtype):
    from stripes.kernels import rotary
    from stripes.pe.rope import rotate_pairs

    g = torch.Generator().manual_seed(0)
    theta = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64) * 9
    odd = torch.randn(2 * 3 * 5 * 8 + 1, generator=g)[1:].view(2, 3, 5, 8)  # odd storage offset
    for x in (_head_view(2, 5, 3, 8, torch.float64, 1), odd):
        _check(lambda x, th: rotate_pairs(x, torch.cos(th), torch.sin(th)),
               lambda x, th: rotary.rotate(x, th, rotary.phasor(th)), [x, theta], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_pool_pairs_equals_pool_rotated_pairs(dtype):
    from stripes.kernels import rotary
    from stripes.pe.ropepool import pool_rotated_pairs

    theta = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 9
    _check(lambda x, th: pool_rotated_pairs(x, torch.cos(th), torch.sin(th)),
           lambda x, th: rotary.pool_pairs(x, rotary.pool_weights(th)), [_head_view(2, 5, 3, 8, torch.float64, 3), theta],
           dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_cos_sin_pool_equals_reference(dtype):
    from stripes.kernels import rotary
    from stripes.pe.fstripe1 import cos_sin_pool_reference

    theta = torch.rand(2, 3, 5, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 9
    _check(lambda x, th: cos_sin_pool_reference(x, torch.cos(th), torch.sin(th)),
           lambda x, th: rotary.cos_sin_pool(x, th, rotary.cos_sin_code(th)),
           [_head_view(2, 5, 3, 8, torch.float64, 5), theta], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_favor_ops_equal_reference(dtype):
    from stripes.attention import paired_exp_reference, sq_norm_reference
    from stripes.kernels import favor

    g = torch.Generator().manual_seed(6)
    x = _head_view(2, 7, 3, 8, torch.float64, 7)
    _check(sq_norm_reference, favor.sq_norm, [x], dtype)
    u, c = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64), torch.randn(2, 3, 7, 1, generator=g,
                                                                                  dtype=torch.float64)
    _check(paired_exp_reference, favor.paired_exp, [u, c], dtype)


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16])
def test_kernel_split_heads_equals_view_permute(dtype):
    from stripes.kernels import heads
    from stripes.model import split_heads_reference

    qkv = torch.randn(2, 7, 3 * 3 * 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for i in range(3):  # each output alone (the others get zero gradient rows), then all three
        _check(lambda x: split_heads_reference(x, 3)[i], lambda x: heads.split_heads(x, 3)[i], [qkv], dtype)
    _check(lambda x: torch.stack(split_heads_reference(x, 3)), lambda x: torch.stack(heads.split_heads(x, 3)),
           [qkv], dtype)


def _sine_inputs(b, t, L, shared_pos, ones, dtype=torch.float64, seed=3):
    g = torch.Generator().manual_seed(seed)
    k, r = 3, 5
    x = _head_view(b, t, H, D, torch.float64, seed)
    z = torch.randn(H, (2 * k + ones) * D, r, generator=g, dtype=torch.float64)
    logit = torch.randn(H, D, k, L, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 30, (1 if shared_pos else b, t, L), generator=g).to(dtype)
    return x, z, logit, pos


def _feats(pos, logit, ones):
    freq = torch.sigmoid(logit) / 2
    feats = sine_features(pos.to(freq.dtype), freq)
    if ones:
        feats = torch.cat([feats, torch.ones_like(feats[..., :1, :])], -2)
    return freq, feats


@pytest.mark.parametrize("form", ["blocked", "batched"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,t,L,rows,shared_pos,ones", [(2, 7, 1, 3, False, False), (3, 9, 2, 100, False, True),
                                                        (3, 5, 3, 2, True, True)])
def test_kernel_sine_mix_equals_reference(form, dtype, b, t, L, rows, shared_pos, ones):
    """Both SPE mixes against plain autograd through sine_features: values and the gradients of
    x (a strided view, as in the model), z and the frequency logits (whose gradient the kernels
    form themselves); ``ones``: feats carry the gated SPE's extra row of ones."""
    from stripes.kernels import sine_mix as sm

    x, z, logit, pos = _sine_inputs(b, t, L, shared_pos, ones)

    def reference(x, z, logit):
        return sine_mix_reference(x, _feats(pos, logit, ones)[1], z)

    def fast(x, z, logit):
        freq, feats = _feats(pos, logit, ones)
        p = pos.to(x.dtype)
        if form == "blocked":
            return sm.sine_mix_blocked(x, z, freq, feats.detach(), p, rows)
        return sm.sine_mix_batched(x, z, freq, feats.detach(), p)

    _check(reference, fast, [x, z, logit], dtype)


def test_kernel_sine_mix_batched_equals_blocked_bitwise_shape_and_close():
    """The GPU form and the CPU form agree on CPU (same sums, different blocking)."""
    from stripes.kernels import sine_mix as sm

    x, z, logit, pos = _sine_inputs(3, 9, 2, False, True)
    freq, feats = _feats(pos, logit, True)
    a = sm.sine_mix_blocked(x, z, freq, feats, pos, 4)
    b = sm.sine_mix_batched(x, z, freq, feats, pos)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- dropout kernel: the rate is exactly p
@pytest.mark.parametrize("p", [0.1, 0.2, 0.25, 0.5, 0.3, 1e-3, 0.9])
def test_dropout_threshold_gives_exactly_p(p):
    from stripes.kernels.dropout import drop_rate, drop_split

    k, t = drop_split(p)
    assert 0 <= k < 2**16 and 0 <= t < 2**64
    assert drop_rate(p) == Fraction(p)  # exact rational equality with the float64 p, no tolerance
    assert Fraction(k, 2**16) + Fraction(t, 2**80) == Fraction(p)


def test_dropout_kernel_rate_scale_and_gradient():
    from stripes.kernels.dropout import bit_dropout

    torch.manual_seed(0)
    x = torch.randn(64, 257, 33, requires_grad=True)  # odd sizes: the last int64 word is partly used
    p = 0.1
    y = bit_dropout(x, p)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * (1 / (1 - p)), rtol=0, atol=0)
    n = x.numel()
    rate = 1 - kept.float().mean().item()
    assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5, rate
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() * (1 / (1 - p)), rtol=0, atol=0)


def test_dropout_kernel_ties_are_settled_at_the_fractional_rate():
    """The lanes at the 16-bit threshold (1 in 65536) drop with probability frac(p * 65536): forced
    here by a rate whose whole mass sits on the tie lane (p = 2^-16 * 0.5 -> k = 0, half the
    lanes at 0 drop), with enough elements to see it."""
    from stripes.kernels.dropout import bit_dropout_mask, drop_split

    p = 0.5 / 2**16
    assert drop_split(p) == (0, 2**63)
    torch.manual_seed(2)
    n = 2**24
    dropped = (bit_dropout_mask((n,), p) == 0).sum().item()
    expected = n * p  # 128
    assert abs(dropped - expected) < 5 * expected**0.5, dropped


def test_dropout_kernel_lanes_are_independent():
    from stripes.kernels.dropout import bit_dropout

    torch.manual_seed(1)
    keep = (bit_dropout(torch.ones(2**20), 0.5) != 0).float()
    # each int64 word feeds 4 consecutive elements: no lane may be biased or tied to its neighbour
    lanes = keep.view(-1, 4).mean(0)
    assert torch.all((lanes - 0.5).abs() < 5 * (0.25 / 2**18) ** 0.5), lanes
    corr = torch.corrcoef(torch.stack([keep[:-1], keep[1:]]))[0, 1]
    assert corr.abs() < 0.01


# ---------------------------------------------------------------------------------- the switch
def test_resolve_table():
    from stripes.kernels import REFERENCE, resolve

    assert resolve("reference", "cpu") == REFERENCE and resolve("reference", "cuda") == REFERENCE
    cpu = resolve("auto", "cpu")
    assert cpu.sine_mix == "blocked" and cpu.rotary and cpu.favor and cpu.split_heads and not cpu.dropout
    assert resolve("fast", "cpu").dropout
    cuda = resolve("auto", "cuda")
    assert cuda.sine_mix == "batched" and not (cuda.rotary or cuda.favor or cuda.split_heads or cuda.dropout)
    assert resolve("fast", "cuda").sine_mix == "batched"
    with pytest.raises(ValueError, match="kernels"):
        resolve("turbo", "cpu")


@pytest.mark.parametrize("name,context", [("rope_c", "bin"), ("ropepool", "time"), ("fstripe1", "mcp"),
                                          ("spe", "time"), ("fstripe_sff", "mcp"), ("nope", "time")])
def test_model_kernels_switch(name, context):
    """build_model threads model.kernels to the PE, attention and dropout: a PE built on its own
    computes the plain forms; auto is fast on CPU, bit for bit (dropout 0: they differ only in
    the dropout mask); reference is close to both."""
    from stripes.contexts import CONTEXTS
    from stripes.model import build_model
    from stripes.pe import build_pe

    ctx = CONTEXTS[context]
    assert build_pe(name, n_heads=2, head_dim=8, context_dim=ctx.dim).kernel_mode == "reference"
    cfg = dict(d_in=6, d_out=5, d_model=16, n_layers=2, n_heads=2, d_ff=12, n_features=8, chunk_size=4,
               dropout=0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 6, generator=g)
    pos = torch.randint(0, 2 if context == "bin" else 20, (2, 9, ctx.dim), generator=g).float()
    if ctx.regular_grid:
        pos = torch.arange(9.0).expand(2, 9).unsqueeze(-1).clone()
    outs = {}
    for mode in ("auto", "fast", "reference"):
        torch.manual_seed(0)
        model = build_model(name, ctx.dim, ctx.regular_grid, {**cfg, "kernels": mode})
        assert all(pe.kernel_mode == mode for pe in model.pes)
        torch.manual_seed(1)
        y = model(x, pos)
        y.square().sum().backward()
        outs[mode] = [y.detach()] + [p.grad for p in model.parameters() if p.grad is not None]
    for a, b in zip(outs["auto"], outs["fast"]):
        assert torch.equal(a, b)
    for a, b in zip(outs["auto"], outs["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
