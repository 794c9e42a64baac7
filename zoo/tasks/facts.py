"""Parametric fact memorization: a fixed knowledge base of (entity, relation) -> value facts, stated
in training sequences and asked closed-book at test time.

A fact takes four tokens, ``entity relation ARROW value``; the target at ARROW is the value, nothing
else is scored. A sequence states ``facts_per_seq`` distinct facts in random order, with random filler
tokens in random gaps between them, so no answer can be copied from the context. Training sequences
are successive passes over the whole knowledge base (each pass a fresh permutation, cut into
sequences), so every fact is stated in training; the test split asks every fact once, the validation
split ``num_val`` of them. The knowledge base and its values depend on ``seed`` only, the same for
every split.

Vocabulary: ``[ARROW, entities..., relations..., values..., fillers...]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch

from zoo.tasks.base import IGNORE_INDEX, TOKEN_BYTES, GeneratedDataModule, check_int_option

ARROW = 0
TOKENS_PER_FACT = 4


class FactsDataModule(GeneratedDataModule):
    """Closed-book recall of ``num_facts`` synthetic facts.

    Args:
        num_facts: facts in the knowledge base, at most ``num_entities * num_relations``.
        num_entities, num_relations, num_values: sizes of the three token sets; a fact's value is
            uniform over ``num_values``.
        num_fillers: filler tokens, drawn uniformly for the gaps.
        facts_per_seq: distinct facts stated per sequence.
        seq_len: tokens per sequence, >= 4 * facts_per_seq; the rest is filler.
        num_train: training sequences, at least one pass over the knowledge base
            (``ceil(num_facts / facts_per_seq)`` sequences).
        num_val: facts asked in the validation split (None: all).
        batch_size, seed, num_workers: as for every task.
    """

    def __init__(
        self,
        num_facts: int = 2000,
        num_entities: int = 500,
        num_relations: int = 8,
        num_values: int = 64,
        num_fillers: int = 16,
        facts_per_seq: int = 8,
        seq_len: int = 48,
        num_train: int = 64000,
        num_val: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        for name, value in [
            ("num_facts", num_facts),
            ("num_entities", num_entities),
            ("num_relations", num_relations),
            ("num_values", num_values),
            ("num_fillers", num_fillers),
            ("facts_per_seq", facts_per_seq),
        ]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"task.{name}={value!r} must be a positive integer")
        check_int_option("seq_len", seq_len, 1)
        check_int_option("num_train", num_train, 1)
        check_int_option("num_val", num_val, 1, null="all facts")
        if num_facts > num_entities * num_relations:
            raise ValueError(
                f"task.num_facts={num_facts} must be <= num_entities * num_relations = {num_entities * num_relations}"
            )
        if facts_per_seq > num_facts:
            raise ValueError(f"task.facts_per_seq={facts_per_seq} must be <= task.num_facts={num_facts}")
        if seq_len < TOKENS_PER_FACT * facts_per_seq:
            raise ValueError(
                f"task.seq_len={seq_len} must be >= {TOKENS_PER_FACT} * facts_per_seq = {TOKENS_PER_FACT * facts_per_seq}"
            )
        per_pass = math.ceil(num_facts / facts_per_seq)
        if num_train < per_pass:
            raise ValueError(
                f"task.num_train={num_train} sequences cannot state all {num_facts} facts once; "
                f"need >= ceil(num_facts / facts_per_seq) = {per_pass}"
            )
        if num_val is not None and not 1 <= num_val <= num_facts:
            raise ValueError(f"task.num_val={num_val} must be in [1, num_facts={num_facts}] or null (all facts)")
        self.num_facts, self.num_entities, self.num_relations = num_facts, num_entities, num_relations
        self.num_values, self.num_fillers = num_values, num_fillers
        self.facts_per_seq, self.seq_len, self.num_train = facts_per_seq, seq_len, num_train
        self.num_val = num_facts if num_val is None else num_val
        self.vocab_size = 1 + num_entities + num_relations + num_values + num_fillers

    @property
    def entities(self) -> torch.Tensor:
        return self._knowledge_base[0]

    @property
    def relations(self) -> torch.Tensor:
        return self._knowledge_base[1]

    @property
    def values(self) -> torch.Tensor:
        return self._knowledge_base[2]

    @functools.cached_property
    def _knowledge_base(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Drawn when first asked for (by ``generate``), not in the constructor: the options are
        checked, and sized (``data_bytes``), before anything of their size is made."""
        return self.knowledge_base()

    @property
    def max_seq_len(self) -> int:
        return self.seq_len

    def data_bytes(self, splits: Iterable[str] | None = None) -> int:
        """The splits' inputs and targets (int64), the knowledge base's draw over every (entity,
        relation) pair, the training passes' fact order, and the largest split again as workspace."""
        rows = {
            "train": self.num_train,
            "test": math.ceil(self.num_facts / self.facts_per_seq),
            "val": math.ceil(self.num_val / self.facts_per_seq),
        }
        outputs = [2 * TOKEN_BYTES * rows[s] * self.seq_len for s in (self.splits if splits is None else splits)]
        passes = math.ceil(self.num_train / math.ceil(self.num_facts / self.facts_per_seq))
        draws = TOKEN_BYTES * (self.num_entities * self.num_relations + passes * self.num_facts * 2)
        return sum(outputs) + max(outputs, default=0) + draws

    def knowledge_base(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (entity, relation, value) token ids, each (num_facts,): distinct (entity, relation) pairs."""
        gen = torch.Generator().manual_seed(self.seed)
        pairs = torch.randperm(self.num_entities * self.num_relations, generator=gen)[: self.num_facts]
        entity_base = 1
        relation_base = entity_base + self.num_entities
        value_base = relation_base + self.num_relations
        values = torch.randint(self.num_values, (self.num_facts,), generator=gen) + value_base
        return pairs // self.num_relations + entity_base, pairs % self.num_relations + relation_base, values

    def generate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.split_seed(split, salt=1000))  # apart from the knowledge base's seed
        if split == "train":
            passes = math.ceil(self.num_train / math.ceil(self.num_facts / self.facts_per_seq))
            order = [self._pass_sequences(torch.randperm(self.num_facts, generator=gen)) for _ in range(passes)]
            facts = torch.cat(order)[: self.num_train]
        else:
            asked = self.num_facts if split == "test" else self.num_val
            facts = self._pass_sequences(torch.randperm(self.num_facts, generator=gen)[:asked])
        return self.sequences(facts, gen)

    def _pass_sequences(self, order: torch.Tensor) -> torch.Tensor:
        """Fact indices (n,) -> (ceil(n / facts_per_seq), facts_per_seq), the last row padded with -1."""
        rows = math.ceil(order.numel() / self.facts_per_seq)
        padded = torch.full((rows * self.facts_per_seq,), -1, dtype=torch.long)
        padded[: order.numel()] = order
        return padded.view(rows, self.facts_per_seq)

    def sequences(self, facts: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fact indices (n, facts_per_seq), -1 = none -> (inputs, targets) (n, seq_len): the facts at
        random offsets among filler tokens, the value scored at each ARROW."""
        n, per_seq = facts.shape
        filler_base = self.vocab_size - self.num_fillers
        inputs = torch.randint(self.num_fillers, (n, self.seq_len), generator=gen) + filler_base
        targets = torch.full((n, self.seq_len), IGNORE_INDEX, dtype=torch.long)
        spare = self.seq_len - TOKENS_PER_FACT * per_seq
        gaps = torch.randint(spare + 1, (n, per_seq), generator=gen).sort(dim=1).values
        starts = TOKENS_PER_FACT * torch.arange(per_seq) + gaps  # (n, per_seq), non-overlapping
        present = facts >= 0
        rows = torch.arange(n).unsqueeze(1).expand(n, per_seq)[present]
        starts, index = starts[present], facts[present]
        inputs[rows, starts] = self.entities[index]
        inputs[rows, starts + 1] = self.relations[index]
        inputs[rows, starts + 2] = ARROW
        inputs[rows, starts + 3] = self.values[index]
        targets[rows, starts + 2] = self.values[index]
        return inputs, targets

    def summarize(self, test_metrics: dict[str, float], num_parameters: int) -> dict[str, float]:
        """Capacity from the test accuracy (= fraction of facts recalled: one scored token per fact)."""
        recalled = test_metrics["test/acc"] * self.num_facts
        return {
            "facts": self.num_facts,
            "facts_recalled": recalled,
            "facts_per_parameter": recalled / num_parameters,
        }
