"""memzoo's composed Hydra configs for tests, and the tiny budget most training tests run at."""

from hydra import compose, initialize_config_module

# 4 steps of a 16-wide model on 256 examples, validating every 2 steps, one validation and one test batch
TINY = [
    "backbone.d_model=16",
    "task.num_train=256",
    "task.num_test=64",
    "task.batch_size=32",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]


def compose_config(name: str, *overrides: str):
    """``name`` ("train" or "eval") composed with ``overrides``, as memzoo-train / memzoo-eval compose it."""
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def tiny_train_config(*overrides: str):
    """memzoo-train's config at the ``TINY`` budget, ``overrides`` last."""
    return compose_config("train", *TINY, *overrides)
