"""``MambaForCausalLM`` and ``Mamba2ForCausalLM`` (state-spaces' mamba-130m ... in the Hugging Face
layout) <-> memzoo's Mamba / Mamba-2 backbones: blocks of RMSNorm + mixer without a channel.

memzoo's mixers carry mamba-ssm's parameter names, so a layer's weights move under their own names;
only the prefixes differ (``backbone.layers.i.mixer.`` -> ``blocks.i.mixer.``)."""

from __future__ import annotations

import re
from typing import Any

import torch

from zoo.model.language_model import ModelConfig
from zoo.pretrained.mapping import check_fields, finite_limit

SILU = {"hidden_act": (lambda v: v in (None, "silu"), "silu")}


def mamba_config(hf: dict[str, Any]) -> ModelConfig:
    """A Mamba ``config.json`` -> the ``ModelConfig`` of the same network."""
    hidden, expand = hf["hidden_size"], hf.get("expand", 2)
    check_fields(
        "MambaForCausalLM",
        hf,
        {**SILU, "intermediate_size": (lambda v: v in (None, expand * hidden), f"expand * hidden_size = {expand * hidden}")},
    )
    rank = hf.get("time_step_rank", "auto")
    options = {
        "d_state": hf.get("state_size", 16),
        "d_conv": hf.get("conv_kernel", 4),
        "expand": expand,
        "dt_rank": rank,
        "conv_bias": bool(hf.get("use_conv_bias", True)),
        "bias": bool(hf.get("use_bias", False)),
    }
    return _ssm_config("mamba", "M", hf, options)


def mamba2_config(hf: dict[str, Any]) -> ModelConfig:
    """A Mamba-2 ``config.json`` -> the ``ModelConfig`` of the same network."""
    hidden, expand = hf["hidden_size"], hf.get("expand", 2)
    head_dim = hf.get("head_dim", 64)
    heads = expand * hidden / head_dim
    check_fields(
        "Mamba2ForCausalLM",
        hf,
        {
            **SILU,
            "num_heads": (lambda v: v * head_dim == expand * hidden, f"expand * hidden_size / head_dim = {heads:g}"),
            "time_step_limit": (finite_limit, "[0, inf] (no clamp of the step size)"),
            "rms_norm": (lambda v: v in (None, True), "true (the gated RMSNorm before out_proj)"),
        },
    )
    options = {
        "d_state": hf.get("state_size", 128),
        "d_conv": hf.get("conv_kernel", 4),
        "expand": expand,
        "headdim": head_dim,
        "ngroups": hf.get("n_groups", 1),
        "chunk_size": hf.get("chunk_size", 256),
        "conv_bias": bool(hf.get("use_conv_bias", True)),
        "bias": bool(hf.get("use_bias", False)),
        "rmsnorm_eps": hf.get("layer_norm_epsilon", 1e-5),
    }
    return _ssm_config("mamba2", "S", hf, options)


def _ssm_config(name: str, letter: str, hf: dict[str, Any], options: dict[str, Any]) -> ModelConfig:
    return ModelConfig(
        name=name,
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        pattern=letter,
        channel="none",
        mixer={name: options},
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        vocab_size=hf["vocab_size"],
    )


# (Hugging Face pattern, memzoo replacement); applied in order, the first that matches wins
_TO_MEMZOO = [
    (r"^backbone\.embeddings\.", "embedding."),
    (r"^backbone\.norm_f\.", "norm."),
    (r"^backbone\.layers\.(\d+)\.norm\.", r"blocks.\1.mixer_norm."),
    (r"^backbone\.layers\.(\d+)\.mixer\.", r"blocks.\1.mixer."),
    (r"^lm_head\.", "lm_head."),
]
_TO_HF = [
    (r"^embedding\.", "backbone.embeddings."),
    (r"^norm\.", "backbone.norm_f."),
    (r"^blocks\.(\d+)\.mixer_norm\.", r"backbone.layers.\1.norm."),
    (r"^blocks\.(\d+)\.mixer\.", r"backbone.layers.\1.mixer."),
    (r"^lm_head\.", "lm_head."),
]


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], tied: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
    if tied:
        out.pop("lm_head.weight", None)
    return out


def to_memzoo(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face Mamba / Mamba-2 state dict -> memzoo's (a tied head is the embedding)."""
    return _rename(state, _TO_MEMZOO, config.tie_embeddings)


def to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """memzoo state dict of a Mamba / Mamba-2 model -> Hugging Face names."""
    return _rename(state, _TO_HF, config.tie_embeddings)
