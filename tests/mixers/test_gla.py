"""GLA mixer: chunked GLA equals the per-token recurrence (values and gradients, float64), also over
2048 steps of strong decay; the whole layer equals a per-token reference written from fla's layer
(values, gradients of the input and every parameter); fla's state dict gives fla's output; fla's
parameter names and shapes; tags; config errors. What it shares with Gated DeltaNet (step, cache,
causality, learning with memory, fla on CUDA) is in test_fla_layout.py."""

import pytest
import torch
import torch.nn.functional as F
from helpers.fla_reference import NO_FLA, fla_layer_qkv, linear, rmsnorm_swish_gate_reference, short_conv_reference
from helpers.grad_match import assert_values_and_grads_match

from zoo.core.tags import is_no_reinit, is_residual_projection, optim_tags
from zoo.mixers import gla
from zoo.mixers.gla import GatedLinearAttention, gla_chunked
from zoo.model.language_model import Block, LanguageModel, ModelConfig


def gla_loop(q, k, v, log_decay, scale=None):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t * scale: one step at a time.
    q, k, log_decay: (b, L, h, dk); v: (b, L, h, dv) -> (b, L, h, dv)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    state = torch.zeros(*q.shape[:1], q.shape[2], q.shape[3], v.shape[3], dtype=q.dtype)
    out = []
    for t in range(q.shape[1]):
        state = torch.exp(log_decay[:, t]).unsqueeze(-1) * state + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, state))
    return torch.stack(out, dim=1)


def gla_inputs(batch, length, heads, dk, dv, seed=0, decay=1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        q=torch.randn(batch, length, heads, dk, generator=gen, dtype=dtype).requires_grad_(),
        k=torch.randn(batch, length, heads, dk, generator=gen, dtype=dtype).requires_grad_(),
        v=torch.randn(batch, length, heads, dv, generator=gen, dtype=dtype).requires_grad_(),
        log_decay=(-decay * torch.rand(batch, length, heads, dk, generator=gen, dtype=dtype)).requires_grad_(),
    )


@pytest.mark.parametrize(
    "chunk_size, length, decay",
    [
        (1, 9, 1.0),
        (4, 13, 1.0),
        (16, 37, 0.1),
        (16, 37, 4.0),
        (24, 50, 4.0),
        (32, 70, 0.1),
        (32, 70, 4.0),
        (64, 37, 1.0),
    ],
)
def test_chunked_gla_equals_the_per_token_recurrence_with_gradients(chunk_size, length, decay):
    """decay 0.1 keeps every chunk within FACTORED_SPAN (one matmul per chunk), 4.0 takes the
    anchored sub-chunk form in chunks of 16 or more."""
    inputs = gla_inputs(batch=2, length=length, heads=2, dk=3, dv=4, decay=decay)
    y = gla_chunked(**inputs, chunk_size=chunk_size)
    assert_values_and_grads_match(y, gla_loop(**inputs), inputs, atol=1e-10)


def pairwise_scores(q, k, cum):
    """[t, s] = sum_d q_td k_sd exp(cum_td - cum_sd) for s <= t, else 0, summed pair by pair."""
    length = q.shape[-2]
    scores = torch.zeros(*q.shape[:-1], length, dtype=q.dtype)
    for t in range(length):
        for s in range(t + 1):
            scores[..., t, s] = (q[..., t, :] * k[..., s, :] * torch.exp(cum[..., t, :] - cum[..., s, :])).sum(-1)
    return scores


@pytest.mark.parametrize("length", [1, 7, 16, 48])
def test_both_intra_chunk_forms_equal_the_pairwise_sum_and_the_span_picks_between_them(length):
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, length, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    step = torch.rand(2, length, 3, generator=gen, dtype=torch.float64)
    gentle, strong = -0.3 * step.cumsum(-2), -40 * step.cumsum(-2)
    assert -gentle[..., -1, :].min() <= gla.FACTORED_SPAN
    for cum in (gentle, strong):
        torch.testing.assert_close(gla._anchored_scores(q, k, cum), pairwise_scores(q, k, cum), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gla._factored_scores(q, k, gentle), pairwise_scores(q, k, gentle), rtol=1e-12, atol=1e-12)
    assert torch.equal(gla.intra_chunk_scores(q, k, gentle), gla._factored_scores(q, k, gentle))
    if length > 1:  # strong decay: the factored form would overflow, the anchored one is taken
        assert torch.equal(gla.intra_chunk_scores(q, k, strong), gla._anchored_scores(q, k, strong))


