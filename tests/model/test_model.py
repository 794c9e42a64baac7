"""Model factory: shapes, attention against a sequential float64 reference, learning, config errors."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from zoo import ModelConfig, build_model
from zoo.mixers import MIXERS, PATTERN_LETTERS
from zoo.mixers.attention import Attention
from zoo.model.flops import channel_parameters


def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Causal attention written as a loop over query positions, rotary via complex multiplication;
    query head h reads key/value head h // (H / G) (grouped-query when G < H)."""
    batch, length, d_model = x.shape
    heads, kv_heads, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q, k, v = (x @ attn.qkv.weight.T).split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
    q = q.view(batch, length, heads, hd)
    group = [h * kv_heads // heads for h in range(heads)]  # each query head's key/value head
    k, v = (t.view(batch, length, kv_heads, hd)[:, :, group] for t in (k, v))  # (B,L,H,hd)
    half = hd // 2
    freqs = attn.rotary.inv_freq.double()
    angle = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None]  # (L, hd/2)
    phase = torch.polar(torch.ones_like(angle), angle)[None, :, None, :]

    def rotate(t):
        z = torch.complex(t[..., :half], t[..., half:]) * phase
        return torch.cat([z.real, z.imag], dim=-1)

    q, k = rotate(q), rotate(k)
    out = torch.zeros(batch, length, heads, hd, dtype=x.dtype)
    for t in range(length):
        scores = torch.einsum("bhd,bshd->bhs", q[:, t], k[:, : t + 1]) / math.sqrt(hd)
        out[:, t] = torch.einsum("bhs,bshd->bhd", scores.softmax(-1), v[:, : t + 1])
    return out.reshape(batch, length, d_model) @ attn.out_proj.weight.T


@pytest.mark.parametrize("mixer", ["attention", "sliding_window"])
def test_grouped_query_attention_matches_the_reference_and_its_own_step(mixer):
    torch.manual_seed(0)
    window = {"window": 4} if mixer == "sliding_window" else {}  # shorter than x: the banded path
    attn = MIXERS[mixer](32, 0, num_heads=4, num_kv_heads=2, **window).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    y = attn(x)
    if mixer == "attention":
        torch.testing.assert_close(y, reference_attention(attn, x))
    assert attn.qkv.weight.shape == ((4 + 2 * 2) * 8, 32)
    cache = attn.allocate_cache(2, 11)
    assert cache.keys.shape[1] == 2  # the cache keeps the key/value heads only
    steps = torch.stack([attn.step(x[:, t], cache)[0] for t in range(11)], dim=1)
    torch.testing.assert_close(steps, y)


@pytest.mark.parametrize("kv_heads", [3, 0, 8, "2"])
def test_num_kv_heads_must_divide_num_heads(kv_heads):
    with pytest.raises(ValueError, match=f"attention num_kv_heads={kv_heads!r} must be a positive divisor of num_heads=4"):
        Attention(32, 0, num_heads=4, num_kv_heads=kv_heads)


def test_attention_matches_sequential_reference():
    torch.manual_seed(0)
    attn = Attention(32, 0, num_heads=4).double()
    torch.nn.init.normal_(attn.out_proj.weight, std=0.2)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x), reference_attention(attn, x), rtol=1e-10, atol=1e-10)


def test_attention_is_causal():
    torch.manual_seed(0)
    attn = Attention(16, 0, num_heads=2)
    x = torch.randn(1, 9, 16)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 4, 16)
    torch.testing.assert_close(attn(x)[:, :5], attn(y)[:, :5])


def test_language_model_output_shape_and_tied_head():
    model = build_model(
        ModelConfig(vocab_size=50, d_model=32, n_layers=3, mixer={"attention": {"num_heads": 4}}, tie_embeddings=True)
    )
    logits = model(torch.randint(0, 50, (3, 13)))
    assert logits.shape == (3, 13, 50)
    assert model.lm_head.weight is model.embedding.weight
    untied = build_model(ModelConfig(vocab_size=50, d_model=32, n_layers=1))  # untied by default
    assert untied.num_parameters() == model.num_parameters() - 2 * _block_params(model) + 50 * 32


def _block_params(model):
    return sum(p.numel() for p in model.blocks[0].parameters())


def test_gpt_init_scales_residual_projections():
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=64, d_model=128, n_layers=8))
    block = model.blocks[0]
    assert block.mixer.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / math.sqrt(16)
    assert block.mixer.out_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert block.channel.w2.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.equal(block.mixer_norm.weight, torch.ones(128))


def test_pattern_repeats_and_channel_none_removes_mlp():
    model = build_model(ModelConfig(vocab_size=16, d_model=16, n_layers=4, pattern="A", channel=["mlp", "none"]))
    assert [b.channel is None for b in model.blocks] == [False, True, False, True]


