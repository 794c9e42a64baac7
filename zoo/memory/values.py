"""The value table: N learned rows of width v_dim, read as a weighted sum of k selected rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.tags import mark_no_reinit, tag_optim

VALUE_GROUP = "memory_values"


class ValueTable(nn.Module):
    """Local (unsharded) value table, ``weight`` (N, v_dim) ~ N(0, v_dim^-0.5).

    The weight is tagged for its own optimizer group (``memory_values``: own lr, no weight decay,
    and ``sparse`` when rows-only updates are on). One table object may serve several layers.
    """

    def __init__(self, n_slots: int, v_dim: int, lr: float, sparse: bool):
        super().__init__()
        self.n_slots, self.v_dim, self.sparse = n_slots, v_dim, sparse
        self.weight = nn.Parameter(torch.empty(n_slots, v_dim))
        mark_no_reinit(tag_optim(self.weight, group=VALUE_GROUP, lr=lr, weight_decay=0.0, sparse=sparse))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.v_dim**-0.5)

    def read(self, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """slots (T, R) long, weights (T, R) -> sum_r weights[t, r] * weight[slots[t, r]], (T, v_dim).

        An embedding bag: no (T, N) matrix is formed; with ``sparse`` the weight's gradient is a
        sparse tensor holding only the rows read.
        """
        return F.embedding_bag(
            slots, self.weight, per_sample_weights=weights.to(self.weight.dtype), mode="sum", sparse=self.sparse
        )
