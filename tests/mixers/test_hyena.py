"""Hyena: the FFT long convolution equals the direct causal sum token by token (values and gradients
of the input and every parameter, float64), step equals forward, long sequences stay exact, names
follow zoology's Hyena, bad options and lengths are errors (learning with a memory channel: the
contract test in test_interfaces.py)."""

import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from zoo import build_model
from zoo.core.tags import optim_tags
from zoo.mixers.hyena import Hyena


def naive_filters(mixer: Hyena, length: int) -> torch.Tensor:
    """(order - 1, D, length): the implicit filter at lags 0 .. length-1, from the parameters and the
    paper's formulas (features, sine MLP, decay window), written out one lag at a time."""
    d, n_filters, l_max, emb_dim = mixer.d_model, mixer.order - 1, mixer.l_max, mixer.emb_dim
    bands = (emb_dim - 1) // 2
    freqs = [1e-4 + k * ((bands - 1) - 1e-4) / max(bands - 1, 1) for k in range(bands)]
    rates = torch.linspace(math.log(0.01) / 1.5, math.log(0.01) / 0.3, d, dtype=torch.float64)
    layers = list(mixer.filter_fn.implicit_filter)
    columns = []
    for lag in range(length):
        t = lag / (l_max - 1)
        angles = [f * 2 * math.pi * lag / l_max for f in freqs]
        a = torch.tensor([t] + [math.cos(x) for x in angles] + [-math.sin(x) for x in angles], dtype=torch.float64)
        for layer in layers:
            if isinstance(layer, nn.Linear):
                a = layer.weight @ a + (0 if layer.bias is None else layer.bias)
            else:
                a = torch.sin(layer.freq[0] * a)
        window = torch.exp(-t * rates.abs())  # shift 0
        columns.append(a.view(n_filters, d) * window)
    return torch.stack(columns, dim=-1)


def naive_hyena(mixer: Hyena, x: torch.Tensor) -> torch.Tensor:
    """x: (B, L, D) -> (B, L, D), one token at a time: short conv as a sum over the last k inputs, each
    long convolution as y_t = sum_{s <= t} h_{t-s} u_s + bias * u_t."""
    batch, length, d = x.shape
    n, k = mixer.order, mixer.short_filter_order
    h = naive_filters(mixer, length)
    conv_w, conv_b = mixer.short_filter.weight[:, 0], mixer.short_filter.bias  # (W, k), (W,)
    skip = mixer.filter_fn.bias.view(n - 1, d)
    projected = [mixer.in_proj.weight @ x[:, t].T + mixer.in_proj.bias[:, None] for t in range(length)]  # (W, B)
    inputs = [[] for _ in range(n - 1)]  # per long conv: its input at each position, (B, D)
    out = []
    for t in range(length):
        u = conv_b[:, None] + sum(conv_w[:, k - 1 - j, None] * projected[t - j] for j in range(k) if t - j >= 0)
        streams = u.T.reshape(batch, n + 1, d)
        v = streams[:, n]
        for i in range(n - 1):
            v = streams[:, i] * v
            inputs[i].append(v)
            past = torch.stack(inputs[i], dim=-1)  # (B, D, t+1), positions 0 .. t
            v = (h[i, :, : t + 1].flip(-1) * past).sum(-1) + skip[i] * v  # [s] pairs h_{t-s} with u_s
        out.append((streams[:, n - 1] * v) @ mixer.out_proj.weight.T + mixer.out_proj.bias)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("order", [2, 3])
def test_fft_forward_equals_the_per_token_causal_sum_with_gradients_of_input_and_every_parameter(order):
    torch.manual_seed(0)
    mixer = Hyena(6, order=order, l_max=16, filter_order=8, emb_dim=5).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64, requires_grad=True)
    y, ref = mixer(x), naive_hyena(mixer, x)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    inputs = {"x": x, **dict(mixer.named_parameters())}
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(inputs.values()), grad_out)
    ref_grads = torch.autograd.grad(ref, list(inputs.values()), grad_out)
    for name, got, want in zip(inputs, grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11, msg=name)


