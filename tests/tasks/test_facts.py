"""Fact memorization: the knowledge base, closed-book test questions stated in training, sizes."""

import pytest
import torch

from zoo.tasks.base import IGNORE_INDEX
from zoo.tasks.facts import ARROW, FactsDataModule

SMALL = dict(
    num_facts=60,
    num_entities=20,
    num_relations=4,
    num_values=10,
    num_fillers=5,
    facts_per_seq=4,
    seq_len=24,
    num_train=45,
    num_val=12,
    batch_size=8,
    seed=3,
)


def facts_in(inputs: torch.Tensor, targets: torch.Tensor) -> list[tuple[int, int, int]]:
    """(entity, relation, value) of every scored position, read back from the tokens."""
    found = []
    for row_in, row_tgt in zip(inputs.tolist(), targets.tolist()):
        for t, y in enumerate(row_tgt):
            if y != IGNORE_INDEX:
                assert row_in[t] == ARROW and row_in[t + 1] == y
                found.append((row_in[t - 2], row_in[t - 1], y))
    return found


@pytest.fixture(scope="module")
def module():
    dm = FactsDataModule(**SMALL)
    dm.setup()
    return dm


def test_every_test_question_is_a_fact_stated_in_training(module):
    train = facts_in(*module.generate("train"))
    test = facts_in(*module.generate("test"))
    kb = set(zip(module.entities.tolist(), module.relations.tolist(), module.values.tolist()))
    assert len(test) == len(kb) == SMALL["num_facts"] and set(test) == kb  # every fact asked once
    assert set(train) == kb  # and every one stated in training
    assert len(facts_in(*module.generate("val"))) == SMALL["num_val"]


def test_one_value_per_entity_relation_pair(module):
    pairs = list(zip(module.entities.tolist(), module.relations.tolist()))
    assert len(set(pairs)) == len(pairs)


def test_no_fact_repeats_within_a_sequence_so_answers_are_never_in_context(module):
    inputs, targets = module.generate("train")
    for row_in, row_tgt in zip(inputs, targets):
        stated = facts_in(row_in[None], row_tgt[None])
        assert len({(e, r) for e, r, _ in stated}) == len(stated)


def test_only_the_value_after_each_arrow_is_scored_and_tokens_stay_in_their_ranges(module):
    inputs, targets = module.generate("train")
    assert inputs.shape == targets.shape == (SMALL["num_train"], SMALL["seq_len"])
    assert inputs.min() >= 0 and inputs.max() < module.vocab_size
    assert ((targets == IGNORE_INDEX) | (inputs == ARROW)).all()
    assert (inputs == ARROW).sum() == (targets != IGNORE_INDEX).sum()
    assert module.vocab_size == 1 + 20 + 4 + 10 + 5


def test_same_seed_same_data_other_seed_other_knowledge_base():
    a, b, c = FactsDataModule(**SMALL), FactsDataModule(**SMALL), FactsDataModule(**{**SMALL, "seed": 4})
    for x, y in zip(a.generate("train"), b.generate("train")):
        assert torch.equal(x, y)
    assert not torch.equal(a.values, c.values) or not torch.equal(a.entities, c.entities)


def test_capacity_summary_counts_recalled_facts_per_parameter(module):
    summary = module.summarize({"test/acc": 0.5}, num_parameters=1000)
    assert summary == {"facts": 60, "facts_recalled": 30.0, "facts_per_parameter": 0.03}


@pytest.mark.parametrize(
    "override,match",
    [
        (dict(num_facts=81), r"task.num_facts=81 must be <= num_entities \* num_relations = 80"),
        (dict(seq_len=15), r"task.seq_len=15 must be >= 4 \* facts_per_seq = 16"),
        (dict(num_train=14), r"task.num_train=14 sequences cannot state all 60 facts once; need >= .* = 15"),
        (dict(num_val=61), r"task.num_val=61 must be in \[1, num_facts=60\]"),
        (dict(num_values=0), r"task.num_values=0 must be a positive integer"),
        (dict(facts_per_seq=61, seq_len=244), r"task.facts_per_seq=61 must be <= task.num_facts=60"),
    ],
)
def test_bad_sizes_are_errors(override, match):
    with pytest.raises(ValueError, match=match):
        FactsDataModule(**{**SMALL, **override})
