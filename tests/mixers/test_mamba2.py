"""Mamba-2 mixer: chunked SSD equals the per-timestep recurrence (values and gradients, float64), the
recurrent step equals the parallel forward, mamba-ssm's parameter names and shapes, causality, tags,
config errors."""

import pytest
import torch
import torch.nn.functional as F
from helpers.causality import assert_causal_on_cpu
from helpers.grad_match import assert_values_and_grads_match

from zoo.core.tags import is_no_reinit, is_residual_projection, optim_tags
from zoo.mixers import kernels
from zoo.mixers.mamba2 import GatedRMSNorm, Mamba2, Mamba2Cache, ssd_chunked
from zoo.model.language_model import Block, LanguageModel, ModelConfig


def ssd_inputs(batch, length, nheads, headdim, ngroups, d_state, seed=0, dt_scale=0.5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return dict(
        x=randn(batch, length, nheads, headdim).requires_grad_(),
        dt=(rand(batch, length, nheads) * dt_scale + 0.01).requires_grad_(),
        A=(-rand(nheads) * 4 - 0.1).requires_grad_(),
        B=randn(batch, length, ngroups, d_state).requires_grad_(),
        C=randn(batch, length, ngroups, d_state).requires_grad_(),
        D=randn(nheads).requires_grad_(),
    )


def recurrence_loop(x, dt, A, B, C, D):
    """h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D_h x_t: one step at a time, each
    head reading the B, C of its group."""
    batch, length, nheads, headdim = x.shape
    group = torch.arange(nheads) // (nheads // B.shape[2])
    h = torch.zeros(batch, nheads, headdim, B.shape[3], dtype=x.dtype)
    out = []
    for t in range(length):
        b, c = B[:, t, group], C[:, t, group]  # (batch, nheads, d_state)
        h = torch.exp(dt[:, t, :, None, None] * A[:, None, None]) * h
        h = h + dt[:, t, :, None, None] * x[:, t, :, :, None] * b[:, :, None, :]
        out.append(torch.einsum("bhpn,bhn->bhp", h, c) + D[:, None] * x[:, t])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("chunk_size, length", [(1, 13), (4, 13), (16, 37), (4, 37), (64, 37), (8, 32)])
def test_chunked_ssd_equals_recurrence_with_gradients(chunk_size, length):
    inputs = ssd_inputs(batch=2, length=length, nheads=4, headdim=3, ngroups=2, d_state=5)
    y = ssd_chunked(**inputs, chunk_size=chunk_size)
    assert_values_and_grads_match(y, recurrence_loop(**inputs), inputs, atol=1e-9)


def test_chunked_ssd_with_strong_decay_stays_finite_and_exact():
    """exp(-cumulative decay) of a chunk would overflow float32 here; every exponent SSD takes is <= 0."""
    inputs = {k: v.detach().float().requires_grad_() for k, v in ssd_inputs(1, 50, 2, 3, 1, 4, dt_scale=40.0).items()}
    y = ssd_chunked(**inputs, chunk_size=32)
    torch.testing.assert_close(y, recurrence_loop(**inputs), rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(y.sum(), list(inputs.values()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_gated_rmsnorm_normalises_each_group_after_the_gate():
    norm = GatedRMSNorm(6, group_size=3, eps=1e-5).double()
    torch.nn.init.normal_(norm.weight)
    x, z = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    gated = x * F.silu(z)
    expected = (
        torch.cat([g / torch.sqrt((g**2).mean(-1, keepdim=True) + 1e-5) for g in gated.split(3, dim=-1)], dim=-1) * norm.weight
    )
    torch.testing.assert_close(norm(x, z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_step_token_by_token_equals_parallel_forward(ngroups):
    torch.manual_seed(0)
    mixer = Mamba2(16, d_state=8, headdim=8, ngroups=ngroups, chunk_size=4, bias=True).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    cache = mixer.allocate_cache(2)
    assert isinstance(cache, Mamba2Cache)
    assert cache.conv_state.shape == (2, mixer.conv_dim, 4) and cache.ssm_state.shape == (2, 4, 8, 8)
    assert cache.ssm_state.dtype == torch.float64
    steps = []
    for t in range(x.shape[1]):
        y_t, returned = mixer.step(x[:, t], cache)
        assert returned is cache
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), mixer(x), rtol=0, atol=1e-9)


def _shapes(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


# From mamba_ssm.modules.mamba2.Mamba2.__init__ (rmsnorm=True, D_has_hdim=False, d_ssm=None):
# in_proj (2 d_inner + 2 ngroups d_state + nheads, d_model); conv_dim = d_inner + 2 ngroups d_state;
# dt_bias, A_log, D (nheads,); norm = RMSNormGated(d_inner); out_proj (d_model, d_inner).
MAMBA_SSM_SHAPES = [
    (
        dict(d_model=64, d_state=16, headdim=16, expand=2, ngroups=1),
        {
            "in_proj.weight": (296, 64),
            "conv1d.weight": (160, 1, 4),
            "conv1d.bias": (160,),
            "dt_bias": (8,),
            "A_log": (8,),
            "D": (8,),
            "norm.weight": (128,),
            "out_proj.weight": (64, 128),
        },
    ),
    (
        dict(d_model=64, d_state=16, headdim=32, expand=2, ngroups=2, d_conv=3, bias=True, conv_bias=False),
        {
            "in_proj.weight": (324, 64),
            "in_proj.bias": (324,),
            "conv1d.weight": (192, 1, 3),
            "dt_bias": (4,),
            "A_log": (4,),
            "D": (4,),
            "norm.weight": (128,),
            "out_proj.weight": (64, 128),
            "out_proj.bias": (64,),
        },
    ),
]


@pytest.mark.parametrize("sizes, expected", MAMBA_SSM_SHAPES)
def test_state_dict_names_and_shapes_match_mamba_ssm_definition(sizes, expected):
    assert _shapes(Mamba2(**sizes)) == expected


@pytest.mark.parametrize("sizes", [sizes for sizes, _ in MAMBA_SSM_SHAPES])
def test_state_dict_names_and_shapes_equal_mamba_ssm(sizes):
    mamba2 = pytest.importorskip("mamba_ssm.modules.mamba2", reason="mamba-ssm is not installed")
    assert _shapes(Mamba2(**sizes)) == _shapes(mamba2.Mamba2(**sizes))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mamba-ssm's Mamba2 forward needs CUDA")
def test_cpu_forward_equals_mamba_ssm_on_cuda():
    mamba2 = pytest.importorskip("mamba_ssm.modules.mamba2", reason="mamba-ssm is not installed")
    torch.manual_seed(0)
    sizes = dict(d_model=64, d_state=16, headdim=16, ngroups=2, chunk_size=16)
    # mamba-ssm's default fused path needs causal-conv1d; without it, its unfused path (same numbers)
    fused = kernels.causal_conv1d() is not None
    theirs = mamba2.Mamba2(**sizes, use_mem_eff_path=fused).cuda()
    ours = Mamba2(**sizes).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 40, 64)
    expected = theirs(x.cuda()).double().cpu()
    torch.testing.assert_close(ours(x.double()), expected, rtol=1e-3, atol=1e-3)
    on_gpu = Mamba2(**sizes).cuda()
    on_gpu.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(on_gpu(x.cuda()).double().cpu(), expected, rtol=1e-3, atol=1e-3)
    assert on_gpu.uses_cuda_kernels(x.cuda())


def test_forward_is_causal_and_runs_the_cpu_path():
    torch.manual_seed(0)
    assert_causal_on_cpu(Mamba2(16, d_state=8, headdim=8, chunk_size=4).double(), 16)


def test_ssm_parameters_are_tagged_and_survive_model_init():
    mixer = Mamba2(16, d_state=8, headdim=8)
    for param in (mixer.A_log, mixer.D, mixer.dt_bias):
        assert optim_tags(param) == {"weight_decay": 0.0} and is_no_reinit(param)
    for param in (mixer.conv1d.weight, mixer.conv1d.bias, mixer.norm.weight):
        assert is_no_reinit(param)
    assert is_residual_projection(mixer.out_proj.weight)
    kept = {name: p.detach().clone() for name, p in mixer.named_parameters() if is_no_reinit(p)}
    LanguageModel(ModelConfig(vocab_size=11, d_model=16, n_layers=1), [Block(16, mixer, None, 1e-5)])
    for name, before in kept.items():
        torch.testing.assert_close(mixer.get_parameter(name), before, rtol=0, atol=0, msg=name)


def test_init_follows_mamba_ssm_ranges():
    mixer = Mamba2(64, headdim=4, dt_min=0.01, dt_max=0.05, A_init_range=(2, 3))
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6
    A = torch.exp(mixer.A_log)
    assert A.min() >= 2 - 1e-6 and A.max() <= 3 + 1e-6
    assert torch.equal(mixer.D, torch.ones(32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(headdim=24), r"headdim=24 must divide d_inner = expand \* d_model = 2 \* 64 = 128"),
        (dict(headdim=32, ngroups=3), r"ngroups=3 must divide nheads = d_inner / headdim = 4"),
        (dict(chunk_size=0), r"chunk_size=0 must be a positive integer"),
        (dict(A_init_range=(0, 4)), r"A_init_range=\(0, 4\) must satisfy 0 < low <= high"),
    ],
)
def test_bad_config_is_a_value_error_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba2(64, **kwargs)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="d_ssm"):
        Mamba2(64, d_ssm=64)


def test_ssd_bad_chunk_size_is_an_error():
    inputs = {k: v.detach() for k, v in ssd_inputs(1, 3, 2, 2, 1, 2).items()}
    with pytest.raises(ValueError, match=r"chunk_size=0 must be >= 1"):
        ssd_chunked(**inputs, chunk_size=0)
