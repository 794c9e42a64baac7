"""Bits per byte from the summed log-probabilities and knowledge bits, checked by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.training.metrics import BitsPerByte, KnowledgeBits


def test_bits_per_byte_is_loss_over_ln2_times_tokens_per_byte():
    # two scored tokens with probabilities 1/2 and 1/4 (uniform logits over 2 and 4 live classes):
    # loss = (ln 2 + ln 4) / 2 nats/token = 1.5 bits/token; at 3 bytes per token: 0.5 bits per byte
    logits = torch.full((1, 3, 4), -1e9)
    logits[0, 0, :2] = 0.0
    logits[0, 1, :] = 0.0
    targets = torch.tensor([[1, 3, -100]])
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert math.isclose(loss.item(), 1.5 * math.log(2), rel_tol=1e-6)
    metric = BitsPerByte(bytes_per_token=3.0, ignore_index=-100)
    metric.update(logits, targets)
    assert math.isclose(metric.compute().item(), 0.5, rel_tol=1e-6)
    assert math.isclose(metric.compute().item(), loss.item() / math.log(2) / 3.0, rel_tol=1e-6)


def test_bits_per_byte_needs_positive_bytes_per_token():
    with pytest.raises(ValueError, match=r"bytes_per_token=0 must be > 0"):
        BitsPerByte(0)


def test_knowledge_bits_sums_what_each_target_knows_beyond_chance():
    # 4 values: chance is 2 bits. Target probabilities 1 (2 bits known), 1/2 (1 bit), 1/4 (chance:
    # 0) and 1/8 (worse than chance: 0, not -1); the ignored position counts nothing: 3 bits
    logits = torch.full((5, 4), -1e9)
    logits[0, 2] = 0.0  # p(2) = 1
    logits[1, :2] = 0.0  # p(1) = 1/2
    logits[2, :] = 0.0  # p(3) = 1/4
    logits[3] = torch.tensor([math.log(7.0), -1e9, -1e9, 0.0])  # p(3) = 1/8
    logits[4, :] = 0.0
    targets = torch.tensor([2, 1, 3, 3, -100])
    metric = KnowledgeBits(chance_bits=2.0, ignore_index=-100)
    metric.update(logits[:2], targets[:2])  # summed over updates, as over a split's batches
    metric.update(logits[2:], targets[2:])
    assert math.isclose(metric.compute().item(), 3.0, rel_tol=1e-6)


def test_knowledge_bits_needs_non_negative_chance_bits():
    with pytest.raises(ValueError, match=r"chance_bits=-1.0 must be >= 0"):
        KnowledgeBits(-1.0)
