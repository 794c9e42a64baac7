"""Language-modeling metrics beyond loss: perplexity (torchmetrics) and bits per byte."""

from __future__ import annotations

import math

import torch
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
