"""Value tables split across ranks (``memory.parallel``): the same ``read(slots, weights)`` as the
local ``ValueTable``, and the product-key search over row-sharded slots.

Both layouts are built from a full local table, keep only this rank's part, and save / load the full
table (gathered on save, sliced on load), so a checkpoint loads into any world size. Every rank must
call ``state_dict()`` together (it is a collective), as Lightning does when it saves.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from zoo.memory.bags import work_dtype
from zoo.memory.collectives import gather_tokens, send_to_owners, token_counts
from zoo.memory.product_keys import search_pairs
from zoo.memory.values import ValueTable, read_rows
from zoo.tags import Shard, mark_no_reinit, mark_sharded, optim_tags, shard_of, tag_optim


def gather_full(local: torch.Tensor, shard: Shard) -> torch.Tensor:
    """This rank's chunk -> the full tensor (every rank's chunk concatenated along ``shard.dim``)."""
    parts = local.new_empty((shard.world * local.shape[0],) + local.shape[1:])
    dist.all_gather_single(parts, local.detach().contiguous(), group=shard.group)
    return torch.cat(parts.chunk(shard.world), dim=shard.dim)


def local_part(full: torch.Tensor, shard: Shard) -> torch.Tensor:
    """The full tensor -> a copy of this rank's chunk along ``shard.dim``."""
    return full.detach().chunk(shard.world, dim=shard.dim)[shard.rank].clone()


def full_shape(local: torch.Tensor, shard: Shard) -> torch.Size:
    shape = list(local.shape)
    shape[shard.dim] *= shard.world
    return torch.Size(shape)


class ShardedValues(nn.Module):
    """One rank's part of a ``ValueTable`` (split along ``shard_dim``); subclasses implement ``read``."""

    shard_dim: int

    def __init__(self, full: ValueTable, group=None):
        super().__init__()
        self.n_slots, self.v_dim, self.sparse = full.n_slots, full.v_dim, full.sparse
        self.group = group
        shard = Shard(self.shard_dim, dist.get_rank(group), dist.get_world_size(group), group)
        self.weight = nn.Parameter(local_part(full.weight, shard))
        mark_sharded(mark_no_reinit(tag_optim(self.weight, **optim_tags(full.weight))), shard)
        self.register_state_dict_post_hook(_save_full_weight)
        self.register_load_state_dict_pre_hook(_load_own_part)

    def gather_reads(self, slots: torch.Tensor, weights: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """This rank's reads (T_r, R) -> (token counts per rank, every rank's slots and weights (T, R))."""
        counts = token_counts(slots.shape[0], slots.device, self.group)
        weights = weights.to(work_dtype(self.weight))
        return counts, gather_tokens(slots, counts, self.group), gather_tokens(weights, counts, self.group)


class RowShardedValues(ShardedValues):
    """Rows ``[rank * N/W, (rank + 1) * N/W)`` of the table: this rank serves the reads of those slots
    for every rank's tokens; the partial sums return to the tokens' owners and add up there."""

    shard_dim = 0

    def read(self, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """slots (T_r, R) long (global slot ids), weights (T_r, R) -> (T_r, v_dim)."""
        counts, slots, weights = self.gather_reads(slots, weights)
        local = slots - shard_of(self.weight).rank * self.weight.shape[0]
        owned = (local >= 0) & (local < self.weight.shape[0])
        partial = read_rows(self.weight, local.masked_fill(~owned, -1), weights * owned, self.sparse)
        return send_to_owners(partial, counts, self.group).sum(0)


class ColumnShardedValues(ShardedValues):
    """Columns ``[rank * v/W, (rank + 1) * v/W)`` of every row: this rank reads its columns for every
    rank's tokens; each owner concatenates the W column blocks of its tokens."""

    shard_dim = 1

    def read(self, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """slots (T_r, R) long, weights (T_r, R) -> (T_r, v_dim)."""
        counts, slots, weights = self.gather_reads(slots, weights)
        partial = read_rows(self.weight, slots, weights, self.sparse)  # (T, v/W)
        return send_to_owners(partial, counts, self.group).permute(1, 0, 2).flatten(1)


class RowShardedSearch:
    """Product-key search when rank r owns first sub-key indices ``[r * n/W, (r + 1) * n/W)``.

    Every rank's queries are gathered; each rank searches its own slots (its first-half block x all
    second-half keys: an exact product-key search) for all tokens; each token's owner merges the W
    candidate lists into the global top-k, the same as one rank searching all N slots.
    """

    def __init__(self, group=None):
        self.group = group

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
        """q (T_r, H, 2, d), keys (H, 2, n, d) -> (indices, half scores) (T_r, H, 2, knn)."""
        rank, world = dist.get_rank(self.group), dist.get_world_size(self.group)
        n_keys = keys.shape[2]
        block = n_keys // world
        counts = token_counts(q.shape[0], q.device, self.group)
        every_q = gather_tokens(q, counts, self.group)
        idx, halves = search_pairs(every_q, keys[:, 0, rank * block : (rank + 1) * block], keys[:, 1], knn, rank * block)
        slots = send_to_owners(idx[:, :, 0] * n_keys + idx[:, :, 1], counts, self.group)  # (W, T_r, H, knn)
        halves = send_to_owners(halves, counts, self.group)  # (W, T_r, H, 2, knn)
        slots = slots.permute(1, 2, 0, 3).flatten(2)  # (T_r, H, W*knn)
        halves = halves.permute(1, 2, 3, 0, 4).flatten(3)  # (T_r, H, 2, W*knn)
        best = halves.sum(2).topk(knn, dim=-1).indices  # (T_r, H, knn)
        slots = slots.gather(-1, best)
        halves = halves.gather(-1, best.unsqueeze(2).expand(-1, -1, 2, -1))
        return torch.stack([slots // n_keys, slots % n_keys], dim=2), halves


def _save_full_weight(module: ShardedValues, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    state_dict[prefix + "weight"] = gather_full(module.weight, shard_of(module.weight))


def _load_own_part(module: ShardedValues, state_dict: dict, prefix: str, *args) -> None:
    """A full (N, v_dim) table in a checkpoint -> this rank's part (any world size wrote it)."""
    key = prefix + "weight"
    shard = shard_of(module.weight)
    if key in state_dict and state_dict[key].shape == full_shape(module.weight, shard):
        state_dict[key] = local_part(state_dict[key], shard)
