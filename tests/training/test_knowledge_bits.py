"""A facts run's ``knowledge_bits``: the sum over its test facts of what the trained model's
distribution knows about each value beyond chance, recomputed here by brute force from the saved
model, position by position."""

import json
import math

import pytest
import torch

from tests.helpers.configs import compose_config
from zoo.model.loading import load_model
from zoo.tasks.base import IGNORE_INDEX
from zoo.tasks.facts import FactsDataModule
from zoo.training.train import train

TASK = dict(
    num_facts=40,
    num_entities=20,
    num_relations=4,
    num_values=8,
    num_fillers=3,
    name_len=2,
    name_vocab=5,
    facts_per_seq=4,
    seq_len=22,
    num_train=300,  # 30 passes: 30 exposures per fact
    batch_size=10,
    seed=0,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("facts")
    cfg = compose_config(
        "train",
        "task=facts",
        *(f"task.{key}={value}" for key, value in TASK.items()),
        "backbone.d_model=16",
        "optim.lr=0.01",
        "optim.warmup_steps=2",
        "trainer.max_steps=30",
        "trainer.val_check_interval=30",
        "trainer.enable_progress_bar=false",
    )
    train(cfg, run_dir)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def brute_force_knowledge_bits(model: torch.nn.Module, data: FactsDataModule) -> float:
    """Each test sequence's full logits; at every scored position, log2(num_values) + log2 p(value)
    when positive, summed in float64."""
    inputs, targets = data.generate("test")
    total = 0.0
    with torch.no_grad():
        for row_in, row_tgt in zip(inputs, targets):
            log_p = torch.log_softmax(model(row_in[None])[0].double(), dim=-1)
            for position in (row_tgt != IGNORE_INDEX).nonzero().flatten().tolist():
                known = math.log2(data.num_values) + log_p[position, row_tgt[position]].item() / math.log(2)
                total += max(0.0, known)
    return total


def test_knowledge_bits_equal_the_sum_over_the_test_facts(run):
    run_dir, metrics = run
    model = load_model(run_dir / "checkpoints" / "last.ckpt").eval()
    expected = brute_force_knowledge_bits(model, FactsDataModule(**TASK))
    assert 0 < expected < 40 * 3  # the model learned something, not everything: a sum of mixed terms
    assert metrics["test"]["test/knowledge_bits"] == pytest.approx(expected, rel=1e-4)
    assert metrics["task_metrics"]["knowledge_bits"] == metrics["test"]["test/knowledge_bits"]


def test_the_summary_reports_exposures_and_bits_per_parameter_and_flop(run):
    _, metrics = run
    summary, bits = metrics["task_metrics"], metrics["test"]["test/knowledge_bits"]
    assert summary["exposures"] == 30.0  # 30 steps x 10 sequences / 10 sequences per pass
    assert summary["knowledge_bits_max"] == 40 * 3
    assert summary["bits_per_parameter"] == pytest.approx(bits / metrics["params"]["total"])
    assert summary["bits_per_channel_parameter"] == pytest.approx(bits / metrics["params"]["channel"])
    assert summary["bits_per_kflop"] == pytest.approx(bits / metrics["flops_per_token"] * 1e3)
    assert 0 < metrics["params"]["channel"] < metrics["params"]["total"]
