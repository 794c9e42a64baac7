"""Gated DeltaNet mixer: the chunked WY form equals the per-token delta rule (values and gradients,
float64), also over 2048 steps of strong decay, and fla's naive references; the whole layer equals a
per-token reference written from fla's layer (values, gradients of the input and every parameter);
fla's state dict gives fla's output; fla's parameter names and shapes; tags; config errors. What it
shares with GLA (step, cache, causality, learning with memory, fla on CUDA) is in test_fla_layout.py."""

import pytest
import torch
import torch.nn.functional as F
from helpers.fla_reference import NO_FLA, fla_layer_qkv, linear, rmsnorm_swish_gate_reference, short_conv_reference
from helpers.grad_match import assert_values_and_grads_match

from zoo.core.tags import is_no_reinit, is_residual_projection, optim_tags
from zoo.mixers.gated_deltanet import GatedDeltaNet, gated_delta_rule_chunked
from zoo.model.language_model import Block, LanguageModel, ModelConfig


def delta_rule_loop(q, k, v, log_decay, beta, scale=None):
    """S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T with a_t = exp(g_t), o_t = S_t^T q_t * scale:
    one step at a time. q, k: (b, L, h, dk); v: (b, L, h, dv); log_decay, beta: (b, L, h)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    state = torch.zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3], dtype=q.dtype)
    out = []
    for t in range(q.shape[1]):
        decayed = torch.exp(log_decay[:, t])[..., None, None] * state
        old = torch.einsum("bhkv,bhk->bhv", decayed, k[:, t])
        state = decayed + torch.einsum("bhk,bhv->bhkv", k[:, t], beta[:, t, :, None] * (v[:, t] - old))
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, state))
    return torch.stack(out, dim=1)


def delta_inputs(batch, length, heads, dk, dv, seed=0, decay=1.0, max_beta=1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return dict(
        q=randn(batch, length, heads, dk).requires_grad_(),
        k=F.normalize(randn(batch, length, heads, dk), dim=-1).requires_grad_(),
        v=randn(batch, length, heads, dv).requires_grad_(),
        log_decay=(-decay * torch.rand(batch, length, heads, generator=gen, dtype=dtype)).requires_grad_(),
        beta=(max_beta * torch.rand(batch, length, heads, generator=gen, dtype=dtype)).requires_grad_(),
    )


@pytest.mark.parametrize(
    "chunk_size, length, max_beta",
    [
        (1, 9, 1.0),
        (4, 13, 1.0),
        (16, 37, 1.0),
        (24, 50, 2.0),
        (64, 37, 1.0),
        (8, 32, 2.0),
    ],
)
def test_chunked_delta_rule_equals_the_per_token_recurrence_with_gradients(chunk_size, length, max_beta):
    inputs = delta_inputs(batch=2, length=length, heads=2, dk=3, dv=4, max_beta=max_beta)
    y = gated_delta_rule_chunked(**inputs, chunk_size=chunk_size)
    assert_values_and_grads_match(y, delta_rule_loop(**inputs), inputs, atol=1e-10)


def test_chunked_delta_rule_over_2048_steps_of_strong_decay_is_finite_and_equals_the_recurrence():
    inputs = delta_inputs(batch=1, length=2048, heads=1, dk=3, dv=2, decay=30.0)
    # a chunk's total log decay is far below -745: exp(-cumulative decay) overflows even float64
    assert -inputs["log_decay"][0, :64].sum() > 745
    y = gated_delta_rule_chunked(**inputs, chunk_size=64)
    assert_values_and_grads_match(y, delta_rule_loop(**inputs), inputs, atol=1e-10)
    single = {name: t.detach().float().requires_grad_() for name, t in inputs.items()}
    y32 = gated_delta_rule_chunked(**single, chunk_size=64)
    torch.testing.assert_close(y32.double(), y.detach(), rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(y32.sum(), list(single.values())))


def test_chunked_delta_rule_equals_fla_naive_references():
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive", reason=NO_FLA)
    inputs = {name: t.detach().float() for name, t in delta_inputs(2, 45, 2, 8, 4).items()}
    y = gated_delta_rule_chunked(**inputs, chunk_size=16)
    q, k, v, g, beta = (inputs[n] for n in ("q", "k", "v", "log_decay", "beta"))
    recurrent, _ = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g)
    chunked, _ = naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16)
    torch.testing.assert_close(y, recurrent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, chunked, rtol=1e-5, atol=1e-5)


def l2_normalize_reference(x):
    """fla's l2norm: x / sqrt(sum x^2 + 1e-6)."""
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def reference_layer(params: dict, x, heads, short_conv=True, allow_neg_eigval=False, eps=1e-5):
    """fla's GatedDeltaNet.forward written out token by token from the state dict ``params``."""
    q, k, v = (linear(x, params, f"{n}_proj") for n in "qkv")
    if short_conv:
        q, k, v = (
            short_conv_reference(t, params[f"{n}_conv1d.weight"], params.get(f"{n}_conv1d.bias"))
            for t, n in zip((q, k, v), "qkv")
        )
    else:
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    q, k, v = (t.unflatten(-1, (heads, -1)) for t in (q, k, v))
    g = -params["A_log"].exp() * F.softplus(linear(x, params, "a_proj") + params["dt_bias"])
    beta = torch.sigmoid(linear(x, params, "b_proj")) * (2 if allow_neg_eigval else 1)
    o = delta_rule_loop(l2_normalize_reference(q), l2_normalize_reference(k), v, g, beta)
    gate = linear(x, params, "g_proj").unflatten(-1, (heads, -1))
    o = rmsnorm_swish_gate_reference(o, gate, params["o_norm.weight"], eps)
    return linear(o.flatten(-2), params, "o_proj")


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(use_short_conv=False, head_dim=4, expand_v=1.5, chunk_size=4),
        dict(conv_bias=True, conv_size=3, allow_neg_eigval=True, chunk_size=8),
    ],
)
def test_layer_equals_fla_layer_written_per_token_in_values_and_every_gradient(options):
    torch.manual_seed(0)
    mixer = GatedDeltaNet(16, num_heads=2, **options).double()
    for name, param in mixer.named_parameters():  # away from init values so every term counts
        torch.nn.init.normal_(param, mean=-1.0 if name == "A_log" else 0.0, std=0.3)
    x = torch.randn(2, 19, 16, dtype=torch.float64, requires_grad=True)
    params = dict(mixer.named_parameters())
    ref = reference_layer(
        params,
        x,
        heads=2,
        short_conv=options.get("use_short_conv", True),
        allow_neg_eigval=options.get("allow_neg_eigval", False),
    )
    assert_values_and_grads_match(mixer(x), ref, {"x": x, **params}, atol=1e-10)


