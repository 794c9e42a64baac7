"""Optimizer groups come from parameter tags; the LR schedule warms up linearly then decays by cosine."""

import math

import pytest
import torch
from torch import nn

from zoo import ModelConfig, build_model
from zoo.core.tags import linear, tag_optim
from zoo.training.optim import param_groups, warmup_cosine, warmup_cosine_scheduler


def test_norms_embeddings_and_biases_get_no_weight_decay():
    model = build_model(ModelConfig(vocab_size=32, d_model=16, n_layers=2, mixer={"attention": {"bias": True}}))
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.1)}
    assert set(groups) == {"decay", "no_decay"}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    decay = {id(p) for p in groups["decay"]["params"]}
    for name, param in model.named_parameters():
        is_exempt = "norm" in name or "embedding" in name or name.endswith("bias")
        assert (id(param) in no_decay) == is_exempt, name
        assert (id(param) in decay) != is_exempt, name
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.1
    total = sum(p.numel() for g in groups.values() for p in g["params"])
    assert total == model.num_parameters()  # tied head counted once


def test_named_group_takes_its_own_learning_rate_from_one_knob_only():
    module = nn.Sequential(linear(4, 4), linear(4, 4))
    tag_optim(module[1].weight, group="extra", weight_decay=0.0)
    groups = {g["name"]: g for g in param_groups(module, lr=1e-2, weight_decay=0.1, group_lr={"extra": 1e-3})}
    assert groups["extra"]["lr"] == 1e-3 and groups["extra"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == 1e-2
    tag_optim(module[1].weight, lr=2e-3)  # the group now sets its own lr where it is made (as memory values do)
    groups = {g["name"]: g for g in param_groups(module, lr=1e-2, weight_decay=0.1)}
    assert groups["extra"]["lr"] == 2e-3
    with pytest.raises(ValueError, match=r"optim.group_lr names parameter group\(s\) \['extra'\] whose parameters set their own"):
        param_groups(module, lr=1e-2, weight_decay=0.1, group_lr={"extra": 1e-3})  # never silently over the tag


def test_warmup_then_cosine_to_min_ratio():
    values = [warmup_cosine(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) for s in range(120)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values[:9], values[1:10]))
    assert values[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[110] == pytest.approx(0.1) and values[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_scheduler_scales_each_group_base_lr():
    p1, p2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.1}])
    sched = warmup_cosine_scheduler(opt, warmup_steps=4, total_steps=8, min_lr_ratio=0.0)
    for _ in range(2):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.75, 0.075])
    with pytest.raises(ValueError, match=r"min_lr_ratio=2.0"):
        warmup_cosine_scheduler(opt, warmup_steps=0, total_steps=8, min_lr_ratio=2.0)
