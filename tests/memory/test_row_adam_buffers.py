"""The rows-only Adam update with reused buffers (issue 29) equals the update it replaced: the same
moments and rows bit for bit in float32, to bfloat16 rounding for a bfloat16 table, over several steps,
chunks and both second-moment layouts; untouched rows never move."""

import pytest
import torch
from helpers.row_adam_reference import row_adam_reference_

from zoo.memory import optim
from zoo.memory.ops import reference
from zoo.memory.workspace import Workspace


def _states(n_rows: int, width: int, rowwise: bool, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    param = torch.randn(n_rows, width, generator=gen).to(dtype)
    exp_avg = torch.randn(n_rows, width, generator=gen) * 0.1
    exp_avg_sq = torch.rand((n_rows,) if rowwise else (n_rows, width), generator=gen) * 0.01
    return param, exp_avg, exp_avg_sq


@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_elements", [reference.ROW_CHUNK_ELEMENTS, 7 * 16])  # one chunk; many, the last partial
def test_row_update_equals_the_reference_over_steps(monkeypatch, rowwise, dtype, chunk_elements):
    monkeypatch.setattr(reference, "ROW_CHUNK_ELEMENTS", chunk_elements)
    ours, ref = _states(300, 16, rowwise, dtype), _states(300, 16, rowwise, dtype)
    workspace = Workspace()
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 5):
        rows = torch.randperm(300, generator=gen)[:90].sort().values
        grad = torch.randn(90, 16, generator=gen)
        reference.row_adam(*ours, rows, grad, 1e-2, 0.9, 0.999, 1e-8, step, workspace=workspace)
        row_adam_reference_(*ref, rows, grad, 1e-2, 0.9, 0.999, 1e-8, step)
        for got, want in zip(ours, ref):
            assert torch.equal(got, want), f"step {step}: {(got.float() - want.float()).abs().max()}"
    assert len(workspace.buffers) <= 4  # reused, not one per step


def test_rows_not_in_the_gradient_are_left_alone():
    param, exp_avg, exp_avg_sq = _states(50, 8, False, torch.float32)
    before = [t.clone() for t in (param, exp_avg, exp_avg_sq)]
    rows = torch.tensor([3, 17, 40])
    reference.row_adam(param, exp_avg, exp_avg_sq, rows, torch.randn(3, 8), 1e-2, 0.9, 0.999, 1e-8, 1)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[rows] = False
    for now, then in zip((param, exp_avg, exp_avg_sq), before):
        assert torch.equal(now[untouched], then[untouched]) and not torch.equal(now[rows], then[rows])


def test_row_adam_keeps_one_workspace_per_table_and_none_in_its_state():
    table = torch.nn.Parameter(torch.randn(64, 8))
    opt = optim.RowAdam([table], lr=1e-2)
    for _ in range(3):
        table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 5, 9]]), torch.randn(3, 8), table.shape).coalesce()
        opt.step()
    assert list(opt._workspaces) == [table]
    assert set(opt.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
