"""BASED mixer: chunked Taylor linear attention equals the per-token recurrence (values and gradients,
float64), the whole mixer equals a naive loop (gradients of the input and every parameter), step
equals forward, fla's naive references and layer (names, shapes, numbers), long sequences, config.
Learning in a backbone with a memory channel is tests/test_interfaces.py's contract test."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers.causality import assert_causal_on_cpu
from helpers.grad_match import assert_values_and_grads_match

from zoo.core.tags import is_no_reinit, is_residual_projection
from zoo.mixers.based import Based, BasedCache, based_chunked, taylor_features
from zoo.model.language_model import Block, LanguageModel, ModelConfig

CONFIGS = Path(__file__).resolve().parents[2] / "zoo" / "configs"


def phi(x: torch.Tensor) -> torch.Tensor:
    """The Taylor feature map written out for one vector per row: [1, x / F^(1/4), x_i x_j / sqrt(2F)]."""
    dim = x.shape[-1]
    pairs = torch.stack([x[..., i] * x[..., j] for i in range(dim) for j in range(dim)], dim=-1)
    return torch.cat([torch.ones_like(x[..., :1]), x * dim**-0.25, pairs * (2 * dim) ** -0.5], dim=-1)


def recurrence(q, k, v, eps):
    """S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t), y_t = phi(q_t) S_t / (phi(q_t) z_t + eps),
    one step at a time. q, k: (b, L, h, F), v: (b, L, h, dv) -> (b, L, h, dv)."""
    batch, length, heads, _ = q.shape
    n_features = 1 + q.shape[-1] ** 2 + q.shape[-1]
    state = torch.zeros(batch, heads, n_features, v.shape[-1], dtype=q.dtype)
    norm = torch.zeros(batch, heads, n_features, dtype=q.dtype)
    out = []
    for t in range(length):
        fq, fk = phi(q[:, t]), phi(k[:, t])
        state = state + fk[..., :, None] * v[:, t, :, None, :]
        norm = norm + fk
        out.append((fq[..., :, None] * state).sum(-2) / ((fq * norm).sum(-1) + eps)[..., None])
    return torch.stack(out, dim=1)


def qkv(batch, length, heads, feature_dim, head_dim, seed=0, dtype=torch.float64, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return {
        name: (torch.randn(batch, length, heads, width, generator=gen, dtype=dtype) * s).requires_grad_()
        for name, width, s in [("q", feature_dim, scale), ("k", feature_dim, scale), ("v", head_dim, 1.0)]
    }


def naive_mixer(mixer: Based, x: torch.Tensor) -> torch.Tensor:
    """The whole mixer token by token: conv window sum + SiLU, projections, recurrence, o_proj."""
    batch, length, d_model = x.shape
    h, f, hd = mixer.num_heads, mixer.feature_dim, mixer.head_dim
    if mixer.conv1d is not None:
        weight = mixer.conv1d.weight[:, 0]  # (D, K); tap K-1 meets the current token
        width = weight.shape[1]
        padded = torch.cat([x.new_zeros(batch, width - 1, d_model), x], dim=1)
        x = torch.stack([F.silu((padded[:, t : t + width] * weight.T).sum(1)) for t in range(length)], dim=1)
    q = (x @ mixer.q_proj.weight.T).view(batch, length, h, f)
    k = (x @ mixer.k_proj.weight.T).view(batch, length, h, f)
    v = (x @ mixer.v_proj.weight.T).view(batch, length, h, hd)
    return recurrence(q, k, v, mixer.eps).reshape(batch, length, h * hd) @ mixer.o_proj.weight.T


def test_taylor_features_dot_product_is_the_second_order_expansion_of_exp():
    q, k = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    s = (q * k).sum(-1) / 7**0.5
    dots = (taylor_features(q) * taylor_features(k)).sum(-1)
    torch.testing.assert_close(dots, 1 + s + s**2 / 2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(taylor_features(q), phi(q), rtol=1e-12, atol=1e-12)
    assert taylor_features(q).shape == (5, 1 + 7 + 49)


@pytest.mark.parametrize("chunk_size, length", [(1, 9), (4, 13), (8, 32), (16, 37), (64, 37)])
def test_chunked_attention_equals_recurrence_with_gradients(chunk_size, length):
    inputs = qkv(batch=2, length=length, heads=3, feature_dim=4, head_dim=5)
    y = based_chunked(**inputs, chunk_size=chunk_size, eps=1e-6)
    assert_values_and_grads_match(y, recurrence(**inputs, eps=1e-6), inputs, atol=1e-10)


@pytest.mark.parametrize("options", [dict(), dict(conv_size=0), dict(num_heads=3, conv_size=2, eps=0.1)])
def test_mixer_equals_naive_loop_with_gradients_of_input_and_every_parameter(options):
    torch.manual_seed(0)
    mixer = Based(16, feature_dim=4, chunk_size=4, **options).double()
    for p in mixer.parameters():
        torch.nn.init.normal_(p, std=0.4)
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    inputs = {"x": x, **dict(mixer.named_parameters())}
    assert ("conv1d.weight" in inputs) == (options.get("conv_size", 4) > 0)
    assert_values_and_grads_match(mixer(x), naive_mixer(mixer, x), inputs, atol=1e-10)


@pytest.mark.parametrize("options", [dict(), dict(conv_size=0), dict(num_heads=3)])
def test_step_token_by_token_equals_parallel_forward(options):
    torch.manual_seed(0)
    mixer = Based(16, feature_dim=4, chunk_size=4, **options).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    cache = mixer.allocate_cache(2)
    assert isinstance(cache, BasedCache) and cache.state.shape == (2, mixer.num_heads, 21, 16 // mixer.num_heads)
    assert (cache.conv_state is None) == (mixer.conv_size == 0)
    steps = []
    for t in range(x.shape[1]):
        y_t, returned = mixer.step(x[:, t], cache)
        assert returned is cache
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), mixer(x), rtol=0, atol=1e-10)


def test_long_sequence_in_float32_stays_finite_and_matches_float64_recurrence():
    inputs = qkv(batch=1, length=2048, heads=2, feature_dim=4, head_dim=4, dtype=torch.float32, scale=1.5)
    y = based_chunked(**inputs, chunk_size=64, eps=1e-6)
    exact = recurrence(*(t.detach().double() for t in inputs.values()), eps=1e-6)
    torch.testing.assert_close(y.double(), exact, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(y.square().sum(), list(inputs.values()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_chunked_attention_equals_fla_naive_references():
    naive = pytest.importorskip("fla.ops.based.naive", reason="flash-linear-attention (fla) is not installed")
    inputs = qkv(batch=2, length=32, heads=2, feature_dim=8, head_dim=6)
    theirs = {name: t.transpose(1, 2) for name, t in inputs.items()}  # fla's naive ops take (b, h, L, d)
    y = based_chunked(**inputs, chunk_size=8, eps=1e-6)  # 1e-6: the eps fla's references add
    parallel = naive.naive_parallel_based(**theirs, use_norm=True).transpose(1, 2)
    assert_values_and_grads_match(y, parallel, inputs, atol=1e-10)
    chunk = naive.naive_chunk_based(**theirs, chunk_size=16).transpose(1, 2)
    torch.testing.assert_close(y, chunk, rtol=1e-10, atol=1e-10)


def _shapes(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


# fla.layers.BasedLinearAttention(hidden_size=64) with its defaults (feature_dim=16, num_heads=12):
# q/k_proj (num_heads * feature_dim, D), v_proj (num_heads * (D // num_heads), D), o_proj the transpose.
# conv1d.weight is memzoo's short convolution, not part of fla's layer.
FLA_SHAPES = {
    "conv1d.weight": (64, 1, 4),
    "q_proj.weight": (192, 64),
    "k_proj.weight": (192, 64),
    "v_proj.weight": (60, 64),
    "o_proj.weight": (64, 60),
}


def test_state_dict_names_and_shapes_match_fla_definition():
    assert _shapes(Based(64, feature_dim=16, num_heads=12)) == FLA_SHAPES
    assert _shapes(Based(64, feature_dim=16, num_heads=12, conv_size=0)) == {
        k: v for k, v in FLA_SHAPES.items() if k != "conv1d.weight"
    }


@pytest.mark.parametrize("num_heads", [2, 12])
def test_state_dict_and_numbers_equal_fla_layer(num_heads):
    layers = pytest.importorskip("fla.layers", reason="flash-linear-attention (fla) is not installed")
    torch.manual_seed(0)
    theirs = layers.BasedLinearAttention(64, feature_dim=8, num_heads=num_heads, num_key_value_heads=num_heads, eps=1e-6).double()
    with_conv = _shapes(Based(64, feature_dim=8, num_heads=num_heads))
    assert with_conv.pop("conv1d.weight") == (64, 1, 4)  # the one key fla's layer has not
    assert with_conv == _shapes(theirs)
    ours = Based(64, feature_dim=8, num_heads=num_heads, conv_size=0, chunk_size=8).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 20, 64, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs.forward_reference(x), rtol=1e-10, atol=1e-10)


def test_forward_is_causal_and_runs_the_cpu_path():
    torch.manual_seed(0)
    assert_causal_on_cpu(Based(16, feature_dim=4, chunk_size=4).double(), 16)


def test_conv_keeps_its_init_and_output_projection_is_scaled_by_model_init():
    mixer = Based(16, feature_dim=4)
    assert is_no_reinit(mixer.conv1d.weight) and is_residual_projection(mixer.o_proj.weight)
    before = mixer.conv1d.weight.detach().clone()
    LanguageModel(ModelConfig(vocab_size=11, d_model=16, n_layers=1), [Block(16, mixer, None, 1e-5)])
    torch.testing.assert_close(mixer.conv1d.weight, before, rtol=0, atol=0)


def test_backbone_yaml_states_the_constructor_defaults():
    backbone = yaml.safe_load((CONFIGS / "backbone" / "based.yaml").read_text())
    assert backbone["pattern"] == "B"
    d_model = ModelConfig(vocab_size=128).d_model  # the preset inherits it (defaults: [base])
    mixer = Based(d_model)
    stated = backbone["mixer"]["based"]
    assert stated == {name: getattr(mixer, name) for name in stated}
    assert Based(d_model, **stated).state_dict().keys() == mixer.state_dict().keys()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feature_dim=0), r"based feature_dim=0 must be an integer >= 1"),
        (dict(num_heads=65), r"based num_heads=65 must be <= d_model=64"),
        (dict(conv_size=-1), r"based conv_size=-1 must be an integer >= 0"),
        (dict(chunk_size=2.5), r"based chunk_size=2.5 must be an integer >= 1"),
        (dict(eps=-1e-3), r"based eps=-0.001 must be >= 0"),
    ],
)
def test_bad_config_is_a_value_error_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Based(64, **kwargs)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="num_key_value_heads"):
        Based(64, num_key_value_heads=2)


def test_chunked_bad_chunk_size_is_an_error():
    inputs = {k: v.detach() for k, v in qkv(1, 3, 1, 2, 2).items()}
    with pytest.raises(ValueError, match=r"chunk_size=0 must be >= 1"):
        based_chunked(**inputs, chunk_size=0, eps=1e-6)
