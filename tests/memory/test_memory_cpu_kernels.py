"""memzoo's C++ CPU kernels (zoo/memory/csrc/memory_cpu.cpp) against the PyTorch path they replace,
which stays the reference (``MEMZOO_CPU_KERNELS=0``): the pair search picks the same slots with the
same scores, the backward passes and rows-only Adam give the same numbers to float tolerance, and
a whole memory layer and a training step agree, in float32, float64 and under bf16 autocast."""

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from helpers.row_adam_reference import row_adam_reference_
from helpers.scaled_close import TOL, assert_close_scaled

from zoo.memory import MemoryConfig, ops
from zoo.memory.layer import MemoryPlus
from zoo.memory.ops import cpu, memory_ops, reference
from zoo.memory.optim import coalesced
from zoo.training.optim import build_optimizer, clip_grad_norm, param_groups

pytestmark = pytest.mark.skipif(
    memory_ops("cpu", torch.float32) is not cpu, reason="memzoo's CPU kernels did not build here (no C++ compiler?)"
)


def reference_pairs(scores1, scores2, knn, offset):
    """The reference's pair search over (t, n) scores (as one head)."""
    idx, halves = reference.rank_pairs(scores1[:, None], scores2[:, None], knn, offset)
    return idx[:, 0], halves[:, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n1, n2, knn, offset",
    [(256, 256, 32, 0), (32, 32, 32, 0), (91, 91, 32, 0), (32, 32, 8, 0), (700, 1000, 16, 5), (5, 7, 4, 2), (64, 64, 1, 0)],
)
def test_pair_search_picks_the_reference_slots_with_the_same_scores(dtype, n1, n2, knn, offset):
    gen = torch.Generator().manual_seed(n1 * n2 + knn)
    scores1, scores2 = torch.randn(200, n1, generator=gen, dtype=dtype), torch.randn(200, n2, generator=gen, dtype=dtype)
    idx, halves = cpu.kernels().pair_topk(scores1, scores2, knn, offset)
    ref_idx, ref_halves = reference_pairs(scores1, scores2, knn, offset)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(halves, ref_halves)


def test_pair_search_with_tied_scores_keeps_the_best_sums_in_index_order():
    """Integer-valued scores tie everywhere, where torch's top-k may pick any of the equal ones: the
    chosen sums are still the best ones (the reference's), each pair is read at its own scores, and
    no pair is chosen twice."""
    gen = torch.Generator().manual_seed(0)
    scores1, scores2 = (torch.randint(0, 4, (100, 64), generator=gen).float() for _ in range(2))
    idx, halves = cpu.kernels().pair_topk(scores1, scores2, 16, 0)
    _, ref_halves = reference_pairs(scores1, scores2, 16, 0)
    assert torch.equal(halves.sum(1), ref_halves.sum(1))
    assert torch.equal(scores1.gather(1, idx[:, 0]), halves[:, 0]) and torch.equal(scores2.gather(1, idx[:, 1]), halves[:, 1])
    slots = idx[:, 0] * 64 + idx[:, 1]
    assert all(len(set(row.tolist())) == 16 for row in slots)


