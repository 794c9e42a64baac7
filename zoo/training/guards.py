"""Checks that stop a run early with a message saying what is wrong and where: token ids outside the
vocabulary, a checkpoint of another model, non-finite activations and gradients."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from zoo.memory import memory_layers
from zoo.model.language_model import ModelConfig

IGNORED_DIFFERENCES = {"memory.parallel"}  # a checkpoint holds the full table: any layout loads it


def check_token_ids(splits: dict[str, Any], vocab_size: int) -> None:
    """splits: name -> dataset with ``id_range()`` (its least and greatest input or scored target id);
    raise ``ValueError`` naming the split and the id when one is outside ``[0, vocab_size)``."""
    for name, data in splits.items():
        low, high = data.id_range()
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} split holds token id {high if high >= vocab_size else low}, outside the model's vocabulary "
                f"[0, {vocab_size}); the task's vocab_size must not exceed the model's"
            )


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out = {}
        for key, value in values.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: values}


def check_same_model(saved: ModelConfig, current: ModelConfig) -> None:
    """Raise ``ValueError`` listing every model setting where a checkpoint's model (its stored
    settings read by ``zoo.model.loading.stored_model_config``) differs from this run's."""
    saved_flat, current_flat = _flatten(dataclasses.asdict(saved)), _flatten(dataclasses.asdict(current))
    differ = [
        f"{key}: checkpoint {saved_flat.get(key)!r}, this run {current_flat.get(key)!r}"
        for key in sorted(set(saved_flat) | set(current_flat))
        if key not in IGNORED_DIFFERENCES and saved_flat.get(key) != current_flat.get(key)
    ]
    if differ:
        raise ValueError("the checkpoint was trained with another model: " + "; ".join(differ))


def _where(name: str, is_memory: bool) -> str:
    """``blocks.3.channel.w1.weight`` -> ``layer 3 (memory): blocks.3.channel.w1.weight``."""
    parts = name.split(".")
    if parts[0] != "blocks" or len(parts) < 2:
        return name
    part = "memory" if is_memory else (parts[2] if len(parts) > 2 else "block")
    return f"layer {parts[1]} ({part}): {name}"


def first_non_finite_gradient(model: nn.Module) -> str | None:
    """The first parameter (memory layers checked first) whose gradient holds a NaN or inf, or None."""
    memory = {id(p) for m in memory_layers(model).values() for p in m.parameters()}
    named = sorted(model.named_parameters(), key=lambda item: id(item[1]) not in memory)  # stable: memory first
    for name, param in named:
        grad = param.grad
        if grad is None:
            continue
        values = grad._values() if grad.is_sparse else grad
        if not torch.isfinite(values).all():
            return _where(name, id(param) in memory)
    return None


@torch.no_grad()
def first_non_finite_output(model: nn.Module, inputs: torch.Tensor) -> str:
    """Re-run the forward on ``inputs`` and name where activations first turn non-finite: a memory
    layer if any, else the first block (or sub-module) in execution order."""
    found: list[tuple[bool, str]] = []
    hooks = []
    memory_ids = {id(m) for m in memory_layers(model).values()}
    for name, module in model.named_modules():
        if name.count(".") <= 2 and name:  # blocks.i, blocks.i.mixer / channel, embedding, norm, lm_head

            def record(mod, args, out, name=name):
                if torch.is_tensor(out) and not torch.isfinite(out).all():
                    found.append((id(mod) in memory_ids, name))

            hooks.append(module.register_forward_hook(record))
    try:
        model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        return "no layer (the activations are finite; the loss itself overflowed)"
    memory = [name for is_memory, name in found if is_memory]
    return _where(memory[0], True) if memory else _where(found[0][1], False)
