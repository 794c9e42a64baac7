"""Reliability end to end: a run killed with SIGKILL mid-epoch resumes to the same final metrics and
parameters as an uninterrupted one; a kill while a checkpoint is written leaves the previous one;
memzoo-eval tests a checkpoint at twice its training length."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zoo.checkpoint.distributed import remove_unlinked_data, save_distributed
from zoo.checkpoint.files import atomic_torch_save, load_checkpoint_file
from zoo.training.checkpoint_io import AtomicCheckpointIO

BIN = Path(sys.executable).parent
RUN = [
    "backbone.d_model=16",
    "memory=pkm",
    "memory.n_keys=8",
    "memory.knn=4",
    "task.seq_len=32",
    "task.num_kv_pairs=4",
    "task.num_train=4096",
    "task.num_test=64",
    "task.batch_size=16",
    "trainer.max_steps=200",
    "trainer.val_check_interval=50",
    "checkpoint.every_n_train_steps=10",
    "optim.warmup_steps=5",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=5",
]


def train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [str(BIN / "memzoo-train"), *RUN, *extra, f"hydra.run.dir={run_dir}"]


def checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except (FileNotFoundError, EOFError, RuntimeError, pickle.UnpicklingError):
        return -1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole")
    subprocess.run(train_cmd(run_dir), check=True, capture_output=True, timeout=600)
    return run_dir


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(uninterrupted, tmp_path):
    proc = subprocess.Popen(train_cmd(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while checkpoint_step(last) < 30 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_step(last)
    assert proc.returncode == -signal.SIGKILL and 30 <= killed_at < 200  # 256 batches per epoch: mid-epoch
    assert not (tmp_path / "metrics.json").exists()

    subprocess.run(train_cmd(tmp_path, "ckpt=last"), check=True, capture_output=True, timeout=600)
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    whole = json.loads((uninterrupted / "metrics.json").read_text())
    assert resumed["test"] == whole["test"] and resumed["steps"] == whole["steps"] == 200
    a = torch.load(last, weights_only=False)
    b = torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=False)
    for key, value in b["state_dict"].items():
        assert torch.equal(a["state_dict"][key], value), key
    sparse_a, sparse_b = a["optimizer_states"][0]["sparse"]["state"], b["optimizer_states"][0]["sparse"]["state"]
    for idx, state in sparse_b.items():
        assert torch.equal(sparse_a[idx]["exp_avg_sq"], state["exp_avg_sq"])


def stop_with(signum: int, cmd: list[str], last: Path, after_step: int = 30) -> tuple[int, str]:
    """Start ``cmd``, send ``signum`` once ``last`` holds a step >= ``after_step``; (exit code, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while checkpoint_step(last) < after_step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_sigterm_saves_the_current_step_exits_143_and_resumes_like_an_uninterrupted_run(uninterrupted, tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    code, err = stop_with(signal.SIGTERM, train_cmd(tmp_path), last)
    stopped_at = checkpoint_step(last)
    assert code == 143, err[-2000:]
    assert 30 <= stopped_at < 200 and f"stopped by SIGTERM: checkpoint at step {stopped_at} in" in err
    assert not (tmp_path / "metrics.json").exists()

    subprocess.run(train_cmd(tmp_path, "ckpt=last"), check=True, capture_output=True, timeout=600)
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    whole = json.loads((uninterrupted / "metrics.json").read_text())
    assert resumed["test"] == whole["test"] and resumed["steps"] == whole["steps"] == 200
    a, b = torch.load(last, weights_only=True), torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == 200 and all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # overwritten in place: no last-v1.ckpt


def test_sigint_stops_a_sweep_with_exit_130_and_a_checkpoint_at_the_current_step(tmp_path):
    sweep = [str(BIN / "memzoo-train"), "-m", *RUN, "optim.lr=0.003,0.001", f"hydra.sweep.dir={tmp_path}"]
    last = tmp_path / "0" / "checkpoints" / "last.ckpt"
    code, err = stop_with(signal.SIGINT, sweep, last)
    assert code == 130, err[-2000:]
    assert f"stopped by SIGINT: checkpoint at step {checkpoint_step(last)} in" in err
    assert not (tmp_path / "1").exists()  # the sweep's second run never started


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    done = subprocess.run(train_cmd(tmp_path, "ckpt=last"), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "ckpt='last': no checkpoint at" in done.stderr


def test_resume_with_another_model_names_what_differs(uninterrupted, tmp_path):
    done = subprocess.run(
        train_cmd(tmp_path, f"ckpt={uninterrupted / 'checkpoints' / 'last.ckpt'}", "memory.n_keys=16"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "trained with another model: memory.n_keys: checkpoint 8, this run 16" in done.stderr


def test_kill_while_a_checkpoint_is_written_leaves_the_previous_one(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.arange(5)}, path)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import torch, sys; from zoo.checkpoint.files import atomic_torch_save; "
                "atomic_torch_save({'step': 2, 'w': torch.zeros(200_000_000)}, sys.argv[1])"
            ),
            str(path),
        ]
    )
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in tmp_path.glob(".last.ckpt.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL  # killed mid-write, not after
    saved = torch.load(path, weights_only=False)
    assert saved["step"] == 1 and torch.equal(saved["w"], torch.arange(5))


def test_kill_while_a_distributed_checkpoint_is_written_leaves_the_previous_one(tmp_path):
    path = tmp_path / "last.ckpt"
    save_distributed({"state_dict": {"w": torch.arange(5)}, "hyper_parameters": {"model": {}}, "step": 1}, path)
    previous = path.resolve()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import torch, sys; from zoo.checkpoint.distributed import save_distributed; "
                "save_distributed({'state_dict': {'w': torch.zeros(200_000_000)}, 'hyper_parameters': {'model': {}}, 'step': 2}, "
                "sys.argv[1])"
            ),
            str(path),
        ]
    )
    deadline = time.monotonic() + 120

    def writing() -> list[Path]:
        return [
            d for d in tmp_path.glob(".last.ckpt.*.dcp") if d != previous and any(f.stat().st_size for f in d.glob("*.distcp"))
        ]

    while not writing() and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL  # killed mid-write, not after
    saved = load_checkpoint_file(path)
    assert saved["step"] == 1 and torch.equal(saved["state_dict"]["w"], torch.arange(5))
    half_written = writing()
    assert len(half_written) == 1 and remove_unlinked_data(tmp_path) == half_written  # removed at the next start


