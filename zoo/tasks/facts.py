"""Parametric fact memorization: a fixed knowledge base of (entity, relation) -> value facts, stated
in training sequences and asked closed-book at test time.

An entity is named by ``name_len`` tokens drawn from ``name_vocab`` name pieces, every entity a
distinct name, so with ``name_len > 1`` no single embedding row holds an entity. A fact takes
``name_len + 3`` tokens, ``name_1 .. name_L relation ARROW value``; the target at ARROW is the value,
nothing else is scored. A sequence states ``facts_per_seq`` distinct facts in random order, with
random filler tokens in random gaps between them, so no answer can be copied from the context.
Training sequences are successive passes over the whole knowledge base (each pass a fresh
permutation, cut into sequences), so every fact is stated in training; the test split asks every
fact once, the validation split ``num_val`` of them. The knowledge base, its values and the entities' names depend on ``seed``
only, the same for every split.

Vocabulary: ``[ARROW, name pieces..., relations..., values..., fillers...]``; with ``name_len=1`` and
``name_vocab`` null the pieces are the entities themselves (entity e is token 1 + e).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import torch

from zoo.tasks.base import IGNORE_INDEX, TOKEN_BYTES, GeneratedDataModule, check_int_option

ARROW = 0
NAME_BASE = 1  # the first name-piece token
NAME_SEED_SALT = 2**40  # the name table's seed is seed + this: apart from the knowledge base's and the splits'


def count_names(name_vocab: int, name_len: int, cap: int) -> int:
    """``min(name_vocab ** name_len, cap + 1)``, without computing a power too large to need."""
    if name_vocab == 1:
        return 1
    count = 1
    for _ in range(name_len):
        count *= name_vocab
        if count > cap:
            return cap + 1
    return count


class FactsDataModule(GeneratedDataModule):
    """Closed-book recall of ``num_facts`` synthetic facts.

    Args:
        num_facts: facts in the knowledge base, at most ``num_entities * num_relations``.
        num_entities, num_relations, num_values: how many entities, relations and values; a fact's
            value is uniform over ``num_values``.
        name_len: tokens in an entity's name.
        name_vocab: name-piece tokens the names are spelled with (None: ``num_entities``); needs
            ``name_vocab ** name_len >= num_entities``. ``name_len=1`` with None is one token per entity.
        num_fillers: filler tokens, drawn uniformly for the gaps.
        facts_per_seq: distinct facts stated per sequence.
        seq_len: tokens per sequence, >= (name_len + 3) * facts_per_seq; the rest is filler.
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
        name_len: int = 1,
        name_vocab: int | None = None,
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
            if value < 1:
                raise ValueError(f"task.{name}={value!r} must be a positive integer")
        check_int_option("name_len", name_len, 1)
        check_int_option("name_vocab", name_vocab, 1, null="num_entities")
        check_int_option("seq_len", seq_len, 1)
        check_int_option("num_train", num_train, 1)
        check_int_option("num_val", num_val, 1, null="all facts")
        if num_facts > num_entities * num_relations:
            raise ValueError(
                f"task.num_facts={num_facts} must be <= num_entities * num_relations = {num_entities * num_relations}"
            )
        name_vocab = num_entities if name_vocab is None else name_vocab
        names = count_names(name_vocab, name_len, cap=2 * num_entities)
        if names < num_entities:
            raise ValueError(
                f"task.name_vocab={name_vocab} ** task.name_len={name_len} = {names} names cannot name "
                f"task.num_entities={num_entities} entities; raise task.name_vocab or task.name_len"
            )
        if facts_per_seq > num_facts:
            raise ValueError(f"task.facts_per_seq={facts_per_seq} must be <= task.num_facts={num_facts}")
        tokens_per_fact = name_len + 3
        if seq_len < tokens_per_fact * facts_per_seq:
            raise ValueError(
                f"task.seq_len={seq_len} must be >= (name_len + 3) * facts_per_seq = {tokens_per_fact * facts_per_seq}"
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
        self.name_len, self.name_vocab, self.tokens_per_fact = name_len, name_vocab, tokens_per_fact
        self.name_codes = names  # capped at 2 * num_entities + 1: how the name table is drawn
        self.facts_per_seq, self.seq_len, self.num_train = facts_per_seq, seq_len, num_train
        self.sequences_per_pass = per_pass  # the sequences that state every fact once
        self.num_val = num_facts if num_val is None else num_val
        self.vocab_size = 1 + name_vocab + num_relations + num_values + num_fillers
        self.chance_bits = math.log2(num_values)  # a value guessed uniformly; 0 bits when num_values=1

    @property
    def entities(self) -> torch.Tensor:
        """Each fact's entity, an index in ``[0, num_entities)`` (its tokens: ``names[entities]``)."""
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

    @functools.cached_property
    def names(self) -> torch.Tensor:
        """(num_entities, name_len) name-piece token ids, drawn when first asked for."""
        return self.name_table()

    @property
    def train_passes(self) -> int:
        """Passes over the knowledge base the training split draws (its last one cut to ``num_train``)."""
        return math.ceil(self.num_train / self.sequences_per_pass)

    @property
    def max_seq_len(self) -> int:
        return self.seq_len

    def data_bytes(self, splits: Iterable[str] | None = None) -> int:
        """The splits' inputs and targets (int64), the knowledge base's draw over every (entity,
        relation) pair, the training passes' fact order, the name table with its draw (a coarse
        bound: 2 + 8 * name_len tokens per entity), and the largest split again as workspace."""
        rows = {
            "train": self.num_train,
            "test": self.sequences_per_pass,
            "val": math.ceil(self.num_val / self.facts_per_seq),
        }
        outputs = [2 * TOKEN_BYTES * rows[s] * self.seq_len for s in (self.splits if splits is None else splits)]
        draws = TOKEN_BYTES * (self.num_entities * self.num_relations + self.train_passes * self.num_facts * 2)
        draws += TOKEN_BYTES * self.num_entities * (2 + 8 * self.name_len)
        return sum(outputs) + max(outputs, default=0) + draws

    def knowledge_base(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (entity index, relation token, value token), each (num_facts,): distinct (entity,
        relation) pairs."""
        gen = torch.Generator().manual_seed(self.seed)
        pairs = torch.randperm(self.num_entities * self.num_relations, generator=gen)[: self.num_facts]
        relation_base = NAME_BASE + self.name_vocab
        value_base = relation_base + self.num_relations
        values = torch.randint(self.num_values, (self.num_facts,), generator=gen) + value_base
        return pairs // self.num_relations, pairs % self.num_relations + relation_base, values

    def name_table(self) -> torch.Tensor:
        """-> (num_entities, name_len) name-piece token ids, rows distinct: ``num_entities`` names drawn
        uniformly without replacement from the ``name_vocab ** name_len`` possible, entity e given the
        e-th smallest (first piece most significant). Facts are drawn alike for every entity, so which
        entity gets which name changes nothing; when the names are all there are (``name_len=1``,
        ``name_vocab`` null) nothing is drawn and entity e is token ``1 + e``, as before names."""
        gen = torch.Generator().manual_seed(self.seed + NAME_SEED_SALT)
        n, pieces, length = self.num_entities, self.name_vocab, self.name_len
        if self.name_codes <= 2 * n:  # a small space: draw codes from all of it, then spell them
            codes = torch.arange(n) if self.name_codes == n else torch.randperm(self.name_codes, generator=gen)[:n]
            digits = codes.sort().values.unsqueeze(1) // pieces ** torch.arange(length - 1, -1, -1) % pieces
        else:  # a large one (perhaps past int64): draw spelled names until n are distinct, keep n at random
            drawn = torch.empty(0, length, dtype=torch.long)
            while drawn.shape[0] < n:
                drawn = torch.unique(torch.cat([drawn, torch.randint(pieces, (n, length), generator=gen)]), dim=0)
            digits = torch.unique(drawn[torch.randperm(drawn.shape[0], generator=gen)[:n]], dim=0)  # sorted rows
        return digits + NAME_BASE

    def generate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.split_seed(split, salt=1000))  # apart from the knowledge base's seed
        if split == "train":
            order = [self._pass_sequences(torch.randperm(self.num_facts, generator=gen)) for _ in range(self.train_passes)]
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
        spare = self.seq_len - self.tokens_per_fact * per_seq
        gaps = torch.randint(spare + 1, (n, per_seq), generator=gen).sort(dim=1).values
        starts = self.tokens_per_fact * torch.arange(per_seq) + gaps  # (n, per_seq), non-overlapping
        present = facts >= 0
        rows = torch.arange(n).unsqueeze(1).expand(n, per_seq)[present]
        starts, index = starts[present], facts[present]
        name_at = starts.unsqueeze(1) + torch.arange(self.name_len)  # (facts placed, name_len)
        inputs[rows.unsqueeze(1), name_at] = self.names[self.entities[index]]
        after = starts + self.name_len
        inputs[rows, after] = self.relations[index]
        inputs[rows, after + 1] = ARROW
        inputs[rows, after + 2] = self.values[index]
        targets[rows, after + 1] = self.values[index]
        return inputs, targets

    def summarize(self, run_metrics: dict[str, Any]) -> dict[str, float]:
        """Capacity from the test split, which asks every fact once with one scored token each:
        ``facts_recalled`` (accuracy x facts), ``knowledge_bits`` (``test/knowledge_bits``: bits
        known beyond chance, ``zoo.training.metrics.KnowledgeBits``) per parameter (total, and of
        the channels: MLPs and memory) and per kFLOP of the forward pass per token, and
        ``exposures``: the times each fact was stated in training (training sequences / sequences
        per pass over the knowledge base; a whole number when ``num_train`` is a multiple of it)."""
        test, params = run_metrics["test"], run_metrics["params"]
        recalled = test["test/acc"] * self.num_facts
        bits = test["test/knowledge_bits"]
        sequences = run_metrics["steps"] * self.batch_size * run_metrics["world_size"]
        return {
            "facts": self.num_facts,
            "facts_recalled": recalled,
            "facts_per_parameter": recalled / params["total"],
            "knowledge_bits": bits,
            "knowledge_bits_max": self.num_facts * self.chance_bits,
            "exposures": sequences / self.sequences_per_pass,
            "bits_per_parameter": bits / params["total"],
            "bits_per_channel_parameter": bits / params["channel"],
            "bits_per_kflop": bits / (run_metrics["flops_per_token"] / 1e3),
        }
