"""The memory's precision policy: under bf16 / fp16 autocast the layer equals the float32 layer within
low-precision tolerance (search, scores and softmax stay float32), a bfloat16 value table reads in
float32, and every backbone with memory trains with bf16-mixed precision."""

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from zoo import ModelConfig, build_model
from zoo.memory import MemoryConfig, MemoryPlus, ValueTable
from zoo.training.optim import build_optimizer, clip_grad_norm, param_groups
from zoo.training.train import train

D_MODEL = 32


def layer_and_input(**overrides):
    torch.manual_seed(0)
    cfg = MemoryConfig(n_keys=16, heads=2, knn=4, k_dim=16, v_dim=24, layers=[0], **overrides)
    return MemoryPlus(D_MODEL, 0, cfg), torch.randn(2, 20, D_MODEL)


def outputs_and_grads(layer, x, autocast_dtype=None):
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        slots, weights = layer.keys(x.flatten(0, 1), layer.values.search)
        out = layer(x)
    out.float().square().sum().backward()
    grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).float() for n, p in layer.named_parameters()}
    out = out.detach()
    return slots, weights, out.float(), grads


def recording(search, found):
    """``search`` that also appends the sub-key indices it returns to ``found``."""

    def run(q, keys, knn):
        idx, halves = search(q, keys, knn)
        found.append(idx)
        return idx, halves

    return run


def read_through(layer, search):
    """``layer`` searching by ``search`` in the composed read (the fused read searches in its kernel)."""
    layer.values.search = search
    layer.values.fuses_read = lambda q, keys: False


def pinned(idx):
    """A search that returns the pairs ``idx`` (T, H, 2, k), scored in the caller's precision."""

    def run(q, keys, knn):
        heads = torch.arange(keys.shape[0]).view(1, -1, 1, 1)
        halves_axis = torch.arange(2).view(1, 1, -1, 1)
        chosen = keys[heads, halves_axis, idx]  # (T, H, 2, k, d)
        return idx, (chosen * q.unsqueeze(3)).sum(-1)

    return run


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_memory_under_autocast_equals_float32_within_low_precision_tolerance(dtype):
    layer, x = layer_and_input()
    search = layer.values.search
    ref_slots = outputs_and_grads(layer, x)[0]
    found = []
    read_through(layer, recording(search, found))
    slots, weights, out, grads = outputs_and_grads(layer, x, dtype)
    # only the query projection runs in low precision: it may flip a near-tie, rarely
    same = (slots.sort(-1).values == ref_slots.sort(-1).values).all(-1)
    assert same.float().mean() >= 0.9, same
    assert weights.dtype == torch.float32 and out.dtype == torch.float32
    # the same pairs in float32 (the selection pinned to the one autocast made)
    read_through(layer, pinned(found[0]))
    _, ref_weights, ref_out, ref_grads = outputs_and_grads(layer, x)
    torch.testing.assert_close(weights, ref_weights, rtol=0.05, atol=0.02)
    torch.testing.assert_close(out, ref_out, rtol=0.05, atol=0.02 * ref_out.abs().max().item())
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=0.05, atol=0.03 * ref.abs().max().item(), msg=name)


def test_bfloat16_value_table_reads_in_float32_and_keeps_float32_moments():
    table = ValueTable(64, 12, lr=1e-2, sparse=True, dtype=torch.bfloat16)
    reference = table.weight.detach().double()
    slots = torch.randint(0, 64, (10, 6))
    weights = torch.softmax(torch.randn(10, 6), -1)
    out = table.read(slots, weights)
    assert out.dtype == torch.float32
    expected = (weights.double().unsqueeze(-1) * reference[slots]).sum(1)
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)  # bf16 weights on CPU
    out.sum().backward()
    assert table.weight.grad.is_sparse and table.weight.grad.dtype == torch.bfloat16
    optimizer = build_optimizer(param_groups(table, lr=1e-2, weight_decay=0.0))
    optimizer.step()
    state = optimizer.sparse.state[table.weight]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    moved = (table.weight.detach().double() - reference).abs().sum(1) > 0
    assert torch.equal(moved, torch.zeros(64, dtype=torch.bool).index_fill_(0, slots.flatten(), True))


@pytest.mark.parametrize("field, value", [("value_dtype", "bfloat16"), ("second_moment", "row")])
def test_low_memory_value_options_need_sparse_updates(field, value):
    with pytest.raises(ValueError, match=rf"memory.{field}='{value}' needs memory.sparse_updates=true"):
        MemoryConfig(sparse_updates=False, **{field: value}).validate(D_MODEL)


@pytest.mark.parametrize("field, value", [("value_dtype", "float16"), ("second_moment", "diag")])
def test_unknown_precision_option_is_refused_with_the_allowed_values(field, value):
    with pytest.raises(ValueError, match=rf"memory.{field}='{value}'; allowed"):
        MemoryConfig(**{field: value}).validate(D_MODEL)


@pytest.mark.parametrize(
    "backbone, value_dtype, precision",
    [(b, "float32", "bf16-mixed") for b in ("transformer", "mamba", "mamba2", "gla", "gated_deltanet", "hybrid", "hyena")]
    + [("transformer", "bfloat16", "bf16-mixed")],
)
def test_every_backbone_with_memory_trains_in_mixed_precision(backbone, value_dtype, precision, tmp_path):
    overrides = [
        f"backbone={backbone}",
        "memory=pkm",
        f"memory.value_dtype={value_dtype}",
        f"trainer.precision={precision}",
        "backbone.d_model=32",
        "backbone.n_layers=2",
        "memory.layers=[1]",
        "task.num_train=128",
        "task.num_test=32",
        "task.batch_size=16",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "optim.warmup_steps=1",
    ]
    if backbone == "hybrid":
        overrides.remove("backbone.n_layers=2")
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = train(cfg, tmp_path)
    assert metrics["steps"] == 4
    assert torch.isfinite(torch.tensor(metrics["test"]["test/loss"]))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_fp16_autocast_with_a_grad_scaler_learns_a_batch_with_sparse_value_gradients():
    """fp16's recipe (autocast + loss scaling, which unscales the sparse value gradients) on CPU;
    Lightning runs 16-mixed only on CUDA, where the same GradScaler does the same."""
    torch.manual_seed(0)
    memory = MemoryConfig(n_keys=8, heads=2, knn=4, k_dim=16, layers=[1], value_lr=3e-2)
    model = build_model(ModelConfig(vocab_size=16, d_model=32, n_layers=2, pattern="A", memory=memory))
    optimizer = build_optimizer(param_groups(model, lr=3e-3, weight_decay=0.0))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    inputs = torch.randint(0, 16, (8, 12))
    losses = []
    for _ in range(30):
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), inputs.roll(-1, 1).flatten())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        assert model.blocks[1].channel.values.weight.grad.is_sparse
        clip_grad_norm(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