def test_chunked_gla_over_2048_steps_of_strong_decay_is_finite_and_equals_the_recurrence():
    inputs = gla_inputs(batch=1, length=2048, heads=1, dk=3, dv=2, decay=30.0)
    # a chunk's total log decay is far below -745: exp(-cumulative decay) overflows even float64
    assert (-inputs["log_decay"][0, :64].sum(0)).min() > 745
    y = gla_chunked(**inputs, chunk_size=64)
    assert_values_and_grads_match(y, gla_loop(**inputs), inputs, atol=1e-10)
    single = {name: t.detach().float().requires_grad_() for name, t in inputs.items()}
    y32 = gla_chunked(**single, chunk_size=64)
    torch.testing.assert_close(y32.double(), y.detach(), rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(y32.sum(), list(single.values())))


def reference_layer(params: dict, x, heads, short_conv=True, normalizer=16, clamp_min=None, eps=1e-5):
    """fla's GatedLinearAttention.forward written out token by token from the state dict ``params``."""
    q, k, v = (linear(x, params, f"{n}_proj") for n in "qkv")
    if short_conv:
        q, k, v = (
            short_conv_reference(t, params[f"{n}_conv1d.weight"], params.get(f"{n}_conv1d.bias"))
            for t, n in zip((q, k, v), "qkv")
        )
    g = F.logsigmoid(linear(linear(x, params, "gk_proj.0"), params, "gk_proj.1")) / normalizer
    if clamp_min is not None:
        g = g.clamp_min(clamp_min)
    q, k, g, v = (t.unflatten(-1, (heads, -1)) for t in (q, k, g, v))
    o = gla_loop(q, k, v, g)
    gate = linear(x, params, "g_proj").unflatten(-1, (heads, -1))
    o = rmsnorm_swish_gate_reference(o, gate, params["g_norm_swish_gate.weight"], eps)
    return linear(o.flatten(-2), params, "o_proj")


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(use_short_conv=False, expand_k=1.0, expand_v=0.5, chunk_size=4),
        dict(conv_bias=True, conv_size=3, clamp_min=-0.02, gate_logit_normalizer=4, chunk_size=8),
    ],
)
def test_layer_equals_fla_layer_written_per_token_in_values_and_every_gradient(options):
    torch.manual_seed(0)
    mixer = GatedLinearAttention(16, num_heads=2, **options).double()
    for param in mixer.parameters():  # away from init values (zero bias, unit norm) so every term counts
        torch.nn.init.normal_(param, std=0.3)
    x = torch.randn(2, 19, 16, dtype=torch.float64, requires_grad=True)
    params = dict(mixer.named_parameters())
    ref = reference_layer(
        params,
        x,
        heads=2,
        short_conv=options.get("use_short_conv", True),
        normalizer=options.get("gate_logit_normalizer", 16),
        clamp_min=options.get("clamp_min"),
    )
    assert_values_and_grads_match(mixer(x), ref, {"x": x, **params}, atol=1e-10)


