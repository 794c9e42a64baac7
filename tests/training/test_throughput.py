"""Every run records how fast it trained relative to the hardware: tokens/s, step time and MFU (with
the peak it used) and peak memory, in metrics.json and TensorBoard."""

import math

import pytest
import torch
from hydra import compose, initialize_config_module
from lightning.fabric.utilities.throughput import measure_flops
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo import build_model
from zoo.core.tags import parameter_count
from zoo.model.flops import forward_flops_per_token
from zoo.training.throughput import ThroughputConfig, measured_peak_flops
from zoo.training.train import train

BATCH, SEQ_LEN = 16, 64
TINY = [
    "backbone.d_model=16",
    "task.num_train=128",
    "task.num_test=32",
    f"task.batch_size={BATCH}",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "optim.warmup_steps=1",
    "throughput.window=3",
]


def scalars(run_dir) -> dict[str, list[float]]:
    values = {}
    for events in (run_dir / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return values


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("throughput")
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "throughput.peak_flops=1e13"])
    return train(cfg, run_dir), run_dir


def test_metrics_json_holds_tokens_per_s_step_time_and_mfu_against_the_given_peak(run):
    metrics, _ = run
    speed = metrics["throughput"]
    assert speed["peak_flops"] == 1e13 and speed["peak_flops_source"] == "throughput.peak_flops"
    assert speed["steps_timed"] == metrics["steps"] == 4
    # three forwards, the LM head (vocab 128 x d_model 16) only at MQAR's 4 scored positions of 64
    head = 2 * 128 * 16
    assert speed["train_flops_per_token"] == pytest.approx(3 * (metrics["flops_per_token"] - head + head * 4 / SEQ_LEN))
    assert speed["tokens_per_s"] * speed["step_time_s"] == pytest.approx(BATCH * SEQ_LEN)  # one batch per step
    assert speed["mfu"] == pytest.approx(speed["tokens_per_s"] * speed["train_flops_per_token"] / 1e13)
    assert speed["train_tokens"] == 4 * BATCH * SEQ_LEN  # the fit's tokens and FLOPs, for compute curves
    assert speed["train_flops"] == pytest.approx(speed["train_tokens"] * speed["train_flops_per_token"])
    assert 0 < speed["mfu"] < 1  # a peak no CPU reaches on this tiny model, whatever the machine


def test_peak_memory_is_the_process_peak_rss_on_cpu(run):
    metrics, _ = run
    speed = metrics["throughput"]
    assert speed["peak_memory_source"] == "process peak RSS (VmHWM) during training"
    assert 50e6 < speed["peak_memory_bytes"] < 64e9  # torch alone keeps tens of MB resident


def test_tensorboard_shows_rolling_and_whole_fit_throughput(run):
    metrics, run_dir = run
    values = scalars(run_dir)
    for tag in ("train/tokens_per_s", "train/step_time_s", "train/mfu"):
        assert values[tag] and all(v > 0 for v in values[tag])
    for name in ("tokens_per_s", "step_time_s", "mfu", "peak_flops", "peak_memory_bytes"):
        assert values[f"fit/{name}"] == [pytest.approx(metrics["throughput"][name], rel=1e-6)]


def test_measured_peak_is_a_positive_rate_of_the_device_matmul():
    peak = measured_peak_flops(torch.device("cpu"), torch.float32)
    assert math.isfinite(peak) and 1e6 < peak < 1e14


def test_training_flops_are_three_forwards_as_torch_flop_counter_finds_for_the_transformer_matmuls():
    attention = {"attention": {"num_heads": 4}}
    model = build_model({"vocab_size": 128, "d_model": 32, "n_layers": 2, "pattern": "A", "mixer": attention})
    x = torch.randint(0, 128, (2, SEQ_LEN))
    forward = measure_flops(model, lambda: model(x))
    assert measure_flops(model, lambda: model(x), loss_fn=lambda y: y.sum()) == 3 * forward
    # the counter sees the linear layers' matmuls: ours less the norms and attention's context product
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    context = sum(b.mixer.flops_per_token(SEQ_LEN) - 2 * parameter_count(b.mixer) for b in model.blocks)
    assert forward / x.numel() == forward_flops_per_token(model, SEQ_LEN) - 2 * norms - context


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("peak_flops", 0, r"throughput.peak_flops=0 must be a finite number > 0"),
        ("peak_flops", float("inf"), r"throughput.peak_flops=inf must be a finite number > 0"),
        ("window", 1, r"throughput.window=1 must be an integer >= 2"),
    ],
)
def test_bad_throughput_settings_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        ThroughputConfig(**{field: value})


def test_measuring_the_matmul_peak_leaves_the_training_rng_untouched():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    measured_peak_flops.cache_clear()
    assert measured_peak_flops(torch.device("cpu"), torch.float32) > 0
    assert torch.equal(torch.get_rng_state(), before)
