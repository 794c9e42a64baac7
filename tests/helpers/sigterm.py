"""A command-line run stopped by SIGTERM once its last.ckpt has reached a step: what the tests that
resume a stopped run start from."""

import pickle
import signal
import subprocess
import time
from pathlib import Path

import torch

from zoo.checkpoint.distributed import is_distributed_checkpoint


def step_of(last: Path) -> int:
    """The global step saved in ``last`` (a file or a distributed checkpoint), -1 while there is none
    or it is being written."""
    try:
        file = last.resolve() / "checkpoint.pt" if is_distributed_checkpoint(last) else last
        return torch.load(file, map_location="cpu", weights_only=True)["global_step"]
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, KeyError):
        return -1


def stop_after_step(cmd: list[str], last: Path, step: int, timeout: float = 300, **popen) -> tuple[int, int, str]:
    """Run ``cmd``, send it SIGTERM once ``last`` holds step ``step`` or later (or the run ended, or
    ``timeout`` passed): (its return code, the step ``last`` holds after it stopped, its stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
    limit = time.monotonic() + timeout
    while step_of(last) < step and proc.poll() is None and time.monotonic() < limit:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, step_of(last), err
