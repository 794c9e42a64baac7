"""The value gradient's reused CPU buffers never alias a gradient that is still alive: accumulation
over several backward passes, several reads of one table in one backward, and the pool itself."""

import torch

from zoo.memory import ValueTable
from zoo.memory.workspace import Workspace


def dense_gradient(table, reads):
    """float64 reference: sum over reads of the gradient of (read * probe).sum() w.r.t. the table."""
    weight = table.weight.detach().double().requires_grad_()
    total = sum(
        (torch.nn.functional.embedding_bag(s, weight, per_sample_weights=w.double(), mode="sum") * p.double()).sum()
        for s, w, p in reads
    )
    (grad,) = torch.autograd.grad(total, weight)
    return grad


def random_reads(count, seed):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 50, (7, 6), generator=gen), torch.rand(7, 6, generator=gen), torch.randn(7, 10, generator=gen))
        for _ in range(count)
    ]


def test_gradients_accumulated_over_backward_passes_without_zero_grad_equal_their_sum():
    table = ValueTable(50, 10, lr=1e-3, sparse=True)
    reads = random_reads(3, seed=0)
    for slots, weights, probe in reads:  # three micro-batches, one optimizer step's worth
        (table.read(slots, weights) * probe).sum().backward()
    torch.testing.assert_close(table.weight.grad.to_dense().double(), dense_gradient(table, reads), rtol=1e-6, atol=1e-6)


def test_reads_of_one_table_in_one_backward_each_keep_their_own_rows():
    table = ValueTable(50, 10, lr=1e-3, sparse=True)
    reads = random_reads(2, seed=1)
    total = sum((table.read(s, w) * p).sum() for s, w, p in reads)  # a table shared by two layers
    total.backward()
    torch.testing.assert_close(table.weight.grad.to_dense().double(), dense_gradient(table, reads), rtol=1e-6, atol=1e-6)


def test_workspace_hands_a_buffer_out_again_only_once_its_view_is_released():
    pool = Workspace()
    first = pool.take(4, 3, torch.float32)
    second = pool.take(4, 3, torch.float32)
    assert first.data_ptr() != second.data_ptr()  # the first view is alive: a new buffer
    first_ptr = first.data_ptr()
    del first
    again = pool.take(2, 3, torch.float32)
    assert again.data_ptr() == first_ptr  # released: reused, smaller requests fit
    assert pool.take(100, 3, torch.float32).shape == (100, 3)  # larger than any buffer: a new one
