"""Token-wise collectives with explicit backward: gather every rank's tokens, send per-token results
back to the rank that owns the token. Ranks may hold different token counts (padded on the wire)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def token_counts(n_tokens: int, device: torch.device, group=None) -> list[int]:
    """Every rank's token count, in rank order."""
    world = dist.get_world_size(group)
    counts = torch.empty(world, dtype=torch.long, device=device)
    dist.all_gather_single(counts, torch.tensor([n_tokens], dtype=torch.long, device=device), group=group)
    return counts.tolist()


class _AllGatherRows(torch.autograd.Function):
    """(T, ...) on each rank -> (W * T, ...) in rank order; backward sums each rank's gradient block
    over ranks and returns it to its owner (a reduce-scatter built from all_to_all, which gloo has)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        out = x.new_empty((world * x.shape[0],) + x.shape[1:])
        dist.all_gather_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = dist.get_world_size(ctx.group)
        received = torch.empty_like(grad)
        dist.all_to_all_single(received, grad.contiguous(), group=ctx.group)
        return received.view((world, -1) + grad.shape[1:]).sum(0), None


class _AllToAllRows(torch.autograd.Function):
    """(W * T, ...): block r goes to rank r; the result's block s came from rank s. Its own inverse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllToAllRows.apply(grad, ctx.group), None


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows appended to (T, ...) up to (rows, ...)."""
    if x.shape[0] == rows:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, rows - x.shape[0]))


def gather_tokens(x: torch.Tensor, counts: list[int], group=None) -> torch.Tensor:
    """This rank's tokens (T_r, ...) -> every rank's tokens (sum(counts), ...), rank by rank.
    Differentiable: each rank's gradient returns to the tokens' owner, summed over ranks."""
    padded = _AllGatherRows.apply(_pad_rows(x, max(counts)), group)
    blocks = padded.view((len(counts), max(counts)) + x.shape[1:])
    return torch.cat([block[:count] for block, count in zip(blocks, counts)])


def send_to_owners(y: torch.Tensor, counts: list[int], group=None) -> torch.Tensor:
    """Results for every rank's tokens (sum(counts), ...) -> what each rank computed for this rank's
    tokens, (W, T_r, ...) with block s from rank s. Differentiable."""
    rank = dist.get_rank(group)
    longest = max(counts)
    padded = torch.cat([_pad_rows(part, longest) for part in y.split(counts)])
    received = _AllToAllRows.apply(padded, group)
    return received.view((len(counts), longest) + y.shape[1:])[:, : counts[rank]]
