"""A 2-rank DDP run in which one rank stops (SIGSTOP) ends within the collective timeout: the
waiting rank's collective fails, it ends the stopped rank, and the job exits non-zero naming the
stuck collective and the setting."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo.training.stuck_ranks import stuck_collective

BIN = Path(sys.executable).parent
TIMEOUT_S = 8


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def process_state(pid: int) -> str | None:
    """'R', 'S', 'T' (stopped), 'Z' (zombie), ... or None when no such process exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the rank's process through Linux's /proc")
def test_a_stopped_rank_ends_the_job_non_zero_within_the_collective_timeout(tmp_path):
    cmd = [
        str(BIN / "memzoo-train"),
        "trainer=ddp",
        "backbone.d_model=16",
        "task.num_train=4096",
        "task.num_test=64",
        "trainer.max_steps=100000",
        "trainer.val_check_interval=100000",
        "trainer.enable_progress_bar=false",
        "checkpoint.every_n_train_steps=5",
        f"collective_timeout_s={TIMEOUT_S}",
        f"hydra.run.dir={tmp_path}",
    ]
    log = tmp_path.parent / f"{tmp_path.name}.log"
    with open(log, "w") as out:  # a file, not a pipe: the stopped rank holds the pipe open
        job = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    rank1 = None
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "checkpoints" / "last.ckpt").exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # training is under way once the first periodic checkpoint exists
        assert job.poll() is None, log.read_text()[-3000:]
        (rank1,) = child_pids(job.pid)
        os.kill(rank1, signal.SIGSTOP)
        stopped_at = time.monotonic()
        job.wait(timeout=TIMEOUT_S + 60)
        waited = time.monotonic() - stopped_at
    finally:
        if job.poll() is None:
            job.kill()
        if rank1 is not None and process_state(rank1) not in (None, "Z"):
            os.kill(rank1, signal.SIGKILL)
    output = log.read_text()
    assert job.returncode == 1, output[-3000:]
    assert waited < TIMEOUT_S + 30  # the timeout, plus one step and the exit
    assert f"did not complete within collective_timeout_s={TIMEOUT_S} s" in output
    assert "rank 0: DDP's gradient all-reduce (during backward)" in output or "rank 0: torch.distributed" in output
    assert process_state(rank1) is None  # the stopped rank was ended and reaped, not left behind


def test_only_collective_timeouts_are_named_as_stuck_collectives():
    def raised(message):
        try:
            raise RuntimeError(message)
        except RuntimeError as err:
            return err

    assert stuck_collective(raised("CUDA out of memory")) is None
    assert stuck_collective(raised("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 8000ms for recv operation"))
