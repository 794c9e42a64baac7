"""Triton value-table kernels (zoo/memory/ops/triton.py) against float64 PyTorch references.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set by
tests/conftest.py before triton is imported). With a GPU and TRITON_INTERPRET unset they run on CUDA.
"""

import os
import subprocess
import sys

import pytest
import torch

from zoo.memory.ops import reference
from zoo.memory.ops import triton as triton_ops

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.fixture(scope="module", autouse=True)
def triton_kernels():
    """Triton, in interpreter mode when there is no GPU (tests/conftest.py sets TRITON_INTERPRET before
    triton is imported); memzoo's kernels are rebuilt for this module and dropped after it."""
    pytest.importorskip("triton", reason="triton is not installed: the Triton value-table kernels are untested")
    if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1: the kernels can run nowhere here")
    triton_ops._kernels.cache_clear()
    yield
    triton_ops._kernels.cache_clear()


def bags(T: int, R: int, N: int, seed: int = 0):
    """slots (T, R) with repeats and some negative (served elsewhere, weight 0), weights (T, R) float32."""
    g = torch.Generator().manual_seed(seed)
    slots = torch.randint(0, N, (T, R), generator=g)
    weights = torch.rand(T, R, generator=g) + 0.1
    far = torch.rand(T, R, generator=g) < 0.2
    slots[far], weights[far] = -1, 0.0
    return slots, weights


def reference_read(slots, weights, table):
    """float64 loop: out[t] = sum_r weights[t, r] * table[slots[t, r]], negative slots skipped."""
    T, R = slots.shape
    out = torch.zeros(T, table.shape[1], dtype=torch.float64)
    for t in range(T):
        for r in range(R):
            if slots[t, r] >= 0:
                out[t] = out[t] + weights[t, r] * table[slots[t, r]]
    return out


def on(*xs):
    return [x.to(DEVICE) for x in xs]


