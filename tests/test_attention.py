"""FAVOR+ and causal linear attention: reference vs chunked, gradients, feature draws."""

import math

import pytest
import torch

from stripes.attention import (
    FavorFeatureMap,
    causal_linear_attention_chunked,
    causal_linear_attention_reference,
    draw_orthogonal_features,
    exact_causal_attention,
    favor_features,
)


def _inputs(t, m=6, dv=5, seed=0, eps_tensor=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(2, 3, t, m, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.rand(2, 3, t, m, generator=g, dtype=torch.float64).requires_grad_()
    v = torch.randn(2, 3, t, dv, generator=g, dtype=torch.float64).requires_grad_()
    eps = torch.rand(2, 3, t, generator=g, dtype=torch.float64) * 1e-2 if eps_tensor else 1e-6
    return q, k, v, eps


@pytest.mark.parametrize("t,chunk", [(1, 4), (5, 8), (16, 4), (17, 4), (33, 7), (40, 64)])
@pytest.mark.parametrize("eps_tensor", [False, True])
def test_chunked_matches_reference_outputs_and_grads(t, chunk, eps_tensor):
    q, k, v, eps = _inputs(t, eps_tensor=eps_tensor)
    y_ref = causal_linear_attention_reference(q, k, v, eps)
    y_chk = causal_linear_attention_chunked(q, k, v, eps, chunk)
    torch.testing.assert_close(y_chk, y_ref, atol=1e-5, rtol=0)
    gy = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, (q, k, v), gy)
    g_chk = torch.autograd.grad(y_chk, (q, k, v), gy)
    for a, b in zip(g_chk, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_chunked_gradcheck_including_eps():
    q, k, v = (x[:1, :1].detach().requires_grad_() for x in _inputs(7, m=3, dv=2)[:3])
    eps = (torch.rand(1, 1, 7, dtype=torch.float64) * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: causal_linear_attention_chunked(*a, 3), (q, k, v, eps))


def test_reference_is_the_explicit_prefix_sum_formula():
    q, k, v, _ = _inputs(6)
    y = causal_linear_attention_reference(q, k, v, 1e-6)
    m = 4
    s = torch.einsum("bhnm,bhnd->bhmd", k[..., : m + 1, :], v[..., : m + 1, :])
    z = k[..., : m + 1, :].sum(-2)
    expected = torch.einsum("bhm,bhmd->bhd", q[..., m, :], s) / ((q[..., m, :] * z).sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(y[..., m, :], expected)


def test_orthogonal_blocks_and_chi_norms():
    om = draw_orthogonal_features(8, 40, torch.Generator().manual_seed(1))
    assert om.shape == (8, 20)
    for s in (0, 8):
        block = om[:, s : s + 8]
        unit = block / block.norm(dim=0)
        torch.testing.assert_close(unit.T @ unit, torch.eye(8, dtype=om.dtype), atol=1e-10, rtol=0)
    # chi(8) norms: not all equal (they are random), mean near sqrt(8)
    big = draw_orthogonal_features(8, 4000, torch.Generator().manual_seed(2))
    assert abs(big.norm(dim=0).mean().item() - math.sqrt(8)) < 0.15


def test_favor_estimates_softmax_kernel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64) * 0.5
    y = torch.randn(200, 8, generator=g, dtype=torch.float64) * 0.5
    est = torch.zeros(200, dtype=torch.float64)
    for _ in range(10):
        om = draw_orthogonal_features(8, 4096, g)
        est += (favor_features(x, om)[0] * favor_features(y, om)[0]).sum(-1) / 10
    exact = torch.exp((x * y).sum(-1) / math.sqrt(8))
    assert ((est / exact).mean() - 1).abs() < 0.02


@pytest.mark.parametrize("stabilize", [False, True])
def test_favor_features_formula_and_gradients(stabilize):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    om = draw_orthogonal_features(4, 8, g)
    phi, shift = favor_features(x, om, stabilize)
    xs = x * 4**-0.25
    u = xs @ om
    norm = 0.5 * (xs * xs).sum(-1, keepdim=True) + 0.5 * math.log(8)
    expected = torch.cat([torch.exp(u - norm), torch.exp(-u - norm)], -1)
    if stabilize:
        expected = expected * torch.exp(-shift).unsqueeze(-1)
    torch.testing.assert_close(phi, expected)
    if not stabilize:
        assert torch.autograd.gradcheck(lambda x: favor_features(x, om)[0], (x,))
        return
    # the detached shift is exact only through the attention output (it cancels there)
    k = torch.randn(3, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, 2, generator=g, dtype=torch.float64)

    def attn(x):
        pq, sh = favor_features(x, om, stabilize=True)
        return causal_linear_attention_reference(pq, favor_features(k, om)[0], v, 1e-6 * torch.exp(-sh))

    assert torch.autograd.gradcheck(attn, (x,))


def test_query_stabilisation_leaves_attention_unchanged():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64) * 3
    k = torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64) * 3
    v = torch.randn(1, 2, 9, 3, generator=g, dtype=torch.float64)
    om = draw_orthogonal_features(4, 16, g)
    pq, _ = favor_features(q, om)
    pk, _ = favor_features(k, om)
    pq_s, shift = favor_features(q, om, stabilize=True)
    assert pq_s.max() <= 1.0
    y = causal_linear_attention_reference(pq, pk, v, 1e-6)
    y_s = causal_linear_attention_reference(pq_s, pk, v, 1e-6 * torch.exp(-shift))
    torch.testing.assert_close(y_s, y, atol=1e-10, rtol=1e-8)


def test_feature_map_train_redraws_eval_fixed_and_rng_free():
    fm = FavorFeatureMap(4, 8, seed=3)
    fm.train()
    a, b = fm.omega("cpu", torch.float64), fm.omega("cpu", torch.float64)
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    a = fm.omega("cpu", torch.float64)
    torch.manual_seed(0)
    assert torch.equal(a, fm.omega("cpu", torch.float64))  # global seed reproduces training draws
    fm.eval()
    state = torch.get_rng_state()
    e1 = fm.omega("cpu", torch.float64)
    assert torch.equal(state, torch.get_rng_state())
    e2 = FavorFeatureMap(4, 8, seed=3).eval().omega("cpu", torch.float64)
    assert torch.equal(e1, e2)
    assert not torch.equal(e1, FavorFeatureMap(4, 8, seed=4).eval().omega("cpu", torch.float64))


def test_exact_attention_with_bias_matches_manual_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64)
    logits = q @ k.transpose(-1, -2) / 2 + bias
    logits = logits.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(exact_causal_attention(q, k, v, bias), logits.softmax(-1) @ v)
    torch.testing.assert_close(exact_causal_attention(q, k, v), exact_causal_attention(q, k, v, 0 * bias))


@pytest.mark.gpu
def test_chunked_matches_reference_on_cuda():
    q, k, v, eps = (t.cuda() if torch.is_tensor(t) else t for t in _inputs(37))
    torch.testing.assert_close(causal_linear_attention_chunked(q, k, v, eps, 8),
                               causal_linear_attention_reference(q, k, v, eps), atol=1e-5, rtol=0)


@pytest.mark.parametrize("wrt", [0, 1, 2])
def test_chunked_gradient_of_each_input_alone(wrt):
    """Each backward branch on its own (the phi_k branch then builds its blocks itself)."""
    q, k, v, eps = _inputs(19, eps_tensor=True)
    ins = [x.detach() for x in (q, k, v)]
    ins[wrt].requires_grad_()
    gy = torch.randn(2, 3, 19, 5, dtype=torch.float64)
    g_chk = torch.autograd.grad(causal_linear_attention_chunked(*ins, eps, 4), ins[wrt], gy)[0]
    g_ref = torch.autograd.grad(causal_linear_attention_reference(*ins, eps), ins[wrt], gy)[0]
    torch.testing.assert_close(g_chk, g_ref, atol=1e-8, rtol=1e-8)


def test_chunked_output_merges_heads_as_a_view():
    q, k, v, eps = _inputs(16)
    y = causal_linear_attention_chunked(q, k, v, eps, 4)  # (B,H,T,D) laid out as (B,T,H,D)
    assert y.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_feature_map_fast_path_matches_favor_features_values_and_gradients(kernels):
    """FavorFeatureMap (norm folded into epsilon; with the favor kernels, paired_exp and sq_norm)
    against the plain favor_features composition: the same phi and epsilon, and the same
    attention output and input gradients."""
    g = torch.Generator().manual_seed(4)
    q = (2 * torch.randn(2, 3, 13, 8, generator=g, dtype=torch.float64)).requires_grad_()
    k = (2 * torch.randn(2, 3, 13, 8, generator=g, dtype=torch.float64)).requires_grad_()
    v = torch.randn(2, 3, 13, 5, generator=g, dtype=torch.float64).requires_grad_()
    fm = FavorFeatureMap(8, 16, seed=2, kernels=kernels).eval()
    omega = fm.omega(q.device, q.dtype)
    phi_q, phi_k, eps = fm(q, k)
    ref_q, shift = favor_features(q, omega, stabilize=True)
    ref_k, _ = favor_features(k, omega)
    ref_eps = 1e-6 * torch.exp(-shift)
    for a, b in ((phi_q, ref_q), (phi_k, ref_k), (eps, ref_eps)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    y = causal_linear_attention_chunked(phi_q, phi_k, v, eps, 4)
    y_ref = causal_linear_attention_reference(ref_q, ref_k, v, ref_eps)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    gy = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, (q, k, v), gy), torch.autograd.grad(y_ref, (q, k, v), gy)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_feature_map_gradient_stays_finite_when_epsilon_overflows():
    """Large queries at D = 2 (F-StrIPE1) push epsilon to inf in float32: that row's output is 0
    and the gradients must be finite (a NaN here once broke paper-size F-StrIPE1 training)."""
    g = torch.Generator().manual_seed(0)
    q = (40 * torch.randn(1, 2, 9, 2, generator=g)).requires_grad_()
    k = torch.randn(1, 2, 9, 2, generator=g).requires_grad_()
    v = torch.randn(1, 2, 9, 3, generator=g).requires_grad_()
    phi_q, phi_k, eps = FavorFeatureMap(2, 16, seed=0).eval()(q, k)
    assert torch.isinf(eps).any()
    y = causal_linear_attention_chunked(phi_q, phi_k, v, eps, 4)
    assert torch.isfinite(y).all()
    for grad in torch.autograd.grad(y.square().sum(), (q, k, v)):
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("fast", [False, True])
def test_half_sq_norm_values_and_gradient(fast):
    from stripes.attention import _half_sq_norm

    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = _half_sq_norm(x.transpose(1, 2), 16, fast)
    ref = (x_ref.transpose(1, 2) ** 2).sum(-1, keepdim=True) / (2 * math.sqrt(4)) + math.log(16) / 2
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    # a zero row: the norm's own gradient would divide by 0 there
    z = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    _half_sq_norm(z, 16, fast).sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