def stable_pairs(scores1, scores2, knn):
    """The documented order, by stable sorts: each half's best knn (ties in index order), then the
    pairs of sorted positions (a, b) with (a + 1)(b + 1) <= knn, a-major, and the knn best sums
    among them (ties in that order)."""
    v1, i1 = scores1.sort(dim=-1, descending=True, stable=True)
    v2, i2 = scores2.sort(dim=-1, descending=True, stable=True)
    pairs = [(a, b) for a in range(knn) for b in range(knn) if (a + 1) * (b + 1) <= knn]
    first, second = torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])
    pick = (v1[:, first] + v2[:, second]).sort(dim=-1, descending=True, stable=True).indices[:, :knn]
    a, b = first[pick], second[pick]
    return torch.stack([i1.gather(1, a), i2.gather(1, b)], 1), torch.stack([v1.gather(1, a), v2.gather(1, b)], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_search_breaks_ties_in_index_order(dtype):
    """Scores from {0, 1, 2, 3} tie within and across every vector of eight: the kernel picks
    exactly the stable order's slots."""
    gen = torch.Generator().manual_seed(3)
    scores1, scores2 = (torch.randint(0, 4, (100, 64), generator=gen).to(dtype) for _ in range(2))
    idx, halves = cpu.kernels().pair_topk(scores1, scores2, 16, 0)
    ref_idx, ref_halves = stable_pairs(scores1, scores2, 16)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(halves, ref_halves)


def test_pair_search_refuses_nan_scores():
    scores = torch.randn(4, 64)
    scores[2, 7] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        cpu.kernels().pair_topk(scores, torch.randn(4, 64), 8, 0)


def test_pair_search_refuses_more_pairs_than_there_are():
    with pytest.raises(RuntimeError, match="knn=50"):
        cpu.kernels().pair_topk(torch.randn(3, 5), torch.randn(3, 7), 50, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n_slots, width, per_bag",
    [(300, 24, 16), (5000, 64, 13)],
    ids=["one-radix-pass-runtime-width", "two-radix-passes-unrolled-width-ragged-bag"],
)
def test_bag_backward_equals_the_reference(dtype, n_slots, width, per_bag):
    """Weights' gradient and the summed rows per slot, with repeated slots and negative ones (reads
    another shard serves), into a given buffer: a width the kernel unrolls (64) and one it does not,
    slots sorted in one radix pass (< 2^11) and two, bags of a multiple of four reads and not."""
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(n_slots, width, generator=gen, dtype=dtype)
    slots = torch.randint(-20, n_slots, (50, per_bag), generator=gen)
    weights = torch.rand(50, per_bag, generator=gen, dtype=dtype).masked_fill(slots < 0, 0.0)
    grad_out = torch.randn(50, width, generator=gen, dtype=dtype)
    buffer = torch.full((slots.numel(), width), float("nan"), dtype=dtype)
    grad_weights, unique, rows = cpu.kernels().bag_backward(table, slots, weights, grad_out, buffer)
    reads = reference.sorted_reads(slots)
    ref_unique, ref_rows = reference.sum_rows_by_slot(slots, weights, grad_out, reads)
    assert torch.equal(unique, ref_unique)
    torch.testing.assert_close(rows, ref_rows, **TOL[dtype])
    assert rows.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(grad_weights, reference.bag_weight_grad(slots, table, grad_out, reads), **TOL[dtype])
    assert torch.all(grad_weights[slots < 0] == 0)


def test_bag_backward_refuses_a_slot_past_the_table():
    slots = torch.tensor([[0, 10]])
    with pytest.raises(RuntimeError, match="slot 10 outside the table's 10 rows"):
        cpu.kernels().bag_backward(torch.randn(10, 4), slots, torch.rand(1, 2), torch.randn(1, 4), None)


@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_adam_equals_the_reference_over_steps(rowwise, dtype):
    gen = torch.Generator().manual_seed(2)
    param = torch.randn(500, 40, generator=gen, dtype=dtype)
    states = [(torch.zeros_like(param), torch.zeros(500 if rowwise else (500, 40), dtype=dtype)) for _ in range(2)]
    ref_param = param.clone()
    for step in range(1, 6):
        rows = torch.randperm(500, generator=gen)[:120].sort().values
        grad = torch.randn(120, 40, generator=gen, dtype=dtype)
        cpu.kernels().row_adam(param, *states[0], rows, grad, 1e-2, 0.9, 0.95, 1e-8, step)
        row_adam_reference_(ref_param, *states[1], rows, grad, 1e-2, 0.9, 0.95, 1e-8, step)
        torch.testing.assert_close(param, ref_param, **TOL[dtype])
        for mine, ref in zip(states[0], states[1]):
            torch.testing.assert_close(mine, ref, **TOL[dtype])


def test_row_adam_refuses_rows_past_the_table():
    param = torch.zeros(4, 2)
    with pytest.raises(RuntimeError, match="row 4 outside"):
        moments = torch.zeros(4, 2), torch.zeros(4, 2)
        cpu.kernels().row_adam(param, *moments, torch.tensor([4]), torch.ones(1, 2), 0.1, 0.9, 0.99, 1e-8, 1)


def layer_outputs_and_grads(layer, x, autocast):
    x = x.clone().requires_grad_(True)
    layer.usage.start()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
    layer.usage.stop()
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {name: p.grad.to_dense() if p.grad.is_sparse else p.grad for name, p in layer.named_parameters()}
    return out.detach(), x.grad, grads


def twin(config, dtype):
    """The same layer each call (a deepcopy would drop the parameters' optimizer tags)."""
    torch.manual_seed(0)
    return MemoryPlus(32, 0, config).to(dtype)


@pytest.mark.parametrize(
    "dtype, autocast, config",
    [
        (torch.float32, False, dict(heads=1, knn=32, k_dim=64, n_keys=64, query_norm="layernorm")),
        (torch.float32, False, dict(heads=2, knn=8, k_dim=32, n_keys=24, second_moment="row")),
        (torch.float64, False, dict(heads=2, knn=8, k_dim=32, n_keys=24)),
        (torch.float32, True, dict(heads=4, knn=8, k_dim=32, n_keys=32)),
        (torch.float32, False, dict(heads=1, knn=8, k_dim=24, n_keys=16)),
    ],
    ids=["capacity-float32", "two-heads-float32", "float64", "bf16-autocast", "width-not-unrolled"],
)
def test_memory_layer_with_kernels_equals_the_pytorch_path(monkeypatch, dtype, autocast, config):
    """Same slots read as often; outputs and gradients to float tolerance (the kernels' fused read,
    ``fused_read``, sums in its own order); then optimizer steps (clipped, AdamW + RowAdam) keep the
    two layers' parameters together."""
    layer, reference = (twin(MemoryConfig(**config, layers=[0]), dtype) for _ in range(2))
    x = torch.randn(3, 20, 32, dtype=dtype)
    out, grad_x, grads = layer_outputs_and_grads(layer, x, autocast)
    monkeypatch.setenv(cpu.KERNELS_ENV, "0")
    ref_out, ref_grad_x, ref_grads = layer_outputs_and_grads(reference, x, autocast)
    monkeypatch.delenv(cpu.KERNELS_ENV)
    assert torch.equal(layer.usage.counts, reference.usage.counts)
    tol = TOL[dtype] if not autocast else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(grad_x, ref_grad_x, **tol)
    for name in grads:  # the sub-keys' gradient sums many reads: to float tolerance of its own scale
        if autocast:
            torch.testing.assert_close(grads[name], ref_grads[name], **tol, msg=name)
        else:
            assert_close_scaled(grads[name], ref_grads[name], dtype, msg=name)

    optimizers = [build_optimizer(param_groups(m, lr=1e-2, weight_decay=0.1)) for m in (layer, reference)]
    for step in range(3):
        for use_kernels, model, opt in zip((True, False), (layer, reference), optimizers):
            monkeypatch.setenv(cpu.KERNELS_ENV, "1" if use_kernels else "0")
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(x + step).float().square().mean()
            loss.backward()
            clip_grad_norm(list(model.parameters()), 1.0)
            opt.step()
    # Adam divides by sqrt(v): a gradient element near 0 turns its float32 rounding into a step that
    # can differ by a fraction of lr (1e-2), so the parameters agree to lr * 1e-3 in absolute terms
    step_tol = dict(tol, atol=max(tol["atol"], 1e-5)) if dtype == torch.float32 else tol
    for (name, p), q in zip(layer.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, **step_tol, msg=name)


def test_a_failed_build_warns_once_and_the_memory_runs_its_pytorch_path(monkeypatch):
    """Without a compiler (the build raises) the layer still trains, on the PyTorch path."""
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    cpu.built.cache_clear()
    ops._choose.cache_clear()
    try:
        with pytest.warns(UserWarning, match="did not build .*no C\\+\\+ compiler found"):
            assert memory_ops("cpu", torch.float32) is reference
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the failure is remembered: no second warning
            layer = MemoryPlus(16, 0, MemoryConfig(heads=1, knn=4, k_dim=16, n_keys=8, layers=[0]))
            layer(torch.randn(2, 5, 16)).sum().backward()
        assert layer.values.weight.grad is not None
    finally:
        cpu.built.cache_clear()
        ops._choose.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (20000, 64), (5, 16384 + 3)])
