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
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zoo.core.dataclass_config import typed
from zoo.core.tags import is_no_reinit, is_residual_projection, mark_no_decay, shard_of
from zoo.core.value_checks import check_real
from zoo.memory import MemoryConfig, make_value_table
from zoo.mixers import MIXERS, PATTERN_LETTERS
from zoo.model.channels import CHANNELS

INIT_STD = 0.02


@dataclass(kw_only=True)
class ModelConfig:
    """Everything ``build_model`` needs; the defaults are the model ``memzoo-train`` trains with no
    overrides (``backbone=transformer``, ``memory=none``; ``tests/training/test_defaults.py`` holds
    them equal). The backbone presets (``zoo/configs/backbone/``) are this dataclass and state only
    what they change.

    name: the backbone's name (what results tables show).
    d_model: width of the residual stream. n_layers: blocks.
    pattern: mixer of each layer, as a string of letters (``"AAMA"``; see ``PATTERN_LETTERS``) or a
        list of mixer names; a pattern shorter than ``n_layers`` is repeated if its length divides it.
    channel: ``"mlp"`` / ``"none"`` for every layer, or a list with one entry per layer.
    mixer: keyword arguments per mixer name, e.g. ``{"attention": {"num_heads": 4}}``; a mixer without
        an entry takes its constructor's defaults.
    mlp: keyword arguments of the MLP channel; ``hidden_dim`` None = 8/3 * d_model rounded up to a
        multiple of 8.
    tie_embeddings: share the LM head with the embedding (untied by default: a tied head slows MQAR
        learning several-fold).
    norm_eps: the RMSNorms' epsilon.
    vocab_size: token ids lie in ``[0, vocab_size)`` (a run takes it from its task).
    memory: a ``MemoryConfig``, or None: the layers in ``memory.layers`` get the memory+ channel,
        instead of ``channel`` (``memory.placement`` replace, the default) or as a residual
        sub-layer of its own after it (beside: ``x + memory(norm(x))``, what a pretrained import uses).
    """

    name: str = "transformer"
    d_model: int = 128
    n_layers: int = 2
    pattern: Any = "A"  # a string or a list of strings (OmegaConf types no union of a string and a list)
    channel: Any = "mlp"  # likewise
    mixer: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"attention": {"num_heads": 2, "rotary_base": 10000.0, "bias": False, "dropout": 0.0}}
    )
    mlp: dict[str, Any] = field(default_factory=lambda: {"hidden_dim": None, "bias": False})
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    vocab_size: int
    memory: MemoryConfig | None = None

    def pattern_mixers(self) -> list[str]:
        """Mixer name of each entry of the pattern, before it is repeated to fill the layers."""
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
                    raise ValueError(f"backbone.pattern has unknown mixer {name!r}; allowed: {sorted(MIXERS)}")
        _repeats(names, self.n_layers, "backbone.pattern")
        return names

    def pattern_channels(self) -> list[str]:
        """Channel name of each entry of ``channel``, before it is repeated (memory layers not marked)."""
        names = [self.channel] if isinstance(self.channel, str) else list(self.channel)
        allowed = sorted(set(CHANNELS) - {"memory"})
        for name in names:
            if name not in allowed:
                raise ValueError(f"backbone.channel has unknown channel {name!r}; allowed: {allowed}")
        _repeats(names, self.n_layers, "backbone.channel")
        return names

    def layer_mixers(self) -> list[str]:
        """Mixer name of each layer, after expanding letters and repeating the pattern."""
        names = self.pattern_mixers()
        return names * _repeats(names, self.n_layers, "backbone.pattern")

    def layer_channels(self) -> list[str]:
        """Channel name of each layer (memory layers say ``"memory"``)."""
        names = self.pattern_channels()
        per_layer = names * _repeats(names, self.n_layers, "backbone.channel")
        for idx in self.placed_memory_layers("replace"):
            per_layer[idx] = "memory"
        return per_layer

    def layer_counts(self) -> tuple[Counter, Counter]:
        """(layers per mixer name, layers per channel name, memory layers that replace the channel
        counted as ``memory``): ``layer_mixers`` and ``layer_channels`` counted without listing
        every layer, so a config of 10^9 layers is counted at once."""
        mixers, channels = self.pattern_mixers(), self.pattern_channels()
        mixer_counts = Counter({name: n * (self.n_layers // len(mixers)) for name, n in Counter(mixers).items()})
        channel_counts = Counter({name: n * (self.n_layers // len(channels)) for name, n in Counter(channels).items()})
        for idx in self.placed_memory_layers("replace"):
            channel_counts[channels[idx % len(channels)]] -= 1
            channel_counts["memory"] += 1
        return mixer_counts, +channel_counts

    def placed_memory_layers(self, placement: str) -> list[int]:
        """The memory layers with ``placement`` (``replace`` or ``beside``; a null placement replaces)."""
        memory = self.memory
        if memory is None or (memory.placement or "replace") != placement:
            return []
        return list(memory.layers)

    def validate(self) -> None:
        """Ranges (the types are ``typed``'s), then cross-field checks, raised before any parameter
        is allocated; a mixer's (or the MLP's) own argument error is prefixed with its config key."""
        for key, value in [
            ("model vocab_size", self.vocab_size),
            ("backbone.d_model", self.d_model),
            ("backbone.n_layers", self.n_layers),
        ]:
            if value < 1:
                raise ValueError(f"{key}={value!r} must be a positive integer")
        for name in ("pattern", "channel"):
            value = getattr(self, name)
            if not (isinstance(value, str) or isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
                raise ValueError(
                    f"backbone.{name}={value!r} must be a string"
                    + (f" of mixer letters {sorted(PATTERN_LETTERS)}" if name == "pattern" else "")
                    + " or a non-empty list of names, one per layer"
                )
        check_real("backbone.norm_eps", self.norm_eps, low=0, low_open=True)
        mixers = self.pattern_mixers()
        memory = self.memory
        if memory is not None:
            memory.validate(self.d_model, self.n_layers)
        channels = self.layer_counts()[1]
        for name in self.mixer:
            if name not in MIXERS:
                raise ValueError(f"backbone.mixer has options for unknown mixer {name!r}; allowed: {sorted(MIXERS)}")
        # each mixer's (and the MLP's) own argument checks, run on the meta device: nothing is allocated
        with torch.device("meta"):
            for name in dict.fromkeys(mixers):
                _build_checked(MIXERS, name, "mixer", self.d_model, self.mixer.get(name, {}), f"backbone.mixer.{name}")
            if "mlp" in channels:
                _build_checked(CHANNELS, "mlp", "channel", self.d_model, self.mlp, "backbone.mlp")

    def layer_parameters(self) -> dict[str, int]:
        """Parameters of one layer of each mixer and of the MLP (name -> count), counted on the meta
        device from the config alone (shapes only: nothing is allocated, however large)."""
        counts = {}
        with torch.device("meta"):
            for name in dict.fromkeys(self.pattern_mixers()):
                layer = _build_checked(MIXERS, name, "mixer", self.d_model, self.mixer.get(name, {}), f"backbone.mixer.{name}")
                counts[name] = sum(p.numel() for p in layer.parameters())
            if "mlp" in self.layer_counts()[1]:
                layer = _build_checked(CHANNELS, "mlp", "channel", self.d_model, self.mlp, "backbone.mlp")
                counts["mlp"] = sum(p.numel() for p in layer.parameters())
        return counts


def _build_checked(registry: dict, name: str, kind: str, d_model: int, kwargs: dict, key: str) -> nn.Module:
    """``_build_layer`` at layer 0 whose ``ValueError`` names the config key of the options."""
    try:
        return _build_layer(registry, name, kind, d_model, 0, kwargs)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from err


def _repeats(names: list[str], n_layers: int, field_name: str) -> int:
    """How many times ``names`` repeats to fill ``n_layers``; ``ValueError`` unless its length divides them."""
    if not names or n_layers % len(names):
        raise ValueError(
            f"{field_name} has {len(names)} entries, which must divide n_layers={n_layers} "
            f"(one entry per layer, or a pattern repeated to fill the layers)"
        )
    return n_layers // len(names)


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``, then ``x + channel(norm(x))``, then (a memory
    placed beside the channel) ``x + memory(norm(x))``, each sub-layer with its own RMSNorm."""

    def __init__(self, d_model: int, mixer: nn.Module, channel: nn.Module | None, eps: float, memory: nn.Module | None = None):
        super().__init__()
        self.mixer_norm = mark_no_decay(nn.RMSNorm(d_model, eps=eps))
        self.mixer = mixer
        self.channel_norm = mark_no_decay(nn.RMSNorm(d_model, eps=eps)) if channel is not None else None
        self.channel = channel
        self.memory_norm = mark_no_decay(nn.RMSNorm(d_model, eps=eps)) if memory is not None else None
        self.memory = memory

    def per_token_layers(self) -> list[tuple[nn.Module, nn.Module]]:
        """(norm, layer) of the channel and of a memory beside it, those the block has, in order."""
        pairs = [(self.channel_norm, self.channel), (self.memory_norm, self.memory)]
        return [(norm, layer) for norm, layer in pairs if layer is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        x = x + self.mixer(self.mixer_norm(x))
        for norm, layer in self.per_token_layers():
            x = x + layer(norm(x))
        return x

    def step(self, x: torch.Tensor, cache: Any) -> torch.Tensor:
        """One token: x (B, D) -> (B, D) through the mixer's recurrent ``step`` (``cache`` updated)."""
        x = x + self.mixer.step(self.mixer_norm(x), cache)[0]
        for norm, layer in self.per_token_layers():
            x = x + layer(norm(x).unsqueeze(1)).squeeze(1)
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
    """``ModelConfig`` -> ``LanguageModel``, the config checked first. A mapping of ``ModelConfig``
    fields (the Python API's shorthand) is typed here, at that boundary, by ``typed``; a
    ``ModelConfig`` made in Python is typed too, so a value of the wrong type is refused alike."""
    config = typed(ModelConfig, cfg if isinstance(cfg, Mapping) else dataclasses.asdict(cfg), "model")
    config.validate()
    memory = config.memory
    channel_options = {"mlp": config.mlp}
    if memory is not None:
        shared = make_value_table(memory, config.d_model) if memory.shared else None
        channel_options["memory"] = {"config": memory, "values": shared}
    beside = config.placed_memory_layers("beside")
    blocks = []
    for idx, (mixer_name, channel_name) in enumerate(zip(config.layer_mixers(), config.layer_channels())):
        mixer = _build_layer(MIXERS, mixer_name, "mixer", config.d_model, idx, config.mixer.get(mixer_name, {}))
        channel = None
        if CHANNELS[channel_name] is not None:
            options = channel_options[channel_name]
            channel = _build_layer(CHANNELS, channel_name, "channel", config.d_model, idx, options)
        memory_layer = None
        if idx in beside:
            memory_layer = _build_layer(CHANNELS, "memory", "channel", config.d_model, idx, channel_options["memory"])
        blocks.append(Block(config.d_model, mixer, channel, config.norm_eps, memory=memory_layer))
    return LanguageModel(config, blocks)
