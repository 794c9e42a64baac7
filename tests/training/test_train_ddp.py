"""Lightning DDP (2 gloo processes) with a sharded or replicated memory against one process on the
same global batches; its distributed checkpoints, read whole in one process and resumed bit for bit; layout
errors before training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import make_cfg

from zoo import load_model
from zoo.checkpoint.distributed import is_distributed_checkpoint
from zoo.checkpoint.files import load_checkpoint_file
from zoo.training.train import train

COMMON = [
    "memory=pkm",
    "memory.n_keys=8",
    "memory.knn=4",
    "backbone.d_model=16",
    "task.num_train=256",
    "task.num_test=64",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.precision=64-true",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "checkpoint.every_n_train_steps=4",
    "optim.warmup_steps=2",
]


def run_cli(run_dir: Path, *overrides: str) -> dict:
    """memzoo-train with ``COMMON`` settings, ``overrides`` replacing any of the same key."""
    script = Path(sys.executable).parent / "memzoo-train"
    settings = {item.split("=")[0]: item for item in [*COMMON, *overrides]}
    cmd = [str(script), *settings.values(), f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def assert_tensors_close(got, want, atol, where=""):
    """Equal nested dicts / lists of tensors and plain values."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_tensors_close(got[key], want[key], atol, f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_tensors_close(g, w, atol, f"{where}[{i}]")
    elif torch.is_tensor(want):
        torch.testing.assert_close(got, want, atol=atol, rtol=0, msg=where)
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """One process, memory unsharded, batch 2 x 16: the reference."""
    run_dir = tmp_path_factory.mktemp("one")
    run_cli(run_dir, "trainer=cpu", "task.batch_size=32")
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """``two_ranks(parallel)``: (run directory, metrics) of a 2-rank run with that layout, run once."""
    runs = {}

    def run(parallel: str) -> tuple[Path, dict]:
        if parallel not in runs:
            run_dir = tmp_path_factory.mktemp(parallel)
            metrics = run_cli(run_dir, "trainer=ddp", "trainer.devices=2", f"memory.parallel={parallel}", "task.batch_size=16")
            runs[parallel] = run_dir, metrics
        return runs[parallel]

    return run


@pytest.mark.parametrize("parallel", ["rows", "columns"])
def test_two_rank_ddp_run_equals_one_process_on_the_same_global_batches(parallel, one_process, two_ranks):
    run_dir, metrics = two_ranks(parallel)
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    assert metrics["memory_comm_bytes_per_token"]["forward"] > 0
    last = run_dir / "checkpoints" / "last.ckpt"
    assert is_distributed_checkpoint(last)  # each rank wrote its part of the table and its moments
    two = load_checkpoint_file(last)  # read whole, in this one process
    one = torch.load(one_process, weights_only=False)
    # parameters, and the optimizer state (values' rows-only Adam moments whole, not per rank)
    assert_tensors_close(two["state_dict"], one["state_dict"], atol=1e-8)
    assert_tensors_close(two["optimizer_states"], one["optimizer_states"], atol=1e-8)

    # the 2-rank checkpoint loads into one process (memory unsharded) and gives the same outputs
    moved, reference = load_model(last).double(), load_model(one_process).double()
    inputs = torch.randint(0, 128, (3, 64))
    with torch.no_grad():
        torch.testing.assert_close(moved(inputs), reference(inputs), atol=1e-8, rtol=0)


@pytest.mark.parametrize("sparse", ["true", "false"])
def test_a_replicated_memory_trains_under_ddp_like_one_process(sparse, one_process, tmp_path):
    """memory.parallel=none: with rows-only updates the table's gradient is sparse, which DDP's reducer
    refuses ("Cannot access storage of SparseTensorImpl"), so the table stays out of DDP and its
    gradient rows are averaged over the ranks; dense updates go through DDP."""
    metrics = run_cli(
        tmp_path,
        "trainer=ddp",
        "trainer.devices=2",
        "memory.parallel=none",
        "task.batch_size=16",
        f"memory.sparse_updates={sparse}",
    )
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    two = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    if sparse == "false":
        ref_dir = tmp_path / "one"
        run_cli(ref_dir, "trainer=cpu", "task.batch_size=32", "memory.sparse_updates=false")
        one = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=False)
    else:
        one = torch.load(one_process, weights_only=False)
    assert_tensors_close(two["state_dict"], one["state_dict"], atol=1e-8)
    assert_tensors_close(two["optimizer_states"], one["optimizer_states"], atol=1e-8)


def test_a_sharded_run_resumed_from_its_distributed_checkpoint_ends_bit_equal(two_ranks, tmp_path):
    whole_dir, _ = two_ranks("rows")
    sharded = [
        "trainer=ddp",
        "trainer.devices=2",
        "memory.parallel=rows",
        "task.batch_size=16",
        "optim.total_steps=4",
        "checkpoint.every_n_train_steps=2",
    ]
    run_cli(tmp_path, *sharded, "trainer.max_steps=2")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert is_distributed_checkpoint(last) and load_checkpoint_file(last)["global_step"] == 2
    metrics = run_cli(tmp_path, *sharded, "ckpt=last")
    assert metrics["steps"] == 4
    resumed, whole = load_checkpoint_file(last), load_checkpoint_file(whole_dir / "checkpoints" / "last.ckpt")
    assert_tensors_close(resumed["state_dict"], whole["state_dict"], atol=0)
    assert_tensors_close(resumed["optimizer_states"], whole["optimizer_states"], atol=0)
    assert resumed["lr_schedulers"] == whole["lr_schedulers"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["memory.parallel=rows"], r"memory.parallel='rows' needs a process group: use trainer=ddp"),
        (
            ["trainer=ddp", "trainer.devices=2", "memory.parallel=rows", "memory.n_keys=9"],
            r"memory.n_keys=9 must be divisible by the world size 2 for memory.parallel=rows",
        ),
        (
            ["trainer=ddp", "trainer.devices=2", "memory.parallel=columns", "memory.v_dim=15"],
            r"memory.v_dim=15 must be divisible by the world size 2 for memory.parallel=columns",
        ),
    ],
)
def test_sharded_memory_setup_errors_come_before_training(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        train(make_cfg(["memory=pkm", "memory.knn=4", *overrides]), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
