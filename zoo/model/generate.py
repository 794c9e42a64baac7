"""Loading a trained model from a checkpoint, and autoregressive generation through the recurrent
path (KV cache for attention, ``step`` for Mamba / Mamba-2): one forward per new token."""

from __future__ import annotations

import math

import torch

from zoo.model.language_model import LanguageModel
from zoo.model.size_budget import check_generation_size


def check_generation_arguments(
    model: LanguageModel, prompt_ids, max_new_tokens, temperature, top_k, memory_budget: int | None = None
) -> None:
    """``ValueError`` (``TypeError`` for a wrong type) naming the argument, its value and what is allowed;
    ``max_new_tokens`` whose output ids and caches exceed ``memory_budget`` bytes (None: the memory
    of the model's device) is refused before anything is allocated."""
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dtype not in (torch.int64, torch.int32):
        what = prompt_ids.dtype if isinstance(prompt_ids, torch.Tensor) else type(prompt_ids).__name__
        raise TypeError(f"prompt_ids must be an integer (long) tensor of token ids, got {what}")
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] < 1 or prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must be (batch >= 1, length >= 1), got shape {tuple(prompt_ids.shape)}")
    vocab = model.config.vocab_size
    if prompt_ids.min() < 0 or prompt_ids.max() >= vocab:
        raise ValueError(f"prompt token ids must be in [0, {vocab}); got {int(prompt_ids.min())}..{int(prompt_ids.max())}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    check_generation_size(model, prompt_ids.shape[0], prompt_ids.shape[1], max_new_tokens, memory_budget)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not math.isfinite(temperature):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy)")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k={top_k!r} must be an int in [1, vocab_size={vocab}] or None")


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """prompt_ids (B, P) long -> (B, P + max_new_tokens): the prompt followed by sampled tokens.

    temperature 0 is greedy (argmax); otherwise sample from softmax(logits / temperature), restricted
    to the ``top_k`` most likely tokens when given. The prompt is fed one token at a time through the
    layers' recurrent ``step`` (attention: KV cache), so every token costs one single-position pass.
    """
    check_generation_arguments(model, prompt_ids, max_new_tokens, temperature, top_k)
    batch, prompt_len = prompt_ids.shape
    caches = model.allocate_caches(batch, prompt_len + max_new_tokens)
    out = [prompt_ids]
    for t in range(prompt_len):
        logits = model.step(prompt_ids[:, t], caches)
    for _ in range(max_new_tokens):
        token = _pick(logits, temperature, top_k, generator)
        out.append(token.unsqueeze(1))
        logits = model.step(token, caches)
    return torch.cat(out, dim=1)


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next tokens (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        threshold = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
