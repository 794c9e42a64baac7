"""The one model of the zoo: embedding -> [Block x n_layers] -> RMSNorm -> LM head.

Transformer, Mamba and hybrids are configs of this code: a backbone is a layer pattern (the mixer of
each layer) plus the channel of each layer (mlp, memory or none).

Initialisation (GPT-2 style): every ``nn.Linear`` and ``nn.Embedding`` weight ~ N(0, 0.02), biases 0;
projections that write into the residual stream (attention ``out_proj``, MLP ``w2``) get
std 0.02 / sqrt(2 * n_layers). Parameters marked ``_no_reinit`` keep the init of the module that made
them (e.g. SSM parameters); norms start at 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from zoo.core.tags import is_no_reinit, is_residual_projection, mark_no_decay, shard_of
from zoo.core.value_checks import check_bool, check_real, is_int
from zoo.memory import MemoryConfig, make_value_table
from zoo.mixers import MIXERS, PATTERN_LETTERS
from zoo.model.channels import CHANNELS

INIT_STD = 0.02


@dataclass
class ModelConfig:
    """Everything ``build_model`` needs.

    pattern: mixer of each layer, as a string of letters (``"AAMA"``; see ``PATTERN_LETTERS``) or a
        list of mixer names; a pattern shorter than ``n_layers`` is repeated if its length divides it.
    channel: ``"mlp"`` / ``"none"`` for every layer, or a list with one entry per layer.
    memory: a ``MemoryConfig`` or its fields as a mapping (parsed once, here), or None: the layers
        in ``memory.layers`` get the memory+ channel instead of ``channel``.
    mixer: keyword arguments per mixer name, e.g. ``{"attention": {"n_heads": 4}}``.
    mlp: keyword arguments of the MLP channel.
    """

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    pattern: str | list[str] = "A"
    channel: str | list[str] = "mlp"
    mixer: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlp: dict[str, Any] = field(default_factory=dict)
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    memory: MemoryConfig | Mapping[str, Any] | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.memory is not None and not isinstance(self.memory, MemoryConfig):
            self.memory = MemoryConfig.from_mapping(self.memory)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Build from a plain or OmegaConf mapping; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**{k: _plain(v) for k, v in values.items()})

    def layer_mixers(self) -> list[str]:
        """Mixer name of each layer, after expanding letters and repeating the pattern."""
        if isinstance(self.pattern, str):
            names = []
            for letter in self.pattern:
                if letter not in PATTERN_LETTERS:
                    raise ValueError(
                        f"backbone.pattern={self.pattern!r} has unknown mixer letter {letter!r}; "
                        f"allowed letters: {sorted(PATTERN_LETTERS)} ({PATTERN_LETTERS})"
                    )
                names.append(PATTERN_LETTERS[letter])
        else:
            names = list(self.pattern)
            for name in names:
                if name not in MIXERS:
                    raise ValueError(
                        f"backbone.pattern has unknown mixer {name!r}; allowed: {sorted(MIXERS)}"
                    )
        return _expand_per_layer(names, self.n_layers, "backbone.pattern")

    def memory_config(self) -> MemoryConfig | None:
        return self.memory

    def layer_channels(self) -> list[str]:
        """Channel name of each layer (memory layers say ``"memory"``)."""
        names = [self.channel] if isinstance(self.channel, str) else list(self.channel)
        allowed = sorted(set(CHANNELS) - {"memory"})
        for name in names:
            if name not in allowed:
                raise ValueError(f"backbone.channel has unknown channel {name!r}; allowed: {allowed}")
        per_layer = _expand_per_layer(names, self.n_layers, "backbone.channel")
        memory = self.memory_config()
        for idx in memory.layers if memory is not None else []:
            per_layer[idx] = "memory"
        return per_layer

    def validate(self) -> None:
        """Every field's type and range, then cross-field checks, raised before any parameter is
        allocated; a mixer's (or the MLP's) own argument error is prefixed with its config key."""
        for key, value in [("model vocab_size", self.vocab_size), ("backbone.d_model", self.d_model),
                           ("backbone.n_layers", self.n_layers)]:
            if not is_int(value) or value < 1:
                raise ValueError(f"{key}={value!r} must be a positive integer")
        for name in ("pattern", "channel"):
            value = getattr(self, name)
            if not (isinstance(value, str) or isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
                raise ValueError(
                    f"backbone.{name}={value!r} must be a string"
                    + (f" of mixer letters {sorted(PATTERN_LETTERS)}" if name == "pattern" else "")
                    + " or a non-empty list of names, one per layer"
                )
        check_bool("backbone.tie_embeddings", self.tie_embeddings)
        check_real("backbone.norm_eps", self.norm_eps, low=0, low_open=True)
        for name in ("mixer", "mlp"):
            options = getattr(self, name)
            if not isinstance(options, dict):
                raise ValueError(f"backbone.{name}={options!r} must be a mapping of options")
        for name, options in self.mixer.items():
            if not isinstance(options, dict):
                raise ValueError(f"backbone.mixer.{name}={options!r} must be a mapping of that mixer's options")
        self.layer_mixers()
        memory = self.memory_config()
        if memory is not None:
            memory.validate(self.d_model, self.n_layers)
        channels = self.layer_channels()
        for name in self.mixer:
            if name not in MIXERS:
                raise ValueError(f"backbone.mixer has options for unknown mixer {name!r}; allowed: {sorted(MIXERS)}")
        # each mixer's (and the MLP's) own argument checks, run on the meta device: nothing is allocated
        with torch.device("meta"):
            for name in dict.fromkeys(self.layer_mixers()):
                _build_checked(MIXERS, name, "mixer", self.d_model, self.mixer.get(name, {}), f"backbone.mixer.{name}")
            if "mlp" in channels:
                _build_checked(CHANNELS, "mlp", "channel", self.d_model, self.mlp, "backbone.mlp")

    def layer_parameters(self) -> dict[str, int]:
        """Parameters of one layer of each mixer and of the MLP (name -> count), counted on the meta
        device from the config alone (shapes only: nothing is allocated, however large)."""
        counts = {}
        with torch.device("meta"):
            for name in dict.fromkeys(self.layer_mixers()):
                layer = _build_checked(MIXERS, name, "mixer", self.d_model, self.mixer.get(name, {}), f"backbone.mixer.{name}")
                counts[name] = sum(p.numel() for p in layer.parameters())
            if "mlp" in self.layer_channels():
                layer = _build_checked(CHANNELS, "mlp", "channel", self.d_model, self.mlp, "backbone.mlp")
                counts["mlp"] = sum(p.numel() for p in layer.parameters())
        return counts


def _build_checked(registry: dict, name: str, kind: str, d_model: int, kwargs: dict, key: str) -> nn.Module:
    """``_build_layer`` at layer 0 whose ``ValueError`` names the config key of the options."""
    try:
        return _build_layer(registry, name, kind, d_model, 0, kwargs)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from err


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python containers."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _expand_per_layer(names: list[str], n_layers: int, field_name: str) -> list[str]:
    if not names or n_layers % len(names):
        raise ValueError(
            f"{field_name} has {len(names)} entries, which must divide n_layers={n_layers} "
            f"(one entry per layer, or a pattern repeated to fill the layers)"
        )
    return names * (n_layers // len(names))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``, then ``x + channel(norm(x))``."""

    def __init__(self, d_model: int, mixer: nn.Module, channel: nn.Module | None, eps: float):
        super().__init__()
        self.mixer_norm = mark_no_decay(nn.RMSNorm(d_model, eps=eps))
        self.mixer = mixer
        self.channel_norm = mark_no_decay(nn.RMSNorm(d_model, eps=eps)) if channel is not None else None
        self.channel = channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        x = x + self.mixer(self.mixer_norm(x))
        if self.channel is not None:
            x = x + self.channel(self.channel_norm(x))
        return x

    def step(self, x: torch.Tensor, cache: Any) -> torch.Tensor:
        """One token: x (B, D) -> (B, D) through the mixer's recurrent ``step`` (``cache`` updated)."""
        x = x + self.mixer.step(self.mixer_norm(x), cache)[0]
        if self.channel is not None:
            x = x + self.channel(self.channel_norm(x).unsqueeze(1)).squeeze(1)
        return x


