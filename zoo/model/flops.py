"""Per-token cost of a model: parameters a token touches, forward FLOPs and the inference state a
sequence keeps, from what each layer declares (``active_parameters`` / ``flops_per_token`` /
``state_size`` of mixers and channels): no layer is special-cased."""

from __future__ import annotations

from zoo.core.tags import parameter_count
from zoo.model.language_model import LanguageModel


def _outside_blocks(model: LanguageModel) -> int:
    """Parameters used per token outside the mixers and channels: the LM head (the tied embedding
    when tied; an embedding lookup is not counted) and every RMSNorm."""
    norms = parameter_count(model.norm) + sum(
        parameter_count(block.mixer_norm) + sum(parameter_count(norm) for norm, _ in block.per_token_layers())
        for block in model.blocks
    )
    return model.lm_head.weight.numel() + norms


def active_parameters(model: LanguageModel) -> int:
    """Parameters one token's forward pass uses: everything but the embedding table (a lookup) and
    the value rows a memory layer does not read."""
    total = _outside_blocks(model)
    for block in model.blocks:
        total += parameter_count(block.mixer)
        total += sum(layer.active_parameters() for _, layer in block.per_token_layers())
    return total


def channel_parameters(model: LanguageModel) -> int:
    """Parameters of the blocks' channels (MLPs and memory layers), a table shared by several memory
    layers counted once: where a recall task's facts can be stored, beside the mixers and embeddings."""
    unique = {id(p): p for block in model.blocks for _, layer in block.per_token_layers() for p in layer.parameters()}
    return sum(p.numel() for p in unique.values())


def forward_flops_per_token(model: LanguageModel, seq_len: int) -> int:
    """Forward FLOPs per token (2 per multiply-add) at sequence length ``seq_len``: each mixer's and
    channel's own count (attention's context-dependent scores, the scans' state updates included)
    plus the LM head and norms."""
    flops = 2 * _outside_blocks(model)
    for block in model.blocks:
        flops += block.mixer.flops_per_token(seq_len)
        flops += sum(layer.flops_per_token(seq_len) for _, layer in block.per_token_layers())
    return flops


def head_flops_per_token(model: LanguageModel) -> int:
    """Forward FLOPs of the LM head for one position; training computes logits at the scored
    positions only (``LanguageModel.forward(inputs, scored)``), so this part of
    ``forward_flops_per_token`` is spent per scored token."""
    return 2 * model.lm_head.weight.numel()


def state_size(model: LanguageModel, seq_len: int) -> int:
    """Bytes of inference state one sequence of ``seq_len`` tokens keeps: every mixer's cache (a KV
    cache for attention, the recurrent state for the recurrent mixers); the x-axis of zoology's
    recall-vs-state comparison."""
    return sum(block.mixer.state_size(seq_len) for block in model.blocks)
