"""Turning a model's memory layers into their ``memory.parallel`` layout (``prepare_data_parallel``),
and what data-parallel training needs around memory tables: keep sharded parts and rows-only
(sparse-gradient) tables out of DDP, average their gradients like DDP does, and save / load sharded
optimizer state by parts (DTensors) in any layout."""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from zoo.checkpoint.distributed import SavedShards
from zoo.core.private_api import keep_out_of_ddp
from zoo.core.tags import optim_tags, shard_of
from zoo.memory.collectives import gather_tokens, token_counts
from zoo.memory.layer import MemoryPlus
from zoo.memory.optim import DenseSparseAdam
from zoo.memory.sharded_values import (
    ColumnShardedValues,
    RowShardedValues,
    ShardedValues,
    distributed,
    full_shape,
    own_part,
)

LAYOUTS = {"rows": RowShardedValues, "columns": ColumnShardedValues}


def shard_memory(model: nn.Module, group=None) -> nn.Module:
    """Replace the value table of every memory layer whose ``config.parallel`` is rows or columns by
    this rank's part (a table shared by several layers stays shared), in place: a table on the meta
    device (as ``build_model`` makes them) is drawn part by part, never whole. A no-op for local
    memories and for layers already sharded. Raises ``ValueError`` without a process group or when
    the world size cannot split the layout."""
    layers = [m for m in model.modules() if isinstance(m, MemoryPlus) and m.config.parallel != "none"]
    pending = [m for m in layers if not isinstance(m.values, ShardedValues)]
    if not pending:
        return model
    parallel = pending[0].config.parallel
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"memory.parallel={parallel!r} needs a torch.distributed process group (train with trainer=ddp); "
            "none is initialised. To load a sharded checkpoint in one process, set memory.parallel=none"
        )
    world = dist.get_world_size(group)
    sharded: dict[int, ShardedValues] = {}
    for layer in pending:
        layer.config.check_world_size(layer.d_model, world)
        table = layer.values
        if id(table) not in sharded:
            sharded[id(table)] = LAYOUTS[layer.config.parallel](table, group)
        layer.values = sharded[id(table)]  # the layout: its search and read
    return model


def prepare_data_parallel(module: nn.Module) -> None:
    """Before DDP wraps ``module`` and a checkpoint loads (Lightning's ``configure_model``): tables
    sharded (``shard_memory``), sharded parts and replicated tables with sparse gradients (DDP's
    reducer takes those only from ``nn.Embedding``; ``average_sparse_gradients`` averages them) kept
    out of DDP, the latter taken from rank 0 (as DDP does for the parameters it manages)."""
    shard_memory(module)
    names = [name for name, param in module.named_parameters() if shard_of(param) is not None or _replicated_sparse(param)]
    keep_out_of_ddp(module, names)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for param in module.parameters():
            if _replicated_sparse(param):
                dist.broadcast(param.data, src=0)


def _replicated_sparse(param: nn.Parameter) -> bool:
    """A whole table on every rank whose gradient is sparse (rows-only updates)."""
    return shard_of(param) is None and bool(optim_tags(param).get("sparse"))


@torch.no_grad()
def average_sparse_gradients(module: nn.Module, world_size: int) -> None:
    """Replace each replicated table's sparse gradient (N, v) by its mean over ranks, still sparse:
    every rank's touched rows and their gradient rows are gathered (padded on the wire), duplicates
    summed by ``coalesce`` and divided by ``world_size``, so every rank steps with one process's
    gradient of the global batch."""
    if world_size == 1:
        return
    for param in module.parameters():
        if _replicated_sparse(param) and param.grad is not None:
            grad = param.grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
            counts = token_counts(rows.numel(), rows.device)
            all_rows, all_values = gather_tokens(rows, counts), gather_tokens(values, counts)
            param.grad = torch.sparse_coo_tensor(
                all_rows[None], all_values / world_size, grad.shape, check_invariants=False
            ).coalesce()


@torch.no_grad()
def average_sharded_gradients(module: nn.Module, world_size: int) -> None:
    """Divide sharded gradients by ``world_size``. A shard's gradient sums every rank's loss (the
    collectives route all of them to it); DDP averages the replicated ones, so this makes a W-rank
    step with per-rank batch b equal a one-rank step with batch W * b."""
    if world_size == 1:
        return
    for param in module.parameters():
        if shard_of(param) is not None and param.grad is not None:
            param.grad = param.grad / world_size


def save_and_load_sharded_state(optimizer: torch.optim.Optimizer) -> None:
    """Make the optimizer's ``state_dict`` hold sharded parameters' state as DTensors (this rank's
    part; no communication, so ranks need not call it together), and ``load_state_dict`` take that
    state in any form ``own_part`` reads (full tensors of any world size's checkpoint, a distributed
    checkpoint's parts in any layout) and keep this rank's part. Works through ``DenseSparseAdam``'s
    inner ones."""
    for inner in optimizer.optimizers() if isinstance(optimizer, DenseSparseAdam) else [optimizer]:
        params = [p for group in inner.param_groups for p in group["params"]]
        sharded = {i: p for i, p in enumerate(params) if shard_of(p) is not None}
        if sharded:
            inner.register_state_dict_post_hook(partial(_convert_state, params=sharded, saving=True))
            inner.register_load_state_dict_pre_hook(partial(_convert_state, params=sharded, saving=False))


def split_like(shape: torch.Size, param_shape: torch.Size, dim: int) -> bool:
    """Whether a state tensor of ``shape`` is split like its parameter (of ``param_shape``, split along
    ``dim``): it has the parameter's shape, or it holds one value per row of a row-split one
    (``RowAdam``'s per-row second moment)."""
    return shape == param_shape or (dim == 0 and shape == param_shape[:1])


def _convert_state(optimizer, state_dict: dict, params: dict, saving: bool) -> dict:
    """Sharded parameters' state tensors: this rank's part -> a DTensor of the whole (``saving``),
    or the whole in any form -> this rank's part (loading). Entries are replaced, not edited: on
    save the packed entries are the live state, on load they belong to the caller's checkpoint."""
    state_dict["state"] = dict(state_dict["state"])
    for idx, param in params.items():
        entry = state_dict["state"].get(idx)
        if entry is None:
            continue
        shard = shard_of(param)
        converted = {}
        for key, value in entry.items():
            if not (torch.is_tensor(value) or isinstance(value, SavedShards)):
                converted[key] = value
            elif saving and split_like(value.shape, param.shape, shard.dim):
                converted[key] = distributed(value, shard)
            elif not saving and split_like(value.shape, full_shape(param.shape, shard), shard.dim):
                converted[key] = own_part(value, shard, param.device)
            else:
                converted[key] = value
        state_dict["state"][idx] = converted
    return state_dict
