"""One GPU per job when grid jobs share a machine (``hydra/launcher=joblib`` on a host with several
GPUs): a job that trains on one CUDA device claims a free one of those it sees, instead of every
job taking device 0. A claim is an exclusive lock on a per-device file, named by the device's UUID
in the machine's temp directory: released when the job ends or its process dies, and shared with
any other memzoo job on the machine whatever its launcher (SLURM jobs that each see their own GPU
never contend)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

LOCK_DIR = Path(tempfile.gettempdir()) / "memzoo-devices"


def claim(keys: Sequence[str], lock_dir: Path, fallback: int) -> tuple[int, IO]:
    """The index of the first device (of ``keys``) no other holder has claimed, and its locked file
    (close it to release). When every device is claimed (more jobs than devices), waits for
    ``keys[fallback]``."""
    import fcntl  # POSIX only, and only needed where several GPUs are shared

    lock_dir.mkdir(parents=True, exist_ok=True)
    for index, key in enumerate(keys):
        handle = open(lock_dir / f"{key}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return index, handle
        except BlockingIOError:
            handle.close()
    handle = open(lock_dir / f"{keys[fallback]}.lock", "a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return fallback, handle


@contextmanager
def one_device_per_job(trainer: Any, job_num: int) -> Iterator[None]:
    """Inside, a run whose ``trainer`` settings (a ``TrainerConfig``) ask for one CUDA device
    (``accelerator`` gpu / cuda, ``devices`` 1) trains on a claimed device (``trainer.devices = [i]``)
    when more than one is visible; any other run is left as it is. ``job_num`` picks the device to
    wait for when all are claimed."""
    one_cuda = trainer.accelerator in ("gpu", "cuda") and str(trainer.devices) == "1"
    count = torch.cuda.device_count() if one_cuda else 0
    if count < 2:
        yield
        return
    keys = [str(torch.cuda.get_device_properties(i).uuid) for i in range(count)]
    index, handle = claim(keys, LOCK_DIR, job_num % count)
    try:
        trainer.devices = [index]
        yield
    finally:
        handle.close()
