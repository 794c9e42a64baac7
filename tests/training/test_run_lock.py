"""One run per directory: a second memzoo-train (or memzoo-eval, or memzoo-grid) into a directory
that another process is using is refused before it writes anything, naming the holder; the lock
leaves no file behind and is released when the holder ends; memzoo-eval never writes into a
training run's directory."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.configs import compose_config
from helpers.configs import tiny_train_config as make_cfg

from zoo.core.dir_lock import exclusive_dir, lock_holder
from zoo.training.evaluate import evaluate
from zoo.training.train import train

BIN = Path(sys.executable).parent


def test_a_held_directory_is_refused_naming_the_holding_process_and_nothing_is_written(tmp_path):
    with exclusive_dir(tmp_path):
        with pytest.raises(ValueError, match=rf"run directory '{tmp_path}' is in use by process {os.getpid()} \(.*python"):
            train(make_cfg(), tmp_path)
    assert list(tmp_path.iterdir()) == []  # no lock file, no config, no logs


def test_the_lock_is_released_when_its_holder_ends_and_leaves_no_file(tmp_path):
    with exclusive_dir(tmp_path):
        pass
    with exclusive_dir(tmp_path):  # taken again at once
        pass
    assert list(tmp_path.iterdir()) == []
    assert lock_holder(tmp_path) == "another process"  # nobody holds it: the kernel's table has no entry


def test_a_second_concurrent_memzoo_train_into_one_directory_is_refused(tmp_path):
    first = subprocess.Popen(
        [
            str(BIN / "memzoo-train"),
            "backbone.d_model=16",
            "task.num_train=4096",
            "task.num_test=64",
            "trainer.max_steps=100000",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={tmp_path}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "config.yaml").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before the second started"
        config = (tmp_path / "config.yaml").read_text()
        second = subprocess.run(
            [str(BIN / "memzoo-train"), "optim.lr=0.01", "overwrite=true", f"hydra.run.dir={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert f"is in use by process {first.pid} (" in second.stderr and "memzoo-train" in second.stderr
        assert (tmp_path / "config.yaml").read_text() == config  # overwrite=true did not touch the first run
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def eval_cfg(*overrides):
    return compose_config("eval", "task.num_train=16", "task.num_test=64", "trainer.enable_progress_bar=false", *overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    train(make_cfg(), run_dir)
    return run_dir


def test_memzoo_eval_never_writes_into_a_training_run_directory(trained):
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*")}
    metrics = (trained / "metrics.json").read_text()
    with pytest.raises(
        ValueError, match=r"holds a training run \(config.yaml, checkpoints, tb\); memzoo-eval never writes into one"
    ):
        evaluate(eval_cfg(f"ckpt={trained / 'checkpoints' / 'last.ckpt'}", "overwrite=true"), trained)
    assert (trained / "metrics.json").read_text() == metrics
    assert {p: p.stat().st_mtime_ns for p in trained.rglob("*")} == before


def test_memzoo_eval_refuses_an_earlier_evaluation_unless_overwrite(trained, tmp_path):
    ckpt = f"ckpt={trained / 'checkpoints' / 'last.ckpt'}"
    first = evaluate(eval_cfg(ckpt), tmp_path)
    with pytest.raises(ValueError, match=r"already holds an evaluation's metrics.json: pass overwrite=true"):
        evaluate(eval_cfg(ckpt, "seed=1"), tmp_path)
    second = evaluate(eval_cfg(ckpt, "overwrite=true"), tmp_path)
    assert second["test"] == first["test"]


def read_only_mount(source: Path, target: Path) -> bool:
    """Bind-mount ``source`` read-only at ``target`` (root on Linux only); whether it worked."""
    if os.geteuid() != 0:
        return False
    done = subprocess.run(f"mount --bind {source} {target} && mount -o remount,bind,ro {target}", shell=True, capture_output=True)
    if done.returncode != 0:
        subprocess.run(["umount", str(target)], capture_output=True)
    return done.returncode == 0


def test_a_read_only_run_directory_is_reported_by_its_path_not_as_a_logging_handler(tmp_path):
    (tmp_path / "source" / "run").mkdir(parents=True)
    (tmp_path / "mnt").mkdir()
    if not read_only_mount(tmp_path / "source", tmp_path / "mnt"):
        pytest.skip("needs root and bind mounts to make a read-only file system (permission bits do not bind root)")
    try:
        done = subprocess.run(
            [str(BIN / "memzoo-train"), "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'mnt' / 'run'}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    assert done.returncode != 0
    assert f"Read-only file system: '{tmp_path / 'mnt' / 'run'}" in done.stderr
    assert "Unable to configure handler" not in done.stderr
