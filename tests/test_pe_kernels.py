"""Kernel identities of the PE zoo in float64 (paper-spec §8.1-8.2)."""

import math

import pytest
import torch

from stripes.pe.ape import APE
from stripes.pe.fstripe import FStripe
from stripes.pe.fstripe1 import FStripe1
from stripes.pe.rope import RoPE, rope_frequencies
from stripes.pe.ropepool import RoPEPool
from stripes.pe.spe import SineSPE, sine_features, sine_mix, sine_mix_reference
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


# ------------------------------------------- fast complex rotations against the reference forms
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_complex_rotation_matches_reference_values_and_gradients(dtype):
    from stripes.pe.rope import phasor, rotate, rotate_pairs
    from stripes.pe.ropepool import pool_pairs, pool_rotated_pairs, pool_weights

    g = torch.Generator().manual_seed(0)
    # q, k as the model hands them over: strided head views of one fused qkv projection; plus a
    # view at an odd storage offset, which cannot be reinterpreted as complex without a copy
    qkv = torch.randn(2, 5, 3, 3, 8, generator=g, dtype=dtype)
    odd = torch.randn(2 * 3 * 5 * 8 + 1, generator=g, dtype=dtype)[1:].view(2, 3, 5, 8)
    pairs = [(rotate_pairs, lambda x, th: rotate(x, th, phasor(th)), 8),
             (pool_rotated_pairs, lambda x, th: pool_pairs(x, pool_weights(th)), 4)]
    for base in (qkv.permute(2, 0, 3, 1, 4)[1], odd):
        for reference, fast, width in pairs:
            x_ref = base.detach().clone().requires_grad_()
            x_fast = base.detach().clone().requires_grad_()
            th_ref = (torch.rand(2, 3, 5, 4, generator=g, dtype=dtype) * 9).requires_grad_()
            th_fast = th_ref.detach().clone().requires_grad_()
            gy = torch.randn(2, 3, 5, width, generator=g, dtype=dtype)
            ref = reference(x_ref, torch.cos(th_ref), torch.sin(th_ref))
            out = fast(x_fast, th_fast)
            torch.testing.assert_close(out, ref)
            (ref * gy).sum().backward()
            (out * gy).sum().backward()
            torch.testing.assert_close(x_fast.grad, x_ref.grad)
            torch.testing.assert_close(th_fast.grad, th_ref.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fstripe1_cos_sin_pool_matches_reference_values_and_gradients(dtype):
    from stripes.pe.fstripe1 import cos_sin_pool, cos_sin_pool_reference

    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(2, 5, 3, 3, 8, generator=g, dtype=dtype)
    x_ref = qkv.permute(2, 0, 3, 1, 4)[1].detach().requires_grad_()  # strided head view, as in the model
    x_fast = qkv.detach().clone().permute(2, 0, 3, 1, 4)[1].requires_grad_()
    th_ref = (torch.rand(2, 3, 5, 8, generator=g, dtype=dtype) * 9).requires_grad_()
    th_fast = th_ref.detach().clone().requires_grad_()
    gy = torch.randn(2, 3, 5, 2, generator=g, dtype=dtype)
    ref = cos_sin_pool_reference(x_ref, torch.cos(th_ref), torch.sin(th_ref))
    out = cos_sin_pool(x_fast, th_fast, torch.stack([torch.cos(th_fast), torch.sin(th_fast)], -2))
    torch.testing.assert_close(out, ref)
    (ref * gy).sum().backward()
    (out * gy).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad)
    torch.testing.assert_close(th_fast.grad, th_ref.grad)


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


@pytest.mark.parametrize("b,t,L,rows,shared_pos,ones", [(2, 7, 1, 3, False, False), (3, 9, 2, 100, False, True),
                                                        (3, 5, 3, 2, True, True)])
def test_sine_mix_matches_reference(b, t, L, rows, shared_pos, ones):
    """The blocked sine_mix against plain autograd through sine_features: values and the gradients
    of x (a strided view, as in the model), z and freq (whose gradient sine_mix forms itself);
    ``ones``: feats carry the gated SPE's extra row of ones."""
    g = torch.Generator().manual_seed(3)
    k, r = 3, 5
    qkv = torch.randn(b, t, 3, H, D, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(H, (2 * k + ones) * D, r, generator=g, dtype=torch.float64, requires_grad=True)
    logit = torch.randn(H, D, k, L, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randint(0, 30, (1 if shared_pos else b, t, L), generator=g).double()
    gy = torch.randn(b, H, t, r, generator=g, dtype=torch.float64)
    results = []
    for fast in (False, True):
        qkv.grad = z.grad = logit.grad = None
        x = qkv[:, :, 1].transpose(1, 2)
        freq = torch.sigmoid(logit) / 2
        feats = sine_features(pos, freq)
        if ones:
            feats = torch.cat([feats, torch.ones_like(feats[..., :1, :])], -2)
        if fast:
            out = sine_mix(x, z, freq, feats.detach(), pos, rows)
        else:
            out = sine_mix_reference(x, feats, z)
        (out * gy).sum().backward()
        results.append((out.detach(), qkv.grad, z.grad, logit.grad))
    for fast, ref in zip(*results[::-1]):
        torch.testing.assert_close(fast, ref)
