"""Rotary position embedding (Su et al. 2021), GPT-NeoX "rotate half" layout."""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """Rotates query/key channels by position-dependent angles; ``dim`` must be even.

    Frequencies are ``base ** (-2i / dim)`` for ``i < dim / 2``. The cos/sin tables are computed for
    the longest sequence seen so far and cached (not saved in checkpoints).
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim={dim} must be even")
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None

    def _tables(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos is None or self._cos.shape[0] < length or self._cos.device != device:
            pos = torch.arange(length, device=device, dtype=torch.float32)
            angles = torch.outer(pos, self.inv_freq.to(device))  # (L, dim/2)
            angles = torch.cat([angles, angles], dim=-1)  # (L, dim)
            self._cos, self._sin = angles.cos(), angles.sin()
        return self._cos[:length].to(dtype), self._sin[:length].to(dtype)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: (B, H, L, dim) at positions offset..offset+L-1 -> same shape, rotated."""
        length = x.shape[-2]
        cos, sin = self._tables(offset + length, x.device, x.dtype)
        cos, sin = cos[offset:], sin[offset:]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin
