"""The harmonizer with every registry entry: forward/backward, causality, feature draws, dtypes.

Entries are read from config/pe.yaml at collection time, so a new entry is covered on arrival.
"""

import pytest
import torch
import yaml

from stripes.contexts import CONTEXTS
from stripes.model import build_model
from stripes.pe import load_registry
from stripes.pe.registry import DEFAULT_REGISTRY

NAMES = list(yaml.safe_load(DEFAULT_REGISTRY.read_text()))
REG = load_registry(DEFAULT_REGISTRY)
SMALL = dict(d_in=6, d_out=5, d_model=16, n_layers=2, n_heads=2, d_ff=12, n_features=8, chunk_size=4)
PAIRS = [(n, c) for n in NAMES for c, ctx in CONTEXTS.items() if REG[n].cls.accepts(ctx.dim, ctx.regular_grid)]
T = 11


def _positions(ctx, b=2, t=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    if ctx.regular_grid:
        return torch.arange(t, dtype=torch.float64).expand(b, t).unsqueeze(-1).clone()
    if ctx.name == "bin":
        return torch.randint(0, 2, (b, t, ctx.dim), generator=g).double()
    return torch.randint(0, 30, (b, t, ctx.dim), generator=g).double()


def _model(name, ctx, **cfg):
    torch.manual_seed(0)
    return build_model(name, ctx.dim, ctx.regular_grid, {**SMALL, **cfg}, registry=REG).double()


def test_every_entry_accepts_some_context():
    assert {n for n, _ in PAIRS} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_every_entry(name):
    ctx = next(CONTEXTS[c] for n, c in PAIRS if n == name)
    model = _model(name, ctx).float()
    x = torch.randn(2, T, SMALL["d_in"])
    y = model(x, _positions(ctx).float())
    assert y.shape == (2, T, SMALL["d_out"]) and torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the PE's own parameters (if any) are trained
    for p in model.pe.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name,context", PAIRS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_causality(name, context, mode):
    ctx = CONTEXTS[context]
    model = _model(name, ctx)
    model.train(mode == "train")
    x = torch.randn(2, T, SMALL["d_in"], dtype=torch.float64)
    pos = _positions(ctx)
    t = 6
    x2, pos2 = x.clone(), pos.clone()
    x2[:, t] += 1.0
    pos2[:, t] = pos2[:, t] + 3 if ctx.name != "bin" else 1 - pos2[:, t]
    outs = []
    for xi, pi in ((x, pos), (x2, pos2)):
        torch.manual_seed(123)  # same FAVOR+/SPE/dropout draws in both train-mode forwards
        with torch.no_grad():
            outs.append(model(xi, pi))
    torch.testing.assert_close(outs[1][:, :t], outs[0][:, :t], atol=1e-10, rtol=0)
    assert not torch.allclose(outs[1][:, t], outs[0][:, t])


@pytest.mark.parametrize("name", ["nope", "spe", "ropepool"])
def test_train_redraws_and_eval_is_fixed_and_leaves_global_rng(name):
    ctx = CONTEXTS["time"]
    model = _model(name, ctx, dropout=0.0)
    x, pos = torch.randn(1, T, SMALL["d_in"], dtype=torch.float64), _positions(ctx, b=1)
    with torch.no_grad():
        assert not torch.allclose(model(x, pos), model(x, pos))
        torch.manual_seed(5)
        a = model(x, pos)
        torch.manual_seed(5)
        assert torch.equal(a, model(x, pos))
        model.eval()
        state = torch.get_rng_state()
        e = model(x, pos)
        assert torch.equal(state, torch.get_rng_state())
        assert torch.equal(e, model(x, pos))
        other = _model(name, ctx, dropout=0.0, feature_seed=7).eval()
        assert not torch.allclose(e, other(x, pos))


def test_reference_and_chunked_models_agree():
    ctx = CONTEXTS["bin"]
    x, pos = torch.randn(2, T, SMALL["d_in"], dtype=torch.float64), _positions(ctx)
    a = _model("rope_c", ctx, linear_impl="chunked").eval()
    b = _model("rope_c", ctx, linear_impl="reference").eval()
    b.load_state_dict(a.state_dict())
    ya, yb = a(x, pos), b(x, pos)
    torch.testing.assert_close(ya, yb, atol=1e-10, rtol=0)
    ga = torch.autograd.grad(ya.sum(), list(a.parameters()))
    gb = torch.autograd.grad(yb.sum(), list(b.parameters()))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-8, rtol=1e-6)


def test_refuses_unaccepted_context_and_bad_config():
    with pytest.raises(ValueError, match="does not accept"):
        build_model("spe_conv", 1, False, SMALL)
    with pytest.raises(ValueError, match="does not accept"):
        build_model("s_srpe", 1, True, SMALL)
    with pytest.raises(ValueError, match="unknown model config keys"):
        build_model("nope", 1, True, {**SMALL, "d_modle": 3})


def test_paper_size_and_post_ln_structure():
    model = build_model("nope", 1, True, {})
    # paper-spec §4: about 3.4 M parameters at d_model 512, 2 layers, d_ff 512
    assert 3.0e6 < sum(p.numel() for p in model.parameters()) < 3.5e6
    assert not isinstance(list(model.children())[-1], torch.nn.LayerNorm)
    per_layer = build_model("ropepool", 1, True, {**SMALL, "n_layers": 3})
    assert len(per_layer.pes) == 1  # shared across layers (A24)