def test_lightning_saves_through_the_atomic_writer(tmp_path):
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "x.ckpt")
    assert torch.equal(torch.load(tmp_path / "x.ckpt", weights_only=False)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]


def test_memzoo_eval_tests_a_checkpoint_at_twice_the_training_length(uninterrupted, tmp_path):
    ckpt = uninterrupted / "checkpoints" / "last.ckpt"
    cmd = [
        str(BIN / "memzoo-eval"),
        f"ckpt={ckpt}",
        "task.seq_len=32",
        "task.num_kv_pairs=4",
        "task.test_seq_len=64",
        "task.test_num_kv_pairs=8",
        "task.num_train=16",
        "task.num_test=64",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_shape"] == [64, 64]
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0 and metrics["test"]["test/loss"] > 0


def test_memzoo_eval_refuses_a_task_with_a_larger_vocabulary(uninterrupted, tmp_path):
    ckpt = uninterrupted / "checkpoints" / "last.ckpt"
    done = subprocess.run(
        [
            str(BIN / "memzoo-eval"),
            f"ckpt={ckpt}",
            "task.vocab_size=512",
            "task.num_train=16",
            "task.num_test=64",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "outside the model's vocabulary [0, 128)" in done.stderr


SAVED = [arg for arg in RUN if not arg.startswith("trainer.max_steps=")] + ["trainer.max_steps=300"]  # not the default 1000


@pytest.fixture(scope="module")
def uninterrupted_300(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole300")
    subprocess.run([str(BIN / "memzoo-train"), *SAVED, f"hydra.run.dir={run_dir}"], check=True, capture_output=True, timeout=600)
    return run_dir


def resume_in(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``memzoo-train hydra.run.dir=RUN_DIR ckpt=last OVERRIDES``, as a user resumes: nothing else given."""
    cmd = [str(BIN / "memzoo-train"), f"hydra.run.dir={run_dir}", "ckpt=last", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_resume_with_only_the_run_directory_continues_the_saved_run_bit_for_bit(uninterrupted_300, tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    code, _ = stop_with(signal.SIGTERM, [str(BIN / "memzoo-train"), *SAVED, f"hydra.run.dir={tmp_path}"], last, after_step=40)
    assert code == 143 and 40 <= checkpoint_step(last) < 300
    config = (tmp_path / "config.yaml").read_bytes()

    done = resume_in(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not resumable" not in done.stdout + done.stderr  # the loader's position is in the checkpoint
    assert "resuming the saved run with its own config.yaml" in done.stderr
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    whole = json.loads((uninterrupted_300 / "metrics.json").read_text())
    assert resumed["steps"] == whole["steps"] == 300 and resumed["test"] == whole["test"]
    a, b = torch.load(last, weights_only=True), torch.load(uninterrupted_300 / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    assert (tmp_path / "config.yaml").read_bytes() == config and not (tmp_path / "resumes.json").exists()


def test_a_resume_that_would_change_the_model_is_refused_naming_the_key(uninterrupted_300):
    config = (uninterrupted_300 / "config.yaml").read_bytes()
    done = resume_in(uninterrupted_300, "backbone.d_model=32", "optim.lr=0.01")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "would change backbone.d_model (16 -> 32), optim.lr (" in done.stderr
    assert (uninterrupted_300 / "config.yaml").read_bytes() == config


def test_more_steps_on_resume_keep_the_saved_schedule_and_are_recorded_beside_the_config(uninterrupted_300, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted_300, run_dir)
    (run_dir / "metrics.json").unlink()
    config = (run_dir / "config.yaml").read_bytes()
    done = resume_in(run_dir, "trainer.max_steps=310", "backbone.d_model=16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "changed: trainer.max_steps 300 -> 310, optim.total_steps None -> 300" in done.stderr  # d_model restates the saved 16
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 310
    assert (run_dir / "config.yaml").read_bytes() == config
    record = json.loads((run_dir / "resumes.json").read_text())
    assert record[0]["changes"] == {"trainer.max_steps": [300, 310], "optim.total_steps": [None, 300]}


def test_a_group_choice_on_resume_changes_only_the_keys_that_differ_and_each_is_judged_alone():
    from omegaconf import OmegaConf

    from zoo.training.resume_config import resumed_config

    saved = OmegaConf.create({"ckpt": None, "trainer": {"max_steps": 2, "devices": 2}, "optim": {"total_steps": 4}})
    composed = OmegaConf.create({"ckpt": "last", "trainer": {"max_steps": 4, "devices": 2}, "optim": {"total_steps": 4}})
    config, changes = resumed_config(saved, composed, ["trainer=ddp", "ckpt=last"])
    assert changes == {"trainer.max_steps": [2, 4]} and config.trainer.max_steps == 4 and config.ckpt == "last"
    composed.trainer.devices = 1  # a different world size changes the data each rank sees
    with pytest.raises(ValueError, match=r"would change trainer\.devices \(2 -> 1\)"):
        resumed_config(saved, composed, ["trainer=ddp", "ckpt=last"])
