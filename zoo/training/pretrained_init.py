"""``init``: start a run from a pretrained Hugging Face model instead of random weights, and choose
which parameters train (all, or only the memory layers added to it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from zoo.memory import memory_layers

TRAINABLE = ("all", "memory")


@dataclass
class InitConfig:
    """The ``init`` settings of ``train.yaml``.

    pretrained: a Hugging Face model directory (``LlamaForCausalLM``, ``MambaForCausalLM``,
        ``Mamba2ForCausalLM``), or a hub id downloaded once (the network only then); null trains from
        random weights. Its config.json sets the network (the ``backbone`` group is not read); memory
        layers from ``memory=...`` are added to it, starting as an exact no-op.
    train: all | memory. ``memory``: only the memory layers (and their norms) train; every other
        parameter keeps its pretrained value bit for bit.
    """

    pretrained: str | None = None
    train: str = "all"

    def check(self, has_memory: bool) -> None:
        """``ValueError`` naming a bad value, or ``train=memory`` without memory layers."""
        if self.pretrained is not None and (not isinstance(self.pretrained, str) or not self.pretrained):
            raise ValueError(f"init.pretrained={self.pretrained!r} must be a model directory, a hub id, or null")
        if self.train not in TRAINABLE:
            raise ValueError(f"init.train={self.train!r}; allowed: {list(TRAINABLE)}")
        if self.train == "memory" and not has_memory:
            raise ValueError("init.train=memory trains only the memory layers, and this model has none: add memory=pkm")


def memory_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters of ``model``'s memory layers and of the norms in front of them."""
    layers = memory_layers(model).values()
    ids = {id(p) for layer in layers for p in layer.parameters()}
    memories = {id(layer) for layer in layers}
    for block in getattr(model, "blocks", []):
        for norm, layer in block.per_token_layers():
            if id(layer) in memories:
                ids.update(id(p) for p in norm.parameters())
    return ids


def train_only_memory(model: nn.Module) -> None:
    """Freeze every parameter of ``model`` outside its memory layers and their norms
    (``requires_grad=False``: the optimizer never sees them)."""
    keep = memory_parameters(model)
    for param in model.parameters():
        param.requires_grad_(id(param) in keep)


def start_from_pretrained(model: nn.Module, init: InitConfig, resume: Path | None) -> None:
    """Before training: the pretrained weights into ``model`` (a fresh run; a resumed one reads its
    checkpoint instead), then, with ``init.train=memory``, everything but the memory frozen."""
    if init.pretrained is not None and resume is None:
        from zoo.pretrained.importing import load_pretrained_weights

        load_pretrained_weights(model, init.pretrained)
    if init.train == "memory":
        train_only_memory(model)
