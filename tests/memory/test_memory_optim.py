"""Sparse value updates: rows-only Adam, clipping of sparse gradients, checkpointable optimizer state."""

import io

import pytest
import torch

from zoo import ModelConfig, build_model
from zoo.memory import VALUE_GROUP, MemoryConfig
from zoo.memory.optim import DenseSparseAdam, RowAdam
from zoo.training.optim import build_optimizer, clip_grad_norm, param_groups


def memory_model(sparse: bool, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(
        dict(
            vocab_size=24,
            d_model=16,
            n_layers=2,
            mixer={"attention": {"num_heads": 2}},
            memory=dict(n_keys=16, heads=1, knn=2, k_dim=8, layers=[1], sparse_updates=sparse, value_lr=1e-2),
        )
    )


def values_of(model):
    return model.blocks[1].channel.values.weight


def loss_of(model, tokens):
    return model(tokens).pow(2).mean()


def test_value_group_has_own_lr_and_no_weight_decay():
    groups = {g["name"]: g for g in param_groups(memory_model(True), lr=3e-3, weight_decay=0.1)}
    assert groups[VALUE_GROUP]["lr"] == 1e-2 and groups[VALUE_GROUP]["weight_decay"] == 0.0
    assert groups[VALUE_GROUP]["sparse"] is True
    with pytest.raises(
        ValueError,
        match=r"group_lr names parameter group\(s\) \['memory_values'\] whose parameters set "
        r"their own learning rate .*memory.value_lr",
    ):
        param_groups(memory_model(True), 3e-3, 0.1, group_lr={VALUE_GROUP: 5e-4})  # one knob: memory.value_lr
    with pytest.raises(ValueError, match=r"group_lr names parameter group\(s\) \['memroy_values'\]"):
        param_groups(memory_model(True), 3e-3, 0.1, group_lr={"memroy_values": 1.0})


@pytest.mark.parametrize("n_keys,expected", [(32, 1e-3), (64, 2e-3), (256, 8e-3)])
def test_value_lr_defaults_to_1e_3_times_n_keys_over_32(n_keys, expected):
    model = build_model(
        dict(vocab_size=24, d_model=16, n_layers=2, memory=dict(n_keys=n_keys, heads=1, knn=2, k_dim=8, layers=[1]))
    )
    groups = {g["name"]: g for g in param_groups(model, lr=3e-3, weight_decay=0.1)}
    assert groups[VALUE_GROUP]["lr"] == pytest.approx(expected)
    assert MemoryConfig(n_keys=n_keys, value_lr=0.02).resolved_value_lr() == 0.02  # a set value is kept


def test_sparse_step_changes_only_the_rows_read():
    model = memory_model(True)
    opt = build_optimizer(param_groups(model, lr=1e-2, weight_decay=0.1))
    assert isinstance(opt, DenseSparseAdam)
    before = values_of(model).detach().clone()
    tokens = torch.randint(0, 24, (2, 3))
    loss_of(model, tokens).backward()
    grad = values_of(model).grad
    assert grad.is_sparse
    read = torch.unique(grad.coalesce().indices()[0])
    assert 0 < read.numel() < 256
    opt.step()
    after = values_of(model).detach()
    changed = (after != before).any(dim=1).nonzero().flatten()
    assert torch.equal(changed, read)


def test_first_sparse_step_equals_dense_adam_step():
    sparse_model, dense_model = memory_model(True), memory_model(False)
    tokens = torch.randint(0, 24, (4, 6))
    for model in (sparse_model, dense_model):
        opt = build_optimizer(param_groups(model, lr=1e-2, weight_decay=0.1))
        loss_of(model, tokens).backward()
        opt.step()
    torch.testing.assert_close(values_of(sparse_model), values_of(dense_model), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(sparse_model.named_parameters(), dense_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_clipping_sparse_gradients_equals_clipping_their_dense_form():
    sparse_model, dense_model = memory_model(True), memory_model(False)
    tokens = torch.randint(0, 24, (4, 6))
    for model in (sparse_model, dense_model):
        (100 * loss_of(model, tokens)).backward()
    total = clip_grad_norm(list(sparse_model.parameters()), 0.5)
    ref_total = torch.nn.utils.clip_grad_norm_(list(dense_model.parameters()), 0.5)
    torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=0)
    assert total > 0.5
    for a, b in zip(sparse_model.parameters(), dense_model.parameters()):
        got = a.grad.to_dense() if a.grad.is_sparse else a.grad
        torch.testing.assert_close(got, b.grad, rtol=1e-5, atol=1e-7)


def test_optimizer_state_round_trips_through_a_checkpoint():
    def run(resume: bool):
        model = memory_model(True)
        opt = build_optimizer(param_groups(model, lr=1e-2, weight_decay=0.1))
        gen = torch.Generator().manual_seed(1)
        for step in range(4):
            if resume and step == 2:
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
                buf.seek(0)
                state = torch.load(buf, weights_only=True)
                model = memory_model(True, seed=99)
                model.load_state_dict(state["model"])
                opt = build_optimizer(param_groups(model, lr=1e-2, weight_decay=0.1))
                opt.load_state_dict(state["opt"])
            opt.zero_grad()
            loss_of(model, torch.randint(0, 24, (2, 5), generator=gen)).backward()
            opt.step()
        return model

    straight, resumed = run(False), run(True)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_row_adam_equals_a_per_row_lazy_adam_loop():
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(6, 3, generator=gen, dtype=torch.float64))
    ref = table.detach().clone()
    m, v = torch.zeros_like(ref), torch.zeros_like(ref)
    opt = RowAdam([table], lr=0.1, betas=(0.8, 0.9), eps=1e-8)
    for step, rows in enumerate([[0, 2, 2], [2, 5], [1]], start=1):
        idx = torch.tensor(rows)
        vals = torch.randn(len(rows), 3, generator=gen, dtype=torch.float64)
        table.grad = torch.sparse_coo_tensor(idx[None], vals, table.shape, check_invariants=True)  # duplicates sum
        opt.step()
        dense = torch.zeros_like(ref).index_add_(0, idx, vals)
        for r in sorted(set(rows)):
            m[r] = 0.8 * m[r] + 0.2 * dense[r]
            v[r] = 0.9 * v[r] + 0.1 * dense[r] ** 2
            ref[r] -= 0.1 / (1 - 0.8**step) * m[r] / ((v[r] / (1 - 0.9**step)).sqrt() + 1e-8)
        torch.testing.assert_close(table.detach(), ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(table.detach()[[3, 4]], ref[[3, 4]])


def test_row_wise_second_moment_equals_a_per_row_loop_with_one_v_per_row():
    gen = torch.Generator().manual_seed(1)
    table = torch.nn.Parameter(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    ref = table.detach().clone()
    m, v = torch.zeros_like(ref), torch.zeros(6, dtype=torch.float64)
    opt = RowAdam([table], lr=0.1, betas=(0.8, 0.9), eps=1e-8, second_moment="row")
    for step, rows in enumerate([[0, 2, 2], [2, 5], [1, 5]], start=1):
        idx = torch.tensor(rows)
        vals = torch.randn(len(rows), 4, generator=gen, dtype=torch.float64)
        table.grad = torch.sparse_coo_tensor(idx[None], vals, table.shape, check_invariants=True)
        opt.step()
        dense = torch.zeros_like(ref).index_add_(0, idx, vals)
        for r in sorted(set(rows)):
            m[r] = 0.8 * m[r] + 0.2 * dense[r]
            v[r] = 0.9 * v[r] + 0.1 * (dense[r] ** 2).mean()
            ref[r] -= 0.1 / (1 - 0.8**step) * m[r] / ((v[r] / (1 - 0.9**step)).sqrt() + 1e-8)
        torch.testing.assert_close(table.detach(), ref, rtol=1e-12, atol=1e-12)
    assert opt.state[table]["exp_avg_sq"].shape == (6,)
    assert torch.equal(table.detach()[[3, 4]], ref[[3, 4]])


def test_memory_second_moment_row_reaches_the_value_optimizer():
    memory = dict(n_keys=4, heads=1, knn=2, k_dim=8, layers=[0], second_moment="row")
    model = build_model(ModelConfig(vocab_size=8, d_model=8, n_layers=1, memory=MemoryConfig(**memory)))
    optimizer = build_optimizer(param_groups(model, lr=1e-3, weight_decay=0.1))
    model(torch.randint(0, 8, (2, 5))).sum().backward()
    optimizer.step()
    table = model.blocks[0].channel.values.weight
    assert optimizer.sparse.state[table]["exp_avg_sq"].shape == (16,)
    assert optimizer.sparse.state[table]["exp_avg"].shape == (16, 8)


def test_row_adam_refuses_an_unknown_second_moment_layout():
    with pytest.raises(ValueError, match=r"second_moment='diag'; allowed: \['full', 'row'\]"):
        RowAdam([torch.nn.Parameter(torch.zeros(2, 2))], second_moment="diag")


def test_clipping_leaves_gradients_within_the_norm_untouched_on_cpu():
    """Within max_norm nothing is scaled: the gradients (the sparse rows' values too) are the same
    tensors with the same contents, never written (their version counters do not move), and the
    returned norm is the dense reference's."""
    sparse_model, dense_model = memory_model(True), memory_model(False)
    tokens = torch.randint(0, 24, (4, 6))
    for model in (sparse_model, dense_model):
        loss_of(model, tokens).backward()
    params = list(sparse_model.parameters())
    ref_total = torch.nn.utils.clip_grad_norm_(list(dense_model.parameters()), 1e6)
    coalesced_first = clip_grad_norm(params, 1e6)  # coalesces the sparse gradient in place (a new tensor)
    before = [(p.grad.clone(), p.grad._version) for p in params if p.grad is not None]
    total = clip_grad_norm(params, 1e6)
    torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=0)
    torch.testing.assert_close(total, coalesced_first, rtol=0, atol=0)
    after = [p.grad for p in params if p.grad is not None]
    for (copy, version), grad in zip(before, after):
        assert grad._version == version
        assert torch.equal(grad.to_dense() if grad.is_sparse else grad, copy.to_dense() if copy.is_sparse else copy)


def test_clipping_a_non_finite_norm_scales_as_torch_does():
    """A NaN gradient norm gives a NaN scale, which still multiplies every gradient, as torch's."""
    ours, theirs = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    for p in (ours, theirs):
        p.grad = torch.tensor([1.0, float("nan"), 2.0])
    clip_grad_norm([ours], 1.0)
    torch.nn.utils.clip_grad_norm_([theirs], 1.0)
    assert torch.equal(ours.grad.isnan(), theirs.grad.isnan()) and bool(ours.grad.isnan().all())