def test_memzoo_imports_without_triton_and_reports_it_unavailable():
    code = (
        "import sys\n"
        "sys.modules['triton'] = None  # any import of triton now fails\n"
        "import zoo, zoo.memory.ops.triton as ops\n"
        "assert not ops.available()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [48, 200])
def test_bag_read_equals_weighted_row_sum_skipping_negative_slots(dtype, d):
    T, R, N = 21, 5, 30  # T, R, d not multiples of the blocks; d=200 spans two column blocks
    slots, weights = bags(T, R, N)
    table = torch.randn(N, d).to(dtype)
    out = triton_ops.read(*on(slots, weights, table))
    assert out.dtype == torch.float32 and out.shape == (T, d)
    expected = reference_read(slots, weights.double(), table.double())
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bag_weight_grad_equals_autograd_gradient_of_reference_read(dtype):
    T, R, N, d = 19, 3, 25, 150  # d=150: two column blocks summed in the dot product
    slots, weights = bags(T, R, N, seed=1)
    table = torch.randn(N, d).to(dtype)
    grad_out = torch.randn(T, d).to(dtype)
    w = weights.double().requires_grad_()
    (expected,) = torch.autograd.grad(reference_read(slots, w, table.double()), w, grad_out.double())
    got = triton_ops.bag_weight_grad(*on(slots, table, grad_out))
    assert got.dtype == torch.float32 and got.shape == (T, R)
    assert bool((got.cpu()[slots < 0] == 0).all())
    torch.testing.assert_close(got.cpu().double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_grad_equals_dense_index_add_of_weighted_source_rows(dtype):
    T, R, N, d = 20, 4, 12, 40
    slots, weights = bags(T, R, N, seed=2)
    slots[:, 0], weights[:, 0] = 3, 0.5  # slot 3 read > BLOCK_M times: its segment spans several steps
    source = torch.randn(T, d).to(dtype)

    flat = slots.flatten()
    order = flat.argsort()
    order = order[int((flat < 0).sum()) :]  # negative slots sort first; drop them
    unique, counts = torch.unique_consecutive(flat[order], return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    assert int(counts[unique == 3]) > triton_ops.BLOCK_M
    rows = triton_ops.rows_grad(*on(order, offsets, counts, weights.flatten()[order], source), R=R)

    hit = flat >= 0
    dense = torch.zeros(N, d, dtype=torch.float64)
    dense.index_add_(0, flat[hit], weights.flatten()[hit, None].double() * source.double().repeat_interleave(R, 0)[hit])
    assert rows.dtype == torch.float32 and rows.shape == (len(unique), d)
    torch.testing.assert_close(rows.cpu().double(), dense[unique], rtol=1e-5, atol=1e-5)
    assert set(unique.tolist()) == set(dense.abs().sum(1).nonzero().flatten().tolist())


def reference_adam_(p, m, v, rows, grad, lr, beta1, beta2, eps, step):
    """float64 loop over rows, in place."""
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    for k, i in enumerate(rows.tolist()):
        g = grad[k].double()
        m[i] = beta1 * m[i] + (1 - beta1) * g
        if v.dim() == 1:
            v[i] = beta2 * v[i] + (1 - beta2) * (g * g).mean()
        else:
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
        p[i] = p[i] - lr / bias1 * m[i] / ((v[i] / bias2).sqrt() + eps)


def adam_run(second_moment: str, dtype: torch.dtype, N: int, d: int, steps: int = 3, lr: float = 0.05):
    """Yields, per step, (the touched rows, the kernel's (p, m, v) before and after, the float64
    reference's (p, m, v) after). Rows 0 and 1 are never touched. A bfloat16 param is rounded each
    step, so the reference starts each step from the kernel's param (m, v follow their own course)."""
    g = torch.Generator().manual_seed(3)
    p0 = torch.randn(N, d, generator=g).to(dtype)
    state = (p0.clone(), torch.zeros(N, d), torch.zeros(N, d) if second_moment == "full" else torch.zeros(N))
    ref = [x.double() for x in state]
    state = on(*state)
    for step in range(1, steps + 1):
        rows = (torch.randperm(N - 2, generator=g) + 2)[: N // 2]  # unique, unsorted
        grad = torch.randn(len(rows), d, generator=g).to(dtype)
        before = [x.cpu().clone() for x in state]
        if dtype != torch.float32:
            ref[0].copy_(before[0])
        triton_ops.row_adam(*state, *on(rows, grad), lr=lr, beta1=0.9, beta2=0.99, eps=1e-8, step=step)
        reference_adam_(*ref, rows, grad, lr=lr, beta1=0.9, beta2=0.99, eps=1e-8, step=step)
        yield rows, before, [x.cpu() for x in state], ref


@pytest.mark.parametrize("second_moment", ["full", "row"])
@pytest.mark.parametrize("d", [48, 200])
def test_row_adam_equals_reference_loop_and_leaves_untouched_rows_bitwise(second_moment, d):
    N = 19  # 9 rows a step: one full block of 8 and a partial one
    for rows, before, after, ref in adam_run(second_moment, torch.float32, N, d):
        untouched = torch.ones(N, dtype=torch.bool)
        untouched[rows] = False
        for got, old, want in zip(after, before, ref):
            assert torch.equal(got[untouched], old[untouched])
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("second_moment", ["full", "row"])
def test_row_adam_on_bfloat16_param_stays_within_one_bfloat16_ulp_of_the_float64_update(second_moment):
    N, d = 13, 48
    for rows, before, (p, m, v), ref in adam_run(second_moment, torch.bfloat16, N, d):
        assert p.dtype == torch.bfloat16
        untouched = torch.ones(N, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(p[untouched], before[0][untouched])
        torch.testing.assert_close(m.double(), ref[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v.double(), ref[2], rtol=1e-5, atol=1e-6)
        # one ulp, not half: CUDA rounds float32 -> bfloat16 to nearest, Triton's interpreter truncates
        ulp = 2.0 ** (torch.floor(torch.log2(ref[0].abs().clamp_min(1e-30))) - 7)
        assert bool(((p.double() - ref[0]).abs() <= ulp).all())


def test_row_adam_rejects_moments_of_the_wrong_shape():
    p = torch.zeros(4, 8)
    with pytest.raises(ValueError, match=r"exp_avg_sq must be contiguous \(N, d\) or \(N,\)"):
        triton_ops.row_adam(
            p,
            torch.zeros(4, 8),
            torch.zeros(8),
            torch.tensor([1]),
            torch.zeros(1, 8),
            lr=0.1,
            beta1=0.9,
            beta2=0.99,
            eps=1e-8,
            step=1,
        )


def test_value_table_read_through_the_triton_kernels_equals_the_pytorch_path(monkeypatch):
    """The wiring the CUDA path uses (sorted reads -> rows_grad, weight gradient, sparse gradient),
    with the kernels forced (on CPU tensors under the interpreter), against the PyTorch path forced on
    the same inputs."""
    from zoo.memory import ValueTable, values

    torch.manual_seed(0)
    table = ValueTable(40, 12, lr=1e-2, sparse=True).to(DEVICE)
    slots, weights = on(*bags(9, 5, 40, seed=3))
    weights.requires_grad_()
    grad_out = torch.randn(9, 12, device=DEVICE)

    def run(kernels):
        monkeypatch.setattr(values, "memory_ops", lambda device, dtype: kernels)
        table.zero_grad(set_to_none=True)
        weights.grad = None
        out = table.read(slots, weights)
        out.backward(grad_out)
        return out.detach(), table.weight.grad.coalesce(), weights.grad.clone()

    ref_out, ref_grad, ref_wgrad = run(reference)
    out, grad, wgrad = run(triton_ops)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert torch.equal(grad.indices(), ref_grad.indices())
    torch.testing.assert_close(grad.values(), ref_grad.values(), rtol=1e-5, atol=1e-6)
    kept = slots >= 0  # a read served elsewhere has weight 0 and no gradient use; both paths give it 0
    torch.testing.assert_close(wgrad[kept], ref_wgrad[kept], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("second_moment", ["full", "row"])
def test_row_adam_through_the_triton_kernel_equals_the_pytorch_update(monkeypatch, second_moment):
    from zoo.memory import optim

    torch.manual_seed(0)
    tables = [torch.nn.Parameter(torch.randn(30, 6, device=DEVICE)) for _ in range(2)]
    tables[1].data.copy_(tables[0].data)
    optimizers = [optim.RowAdam([t], lr=0.05, second_moment=second_moment) for t in tables]
    backends = [reference, triton_ops]
    for _ in range(3):
        rows = torch.randperm(30)[:7].sort().values.to(DEVICE)
        grad = torch.randn(7, 6, device=DEVICE)
        for t, opt, backend in zip(tables, optimizers, backends):
            t.grad = torch.sparse_coo_tensor(rows[None], grad, t.shape, is_coalesced=True)
            monkeypatch.setattr(optim, "memory_ops", lambda device, dtype, backend=backend: backend)
            opt.step()
    torch.testing.assert_close(tables[1].detach(), tables[0].detach(), rtol=1e-5, atol=1e-6)