class LanguageModel(nn.Module):
    """Token ids (B, L) -> next-token logits (B, L, vocab_size)."""

    def __init__(self, config: ModelConfig, blocks: list[Block]):
        super().__init__()
        self.config = config
        self.embedding = mark_no_decay(nn.Embedding(config.vocab_size, config.d_model))
        self.blocks = nn.ModuleList(blocks)
        self.norm = mark_no_decay(nn.RMSNorm(config.d_model, eps=config.norm_eps))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init (see module docstring)."""
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                weight = module.weight
                if not is_no_reinit(weight):
                    std = residual_std if is_residual_projection(weight) else INIT_STD
                    nn.init.normal_(weight, mean=0.0, std=std)
                bias = getattr(module, "bias", None)
                if bias is not None and not is_no_reinit(bias):
                    nn.init.zeros_(bias)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, inputs: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        """inputs: (B, L) long -> logits (B, L, vocab_size). With ``scored`` (B, L) bool: the logits of
        the scored positions only, (N, vocab_size) in row-major order, N = scored.sum(); every layer
        still runs on all positions, only the LM head (on the synthetic tasks most of the FLOPs) skips
        the positions a loss would ignore."""
        x = self.embedding(inputs)
        for block in self.blocks:
            x = block(x)
        if scored is not None:
            x = x[scored]
        return self.lm_head(self.norm(x))

    def allocate_caches(self, batch_size: int, max_len: int) -> list[Any]:
        """One inference cache per layer: a KV cache of ``max_len`` positions for attention, the
        recurrent state for Mamba / Mamba-2."""
        return [block.mixer.allocate_cache(batch_size, max_len) for block in self.blocks]

    def step(self, tokens: torch.Tensor, caches: list[Any]) -> torch.Tensor:
        """tokens (B,) long at the next position -> next-token logits (B, vocab_size); ``caches``
        (from ``allocate_caches``) advance by one position."""
        x = self.embedding(tokens)
        for block, cache in zip(self.blocks, caches):
            x = block.step(x, cache)
        return self.lm_head(self.norm(x))

    def num_parameters(self) -> int:
        """Distinct trainable parameters (tied weights counted once, sharded ones at their full size)."""
        return sum(p.numel() * (shard_of(p).world if shard_of(p) else 1) for p in self.parameters())


def _build_layer(registry: dict, name: str, kind: str, d_model: int, layer_idx: int, kwargs: dict) -> nn.Module:
    cls = registry[name]
    try:
        return cls(d_model, layer_idx, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad options {kwargs} for {kind} {name!r} at layer {layer_idx}: {err}") from err


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> LanguageModel:
    """Config (dataclass or mapping with ``ModelConfig`` fields) -> ``LanguageModel``."""
    config = cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_mapping(cfg)
    config.validate()
    memory = config.memory_config()
    channel_options = {"mlp": config.mlp}
    if memory is not None:
        shared = make_value_table(memory, config.d_model) if memory.shared else None
        channel_options["memory"] = {"config": memory, "values": shared}
    blocks = []
    for idx, (mixer_name, channel_name) in enumerate(zip(config.layer_mixers(), config.layer_channels())):
        mixer = _build_layer(MIXERS, mixer_name, "mixer", config.d_model, idx, config.mixer.get(mixer_name, {}))
        channel = None
        if CHANNELS[channel_name] is not None:
            options = channel_options[channel_name]
            channel = _build_layer(CHANNELS, channel_name, "channel", config.d_model, idx, options)
        blocks.append(Block(config.d_model, mixer, channel, config.norm_eps))
    return LanguageModel(config, blocks)