def test_squared_norm_equals_an_exact_sum(dtype, shape):
    """Accumulated in float64 over fixed blocks: math.fsum of the squares (exact, then rounded once)
    to float64 tolerance, also for float32 input."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    exact = math.fsum(v * v for v in x.double().flatten().tolist())
    total = cpu.kernels().squared_norm(x)
    assert total.dtype == torch.float64 and total.dim() == 0
    assert total.item() == pytest.approx(exact, rel=1e-13)


def row_gradient_cases():
    """Sparse (rows, 3) gradients of an (8, 3) table, none flagged coalesced: rows ascending,
    unsorted, with a repeated row, and a 2-D sparse index (not a row gradient)."""
    gen = torch.Generator().manual_seed(6)
    cases = {
        "ascending": [0, 2, 3, 7],
        "unsorted": [5, 1, 6],
        "repeated": [1, 4, 4, 6],
    }
    grads = {
        name: torch.sparse_coo_tensor(torch.tensor([rows]), torch.randn(len(rows), 3, generator=gen), (8, 3))
        for name, rows in cases.items()
    }
    grads["2-d index"] = torch.sparse_coo_tensor(torch.tensor([[2, 0], [1, 1]]), torch.randn(2, generator=gen), (8, 3))
    return grads


@pytest.mark.parametrize("name", ["ascending", "unsorted", "repeated", "2-d index"])
def test_as_coalesced_flags_ascending_rows_and_coalesces_the_rest(name):
    """Against torch's coalesce(): the same tensor, flagged; ascending rows keep their storage (no
    copy), any other gradient is coalesce()'s result (duplicates summed)."""
    grad = row_gradient_cases()[name]
    assert not grad.is_coalesced()
    out = cpu.kernels().as_coalesced(grad)
    ref = grad.coalesce()
    assert out.is_coalesced()
    assert torch.equal(out._indices(), ref._indices()) and torch.equal(out._values(), ref._values())
    if name == "ascending":
        assert out._values().data_ptr() == grad._values().data_ptr()


