"""Memory usage statistics of Lample et al. 2019: fraction of slots used, KL from uniform."""

from __future__ import annotations

import math

import torch


def usage_fraction(read_counts: torch.Tensor) -> float:
    """read_counts (N,) -> fraction of slots read at least once."""
    return (read_counts > 0).double().mean().item()


def kl_from_uniform(read_mass: torch.Tensor) -> float:
    """read_mass (N,) non-negative -> KL(p || uniform) with p = read_mass / sum = log N + sum p log p.

    0 when every slot gets the same mass, log N when one slot gets all of it; NaN when nothing was read.
    """
    total = read_mass.double().sum()
    if total <= 0:
        return float("nan")
    p = read_mass.double() / total
    nonzero = p[p > 0]
    return math.log(read_mass.numel()) + (nonzero * nonzero.log()).sum().item()


class UsageTracker:
    """Accumulates, while ``active``, how often each slot is read and with how much softmax weight."""

    def __init__(self) -> None:
        self.active = False
        self.counts: torch.Tensor | None = None
        self.mass: torch.Tensor | None = None

    def start(self) -> None:
        self.active, self.counts, self.mass = True, None, None

    def stop(self) -> None:
        self.active = False

    @torch.no_grad()
    def update(self, slots: torch.Tensor, weights: torch.Tensor, n_slots: int) -> None:
        """slots, weights: (..., k) of one forward pass."""
        if not self.active:
            return
        flat = slots.flatten()
        counts = torch.bincount(flat, minlength=n_slots)
        mass = torch.zeros(n_slots, dtype=torch.float64, device=flat.device).index_add_(0, flat, weights.flatten().double())
        self.counts = counts if self.counts is None else self.counts + counts
        self.mass = mass if self.mass is None else self.mass + mass
