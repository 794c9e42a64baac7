"""Metrics beyond loss and accuracy: bits per byte (language modeling) and knowledge in bits (recall
tasks), as torchmetrics metrics: accumulated over a split and synced across ranks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.text import Perplexity


def bits_per_byte(loss_nats_per_token: float | torch.Tensor, bytes_per_token: float) -> float | torch.Tensor:
    """Cross-entropy in nats per token -> bits per byte of the text those tokens cover."""
    return loss_nats_per_token / math.log(2) / bytes_per_token


class BitsPerByte(Perplexity):
    """Cross-entropy in bits per byte of text: ``ln(perplexity) / ln 2 / bytes_per_token``.

    Accumulates like ``Perplexity`` (summed log-probabilities and token count over the split, synced
    across ranks); ``bytes_per_token`` converts from tokens to the bytes they cover (1 for bytes).
    """

    def __init__(self, bytes_per_token: float, ignore_index: int | None = None, **kwargs):
        super().__init__(ignore_index=ignore_index, **kwargs)
        if not bytes_per_token > 0:
            raise ValueError(f"bytes_per_token={bytes_per_token} must be > 0")
        self.bytes_per_token = bytes_per_token

    def compute(self) -> torch.Tensor:
        return bits_per_byte(torch.log(super().compute()), self.bytes_per_token)


class KnowledgeBits(Metric):
    """What a model knows beyond chance, in bits, summed over a split's scored tokens:
    ``sum_i max(0, chance_bits - CE_i / ln 2)``, ``CE_i`` the cross-entropy (nats) of target i.

    With ``chance_bits = log2(num_values)`` and one scored token per fact (the facts task), each
    fact adds what the model's distribution says about its value beyond a uniform guess, at most
    ``chance_bits`` (the value predicted with certainty), 0 when it does no better than chance: the
    knowledge measure of Allen-Zhu & Li (2024), summed over the knowledge base.

    Args:
        chance_bits: bits of one scored target at chance, >= 0 (0: nothing to know, every sum 0).
        ignore_index: targets with this id are not counted.
    """

    full_state_update = False

    def __init__(self, chance_bits: float, ignore_index: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not chance_bits >= 0:
            raise ValueError(f"chance_bits={chance_bits} must be >= 0")
        self.chance_bits = float(chance_bits)
        self.ignore_index = ignore_index
        self.add_state("bits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """logits (N, V), targets (N,) long."""
        if self.ignore_index is not None:
            keep = targets != self.ignore_index
            logits, targets = logits[keep], targets[keep]
        ce_bits = F.cross_entropy(logits.float(), targets, reduction="none") / math.log(2)
        self.bits += (self.chance_bits - ce_bits.double()).clamp(min=0).sum()

    def compute(self) -> torch.Tensor:
        return self.bits
