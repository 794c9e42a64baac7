"""logger=wandb logs each run to Weights & Biases beside TensorBoard; offline mode needs no network,
and runs trained one after another in one process (a grid) get one W&B run each."""

import pytest
from hydra import compose, initialize_config_module

from zoo.core.dataclass_config import typed
from zoo.training.config import LoggerConfig
from zoo.training.train import train

pytest.importorskip("wandb", reason="wandb is not installed (memzoo[wandb])")

TINY = [
    "logger=wandb",
    "backbone.d_model=16",
    "task.num_train=64",
    "task.num_test=32",
    "task.batch_size=32",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "optim.warmup_steps=1",
    "throughput.window=2",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as env:  # W&B's own settings and caches stay in the test's directory
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            env.setenv(name, str(tmp / "home"))
        env.setenv("WANDB_SILENT", "true")
        with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
            cfgs = [compose("train", overrides=[*TINY, f"seed={seed}"]) for seed in (0, 1)]
        return [(train(cfg, tmp / f"run{seed}"), tmp / f"run{seed}") for seed, cfg in enumerate(cfgs)]


def test_an_offline_wandb_run_holds_the_training_curves_throughput_and_final_metrics(runs):
    metrics, run_dir = runs[0]
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()  # W&B's protobuf records: keys and JSON values as text
    for key in (b"train/loss", b"val/acc", b"fit/mfu", b"fit/tokens_per_s", b"final/acc"):
        assert key in data
    assert str(metrics["test"]["test/acc"]).encode() in data[data.index(b"final/acc") :]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))  # TensorBoard logs as before


def test_runs_one_after_another_in_a_process_get_their_own_wandb_run(runs):
    ids = [next((run_dir / "wandb").glob("offline-run-*")).name.rsplit("-", 1)[1] for _, run_dir in runs]
    assert len(set(ids)) == 2


def test_wandb_mode_must_be_one_wandb_knows():
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        cfg = compose("train", overrides=["logger=wandb", "logger.mode=cloud"])
    with pytest.raises(ValueError, match=r"logger.mode='cloud' is not a W&B mode; allowed: \['online', 'offline', 'disabled'\]"):
        typed(LoggerConfig, cfg.logger, "logger").check()