def _shapes(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


# fla.layers.GatedLinearAttention(hidden_size=64, num_heads=2, ...) in fla 0.6.0
FLA_SHAPES = {
    "q_proj.weight": (32, 64),
    "k_proj.weight": (32, 64),
    "v_proj.weight": (64, 64),
    "g_proj.weight": (64, 64),
    "gk_proj.0.weight": (16, 64),
    "gk_proj.1.weight": (32, 16),
    "gk_proj.1.bias": (32,),
    "o_proj.weight": (64, 64),
    "g_norm_swish_gate.weight": (32,),
}
CONV_SHAPES = {"q_conv1d.weight": (32, 1, 4), "k_conv1d.weight": (32, 1, 4), "v_conv1d.weight": (64, 1, 4)}


@pytest.mark.parametrize("use_short_conv", [False, True])
def test_state_dict_names_and_shapes_match_fla_definition(use_short_conv):
    expected = {**FLA_SHAPES, **(CONV_SHAPES if use_short_conv else {})}
    assert _shapes(GatedLinearAttention(64, num_heads=2, use_short_conv=use_short_conv)) == expected


def test_fla_state_dict_gives_fla_layer_output_composed_from_its_cpu_parts_and_naive_recurrence():
    """fla's layer runs its conv, norm and recurrence as Triton GPU kernels and cannot run on CPU;
    here its own nn.Linear / nn.Conv1d submodules, fla's ``naive_recurrent_gla`` and its
    FusedRMSNormGated formula compose its forward (fla's naive computes in float32)."""
    layers = pytest.importorskip("fla.layers", reason=NO_FLA)
    naive = pytest.importorskip("fla.ops.gla.naive", reason=NO_FLA)
    torch.manual_seed(0)
    theirs = layers.GatedLinearAttention(hidden_size=32, num_heads=2, use_short_conv=True, conv_bias=True).double()
    for param in theirs.parameters():
        torch.nn.init.normal_(param, std=0.3)
    ours = GatedLinearAttention(32, num_heads=2, use_short_conv=True, conv_bias=True).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 70, 32, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = fla_layer_qkv(theirs, x)
        gk = F.logsigmoid(theirs.gk_proj(x)) / theirs.gate_logit_normalizer
        q, k, gk, v = (t.unflatten(-1, (2, -1)) for t in (q, k, gk, v))
        o, _ = naive.naive_recurrent_gla(q, k, v, gk)
        gate = theirs.g_proj(x).unflatten(-1, (2, -1))
        norm = theirs.g_norm_swish_gate
        expected = theirs.o_proj(rmsnorm_swish_gate_reference(o, gate, norm.weight, norm.eps).flatten(-2))
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def test_parameters_are_tagged_and_conv_and_norm_survive_model_init():
    mixer = GatedLinearAttention(16, num_heads=2)
    assert is_residual_projection(mixer.o_proj.weight)
    assert optim_tags(mixer.g_norm_swish_gate.weight) == {"weight_decay": 0.0}
    assert optim_tags(mixer.gk_proj[1].bias) == {"weight_decay": 0.0}
    kept = {name: p.detach().clone() for name, p in mixer.named_parameters() if is_no_reinit(p)}
    assert set(kept) == {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight", "g_norm_swish_gate.weight"}
    LanguageModel(ModelConfig(vocab_size=11, d_model=16, n_layers=1), [Block(16, mixer, None, 1e-5)])
    for name, before in kept.items():
        torch.testing.assert_close(mixer.get_parameter(name), before, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_heads=3), r"gla num_heads=3 must divide d_model \* expand_k = 64 \* 0.5 = 32"),
        (dict(expand_v=0.3), r"gla expand_v=0.3 must be positive with d_model \* expand_v an integer \(d_model=64\)"),
        (dict(chunk_size=0), r"gla chunk_size=0 must be a positive integer"),
        (dict(conv_size=2.5), r"gla conv_size=2.5 must be a positive integer"),
        (dict(gate_logit_normalizer=0), r"gla gate_logit_normalizer=0 must be > 0"),
        (dict(clamp_min=0.5), r"gla clamp_min=0.5 must be None or < 0"),
    ],
)
def test_bad_config_is_a_value_error_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedLinearAttention(64, **kwargs)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="feature_map"):
        GatedLinearAttention(64, feature_map="relu")


def test_gla_bad_chunk_size_is_an_error():
    inputs = {k: v.detach() for k, v in gla_inputs(1, 3, 1, 2, 2).items()}
    with pytest.raises(ValueError, match=r"gla chunk_size=0 must be >= 1"):
        gla_chunked(**inputs, chunk_size=0)
