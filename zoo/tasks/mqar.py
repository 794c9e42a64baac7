"""Multi-query associative recall (MQAR), as defined by zoology (Arora et al. 2023).

An example is ``k1 v1 k2 v2 ... kN vN`` followed by a query region in which every key appears once
more, at even offsets drawn from a power law (``p(gap) ~ gap^(power_a - 1)``, so most queries come
soon after the context). The target at a query position is the value paired with that key; every
other target is -100. Keys come from ``[1, vocab/2)``, values from ``[vocab/2, vocab)``, both unique
within an example; token 0 is the filler, or a uniform random token when ``random_non_queries``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.core.value_checks import check_real
from zoo.tasks.base import IGNORE_INDEX, SyntheticDataModule


def check_mqar_sizes(vocab_size: int, seq_len: int, num_kv_pairs: int, power_a: float) -> None:
    """Raise ``ValueError`` naming the field when the sizes admit no MQAR example."""
    if num_kv_pairs < 1:
        raise ValueError(f"task.num_kv_pairs={num_kv_pairs} must be >= 1")
    if seq_len < 4 * num_kv_pairs:
        raise ValueError(
            f"task.seq_len={seq_len} is too short for num_kv_pairs={num_kv_pairs}: "
            f"need seq_len >= 4 * num_kv_pairs = {4 * num_kv_pairs} (context plus one query slot per key)"
        )
    num_keys = vocab_size // 2 - 1
    if num_kv_pairs > num_keys:
        raise ValueError(
            f"task.vocab_size={vocab_size} is too small for num_kv_pairs={num_kv_pairs} unique keys: "
            f"keys come from [1, vocab_size/2), so vocab_size must be >= {2 * (num_kv_pairs + 1)}"
        )
    check_real("task.power_a", power_a, low=0, low_open=True)


@dataclass(frozen=True)
class MQAR:
    """MQAR knobs; see ``generate_mqar``."""

    vocab_size: int = 128
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self):
        check_mqar_sizes(self.vocab_size, self.seq_len, self.num_kv_pairs, self.power_a)

    def workspace_bytes(self, num_examples: int) -> int:
        """What ``generate_mqar`` holds at once, coarsely: a float32 draw and its int64 argsort over
        the vocabulary per example (unique keys and values), and a few (n, seq_len) int64 tensors."""
        return num_examples * (12 * self.vocab_size + 32 * self.seq_len)


def generate_mqar(
    num_examples: int,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    power_a: float = MQAR.power_a,
    random_non_queries: bool = MQAR.random_non_queries,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (inputs, targets), each (num_examples, seq_len) long; deterministic in ``seed``."""
    check_mqar_sizes(vocab_size, seq_len, num_kv_pairs, power_a)
    if num_examples < 1:
        raise ValueError(f"number of MQAR examples={num_examples} must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    n, kv, half = num_examples, num_kv_pairs, vocab_size // 2

    # A random permutation per row, truncated, gives kv distinct tokens per example.
    keys = torch.rand(n, half - 1, generator=gen).argsort(dim=1)[:, :kv] + 1
    values = torch.rand(n, vocab_size - half, generator=gen).argsort(dim=1)[:, :kv] + half

    inputs = torch.zeros(n, seq_len, dtype=torch.long)
    inputs[:, 0 : 2 * kv : 2] = keys
    inputs[:, 1 : 2 * kv : 2] = values

    num_slots = (seq_len - 2 * kv) // 2
    gap = torch.arange(1, num_slots + 1, dtype=torch.float64)
    slot_weights = (power_a * gap ** (power_a - 1)).expand(n, num_slots)
    slots = torch.multinomial(slot_weights, kv, replacement=False, generator=gen)
    query_pos = 2 * kv + 2 * slots  # (n, kv), the i-th column queries the i-th key

    inputs.scatter_(1, query_pos, keys)
    targets = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)
    targets.scatter_(1, query_pos, values)

    if random_non_queries:
        filler = inputs == 0
        inputs[filler] = torch.randint(vocab_size, (int(filler.sum()),), generator=gen)
    return inputs, targets


class MQARDataModule(
    SyntheticDataModule,
    knobs=MQAR,
    generator=generate_mqar,
    test_overrides=("seq_len", "num_kv_pairs"),  # zoology's extrapolation: train short, test long
    num_train=100_000,
):
    """MQAR splits; see ``generate_mqar`` and ``SyntheticDataModule``."""
