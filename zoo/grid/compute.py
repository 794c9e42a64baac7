"""The compute multiplier of a model against a dense compute curve: how many times its training
FLOPs the dense model needs to reach the same loss (Berges et al. 2024 compare memory and dense
models this way; Lample et al. 2019 by layers)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Multiplier:
    """``value`` x the model's training FLOPs; ``bound``: ``"="`` read off the curve, ``">"`` the
    model beat the curve's cheapest-to-reach best point, so the multiplier is at least ``value``
    (the curve's largest budget over the model's), ``"<"`` it lost to the curve's smallest budget,
    so at most ``value``."""

    value: float
    bound: str = "="

    def __str__(self) -> str:
        return f"{self.value:.2f}x" if self.bound == "=" else f"{self.bound} {self.value:.2f}x"


def compute_multiplier(curve: list[tuple[float, float]], loss: float, flops: float) -> Multiplier:
    """``curve``: (training FLOPs, loss) of the dense model at several budgets, at least two, FLOPs
    > 0; ``loss`` and ``flops``: the model compared. The FLOPs at which the curve reaches ``loss``,
    linear in log FLOPs between the two budgets around it (the first crossing from the cheapest
    budget, should the curve not fall monotonically), divided by ``flops``.

    Raises ``ValueError`` for fewer than two points, non-positive or non-finite FLOPs, or a
    non-finite loss."""
    if len(curve) < 2:
        raise ValueError(f"a compute curve needs at least two (FLOPs, loss) points, got {len(curve)}")
    for point_flops, point_loss in [*curve, (flops, loss)]:
        if not (math.isfinite(point_flops) and point_flops > 0 and math.isfinite(point_loss)):
            raise ValueError(f"(FLOPs, loss) = ({point_flops!r}, {point_loss!r}) must be finite, with FLOPs > 0")
    points = sorted(curve)
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if l1 <= loss <= l0 and l0 > l1:
            at = math.exp(math.log(f0) + (l0 - loss) / (l0 - l1) * (math.log(f1) - math.log(f0)))
            return Multiplier(at / flops)
        if l0 == loss:
            return Multiplier(f0 / flops)
    if loss < min(point_loss for _, point_loss in points):
        return Multiplier(points[-1][0] / flops, ">")
    return Multiplier(points[0][0] / flops, "<")
