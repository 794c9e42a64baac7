"""Value tables split across ranks (``memory.parallel``): layouts with the local ``ValueTable``'s
``search``, ``read`` and ``fuses_read`` (the row layout's search spans ranks).

Each rank materialises only its part of the table, drawn from the table's seed (``draw_values_``), so
the parts assemble to the table one process builds, for any world size. ``state_dict()`` holds the
part as a DTensor (this rank's chunk of the full table; no communication), which
``zoo.checkpoint.distributed`` writes as a distributed checkpoint. ``load_state_dict`` takes the full
table (a single-file checkpoint, one process's state), a DTensor of the same layout, or a distributed
checkpoint's ``SavedShards`` (any world size and layout) and keeps this rank's part.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import tensor as dtensor
from torch.distributed.device_mesh import DeviceMesh

from zoo.checkpoint.distributed import SavedShards
from zoo.core.tags import Shard, mark_no_reinit, mark_sharded, optim_tags, shard_of, tag_optim
from zoo.memory.collectives import gather_tokens, send_to_owners, token_counts
from zoo.memory.ops.reference import work_dtype
from zoo.memory.product_keys import local_search, search_pairs
from zoo.memory.values import ValueTable, draw_values_, read_rows


def full_shape(local: torch.Size, shard: Shard) -> torch.Size:
    """The shape of the whole tensor whose chunk along ``shard.dim`` has shape ``local``."""
    shape = list(local)
    shape[shard.dim] *= shard.world
    return torch.Size(shape)


def chunk_of(full: torch.Tensor, shard: Shard) -> torch.Tensor:
    """The full tensor -> a copy of this rank's chunk along ``shard.dim``."""
    return full.detach().chunk(shard.world, dim=shard.dim)[shard.rank].clone()


def distributed(local: torch.Tensor, shard: Shard) -> dtensor.DTensor:
    """This rank's chunk -> the full tensor as a DTensor sharded along ``shard.dim`` over the
    shard's process group: a view of ``local``, no copy and no communication."""
    mesh = DeviceMesh.from_group(shard.group or dist.group.WORLD, local.device.type)
    full = full_shape(local.shape, shard)
    return dtensor.DTensor.from_local(
        local.detach(),
        mesh,
        [dtensor.Shard(shard.dim)],
        run_check=False,
        shape=full,
        stride=torch.empty(full, device="meta").stride(),
    )


def own_part(
    value: torch.Tensor | SavedShards, shard: Shard, device: torch.device, into: torch.Tensor | None = None
) -> torch.Tensor:
    """The full tensor (a plain tensor, a DTensor of this layout, or a distributed checkpoint's
    ``SavedShards``, read in this layout: straight into ``into`` when given) -> this rank's chunk
    along ``shard.dim``."""
    local = list(value.shape)
    local[shard.dim] //= shard.world
    if isinstance(value, SavedShards):
        target = into if into is not None else torch.empty(local, dtype=value.dtype, device=device)
        return value.read(distributed(target, shard)).to_local()
    if isinstance(value, dtensor.DTensor):
        coordinate = list(value.device_mesh.get_coordinate() or [])
        if value.placements != (dtensor.Shard(shard.dim),) or coordinate != [shard.rank] or list(value.to_local().shape) != local:
            raise ValueError(
                f"a DTensor laid out as {value.placements} over {value.device_mesh} cannot load into this rank's "
                f"chunk {shard.rank} of {shard.world} along dim {shard.dim}: save it as a distributed checkpoint "
                "(zoo.checkpoint.distributed), which reads into any layout"
            )
        return value.to_local()
    return chunk_of(value, shard)


def table_part(table: ValueTable, shard: Shard) -> torch.Tensor:
    """This rank's chunk of ``table``'s weight: drawn from its seed when it is on the meta device
    (nothing else is allocated), else copied out of it."""
    if not table.weight.is_meta:
        return chunk_of(table.weight, shard)
    shape = list(table.weight.shape)
    shape[shard.dim] //= shard.world
    start = [0, 0]
    start[shard.dim] = shard.rank * shape[shard.dim]
    part = torch.empty(shape, dtype=table.weight.dtype, device="cpu")  # drawn on the CPU generator
    return draw_values_(part, table.init_seed, table.n_slots, table.v_dim, *start)


class ShardedValues(nn.Module):
    """One rank's part of a ``ValueTable`` (split along ``shard_dim``); subclasses give ``search``, ``read``."""

    shard_dim: int

    def __init__(self, full: ValueTable, group=None):
        super().__init__()
        self.n_slots, self.v_dim, self.sparse = full.n_slots, full.v_dim, full.sparse
        self.group = group
        shard = Shard(self.shard_dim, dist.get_rank(group), dist.get_world_size(group), group)
        self.weight = nn.Parameter(table_part(full, shard))
        mark_sharded(mark_no_reinit(tag_optim(self.weight, **optim_tags(full.weight))), shard)
        self.register_state_dict_post_hook(_save_distributed_weight)
        self.register_load_state_dict_pre_hook(_load_own_part)

    def gather_reads(self, slots: torch.Tensor, weights: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """This rank's reads (T_r, R) -> (token counts per rank, every rank's slots and weights (T, R))."""
        counts = token_counts(slots.shape[0], slots.device, self.group)
        weights = weights.to(work_dtype(self.weight))
        return counts, gather_tokens(slots, counts, self.group), gather_tokens(weights, counts, self.group)

    def fuses_read(self, q: torch.Tensor, sub_keys: torch.Tensor) -> bool:
        """False: a sharded table is read by the composed path (``ProductKeys.select``, ``read``)."""
        return False


class RowShardedValues(ShardedValues):
    """Rows ``[rank * N/W, (rank + 1) * N/W)`` of the table: this rank serves the reads of those slots
    for every rank's tokens; the partial sums return to the tokens' owners and add up there."""

    shard_dim = 0

    def search(self, q: torch.Tensor, keys: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Product-key search when this rank owns first sub-key indices ``[r * n/W, (r + 1) * n/W)``:
        q (T_r, H, 2, d), keys (H, 2, n, d) -> (indices, half scores) (T_r, H, 2, knn). Every rank's
        queries are gathered; each rank searches its own slots (its first-half block x all second-half
        keys: an exact product-key search) for all tokens; each token's owner merges the W candidate
        lists into the global top-k, the same as one rank searching all N slots."""
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
    search = staticmethod(local_search)  # sub-keys replicated: every rank searches all slots for its tokens

    def read(self, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """slots (T_r, R) long, weights (T_r, R) -> (T_r, v_dim)."""
        counts, slots, weights = self.gather_reads(slots, weights)
        partial = read_rows(self.weight, slots, weights, self.sparse)  # (T, v/W)
        return send_to_owners(partial, counts, self.group).permute(1, 0, 2).flatten(1)


def _save_distributed_weight(module: ShardedValues, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    state_dict[prefix + "weight"] = distributed(module.weight, shard_of(module.weight))


def _load_own_part(module: ShardedValues, state_dict: dict, prefix: str, *args) -> None:
    """The full (N, v_dim) table in any form ``own_part`` takes -> this rank's part (a distributed
    checkpoint's is read straight into the weight: no second copy of the part)."""
    key = prefix + "weight"
    shard = shard_of(module.weight)
    if key in state_dict and state_dict[key].shape == full_shape(module.weight.shape, shard):
        state_dict[key] = own_part(state_dict[key], shard, module.weight.device, into=module.weight.detach())