def test_a_2048_token_sequence_stays_finite_and_matches_the_causal_sum_in_float64_and_float32():
    torch.manual_seed(0)
    mixer = Hyena(2, filter_order=4, num_inner_mlps=1).double()  # l_max 2048
    x = torch.randn(1, 2048, 2, dtype=torch.float64)
    with torch.no_grad():
        ref = naive_hyena(mixer, x)
        y64 = mixer(x)
        y32 = mixer.float()(x.float())
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(y64, ref, rtol=0, atol=1e-10 * ref.abs().max().item())
    torch.testing.assert_close(y32.double(), ref, rtol=0, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("order", [2, 3])
def test_step_token_by_token_equals_the_parallel_forward_with_a_longer_cache(order):
    torch.manual_seed(0)
    mixer = Hyena(8, order=order, l_max=32, filter_order=8).double()
    x = torch.randn(3, 9, 8, dtype=torch.float64)
    cache = mixer.allocate_cache(3, 20)
    with torch.no_grad():
        stepped = torch.stack([mixer.step(x[:, t], cache)[0] for t in range(9)], dim=1)
        torch.testing.assert_close(stepped, mixer(x), rtol=0, atol=1e-10)
    assert cache.length == 9 and cache.history.shape == (3, order - 1, 8, 20)


def test_state_grows_with_length_by_the_long_conv_inputs_of_each_position():
    mixer = Hyena(8, order=3).double()
    per_position = 2 * 8 * 8  # two long convolutions, D = 8, float64
    assert mixer.state_size(200) - mixer.state_size(100) == 100 * per_position
    assert mixer.state_size(1) == (4 * 8 * 3 + 2 * 8) * 8


def test_bf16_autocast_runs_the_long_convolution_in_float32_and_stays_close():
    torch.manual_seed(0)
    mixer = Hyena(16, l_max=64)
    x = torch.randn(2, 64, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    ref = mixer(x)
    assert (y.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_parameter_names_and_shapes_follow_zoologys_hyena_of_order_2():
    # zoology's Hyena(d_model=8, l_max=..., filter_order=16) state dict, without pos_emb.{z,t} and
    # modulation.deltas (fixed functions of the position and the options here)
    expected = {
        "in_proj.weight": (24, 8),
        "in_proj.bias": (24,),
        "out_proj.weight": (8, 8),
        "out_proj.bias": (8,),
        "short_filter.weight": (24, 1, 3),
        "short_filter.bias": (24,),
        "filter_fn.bias": (8,),
        "filter_fn.implicit_filter.0.weight": (16, 3),
        "filter_fn.implicit_filter.0.bias": (16,),
        "filter_fn.implicit_filter.1.freq": (1, 16),
        "filter_fn.implicit_filter.2.weight": (16, 16),
        "filter_fn.implicit_filter.2.bias": (16,),
        "filter_fn.implicit_filter.3.freq": (1, 16),
        "filter_fn.implicit_filter.4.weight": (16, 16),
        "filter_fn.implicit_filter.4.bias": (16,),
        "filter_fn.implicit_filter.5.freq": (1, 16),
        "filter_fn.implicit_filter.6.weight": (8, 16),
    }
    state = Hyena(8, filter_order=16).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_model_init_keeps_the_conv_and_skip_init_and_the_filter_has_no_weight_decay():
    torch.manual_seed(0)
    model = build_model(dict(vocab_size=16, d_model=16, n_layers=2, pattern="H", channel="mlp"))
    mixer = model.blocks[0].mixer
    assert mixer.filter_fn.bias.std() > 0.5  # randn, as in zoology
    assert mixer.short_filter.weight.abs().max() > 0.1  # PyTorch's conv init (std 0.02 would stay below)
    assert mixer.filter_fn.implicit_filter[0].weight.std() < 0.05  # GPT-style, as zoology's init does
    for name, param in mixer.filter_fn.named_parameters():
        assert optim_tags(param).get("weight_decay") == 0.0, name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(order=1), r"hyena order=1 must be an integer >= 2"),
        (dict(l_max=0), r"hyena l_max=0 must be an integer >= 1"),
        (dict(filter_order=2.5), r"hyena filter_order=2.5 must be an integer >= 1"),
        (dict(short_filter_order=0), r"hyena short_filter_order=0 must be an integer >= 1"),
        (dict(emb_dim=4), r"hyena emb_dim=4 must be an odd integer >= 3"),
        (dict(fast_decay_pct=0), r"hyena fast_decay_pct=0, slow_decay_pct=1.5 must be > 0"),
        (dict(target=1.0), r"hyena target=1.0 must be in \(0, 1\)"),
    ],
)
def test_bad_options_are_value_errors_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Hyena(8, **kwargs)


def test_lengths_beyond_l_max_are_refused_for_forward_cache_and_state_size():
    mixer = Hyena(4, l_max=8)
    with pytest.raises(ValueError, match=r"hyena sequence length=9 exceeds l_max=8"):
        mixer(torch.randn(1, 9, 4))
    with pytest.raises(ValueError, match=r"hyena cache max_len=9 exceeds l_max=8"):
        mixer.allocate_cache(1, 9)
    with pytest.raises(ValueError, match=r"hyena state_size seq_len=9 exceeds l_max=8"):
        mixer.state_size(9)
    cache = mixer.allocate_cache(1, 2)
    for _ in range(2):
        mixer.step(torch.randn(1, 4), cache)
    with pytest.raises(ValueError, match=r"hyena cache is full \(2 positions\)"):
        mixer.step(torch.randn(1, 4), cache)


def test_unknown_option_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"unexpected keyword argument 'num_heads'"):
        build_model(dict(vocab_size=8, d_model=16, n_layers=1, pattern="H", mixer={"hyena": {"num_heads": 2}}))


def test_the_backbone_yaml_states_the_constructor_defaults():
    path = Path(__file__).resolve().parents[2] / "zoo" / "configs" / "backbone" / "hyena.yaml"
    stated = yaml.safe_load(path.read_text())["mixer"]["hyena"]
    defaults = {
        name: p.default for name, p in inspect.signature(Hyena).parameters.items() if name not in ("d_model", "layer_idx")
    }
    assert stated == defaults
