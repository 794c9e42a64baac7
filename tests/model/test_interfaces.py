"""Every registered mixer and channel answers the declared interface: step equals forward, FLOPs
per token equal a hand count, inference state size equals the bytes its cache allocates."""

import math

import pytest
import torch

from zoo.memory import MemoryConfig
from zoo.mixers import MIXERS, PATTERN_LETTERS
from zoo.model.channels import CHANNELS
from zoo.model.language_model import build_model
from zoo.training.optim import build_optimizer, param_groups

D, L = 16, 12


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def hand_flops(name: str, mixer) -> int:
    """FLOPs per token counted from each mixer's shapes, written out here independently."""
    if name == "attention":
        h, hd = mixer.num_heads, mixer.head_dim
        projections = D * 3 * D + D * D  # qkv and out (no bias by default)
        return 2 * projections + 2 * 2 * (L // 2) * h * hd
    if name == "sliding_window":
        h, hd = mixer.num_heads, mixer.head_dim
        projections = D * 3 * D + D * D
        return 2 * projections + 2 * 2 * min(L // 2, mixer.window) * h * hd
    if name == "mamba":
        di, ds, r, k = mixer.d_inner, mixer.d_state, mixer.dt_rank, mixer.d_conv
        weights = D * 2 * di + di * k + di + di * (r + 2 * ds) + r * di + di + di * ds + di + di * D
        return 2 * weights + 6 * di * ds
    if name == "mamba2":
        di, ds, k, h, g = mixer.d_inner, mixer.d_state, mixer.d_conv, mixer.nheads, mixer.ngroups
        conv_dim = di + 2 * g * ds
        weights = D * (2 * di + 2 * g * ds + h) + conv_dim * k + conv_dim + 3 * h + di + di * D
        return 2 * weights + 6 * di * ds
    if name == "hyena":
        n, f, e, m, k = mixer.order, mixer.filter_order, mixer.emb_dim, mixer.num_inner_mlps, mixer.short_filter_order
        width = (n + 1) * D
        weights = D * width + width + width * k + width + D * D + D  # in_proj, short conv, out_proj (biases)
        filter_mlp = e * f + f + m * (f * f + f) + f * (n - 1) * D  # evaluated once per position
        # per long-conv channel and token: 3 real FFTs of size 2L at 2.5 * 2L * log2(2L) over L tokens,
        # L + 1 complex products (6 each) over L tokens, the skip term
        long_conv = 3 * 2.5 * 2 * L * math.log2(2 * L) / L + 6 * (L + 1) / L + 2
        gates, window = n * D, (n - 1) * D
        return round(2 * weights + gates + (n - 1) * D * long_conv + 2 * filter_mlp + window)
    if name == "based":
        h, f, hd, k = mixer.num_heads, mixer.feature_dim, mixer.head_dim, mixer.conv_size
        weights = D * k + 2 * D * h * f + D * h * hd + h * hd * D  # conv (no bias), q, k, v, o
        features = 1 + f + f * f  # Taylor map: 1, x, x (x) x
        return 2 * weights + 2 * 2 * h * features * (hd + 1)  # update + readout of state and normaliser
    if name == "gla":
        h, kd, vd, r, k = mixer.num_heads, mixer.key_dim, mixer.value_dim, 16, mixer.conv_size
        convs = (2 * kd + vd) * k  # q, k, v short convs, no bias
        weights = D * (2 * kd + 2 * vd) + convs + D * r + r * kd + kd + vd // h + vd * D  # ... gk low rank, norm, o
        return 2 * weights + 6 * h * (kd // h) * (vd // h)
    if name == "gated_deltanet":
        h, kd, vd, k = mixer.num_heads, mixer.key_dim, mixer.value_dim, mixer.conv_size
        convs = (2 * kd + vd) * k
        weights = D * (2 * kd + 2 * vd) + 2 * D * h + 2 * h + convs + vd // h + vd * D  # q k v g, a b, A_log dt_bias
        return 2 * weights + 8 * h * (kd // h) * (vd // h)
    raise AssertionError(f"no hand count for mixer {name!r}: add one when registering it")


def cache_bytes(cache) -> int:
    return sum(v.numel() * v.element_size() for v in vars(cache).values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_mixer_steps_like_its_forward_and_counts_its_flops_and_state(name):
    torch.manual_seed(0)
    mixer = MIXERS[name](D, 0).double().eval()
    x = torch.randn(2, L, D, dtype=torch.float64)
    full = mixer(x)
    cache = mixer.allocate_cache(2, L)
    steps = torch.stack([mixer.step(x[:, t], cache)[0] for t in range(L)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-8, atol=1e-10)
    assert mixer.flops_per_token(L) == hand_flops(name, mixer) > 0
    assert mixer.state_size(L) * 2 == cache_bytes(mixer.allocate_cache(2, L))  # per sequence, batch of 2


@pytest.mark.parametrize("name", sorted(n for n, cls in CHANNELS.items() if cls is not None))
def test_every_channel_counts_the_parameters_a_token_uses_and_their_flops(name):
    torch.manual_seed(0)
    if name == "memory":
        config = MemoryConfig(n_keys=6, heads=2, knn=3, k_dim=8, v_dim=10, layers=[0], gate=True)
        channel = CHANNELS[name](D, 0, config=config)
        table = 36 * 10
        expected = params(channel) - table + 2 * 3 * 10  # the table minus the rows a token reads
    else:
        channel = CHANNELS[name](D, 0)
        expected = params(channel)
    assert channel(torch.randn(2, L, D)).shape == (2, L, D)
    assert channel.active_parameters() == expected
    assert channel.flops_per_token(L) == 2 * expected


def test_the_memory_hand_count_matches_its_config():
    config = MemoryConfig(n_keys=6, heads=2, knn=3, k_dim=8, v_dim=10, layers=[0], gate=True)
    channel = CHANNELS["memory"](D, 0, config=config)
    query = D * 2 * 8 + 2 * 8
    sub_keys = 2 * 2 * 6 * 4
    gate_w1_w2 = (D + 1) + D * 10 + 10 * D  # linear(D, 1) with bias, W1, W2 (no biases)
    assert channel.active_parameters() == query + sub_keys + gate_w1_w2 + 2 * 3 * 10


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_mixer_learns_in_a_backbone_with_a_memory_channel(name):
    torch.manual_seed(0)
    letter = next(k for k, v in PATTERN_LETTERS.items() if v == name)
    model = build_model(
        {
            "d_model": 32,
            "n_layers": 2,
            "pattern": letter,
            "vocab_size": 16,
            "memory": {"n_keys": 8, "heads": 2, "knn": 4, "k_dim": 16, "layers": [1]},
        }
    )
    tokens = torch.randint(16, (4, 24))
    optimizer = build_optimizer(param_groups(model, lr=3e-3, weight_decay=0.0))
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