def test_as_coalesced_returns_a_flagged_gradient_itself_and_refuses_a_dense_one():
    grad = row_gradient_cases()["unsorted"].coalesce()
    assert cpu.kernels().as_coalesced(grad) is grad
    with pytest.raises(RuntimeError, match="as_coalesced: grad must be a sparse COO CPU tensor"):
        cpu.kernels().as_coalesced(torch.zeros(8, 3))


@pytest.mark.parametrize("name", ["ascending", "unsorted", "repeated", "2-d index"])
def test_coalesced_with_kernels_equals_the_pytorch_path(monkeypatch, name):
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv(cpu.KERNELS_ENV, flag)
        out = coalesced(row_gradient_cases()[name])
        results.append((out.is_coalesced(), out._indices(), out._values()))
    (flag_k, rows_k, values_k), (flag_ref, rows_ref, values_ref) = results
    assert flag_k and flag_ref and torch.equal(rows_k, rows_ref) and torch.equal(values_k, values_ref)


def test_clipping_with_kernels_scales_the_gradients_as_the_pytorch_path(monkeypatch):
    """A dense and a sparse (row) gradient clipped together: the same norm and the same scaled gradients."""
    gen = torch.Generator().manual_seed(4)
    clipped = []
    for flag in ("1", "0"):
        monkeypatch.setenv(cpu.KERNELS_ENV, flag)
        dense, table = torch.nn.Parameter(torch.zeros(300, 70)), torch.nn.Parameter(torch.zeros(1000, 64))
        gen.manual_seed(4)
        dense.grad = torch.randn(300, 70, generator=gen)
        rows = torch.randperm(1000, generator=gen)[:400].sort().values
        grad_rows = torch.randn(400, 64, generator=gen)
        table.grad = torch.sparse_coo_tensor(rows[None], grad_rows, table.shape, check_invariants=True).coalesce()
        total = clip_grad_norm([dense, table], 1.0)
        clipped.append((total, dense.grad, table.grad.to_dense()))
    for mine, ref in zip(*clipped):
        assert torch.equal(mine, ref)


