"""``LlamaForCausalLM`` (SmolLM, TinyLlama, Llama 2/3 without rope scaling) <-> memzoo's attention
backbone: RMSNorm pre-norm blocks, rotary attention with grouped-query heads, SwiGLU MLP.

Hugging Face's Llama weights are in the "rotate half" rotary layout memzoo's ``Rotary`` uses, so q
and k need no permutation; q, k and v are fused into memzoo's ``qkv`` as [q; k; v]."""

from __future__ import annotations

from typing import Any

import torch

from zoo.model.language_model import LanguageModel, ModelConfig
from zoo.pretrained.mapping import check_fields, check_sizes, plain_stack, rope_theta

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPE = "llama"
SIZE_FIELDS = {  # ModelConfig path -> config.json field, to name the one that makes a model too large
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "vocab_size": "vocab_size",
    "mlp.hidden_dim": "intermediate_size",
    "mixer.attention.num_heads": "num_attention_heads",
    "mixer.attention.num_kv_heads": "num_key_value_heads",
}


def model_config(hf: dict[str, Any]) -> ModelConfig:
    """A Llama ``config.json`` -> the ``ModelConfig`` of the same network; ``ValueError`` naming each
    field that changes the math and has no memzoo counterpart, or a size that is no positive integer."""
    check_sizes(ARCHITECTURE, hf, tuple(SIZE_FIELDS.values())[:-1], ("num_key_value_heads", "head_dim"))
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    check_fields(
        ARCHITECTURE,
        hf,
        {
            "hidden_act": (lambda v: v == "silu", "silu (SwiGLU)"),
            "head_dim": (lambda v: v in (None, hidden // heads), f"hidden_size / num_attention_heads = {hidden // heads}"),
            "pretraining_tp": (lambda v: v in (None, 1), "1"),
        },
    )
    return ModelConfig(
        name=MODEL_TYPE,
        d_model=hidden,
        n_layers=hf["num_hidden_layers"],
        pattern="A",
        channel="mlp",
        mixer={
            "attention": {
                "num_heads": heads,
                "num_kv_heads": hf.get("num_key_value_heads") or heads,
                "rotary_base": rope_theta(ARCHITECTURE, hf),
                "bias": bool(hf.get("attention_bias", False)),
                "dropout": float(hf.get("attention_dropout") or 0.0),
            }
        },
        mlp={"hidden_dim": hf["intermediate_size"], "bias": bool(hf.get("mlp_bias", False))},
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        vocab_size=hf["vocab_size"],
    )


def _layer_names(i: int) -> dict[str, str]:
    """memzoo name -> Hugging Face name of layer ``i``'s unfused tensors."""
    hf, mz = f"model.layers.{i}.", f"blocks.{i}."
    return {
        f"{mz}mixer_norm.weight": f"{hf}input_layernorm.weight",
        f"{mz}mixer.out_proj.weight": f"{hf}self_attn.o_proj.weight",
        f"{mz}mixer.out_proj.bias": f"{hf}self_attn.o_proj.bias",
        f"{mz}channel_norm.weight": f"{hf}post_attention_layernorm.weight",
        f"{mz}channel.w1.weight": f"{hf}mlp.gate_proj.weight",
        f"{mz}channel.w3.weight": f"{hf}mlp.up_proj.weight",
        f"{mz}channel.w2.weight": f"{hf}mlp.down_proj.weight",
        f"{mz}channel.w1.bias": f"{hf}mlp.gate_proj.bias",
        f"{mz}channel.w3.bias": f"{hf}mlp.up_proj.bias",
        f"{mz}channel.w2.bias": f"{hf}mlp.down_proj.bias",
    }


def _names(config: ModelConfig) -> dict[str, str]:
    names = {"embedding.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    names["lm_head.weight"] = "lm_head.weight"
    for i in range(config.n_layers):
        names.update(_layer_names(i))
    return names


def to_memzoo(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face Llama state dict -> memzoo's (q, k, v fused; a tied head is the embedding)."""
    out = {mz: state[hf] for mz, hf in _names(config).items() if hf in state}
    for i in range(config.n_layers):
        prefix = f"model.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [state.get(f"{prefix}{p}_proj.{kind}") for p in "qkv"]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.mixer.qkv.{kind}"] = torch.cat(parts)
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """memzoo state dict of a Llama-shaped model -> Hugging Face Llama names (qkv split)."""
    attention = config.mixer["attention"]
    head_dim = config.d_model // attention["num_heads"]
    kv_heads = attention.get("num_kv_heads") or attention["num_heads"]
    sizes = [attention["num_heads"] * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    out = {hf: state[mz] for mz, hf in _names(config).items() if mz in state}
    for i in range(config.n_layers):
        for kind in ("weight", "bias"):
            fused = state.get(f"blocks.{i}.mixer.qkv.{kind}")
            if fused is not None:
                for name, part in zip("qkv", fused.split(sizes)):
                    out[f"model.layers.{i}.self_attn.{name}_proj.{kind}"] = part
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def hf_config(model: LanguageModel, source: dict[str, Any]) -> dict[str, Any]:
    """``model`` (a Llama-shaped stack) as a Llama ``config.json``, over ``source`` (the imported
    model's, for the fields memzoo does not model: token ids, max_position_embeddings, ...)."""
    config = model.config
    attention = config.mixer["attention"]
    return {
        **source,
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": attention["num_heads"],
        "num_key_value_heads": attention.get("num_kv_heads") or attention["num_heads"],
        "head_dim": config.d_model // attention["num_heads"],
        "intermediate_size": config.mlp["hidden_dim"],
        "hidden_act": "silu",
        "attention_bias": attention.get("bias", False),
        "mlp_bias": config.mlp.get("bias", False),
        "rms_norm_eps": config.norm_eps,
        "rope_theta": attention.get("rotary_base", 10000.0),
        "rope_parameters": {"rope_type": "default", "rope_theta": attention.get("rotary_base", 10000.0)},
        "tie_word_embeddings": config.tie_embeddings,
        "vocab_size": config.vocab_size,
        "torch_dtype": "float32",
    }


def expressible(model: LanguageModel) -> str | None:
    """Why ``model`` has no ``LlamaForCausalLM`` counterpart, or None when it has one."""
    why = plain_stack(model, "attention", "mlp")
    if why is None and model.config.mlp.get("hidden_dim") is None:
        return "its mlp.hidden_dim is not set"
    return why
