"""``from_pretrained``: a Hugging Face model directory (or hub id) -> memzoo's ``LanguageModel``
with the same weights and the same logits, optionally with memory layers that start as an exact no-op.

Supported: ``LlamaForCausalLM``, ``MambaForCausalLM``, ``Mamba2ForCausalLM`` (see ``ARCHITECTURES``).
Weights are read from ``model.safetensors`` (or its shards) only: a checkpoint that exists only as
pickle (``pytorch_model.bin``) is refused, never unpickled."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from zoo.core.dataclass_config import typed
from zoo.memory import MemoryConfig, memory_layers
from zoo.model.language_model import LanguageModel, ModelConfig, build_model
from zoo.model.loading import weight_problems
from zoo.model.size_budget import check_model_size
from zoo.pretrained import llama, mamba
from zoo.pretrained.directory import TOKENIZER_FILES, WEIGHTS_FILE, read_config
from zoo.pretrained.files import (
    INDEX_MAX_BYTES,
    TensorEntry,
    has_file,
    model_file,
    read_model_json,
    read_safetensors_file,
    safetensors_header,
)

INDEX_FILE = "model.safetensors.index.json"


class Architecture(NamedTuple):
    """How one Hugging Face architecture maps: its config -> ``ModelConfig``, state dicts both ways,
    and back (``expressible``: why a model has no counterpart, or None; ``hf_config``: its config.json)."""

    model_config: Callable[[dict[str, Any]], ModelConfig]
    to_memzoo: Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]]
    to_hf: Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]]
    expressible: Callable[[LanguageModel], str | None]
    hf_config: Callable[[LanguageModel, dict[str, Any]], dict[str, Any]]
    size_fields: dict[str, str]  # ModelConfig path (``zoo.model.size_budget.model_size_keys``) -> its config.json field


ARCHITECTURES = {
    "LlamaForCausalLM": Architecture(
        llama.model_config, llama.to_memzoo, llama.to_hf, llama.expressible, llama.hf_config, llama.SIZE_FIELDS
    ),
    "MambaForCausalLM": Architecture(
        mamba.mamba_config, mamba.to_memzoo, mamba.to_hf, mamba.mamba_expressible, mamba.mamba_hf_config, mamba.MAMBA_SIZE_FIELDS
    ),
    "Mamba2ForCausalLM": Architecture(
        mamba.mamba2_config,
        mamba.to_memzoo,
        mamba.to_hf,
        mamba.mamba2_expressible,
        mamba.mamba2_hf_config,
        mamba.MAMBA2_SIZE_FIELDS,
    ),
}


def architecture_of(config: dict[str, Any], where: str) -> str:
    """The one supported architecture a ``config.json`` names; ``ValueError`` otherwise."""
    names = config.get("architectures") or []
    if not isinstance(names, list) or len(names) != 1 or names[0] not in ARCHITECTURES:
        raise ValueError(f"{where}: architectures={names!r} is not supported; memzoo imports one of {sorted(ARCHITECTURES)}")
    return names[0]


def resolve_source(source: str | os.PathLike) -> Path:
    """A local model directory, or a hub id (``org/name``) downloaded with huggingface_hub (config,
    safetensors and tokenizer files only): the one place memzoo reaches the network, and only when
    ``source`` is not a local directory."""
    path = Path(source)
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/")):
        raise ValueError(f"pretrained={text!r} is neither a model directory nor a hub id of the form org/name")
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "*.safetensors", INDEX_FILE, *TOKENIZER_FILES]
    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=patterns))
    except Exception as err:  # the hub client raises many kinds (offline, not found, gated, HTTP): one message
        raise ValueError(
            f"pretrained={text!r} is not a local directory, and fetching it as a hub id failed "
            f"({type(err).__name__}: {err}); pass a model directory"
        ) from err


def weight_headers(path: Path) -> dict[Path, dict[str, TensorEntry]]:
    """Each weight file of the model directory ``path`` (``model.safetensors``, or the shards its
    index names) -> its checked header (``zoo.pretrained.files``): nothing is read but headers."""
    if has_file(path, WEIGHTS_FILE):
        file = model_file(path, WEIGHTS_FILE, "weights")
        return {file: safetensors_header(file)}
    if has_file(path, INDEX_FILE):
        index = read_model_json(path, INDEX_FILE, "shard index", INDEX_MAX_BYTES)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{path / INDEX_FILE}: needs a weight_map object of tensor name -> shard file name")
        files = [model_file(path, shard, "shard") for shard in sorted(set(weight_map.values()))]
        return {file: safetensors_header(file) for file in files}
    pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
    hint = ""
    if pickled:
        hint = f" (it has {pickled}: memzoo never unpickles weights; convert with save_pretrained(safe_serialization=True))"
    raise ValueError(f"{path}: no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")


def with_memory(config: ModelConfig, memory: MemoryConfig | Mapping[str, Any] | None) -> ModelConfig:
    """``config`` with ``memory`` (placement null -> beside: the imported channel stays)."""
    if memory is None:
        return config
    if not isinstance(memory, MemoryConfig):
        memory = typed(MemoryConfig, memory, "memory")
    if memory.placement is None:
        memory = dataclasses.replace(memory, placement="beside")
    return dataclasses.replace(config, memory=memory)


def import_config(
    source: str | os.PathLike, memory: MemoryConfig | Mapping[str, Any] | None = None, size_check: bool = True
) -> tuple[Path, ModelConfig]:
    """A Hugging Face model directory or hub id -> (its local directory, the ``ModelConfig`` of its
    network with ``memory`` added as ``with_memory`` does); every check made, no weight read, and
    with ``size_check`` the model's weights checked against this machine's memory, naming the
    ``config.json`` field that makes them too large."""
    path = resolve_source(source)
    hf = read_config(path)
    where = str(path / "config.json")
    name = architecture_of(hf, where)
    try:
        config = with_memory(ARCHITECTURES[name].model_config(hf), memory)
        if size_check:
            fields = ARCHITECTURES[name].size_fields
            check_model_size(config, where, lambda key: fields.get(key, key), with_backbone=True)
        config.validate()
    except ValueError as err:
        raise ValueError(err if str(err).startswith(where) else f"{where}: {err}") from None
    return path, config


def load_pretrained_weights(model: LanguageModel, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> None:
    """The weights of the Hugging Face directory ``path`` into ``model`` (built from
    ``import_config(path, ...)``): every imported tensor mapped, every model parameter filled but
    those of its memory layers (and of an MLP a memory replaces, whose weights are dropped); each
    memory layer's output projection then set to zero, so the memory adds exactly 0 until it trains.
    ``ValueError`` naming the entries that do not map."""
    path, config = Path(path), model.config
    arch = ARCHITECTURES[architecture_of(read_config(path), str(path / "config.json"))]
    headers = weight_headers(path)
    meta = {name: entry.meta() for header in headers.values() for name, entry in header.items()}
    _check_mapped(model, path, arch.to_memzoo(meta, config))  # names and shapes from the headers: nothing read yet
    state = {}
    for file in headers:
        state.update(read_safetensors_file(file, map_location))
    model.load_state_dict(_imported(arch.to_memzoo(state, config), config), strict=False)
    with torch.no_grad():
        for layer in memory_layers(model).values():
            layer.w2.weight.zero_()
            if layer.w2.bias is not None:
                layer.w2.bias.zero_()


def from_pretrained(
    source: str | os.PathLike,
    memory: MemoryConfig | Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    size_check: bool = True,
) -> LanguageModel:
    """A Hugging Face model directory or hub id -> ``LanguageModel`` (train mode) whose logits are the
    source model's. With ``memory``, its layers get a memory layer (beside the channel unless
    ``memory.placement=replace``) that starts as an exact no-op (``load_pretrained_weights``);
    replacing a layer's MLP drops that MLP's weights. Every file is checked before it is read
    (``zoo.pretrained.files``) and, with ``size_check``, the model's size before it is built."""
    path, config = import_config(source, memory, size_check)
    model = build_model(config)
    load_pretrained_weights(model, path, map_location)
    return model


