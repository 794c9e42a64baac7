"""The fused memory read (``zoo.memory.fused_read``: one autograd step, a few C++ kernel calls)
against the composed read it replaces, ``ProductKeys.normalised`` + ``select`` + ``ValueTable.read``
(torch's layer / RMS norm, two autograd functions and the ops between them, also on memzoo's
kernels): same slots and weights, same output, same gradients to the query, the sub-keys and the
table's rows, with each query normalisation, in float64, float32 and under bf16 autocast; and the
layers it must leave to the composed read."""

import pytest
import torch
from helpers.scaled_close import assert_close_scaled as assert_close

from zoo.memory import MemoryConfig, fused_read, product_keys
from zoo.memory.layer import MemoryPlus
from zoo.memory.ops import cpu, memory_ops

pytestmark = pytest.mark.skipif(
    memory_ops("cpu", torch.float32) is not cpu, reason="memzoo's CPU kernels did not build here (no C++ compiler?)"
)
CONFIGS = {
    "capacity": dict(heads=1, knn=32, k_dim=64, n_keys=32, query_norm="layernorm"),
    "pkm": dict(),  # 4 heads, top-8, no query normalisation
    "temperature": dict(heads=2, knn=5, k_dim=24, n_keys=16, temperature=0.3, query_norm="rmsnorm"),
}


def layer_of(config: dict, dtype: torch.dtype) -> MemoryPlus:
    torch.manual_seed(0)
    layer = MemoryPlus(32, 0, MemoryConfig(**config, layers=[0])).to(dtype)
    with torch.no_grad():
        layer.values.weight.normal_()  # rows of unit scale: their differences show in the read
    return layer


def read_and_grads(layer: MemoryPlus, x: torch.Tensor, fused: bool, autocast: bool = False):
    """(mem(x), slots, weights, x's gradient, {parameter: gradient}) of the read alone, fused or composed."""
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        q, keys = layer.keys.projected(x)
        if fused:
            assert layer.values.fuses_read(q, keys)
            out, slots, weights = fused_read.product_key_read(q, keys, layer.values, layer.config)
        else:
            slots, weights = layer.keys.select(*layer.keys.normalised(q, keys))
            out = layer.values.read(slots.flatten(1), weights.flatten(1))
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {name: p.grad.to_dense() for name, p in layer.named_parameters() if p.grad is not None}
    for p in layer.parameters():
        p.grad = None
    return out.detach(), slots, weights.detach(), x.grad, grads


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_fused_read_equals_the_composed_read(config, dtype):
    layer = layer_of(CONFIGS[config], dtype)
    x = torch.randn(70, 32, dtype=dtype)
    out, slots, weights, grad_x, grads = read_and_grads(layer, x, fused=True)
    ref_out, ref_slots, ref_weights, ref_grad_x, ref_grads = read_and_grads(layer, x, fused=False)
    assert torch.equal(slots, ref_slots)
    assert_close(weights, ref_weights, dtype)
    assert_close(out, ref_out, dtype)
    assert_close(grad_x, ref_grad_x, dtype)
    assert grads.keys() == ref_grads.keys() == {"keys.query.weight", "keys.query.bias", "keys.sub_keys", "values.weight"}
    for name in grads:
        assert_close(grads[name], ref_grads[name], dtype, msg=name)


def test_fused_read_gives_the_table_one_sorted_row_per_slot_read():
    layer = layer_of(CONFIGS["pkm"], torch.float32)
    q, keys = layer.keys.projected(torch.randn(50, 32))
    out, slots, _ = fused_read.product_key_read(q, keys, layer.values, layer.config)
    out.sum().backward()
    grad = layer.values.weight.grad
    assert grad.is_sparse
    assert torch.equal(grad._indices()[0], slots.flatten().unique())


def test_fused_read_in_token_chunks_equals_one_chunk(monkeypatch):
    """Tokens past the search's chunk size go in several chunks: the same read and gradients."""
    layer = layer_of(CONFIGS["temperature"], torch.float64)
    x = torch.randn(45, 32, dtype=torch.float64)
    whole = read_and_grads(layer, x, fused=True)
    monkeypatch.setattr(product_keys, "SEARCH_CHUNK_ELEMENTS", 2 * 2 * 16 * 7)  # 7 tokens a chunk
    chunked = read_and_grads(layer, x, fused=True)
    for mine, ref in zip(chunked[:4], whole[:4]):
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-13)
    for name in whole[4]:
        torch.testing.assert_close(chunked[4][name], whole[4][name], rtol=1e-12, atol=1e-13)


def test_fused_read_under_bf16_autocast_equals_the_composed_read():
    """Only the query projection follows autocast (bf16); the search, weights and read stay float32."""
    layer = layer_of(CONFIGS["pkm"], torch.float32)
    x = torch.randn(60, 32)
    out, slots, weights, grad_x, grads = read_and_grads(layer, x, fused=True, autocast=True)
    ref_out, ref_slots, ref_weights, ref_grad_x, ref_grads = read_and_grads(layer, x, fused=False, autocast=True)
    assert out.dtype == weights.dtype == torch.float32
    assert torch.equal(slots, ref_slots)
    assert_close(out, ref_out, torch.float32)
    assert_close(grad_x, ref_grad_x, torch.float32)
    for name in grads:
        assert_close(grads[name], ref_grads[name], torch.float32, msg=name)


@pytest.mark.parametrize(
    "config", [dict(sparse_updates=False), dict(value_dtype="bfloat16")], ids=["dense-gradient", "bf16-table"]
)
def test_layers_the_fused_read_leaves_to_the_composed_read(config):
    layer = MemoryPlus(32, 0, MemoryConfig(**config, layers=[0]))
    q, keys = layer.keys.projected(torch.randn(5, 32))
    assert not layer.values.fuses_read(q, keys)
    layer(torch.randn(2, 5, 32)).sum().backward()  # and the layer reads all the same
    assert layer.values.weight.grad is not None


def test_fused_read_off_with_the_kernels(monkeypatch):
    layer = MemoryPlus(32, 0, MemoryConfig(layers=[0]))
    q, keys = layer.keys.projected(torch.randn(5, 32))
    monkeypatch.setenv(cpu.KERNELS_ENV, "0")
    assert not layer.values.fuses_read(q, keys)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_normalise_rows_equals_torchs_norm_and_its_gradient(norm, dtype):
    x = torch.randn(50, 24, dtype=dtype, requires_grad=True) * 3 + 1
    ref = product_keys.normalise(x, norm)
    grad = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    y, rstd = cpu.kernels().normalise_rows(x.detach(), norm, product_keys.norm_eps(norm, dtype))
    assert_close(y, ref.detach(), dtype)
    assert_close(cpu.kernels().normalise_rows_backward(grad, y, rstd, norm), ref_grad, dtype)


def test_normalise_rows_names_an_unknown_norm():
    with pytest.raises(RuntimeError, match="norm must be 'layernorm' or 'rmsnorm', got 'batchnorm'"):
        cpu.kernels().normalise_rows(torch.randn(2, 4), "batchnorm", 1e-5)


def test_product_read_names_a_table_of_the_wrong_size():
    scores = torch.randn(4, 1, 2, 8)
    with pytest.raises(RuntimeError, match=r"table must be \(n\^2, v\) = \(64, v\)"):
        cpu.kernels().product_read(scores, torch.randn(63, 4), 4, 1.0)
    with pytest.raises(RuntimeError, match="temperature must be > 0"):
        cpu.kernels().product_read(scores, torch.randn(64, 4), 4, 0.0)
