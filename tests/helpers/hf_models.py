"""Tiny random Hugging Face models, built and saved locally with transformers itself (no download):
Llama with grouped-query attention and tied embeddings, Mamba, Mamba-2."""

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

VOCAB = 97

HF_CONFIGS = {
    "llama": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=5000.0,
            rms_norm_eps=1e-5,
        ),
    ),
    "mamba": ("MambaForCausalLM", "MambaConfig", dict(hidden_size=32, num_hidden_layers=2, state_size=8)),
    "mamba2": (
        "Mamba2ForCausalLM",
        "Mamba2Config",
        dict(hidden_size=32, num_hidden_layers=2, state_size=8, num_heads=8, head_dim=8, n_groups=2, chunk_size=16),
    ),
}


def save_tiny(kind: str, directory: Path, seed: int = 0, **changes):
    """A tiny random ``kind`` model saved to ``directory`` with ``save_pretrained``; returns it (eval)."""
    import torch

    model_cls, config_cls, options = HF_CONFIGS[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{"vocab_size": VOCAB, **options, **changes})
    model = getattr(transformers, model_cls)(config).eval()
    model.save_pretrained(directory)
    return model


def save_tokenizer(directory: Path, text: str, vocab_size: int = VOCAB) -> None:
    """A byte-level BPE of at most ``vocab_size`` tokens (``<|endoftext|>`` first), trained on
    ``text`` with the ``tokenizers`` library, saved as ``directory/tokenizer.json``: what a pretrained
    model directory carries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
