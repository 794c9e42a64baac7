"""Fact memorization: the knowledge base, closed-book test questions stated in training, multi-token
entity names, sizes."""

import math

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


def facts_in(inputs: torch.Tensor, targets: torch.Tensor, name_len: int = 1) -> list[tuple[tuple[int, ...], int, int]]:
    """(name tokens, relation, value) of every scored position, read back from the tokens."""
    found = []
    for row_in, row_tgt in zip(inputs.tolist(), targets.tolist()):
        for t, y in enumerate(row_tgt):
            if y != IGNORE_INDEX:
                assert row_in[t] == ARROW and row_in[t + 1] == y
                found.append((tuple(row_in[t - 1 - name_len : t - 1]), row_in[t - 1], y))
    return found


def knowledge_base(dm: FactsDataModule) -> set[tuple[tuple[int, ...], int, int]]:
    """(name tokens, relation, value) of every fact in the knowledge base."""
    names = [tuple(name) for name in dm.names[dm.entities].tolist()]
    return set(zip(names, dm.relations.tolist(), dm.values.tolist()))


def one_token_facts(options: dict, split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reference: the task as it was before names, one token per entity (token 1 + entity) and four
    tokens per fact, written out step by step -> (inputs, targets, vocab_size)."""
    o = {**SMALL, **options}
    entities, relations, values, fillers = o["num_entities"], o["num_relations"], o["num_values"], o["num_fillers"]
    per_seq, seq_len = o["facts_per_seq"], o["seq_len"]
    vocab = 1 + entities + relations + values + fillers
    kb_gen = torch.Generator().manual_seed(o["seed"])
    pairs = torch.randperm(entities * relations, generator=kb_gen)[: o["num_facts"]]
    fact_values = torch.randint(values, (o["num_facts"],), generator=kb_gen) + 1 + entities + relations
    fact_entities, fact_relations = pairs // relations + 1, pairs % relations + 1 + entities
    gen = torch.Generator().manual_seed(1000 + 3 * o["seed"] + {"train": 0, "val": 1, "test": 2}[split])
    rows_per_pass = math.ceil(o["num_facts"] / per_seq)
    if split == "train":
        orders = [torch.randperm(o["num_facts"], generator=gen) for _ in range(math.ceil(o["num_train"] / rows_per_pass))]
    else:
        orders = [torch.randperm(o["num_facts"], generator=gen)[: o["num_facts"] if split == "test" else o["num_val"]]]
    rows = []
    for order in orders:
        order = order.tolist()
        rows += [order[i : i + per_seq] + [-1] * (per_seq - len(order[i : i + per_seq])) for i in range(0, len(order), per_seq)]
    if split == "train":
        rows = rows[: o["num_train"]]
    inputs = torch.randint(fillers, (len(rows), seq_len), generator=gen) + vocab - fillers
    targets = torch.full((len(rows), seq_len), IGNORE_INDEX)
    gaps = torch.randint(seq_len - 4 * per_seq + 1, (len(rows), per_seq), generator=gen).sort(dim=1).values
    for r, row in enumerate(rows):
        for j, fact in enumerate(row):
            if fact >= 0:
                t = 4 * j + int(gaps[r, j])
                inputs[r, t : t + 4] = torch.stack(
                    [fact_entities[fact], fact_relations[fact], torch.tensor(ARROW), fact_values[fact]]
                )
                targets[r, t + 2] = fact_values[fact]
    return inputs, targets, vocab


@pytest.fixture(scope="module")
def module():
    dm = FactsDataModule(**SMALL)
    dm.setup()
    return dm


def test_every_test_question_is_a_fact_stated_in_training(module):
    train = facts_in(*module.generate("train"))
    test = facts_in(*module.generate("test"))
    kb = knowledge_base(module)
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


@pytest.mark.parametrize("options", [{}, dict(seed=0, num_fillers=1, seq_len=16), dict(name_vocab=20)])
def test_one_token_names_reproduce_the_task_before_names_exactly(options):
    dm = FactsDataModule(**{**SMALL, **options, "name_len": 1})
    for split in ("train", "val", "test"):
        inputs, targets, vocab = one_token_facts(options, split)
        assert torch.equal(dm.generate(split)[0], inputs) and torch.equal(dm.generate(split)[1], targets)
        assert dm.vocab_size == vocab


@pytest.mark.parametrize("name_vocab", [3, 4, 1000])  # 27 names (all drawn from), 64, 10^9 (drawn by rejection)
def test_multi_token_names_are_distinct_precede_their_relation_and_decode_to_the_fact_scored(name_vocab):
    dm = FactsDataModule(**{**SMALL, "name_len": 3, "name_vocab": name_vocab, "seq_len": 6 * 4 + 3})
    names = dm.names.tolist()
    assert len(names) == SMALL["num_entities"] and len(set(map(tuple, names))) == len(names)  # distinct
    assert dm.names.min() >= 1 and dm.names.max() < 1 + name_vocab  # name pieces only
    assert dm.vocab_size == 1 + name_vocab + 4 + 10 + 5
    entity_of = {tuple(name): e for e, name in enumerate(names)}
    value_of = {(e, r): v for e, r, v in zip(dm.entities.tolist(), dm.relations.tolist(), dm.values.tolist())}
    for split in ("train", "test"):
        stated = facts_in(*dm.generate(split), name_len=3)  # the three tokens before each relation
        assert all(value_of[entity_of[name], relation] == value for name, relation, value in stated)
        assert set(stated) == knowledge_base(dm)
    again = FactsDataModule(**{**SMALL, "name_len": 3, "name_vocab": name_vocab, "seq_len": 27, "num_train": 60})
    assert torch.equal(again.names, dm.names)  # the names depend on the seed only
    dm.setup()
    held = sum(d.inputs.nbytes + d.targets.nbytes for d in dm.datasets.values()) + dm.names.nbytes
    assert held <= dm.data_bytes()


@pytest.mark.parametrize(
    "override,match",
    [
        (
            dict(name_vocab=4, name_len=2),
            r"task.name_vocab=4 \*\* task.name_len=2 = 16 names cannot name task.num_entities=20 entities; "
            r"raise task.name_vocab or task.name_len",
        ),
        (
            dict(name_vocab=1, name_len=10**9),
            r"task.name_vocab=1 \*\* task.name_len=1000000000 = 1 names cannot name task.num_entities=20",
        ),
        (dict(name_vocab=19), r"task.name_vocab=19 \*\* task.name_len=1 = 19 names cannot name task.num_entities=20"),
    ],
)
def test_a_name_space_smaller_than_the_entities_fails_in_the_constructor_naming_both_keys(override, match):
    with pytest.raises(ValueError, match=match):
        FactsDataModule(**{**SMALL, **override})


def test_capacity_summary_counts_facts_bits_and_exposures(module):
    run_metrics = {
        "test": {"test/acc": 0.5, "test/knowledge_bits": 120.0},
        "params": {"total": 1000, "channel": 400},
        "flops_per_token": 6000,
        "steps": 30,  # 30 steps x batch 8 = 240 sequences = 16 passes of 15 sequences (60 facts, 4 per sequence)
        "world_size": 1,
    }
    assert module.summarize(run_metrics) == {
        "facts": 60,
        "facts_recalled": 30.0,
        "facts_per_parameter": 0.03,
        "knowledge_bits": 120.0,
        "knowledge_bits_max": 60 * math.log2(10),
        "exposures": 16.0,
        "bits_per_parameter": 0.12,
        "bits_per_channel_parameter": 0.3,
        "bits_per_kflop": 20.0,
    }
    assert module.summarize({**run_metrics, "steps": 15, "world_size": 2})["exposures"] == 16.0  # 2 ranks x 15 steps


@pytest.mark.parametrize(
    "override,match",
    [
        (dict(num_facts=81), r"task.num_facts=81 must be <= num_entities \* num_relations = 80"),
        (dict(seq_len=15), r"task.seq_len=15 must be >= \(name_len \+ 3\) \* facts_per_seq = 16"),
        (dict(name_len=2, seq_len=19), r"task.seq_len=19 must be >= \(name_len \+ 3\) \* facts_per_seq = 20"),
        (dict(name_len="abc"), r"task.name_len='abc' must be an integer >= 1"),
        (dict(name_len=0), r"task.name_len=0 must be an integer >= 1"),
        (dict(name_len=True), r"task.name_len=True must be an integer >= 1"),
        (dict(name_vocab=2.0), r"task.name_vocab=2.0 must be an integer >= 1 or null \(num_entities\)"),
        (dict(num_train=14), r"task.num_train=14 sequences cannot state all 60 facts once; need >= .* = 15"),
        (dict(num_val=61), r"task.num_val=61 must be in \[1, num_facts=60\]"),
        (dict(num_values=0), r"task.num_values=0 must be a positive integer"),
        (dict(facts_per_seq=61, seq_len=244), r"task.facts_per_seq=61 must be <= task.num_facts=60"),
    ],
)
def test_bad_sizes_are_errors(override, match):
    with pytest.raises(ValueError, match=match):
        FactsDataModule(**{**SMALL, **override})
