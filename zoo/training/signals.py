"""Stopping on SIGTERM / SIGINT without losing work: the signal is recorded, training stops at the
end of the current step after saving ``last.ckpt`` there, and the process exits 128 + the signal
number (143 for SIGTERM, 130 for SIGINT), never 0."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """A run (or a grid) stopped by a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, detail: str = ""):
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}{': ' + detail if detail else ''}")


class SignalExit(SystemExit):
    """Leave the process with exit code ``code`` (128 + a stop signal) after ``finally`` blocks run.
    A ``SystemExit``, so it passes Hydra's job runner and launchers, which catch ``Exception`` only;
    the code is the only argument, so it pickles back from a launcher's worker process."""

    def __init__(self, code: int):
        super().__init__(code)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.code - 128).name


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """While open (main thread only), SIGTERM and SIGINT raise ``SignalExit`` where the process is:
    for a process that waits on others (``memzoo-grid`` while a launcher runs its cells), so the
    wait ends at once. A run started inside installs its own ``StopSignals``, which takes the
    signal first and saves a checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame) -> None:
        raise SignalExit(128 + signum)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopSignals:
    """While open, SIGTERM and SIGINT set ``received`` (the signal number) instead of ending the
    process, and are passed on to the handlers that were there before (an enclosing ``StopSignals``,
    e.g. a grid around its runs); a second signal exits at once. Outside the main thread it does
    nothing (signals go to the main one)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def reinstall(self) -> None:
        """Take the signals back from a handler installed since (Lightning puts its own SIGTERM
        handler in place for each fit or test and restores ours when it ends)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:  # a second signal: stop now, without waiting for the step
            raise SystemExit(128 + signum)
        self.received = signum
        previous = self._previous.get(signum)
        if isinstance(getattr(previous, "__self__", None), StopSignals):  # an enclosing StopSignals
            previous(signum, frame)

    @contextmanager
    def lightning_stops_as_interrupts(self) -> Iterator[None]:
        """Inside, Lightning's own stop on SIGTERM (``SIGTERMException``, a ``SystemExit`` that
        would end the process with exit code 0) becomes ``RunInterrupted``. Lightning stops that way
        only for a signal in the moment before ``CheckpointOnSignal`` takes the signals back, so no
        checkpoint of the current step exists; the periodic ones are kept."""
        try:
            yield
        except SIGTERMException:
            raise RunInterrupted(
                self.received or signal.SIGTERM, "Lightning stopped the run before a checkpoint of this step"
            ) from None

    def check(self, detail: str = "") -> None:
        """Raise ``RunInterrupted`` if a signal arrived."""
        if self.received is not None:
            raise RunInterrupted(self.received, detail)


class CheckpointOnSignal(Callback):
    """At the end of the training step during which a stop signal arrived (on any rank), save
    ``checkpoints/last.ckpt`` at that step (atomically, like every checkpoint; the state a periodic
    checkpoint of that step holds) and raise ``RunInterrupted``. A validation in progress finishes
    first; a test stops at the end of the current batch. Every rank takes part, so all of them save
    at the same step.

    Lightning's own SIGTERM handling (a ``SIGTERMException``, a ``SystemExit`` that exits 0, at a
    point of its choosing and without a checkpoint) is replaced: Lightning installs its handler
    after ``on_fit_start``, so the signals are taken back at the first hooks after that, the start
    of the sanity check, of training and of a test."""

    def __init__(self, stop: StopSignals, checkpoint_dir: Path):
        self.stop, self.checkpoint_dir = stop, checkpoint_dir

    def _any_rank_signalled(self, trainer: L.Trainer) -> bool:
        return trainer.strategy.reduce_boolean_decision(self.stop.received is not None, all=False)

    def _signum(self) -> int:
        return self.stop.received or signal.SIGTERM  # another rank's signal: report SIGTERM

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module) -> None:
        self.stop.reinstall()

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.stop.reinstall()

    def on_test_start(self, trainer: L.Trainer, pl_module) -> None:
        self.stop.reinstall()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._any_rank_signalled(trainer):
            path = self.checkpoint_dir / "last.ckpt"
            trainer.save_checkpoint(path, weights_only=False)  # the full state: model, optimizer, loops
            raise RunInterrupted(self._signum(), f"checkpoint at step {trainer.global_step} in {path}")

    def on_test_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self._any_rank_signalled(trainer):
            raise RunInterrupted(self._signum(), "during the test, after training finished")