def _shapes(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


# fla.layers.GatedDeltaNet(hidden_size=64, num_heads=2, head_dim=32) in fla 0.6.0
FLA_SHAPES = {
    "A_log": (2,),
    "dt_bias": (2,),
    "q_proj.weight": (64, 64),
    "k_proj.weight": (64, 64),
    "v_proj.weight": (128, 64),
    "a_proj.weight": (2, 64),
    "b_proj.weight": (2, 64),
    "q_conv1d.weight": (64, 1, 4),
    "k_conv1d.weight": (64, 1, 4),
    "v_conv1d.weight": (128, 1, 4),
    "g_proj.weight": (128, 64),
    "o_norm.weight": (64,),
    "o_proj.weight": (64, 128),
}


def test_state_dict_names_and_shapes_match_fla_definition():
    assert _shapes(GatedDeltaNet(64, num_heads=2, head_dim=32)) == FLA_SHAPES


def test_head_dim_none_keeps_fla_proportion_of_three_quarters_of_d_model():
    mixer = GatedDeltaNet(128)
    assert (mixer.num_heads, mixer.head_k_dim, mixer.head_v_dim) == (6, 16, 32)
    assert mixer.key_dim == 96 == 0.75 * 128


def test_fla_state_dict_gives_fla_layer_output_composed_from_its_cpu_parts_and_naive_recurrence():
    """fla's layer runs its conv, L2 norm, gate, norm and recurrence as Triton GPU kernels and cannot
    run on CPU; here its own nn.Linear / nn.Conv1d submodules and parameters, fla's
    ``naive_recurrent_gated_delta_rule`` and the formulas of its gate, l2norm and FusedRMSNormGated
    compose its forward (fla's naive computes in float32)."""
    layers = pytest.importorskip("fla.layers", reason=NO_FLA)
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive", reason=NO_FLA)
    torch.manual_seed(0)
    theirs = layers.GatedDeltaNet(hidden_size=32, num_heads=2, head_dim=8, conv_bias=True).double()
    for name, param in theirs.named_parameters():
        if name != "A_log":
            torch.nn.init.normal_(param, std=0.3)
    ours = GatedDeltaNet(32, num_heads=2, head_dim=8, conv_bias=True).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 70, 32, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = fla_layer_qkv(theirs, x)
        q, k, v = (t.unflatten(-1, (2, -1)) for t in (q, k, v))
        g = -theirs.A_log.exp() * F.softplus(theirs.a_proj(x) + theirs.dt_bias)
        beta = torch.sigmoid(theirs.b_proj(x))
        o, _ = naive.naive_recurrent_gated_delta_rule(l2_normalize_reference(q), l2_normalize_reference(k), v, beta, g)
        gate = theirs.g_proj(x).unflatten(-1, (2, -1))
        expected = theirs.o_proj(rmsnorm_swish_gate_reference(o, gate, theirs.o_norm.weight, theirs.o_norm.eps).flatten(-2))
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def test_parameters_are_tagged_and_survive_model_init_as_fla_initialises_them():
    mixer = GatedDeltaNet(64, num_heads=8)
    assert is_residual_projection(mixer.o_proj.weight)
    for param in (mixer.A_log, mixer.dt_bias, mixer.o_norm.weight):
        assert optim_tags(param) == {"weight_decay": 0.0}
    kept = {name: p.detach().clone() for name, p in mixer.named_parameters() if is_no_reinit(p)}
    assert set(kept) == {"A_log", "dt_bias", "q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight", "o_norm.weight"}
    LanguageModel(ModelConfig(vocab_size=11, d_model=64, n_layers=1), [Block(64, mixer, None, 1e-5)])
    for name, before in kept.items():
        torch.testing.assert_close(mixer.get_parameter(name), before, rtol=0, atol=0, msg=name)
    A, dt = torch.exp(mixer.A_log), F.softplus(mixer.dt_bias)
    assert A.min() >= 0 and A.max() <= 16
    assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(num_heads=5),
            r"gated_deltanet head_dim=None means 0.75 \* d_model / num_heads: num_heads=5 must divide "
            r"0.75 \* d_model = 0.75 \* 64",
        ),
        (dict(head_dim=0), r"gated_deltanet head_dim=0 must be a positive integer"),
        (dict(head_dim=3, expand_v=0.5), r"gated_deltanet expand_v=0.5 must be positive with head_dim \* expand_v an integer"),
        (dict(chunk_size=0), r"gated_deltanet chunk_size=0 must be a positive integer"),
        (dict(num_heads=0), r"gated_deltanet num_heads=0 must be a positive integer"),
    ],
)
def test_bad_config_is_a_value_error_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedDeltaNet(64, **kwargs)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="num_v_heads"):
        GatedDeltaNet(64, num_v_heads=4)


def test_delta_rule_bad_chunk_size_is_an_error():
    inputs = {k: v.detach() for k, v in delta_inputs(1, 3, 1, 2, 2).items()}
    with pytest.raises(ValueError, match=r"gated_deltanet chunk_size=0 must be >= 1"):
        gated_delta_rule_chunked(**inputs, chunk_size=0)