def _imported(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The mapped tensors without those of the MLPs a memory replaces."""
    replaced = tuple(f"blocks.{i}.channel." for i in config.placed_memory_layers("replace"))
    return {key: value for key, value in state.items() if not key.startswith(replaced)}


def _check_mapped(model: LanguageModel, path: Path, mapped: dict[str, torch.Tensor]) -> None:
    """``mapped`` (the imported tensors in memzoo's names) fills every parameter of ``model`` but its
    memory layers' (and a tied head's), each of the model's shape; ``ValueError`` naming the entries
    that do not (``zoo.model.loading.weight_problems``)."""
    config = model.config
    memory = _memory_prefixes(model)
    want = {key: tensor.shape for key, tensor in model.state_dict().items() if not key.startswith(memory)}
    tied = ["lm_head.weight"] if config.tie_embeddings else []
    problems = weight_problems(want, _imported(mapped, config), "file", tied)
    if problems:
        raise ValueError(f"{path}: its weights do not map onto the {config.name} model of its config.json: {problems}")


def _memory_prefixes(model: LanguageModel) -> tuple[str, ...]:
    """State-dict prefixes of the parameters the import lacks: every memory layer's (a channel it
    replaces, or a sub-layer beside it) and the norm in front of a memory beside the channel."""
    memories = {id(layer) for layer in memory_layers(model).values()}
    prefixes = [f"{name}." for name, module in model.named_modules() if id(module) in memories]
    return (*prefixes, *(f"blocks.{i}.memory_norm." for i, block in enumerate(model.blocks) if block.memory_norm is not None))