def test_shared_vs_per_layer_pe():
    reg = load_registry(data={"rope_layers": {"class": "stripes.pe.rope.RoPE",
                                              "kwargs": {"learnable": True, "share_layers": False},
                                              "description": "x", "reference": "y"}})
    model = build_model("rope_layers", 1, True, SMALL, registry=reg)
    assert len(model.pes) == SMALL["n_layers"]
    y = model(torch.randn(1, T, SMALL["d_in"]), _positions(CONTEXTS["time"], b=1).float())
    y.sum().backward()
    assert all(pe.angles.omega.grad is not None for pe in model.pes)


@pytest.mark.parametrize("name,context", [("ropepool", "bin"), ("spe", "time"), ("s_srpe", "mcp")])
def test_autocast_bf16_cpu(name, context):
    ctx = CONTEXTS[context]
    model = _model(name, ctx).float()
    x, pos = torch.randn(2, T, SMALL["d_in"]), _positions(ctx).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, pos)
    assert torch.isfinite(y).all()
    y.float().sum().backward()


@pytest.mark.parametrize("name", ["rope_c", "fstripe", "fstripe_sff", "ropepool"])
def test_autocast_keeps_positions_in_full_precision(name):
    # bf16 holds integers exactly only up to 256 (chord ids reach 394, time 4095), and vector
    # positions go through a matmul that autocast would run in bf16
    ctx = CONTEXTS["mcp"]
    model = _model(name, ctx, dropout=0.0).float().eval()
    pos = _positions(ctx, b=1).float() + 3001
    with torch.no_grad():
        ref = model.pe.prepare(pos)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.pe.prepare(pos)
    for a, b in zip(ref, low):
        assert b.dtype == a.dtype
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def _device_outputs_and_grads(model, x, pos, device):
    """Eval-mode output and parameter gradients of y.square().mean() on ``device`` (float64)."""
    model.to(device).zero_grad()
    y = model(x.to(device), pos.to(device))
    y.square().mean().backward()
    return y.detach().cpu(), {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.gpu
@pytest.mark.parametrize("name,context", [("ropepool", "bin"), ("rope_c", "bin"), ("fstripe1", "bin"), ("spe", "time"),
                                          ("fstripe", "mcp"), ("s_srpe", "mcp")])
def test_cuda_matches_cpu_and_autocast(name, context):
    # eval mode: FAVOR+ and SPE noise are fixed draws, so both devices compute the same function;
    # the gradients cover the PEs' custom autograd ops on CUDA
    ctx = CONTEXTS[context]
    model = _model(name, ctx).eval()
    x, pos = torch.randn(2, T, SMALL["d_in"], dtype=torch.float64), _positions(ctx)
    y_cpu, g_cpu = _device_outputs_and_grads(model, x, pos, "cpu")
    y_gpu, g_gpu = _device_outputs_and_grads(model, x, pos, "cuda")
    torch.testing.assert_close(y_gpu, y_cpu, atol=1e-8, rtol=1e-6)
    assert g_gpu.keys() == g_cpu.keys()
    for n in g_cpu:
        torch.testing.assert_close(g_gpu[n], g_cpu[n], atol=1e-8, rtol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    model.float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(model(x.float().cuda(), pos.float().cuda())).all()


# ---------------------------------------------------------------- dropout (plain or the bit-mask kernel)
@pytest.mark.parametrize("kernels", ["reference", "auto"])
def test_dropout_module_modes_and_seeding(kernels):
    from stripes.model import Dropout

    d = Dropout(0.3, kernels)
    x = torch.randn(1000)
    d.eval()
    assert d(x) is x
    d.train()
    torch.manual_seed(5)
    a = d(x)
    torch.manual_seed(5)
    assert torch.equal(d(x), a)
    assert not torch.equal(d(x), a)
    assert torch.equal(Dropout(0.0, kernels).train()(x), x)
    assert torch.count_nonzero(Dropout(1.0, kernels).train()(x)) == 0
    assert 0.2 < (a == 0).float().mean() < 0.4


@pytest.mark.gpu
def test_dropout_on_cuda_uses_the_fused_kernel():
    from stripes.model import Dropout

    d = Dropout(0.25).train()
    y = d(torch.ones(100_000, device="cuda"))
    assert y.device.type == "cuda" and abs((y == 0).float().mean().item() - 0.25) < 0.01


@pytest.mark.parametrize("kernels", ["reference", "auto"])
def test_dropout_residual_is_x_plus_the_same_dropout(kernels):
    from stripes.model import Dropout

    d = Dropout(0.2, kernels).train()
    x = torch.randn(3, 50, 16, requires_grad=True)
    a = torch.randn(3, 50, 16, requires_grad=True)
    torch.manual_seed(3)
    r = d.residual(x, a)
    torch.manual_seed(3)
    expected = x + d(a)  # the same mask: both draw it from the same RNG state
    torch.testing.assert_close(r, expected, rtol=0, atol=1e-6)
    g = torch.randn_like(r)
    gx, ga = torch.autograd.grad(r, (x, a), g)
    torch.testing.assert_close(gx, g, rtol=0, atol=0)
    kept = (expected - x).detach() != 0
    torch.testing.assert_close(ga, g * kept * (1 / (1 - 0.2)), rtol=1e-6, atol=0)
    d.eval()
    assert torch.equal(d.residual(x, a), x + a)
