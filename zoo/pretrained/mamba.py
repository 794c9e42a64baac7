"""``MambaForCausalLM`` and ``Mamba2ForCausalLM`` (state-spaces' mamba-130m ... in the Hugging Face
layout) <-> memzoo's Mamba / Mamba-2 backbones: blocks of RMSNorm + mixer without a channel.

memzoo's mixers carry mamba-ssm's parameter names, so a layer's weights move under their own names;
only the prefixes differ (``backbone.layers.i.mixer.`` -> ``blocks.i.mixer.``)."""

from __future__ import annotations

import re
from typing import Any

import torch

from zoo.model.language_model import LanguageModel, ModelConfig
from zoo.pretrained.mapping import check_fields, check_sizes, finite_limit, plain_stack

SILU = {"hidden_act": (lambda v: v in (None, "silu"), "silu")}
REQUIRED = ("hidden_size", "num_hidden_layers", "vocab_size")
COMMON_FIELDS = {"d_model": "hidden_size", "n_layers": "num_hidden_layers", "vocab_size": "vocab_size"}
MAMBA_SIZE_FIELDS = {  # ModelConfig path -> config.json field, to name the one that makes a model too large
    **COMMON_FIELDS,
    "mixer.mamba.d_state": "state_size",
    "mixer.mamba.d_conv": "conv_kernel",
    "mixer.mamba.expand": "expand",
    "mixer.mamba.dt_rank": "time_step_rank",
}
MAMBA2_SIZE_FIELDS = {
    **COMMON_FIELDS,
    "mixer.mamba2.d_state": "state_size",
    "mixer.mamba2.d_conv": "conv_kernel",
    "mixer.mamba2.expand": "expand",
    "mixer.mamba2.headdim": "head_dim",
    "mixer.mamba2.ngroups": "n_groups",
    "mixer.mamba2.chunk_size": "chunk_size",
}


def mamba_config(hf: dict[str, Any]) -> ModelConfig:
    """A Mamba ``config.json`` -> the ``ModelConfig`` of the same network."""
    check_sizes("MambaForCausalLM", hf, REQUIRED, ("state_size", "conv_kernel", "expand", "intermediate_size"))
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
    optional = ("state_size", "conv_kernel", "expand", "head_dim", "n_groups", "chunk_size", "num_heads")
    check_sizes("Mamba2ForCausalLM", hf, REQUIRED, optional)
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


# (Hugging Face prefix, memzoo prefix), ``{}`` standing for a layer index; the first that matches wins
PREFIXES = [
    ("backbone.embeddings.", "embedding."),
    ("backbone.norm_f.", "norm."),
    ("backbone.layers.{}.norm.", "blocks.{}.mixer_norm."),
    ("backbone.layers.{}.mixer.", "blocks.{}.mixer."),
    ("lm_head.", "lm_head."),
]


def _rules(source: int) -> list[tuple[str, str]]:
    """``PREFIXES`` as (regex, replacement) from side ``source`` (0: Hugging Face, 1: memzoo) to the other."""
    rules = []
    for pair in PREFIXES:
        frm, to = pair[source], pair[1 - source]
        rules.append(("^" + re.escape(frm).replace(r"\{\}", r"(\d+)"), to.replace("{}", r"\1")))
    return rules


def _rename(state: dict[str, torch.Tensor], source: int, tied: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in _rules(source):
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
    if tied:
        out.pop("lm_head.weight", None)
    return out


def to_memzoo(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face Mamba / Mamba-2 state dict -> memzoo's (a tied head is the embedding)."""
    return _rename(state, 0, config.tie_embeddings)


def to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """memzoo state dict of a Mamba / Mamba-2 model -> Hugging Face names."""
    return _rename(state, 1, config.tie_embeddings)


def mamba_expressible(model: LanguageModel) -> str | None:
    """Why ``model`` has no ``MambaForCausalLM`` counterpart, or None when it has one."""
    return plain_stack(model, "mamba", "none")


def mamba2_expressible(model: LanguageModel) -> str | None:
    """Why ``model`` has no ``Mamba2ForCausalLM`` counterpart, or None (one RMSNorm epsilon for the
    blocks and the mixers' gated norm, as transformers has)."""
    why = plain_stack(model, "mamba2", "none")
    if why is None and model.blocks[0].mixer.norm.eps != model.config.norm_eps:
        return f"its mixers' rmsnorm_eps {model.blocks[0].mixer.norm.eps} differs from norm_eps {model.config.norm_eps}"
    return why


def _common(model: LanguageModel, source: dict[str, Any], architecture: str, model_type: str) -> dict[str, Any]:
    mixer, config = model.blocks[0].mixer, model.config
    return {
        **source,
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "state_size": mixer.d_state,
        "conv_kernel": mixer.d_conv,
        "expand": mixer.d_inner // config.d_model,
        "use_bias": mixer.in_proj.bias is not None,
        "use_conv_bias": mixer.conv1d.bias is not None,
        "layer_norm_epsilon": config.norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        "vocab_size": config.vocab_size,
    }


def mamba_hf_config(model: LanguageModel, source: dict[str, Any]) -> dict[str, Any]:
    """``model`` (a Mamba stack) as a ``MambaForCausalLM`` ``config.json``, over ``source``'s other fields."""
    mixer = model.blocks[0].mixer
    config = _common(model, source, "MambaForCausalLM", "mamba")
    return {**config, "intermediate_size": mixer.d_inner, "time_step_rank": mixer.dt_rank}


def mamba2_hf_config(model: LanguageModel, source: dict[str, Any]) -> dict[str, Any]:
    """``model`` (a Mamba-2 stack) as a ``Mamba2ForCausalLM`` ``config.json``, over ``source``'s other
    fields (its ``time_step_limit``, when it has one, is the no-clamp default memzoo imports)."""
    mixer = model.blocks[0].mixer
    config = _common(model, source, "Mamba2ForCausalLM", "mamba2")
    return {
        **config,
        "num_heads": mixer.nheads,
        "head_dim": mixer.headdim,
        "n_groups": mixer.ngroups,
        "chunk_size": mixer.chunk_size,
    }
