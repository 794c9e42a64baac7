"""Memory+ layer against a naive dense reference; shared pool gradients; config errors."""

import pytest
import torch
import torch.nn.functional as F

from zoo import ModelConfig, build_model
from zoo.core.dataclass_config import typed
from zoo.memory import MemoryConfig, MemoryPlus, ValueTable


def norm(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "layernorm":
        return (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    if kind == "rmsnorm":
        return t / (t.pow(2).mean(-1, keepdim=True) + torch.finfo(t.dtype).eps).sqrt()
    return t


def dense_reference(layer: MemoryPlus, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """All N slot scores, mask to the top-k per head, softmax, (T, N) @ (N, v_dim), memory+ gating."""
    cfg = layer.config
    flat = x.reshape(-1, x.shape[-1])
    q = norm(layer.keys.query(flat).view(-1, cfg.heads, 2, cfg.k_dim // 2), cfg.query_norm)
    keys = norm(layer.keys.sub_keys, cfg.query_norm)
    s1 = torch.einsum("thd,hnd->thn", q[:, :, 0], keys[:, 0])
    s2 = torch.einsum("thd,hnd->thn", q[:, :, 1], keys[:, 1])
    scores = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2)  # (T, H, N)
    kth = scores.topk(cfg.knn, dim=-1).values[..., -1:]
    masked = scores.masked_fill(scores < kth, float("-inf"))
    weights = torch.softmax(masked / cfg.temperature, dim=-1)  # (T, H, N), zero off the top-k
    mem = weights.sum(1) @ values  # (T, v_dim)
    out = layer.w2(mem * F.silu(layer.w1(flat)))
    if layer.gate is not None:
        out = torch.sigmoid(layer.gate(flat)) * out
    return out.view_as(x)


@pytest.mark.parametrize(
    "sparse, gate, query_norm",
    [
        (True, False, "none"),
        (False, False, "none"),
        (True, True, "rmsnorm"),
        (False, True, "layernorm"),
    ],
)
def test_output_and_gradients_equal_dense_reference(sparse, gate, query_norm):
    torch.manual_seed(1)
    cfg = MemoryConfig(
        n_keys=6, heads=2, knn=3, k_dim=8, v_dim=12, gate=gate, sparse_updates=sparse, temperature=0.5, query_norm=query_norm
    )
    layer = MemoryPlus(16, 0, cfg).double()
    for lin in (layer.w1, layer.w2):
        torch.nn.init.normal_(lin.weight, std=0.3)
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 5, 16, dtype=torch.float64)

    params = [layer.keys.query.weight, layer.keys.query.bias, layer.keys.sub_keys, layer.values.weight]
    out = layer(x)
    grads = torch.autograd.grad(out, [x, *params], grad_out)

    ref = dense_reference(layer, x, layer.values.weight)
    ref_grads = torch.autograd.grad(ref, [x, *params], grad_out)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert grads[-1].is_sparse == sparse
    for got, want in zip(grads, ref_grads):
        got = got.to_dense() if got.is_sparse else got
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert ref_grads[3].abs().sum() > 0 and ref_grads[2].abs().sum() > 0


def test_shared_pool_gets_the_gradient_of_both_layers():
    torch.manual_seed(0)
    memory = dict(n_keys=5, heads=2, knn=3, k_dim=8, layers=[0, 1], sparse_updates=False)
    base = dict(vocab_size=20, d_model=16, n_layers=2, mixer={"attention": {"num_heads": 2}})
    shared = build_model({**base, "memory": {**memory, "shared": True}}).double()
    split = build_model({**base, "memory": {**memory, "shared": False}}).double()
    split.load_state_dict(shared.state_dict(), strict=False)
    for block in split.blocks:  # both private tables start as the shared one
        block.channel.values.weight.data.copy_(shared.blocks[0].channel.values.weight)
    assert shared.blocks[0].channel.values is shared.blocks[1].channel.values
    assert split.blocks[0].channel.values is not split.blocks[1].channel.values

    tokens = torch.randint(0, 20, (3, 7))
    shared(tokens).pow(2).sum().backward()
    split(tokens).pow(2).sum().backward()
    g0, g1 = (b.channel.values.weight.grad for b in split.blocks)
    assert g0.abs().sum() > 0 and g1.abs().sum() > 0
    torch.testing.assert_close(shared.blocks[0].channel.values.weight.grad, g0 + g1, rtol=1e-10, atol=1e-12)
    n_tables = sum(1 for m in shared.modules() if isinstance(m, ValueTable))
    assert n_tables == 1


def test_memory_replaces_channel_only_at_listed_layers():
    model = build_model(dict(vocab_size=20, d_model=16, n_layers=3, memory=dict(n_keys=4, knn=2, k_dim=8, layers=[2])))
    kinds = [type(b.channel).__name__ for b in model.blocks]
    assert kinds == ["SwiGLU", "SwiGLU", "MemoryPlus"]


@pytest.mark.parametrize(
    "memory, match",
    [
        (dict(knn=9, n_keys=8), r"memory.knn=9 must be <= memory.n_keys=8"),
        (dict(k_dim=7), r"memory.k_dim=7 must be even"),
        (dict(layers=[2]), r"memory.layers has index 2; allowed: 0..1 \(backbone.n_layers=2\)"),
        (dict(layers=[0, 0]), r"memory.layers=\[0, 0\] repeats a layer index"),
        (dict(v_dim=0), r"memory.v_dim=0 must be a positive integer"),
        (dict(query_norm="batchnorm"), r"memory.query_norm='batchnorm'; allowed: \['none', 'layernorm', 'rmsnorm'\]"),
        (dict(temperature=0.0), r"memory.temperature=0.0 must be a finite number > 0"),
        (dict(heads=0), r"memory.heads=0 must be a positive integer"),
        (dict(slots=10), r"^model\.memory\.slots: Key 'slots' not in 'MemoryConfig'; allowed: \['gate', 'heads', "),
    ],
)
def test_bad_memory_setting_raises_before_any_parameter_is_made(memory, match):
    with pytest.raises(ValueError, match=match):
        config = typed(
            ModelConfig, {"vocab_size": 20, "d_model": 16, "n_layers": 2, "memory": {"n_keys": 8, "k_dim": 8, **memory}}, "model"
        )
        config.validate()


def test_shared_table_with_other_width_is_a_v_dim_mismatch():
    table = ValueTable(64, 12, lr=1e-3, sparse=True)
    with pytest.raises(ValueError, match=r"shared value table is \(64, 12\) but layer 3 needs \(n_keys\^2=64, v_dim=16\)"):
        MemoryPlus(16, 3, MemoryConfig(n_keys=8, k_dim=8), values=table)