def test_clipping_dense_gradients_never_asks_for_the_kernels(monkeypatch):
    """A model without memory has only dense gradients: clipping them keeps ``vector_norm`` (the
    numbers of before, bit for bit) and never builds memzoo's kernels."""

    def no_build(*args):
        raise AssertionError("clipping dense gradients asked for a memory backend")

    monkeypatch.setattr("zoo.training.optim.memory_ops", no_build)
    param = torch.nn.Parameter(torch.zeros(50, 8))
    param.grad = torch.randn(50, 8, generator=torch.Generator().manual_seed(5))
    grad, norm = param.grad.clone(), torch.linalg.vector_norm(param.grad, dtype=torch.float64)
    total = clip_grad_norm([param], 1.0)
    torch.testing.assert_close(total, norm.float())
    torch.testing.assert_close(param.grad, grad * (1.0 / (norm + 1e-6)).float())


def test_results_do_not_depend_on_the_thread_count():
    """Each op splits rows (or key / table rows) between threads so that every output element is
    summed in one fixed order: one thread and two give the same bits."""
    gen = torch.Generator().manual_seed(6)
    scores1, scores2 = torch.randn(300, 256, generator=gen), torch.randn(300, 256, generator=gen)
    q, keys = torch.randn(300, 32, generator=gen), torch.randn(4 * 64, 32, generator=gen)
    idx, grad = torch.randint(0, 64, (300, 16), generator=gen), torch.randn(300, 16, generator=gen)
    table, slots = torch.randn(500, 24, generator=gen), torch.randint(0, 500, (300, 16), generator=gen)
    weights, grad_out = torch.rand(300, 16, generator=gen), torch.randn(300, 24, generator=gen)
    rows, row_grad = torch.randperm(500, generator=gen)[:200].sort().values, torch.randn(200, 24, generator=gen)
    norm_input = torch.randn(100_000, generator=gen)
    read_q, read_keys = torch.randn(300, 2, 2, 16, generator=gen), torch.randn(2, 2, 24, 16, generator=gen)
    read_table, read_grad = torch.randn(24 * 24, 40, generator=gen), torch.randn(300, 40, generator=gen)

    def run_all():
        scores = torch.einsum("thsd,hsnd->thsn", read_q, read_keys)
        read = cpu.kernels().product_read(scores, read_table, 8, 0.5)
        read_back = cpu.kernels().product_read_backward(
            read_q, read_keys, read_table, read[3], read[1], read[2], read_grad, 0.5, None
        )
        param, moments = table.clone(), (torch.zeros_like(table), torch.zeros_like(table))
        cpu.kernels().row_adam(param, *moments, rows, row_grad, 1e-2, 0.9, 0.95, 1e-8, 1)
        return [
            *cpu.kernels().pair_topk(scores1, scores2, 32, 0),
            *cpu.kernels().selected_scores_backward(q, keys, idx, grad, 64),
            *cpu.kernels().bag_backward(table, slots, weights, grad_out, None),
            param,
            *moments,
            cpu.kernels().squared_norm(norm_input),
            *read,
            *read_back,
        ]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run_all()
        torch.set_num_threads(2)
        double = run_all()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(single, double))


BASELINE_CHECK = """
import torch
from zoo.memory.ops import cpu, memory_ops
from zoo.memory.ops.reference import best_pairs
assert cpu._instruction_set()[0] == "baseline" and memory_ops("cpu", torch.float32) is cpu
gen = torch.Generator().manual_seed(7)
for n1, n2, knn in [(256, 256, 32), (91, 91, 32), (5, 7, 4)]:
    s1, s2 = torch.randn(100, n1, generator=gen), torch.randn(100, n2, generator=gen)
    idx, halves = cpu.kernels().pair_topk(s1, s2, knn, 0)
    top1, i1 = s1.topk(min(knn, n1), dim=-1)
    top2, i2 = s2.topk(min(knn, n2), dim=-1)
    ref_idx, ref_halves = best_pairs(top1, i1, top2, i2, knn)
    assert torch.equal(idx, ref_idx) and torch.equal(halves, ref_halves), (n1, n2, knn)
print("baseline ok")
"""


def test_the_baseline_build_picks_the_reference_slots():
    """The build a CPU without AVX2 gets (scalar compaction instead of AVX2 bit masks), compiled and
    run in its own process (one build per process): the same slots and scores as the reference."""
    env = {**os.environ, cpu.KERNELS_ENV: "baseline"}
    done = subprocess.run([sys.executable, "-c", BASELINE_CHECK], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "baseline ok" in done.stdout, done.stderr[-3000:]