def test_channel_parameters_count_mlps_and_memory_with_a_shared_table_once():
    mlp = build_model(ModelConfig(vocab_size=16, d_model=8, n_layers=2, channel="mlp"))
    assert channel_parameters(mlp) == sum(p.numel() for block in mlp.blocks for p in block.channel.parameters())
    memory = dict(n_keys=4, heads=1, knn=2, k_dim=4, layers=[0, 1], shared=True)
    shared = build_model(dict(vocab_size=16, d_model=8, n_layers=2, channel="mlp", memory=memory))
    table = shared.blocks[0].channel.values.weight
    assert table is shared.blocks[1].channel.values.weight
    per_layer = [sum(p.numel() for p in block.channel.parameters()) for block in shared.blocks]
    assert channel_parameters(shared) == sum(per_layer) - table.numel()  # the table counted once, not twice
    assert channel_parameters(build_model(ModelConfig(vocab_size=16, d_model=8, n_layers=2, channel="none"))) == 0


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=32, d_model=32, n_layers=2, mixer={"attention": {"num_heads": 2}}))
    inputs = torch.randint(0, 32, (4, 16))
    targets = torch.randint(0, 32, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(pattern="AX"), r"unknown mixer letter 'X'; allowed letters: " + re.escape(str(sorted(PATTERN_LETTERS)))),
        (dict(pattern=["attention", "lstm"]), r"unknown mixer 'lstm'; allowed: " + re.escape(str(sorted(MIXERS)))),
        (dict(channel="moe"), r"unknown channel 'moe'; allowed: \['mlp', 'none'\]"),
        (dict(pattern="AAA"), r"backbone.pattern has 3 entries, which must divide n_layers=2"),
        (dict(mixer={"attention": {"num_heads": 3}}), r"num_heads=3 must be a positive divisor of d_model=32"),
        (dict(mixer={"attention": {"n_heads": 2}}), r"unexpected keyword argument 'n_heads'"),  # one head keyword: num_heads
        (dict(mixer={"ssm": {}}), r"options for unknown mixer 'ssm'"),
        (dict(d_model=0), r"d_model=0 must be a positive integer"),
    ],
)
def test_bad_model_config_names_the_bad_value(overrides, match):
    values = {"vocab_size": 16, "d_model": 32, "n_layers": 2, **overrides}
    with pytest.raises(ValueError, match=match):
        build_model(values)


def test_unknown_model_config_key_is_an_error():
    with pytest.raises(ValueError, match=r"^model\.d_modle: Key 'd_modle' not in 'ModelConfig'; allowed: \['channel', "):
        build_model({"vocab_size": 16, "d_modle": 32})


def test_logits_at_scored_positions_equal_the_full_logits_there():
    torch.manual_seed(0)
    model = build_model({"vocab_size": 50, "d_model": 16, "pattern": "AS", "memory": {"n_keys": 8, "heads": 1, "knn": 4}})
    inputs = torch.randint(0, 50, (3, 12))
    scored = torch.rand(3, 12) < 0.3
    full = model(inputs)
    assert torch.allclose(model(inputs, scored), full[scored], atol=1e-6)
    assert model(inputs, torch.zeros_like(scored)).shape == (0, 50)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # no trainer here: logging is skipped
def test_training_loss_and_gradients_equal_cross_entropy_over_the_full_logits():
    """The Lightning module computes logits at scored positions only; the reference takes them
    everywhere and ignores the unscored targets."""
    from zoo.training.lit import LitLanguageModel

    torch.manual_seed(0)
    lit = LitLanguageModel(ModelConfig(vocab_size=40, d_model=16, pattern="A"))
    inputs = torch.randint(0, 40, (4, 10))
    targets = torch.where(torch.rand(4, 10) < 0.4, torch.randint(0, 40, (4, 10)), torch.full((4, 10), -100))
    loss = lit.training_step({"inputs": inputs, "targets": targets}, 0)
    grads = torch.autograd.grad(loss, list(lit.model.parameters()))
    reference = F.cross_entropy(lit.model(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
    expected = torch.autograd.grad(reference, list(lit.model.parameters()))
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-6)


def test_a_memory_beside_the_channel_keeps_the_mlp_and_adds_its_own_sub_layer():
    from zoo.model.flops import forward_flops_per_token

    memory = {"n_keys": 8, "knn": 4, "k_dim": 16, "layers": [1]}
    replaced = build_model({"vocab_size": 50, "d_model": 32, "memory": memory})
    beside = build_model({"vocab_size": 50, "d_model": 32, "memory": {**memory, "placement": "beside"}})
    plain = build_model({"vocab_size": 50, "d_model": 32})
    assert type(replaced.blocks[1].channel).__name__ == "MemoryPlus" and replaced.blocks[1].memory is None
    assert type(beside.blocks[1].channel).__name__ == "SwiGLU" and type(beside.blocks[1].memory).__name__ == "MemoryPlus"
    memory_flops = beside.blocks[1].memory.flops_per_token(16) + 2 * 32  # the layer and its norm
    assert forward_flops_per_token(beside, 16) == forward_flops_per_token(plain, 16) + memory_flops
    beside.eval()
    tokens = torch.randint(0, 50, (2, 9))
    caches = beside.allocate_caches(2, 9)
    steps = torch.stack([beside.step(tokens[:, t], caches) for t in range(9)], dim=1)
    torch.testing.assert_close(steps, beside(tokens), rtol=1e-5, atol=1e-5)


def test_memory_placement_is_checked():
    with pytest.raises(ValueError, match="memory.placement='after'; allowed: \\['replace', 'beside'\\] or null"):
        build_model({"vocab_size": 50, "memory": {"placement": "after"}})
