"""Per-token cost of a model: parameters a token touches and forward FLOPs, estimated from shapes."""

from __future__ import annotations

from torch import nn

from zoo.memory import MemoryPlus
from zoo.memory.sharded_values import ShardedValues
from zoo.memory.values import ValueTable
from zoo.mixers.attention import Attention
from zoo.mixers.mamba import Mamba
from zoo.mixers.mamba2 import Mamba2
from zoo.model import LanguageModel


def _value_tables(model: nn.Module) -> list[nn.Module]:
    seen = {}
    for module in model.modules():
        if isinstance(module, (ValueTable, ShardedValues)):
            seen[id(module)] = module
    return list(seen.values())


def active_parameters(model: LanguageModel) -> int:
    """Parameters one token's forward pass uses: everything but the embedding table (a lookup) and
    the value rows a memory layer does not read (each memory layer reads heads * knn rows)."""
    total = model.num_parameters() - model.embedding.weight.numel()
    if model.config.tie_embeddings:
        total += model.embedding.weight.numel()  # the tied weight is the LM head's matmul
    for table in _value_tables(model):
        total -= table.n_slots * table.v_dim
    for layer in (m for m in model.modules() if isinstance(m, MemoryPlus)):
        total += layer.config.heads * layer.config.knn * layer.values.v_dim
    return total


def forward_flops_per_token(model: LanguageModel, seq_len: int) -> int:
    """Forward FLOPs per token (2 per multiply-add): 2 x active parameters, plus what parameters do
    not count: attention scores and weighted sums over the causal context (mean length seq_len / 2)
    and the selective scan's state updates. (The memory's scoring of every sub-key is in the active
    parameters already: each sub-key weight is one multiply-add per token.)"""
    flops = 2 * active_parameters(model)
    for module in model.modules():
        if isinstance(module, Attention):
            flops += 2 * 2 * (seq_len // 2) * module.n_heads * module.head_dim
        elif isinstance(module, (Mamba, Mamba2)):
            flops += 6 * module.d_inner * module.d_state
    return flops
