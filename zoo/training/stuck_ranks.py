"""A rank that stops (SIGSTOP, a hung data loader, a dead host) must not leave the others waiting
forever: every collective of a ``trainer=ddp`` run has a timeout (``collective_timeout_s``, given to
the process group), after which the waiting rank's backend raises. ``collective_timeouts`` turns
that error into one that names the stuck collective and the setting, and has rank 0 end the ranks it
started (Lightning ends them on Ctrl-C only), so every rank of the job exits non-zero."""

from __future__ import annotations

import signal
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L

# what gloo and NCCL say when a collective outlives the process group's timeout
TIMEOUT_MARKERS = ("Timed out waiting", "Application timeout caused pair closure", "timed out", "Watchdog caught collective")


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than ``collective_timeout_s`` for another rank."""


def stuck_collective(err: BaseException) -> str | None:
    """The collective ``err`` timed out in (the innermost torch.distributed / DDP call of its
    traceback, or DDP's gradient all-reduce when it surfaced in backward), or None when ``err`` is
    no collective timeout."""
    if not any(marker in str(err) for marker in TIMEOUT_MARKERS):
        return None
    frames = traceback.extract_tb(err.__traceback__)
    for frame in reversed(frames):
        if "torch/distributed/" in frame.filename or "torch/nn/parallel/distributed.py" in frame.filename:
            return f"torch.distributed {frame.name}"
        if frame.name in ("_engine_run_backward", "run_backward"):
            return "DDP's gradient all-reduce (during backward)"
    return "a collective of the process group"


@contextmanager
def collective_timeouts(trainer: L.Trainer, timeout_s: float) -> Iterator[None]:
    """Around ``trainer.fit`` / ``trainer.test``: a collective timeout becomes ``CollectiveTimeout``
    naming the collective, after the ranks this process launched are ended (SIGKILL: a stopped
    rank cannot take any other signal)."""
    try:
        yield
    except Exception as err:
        where = stuck_collective(err)
        if where is None:
            raise
        launcher = trainer.strategy.launcher
        if trainer.is_global_zero and launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signal.SIGKILL)
            for process in getattr(launcher, "procs", []):  # reaped here: no zombie outlives the job
                process.wait(timeout=30)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CollectiveTimeout(
            f"rank {trainer.global_rank}: {where} did not complete within collective_timeout_s={timeout_s:g} s: another "
            f"rank stopped, died or fell that far behind; the job stops (the backend said: {first_line})"
        ) from err
