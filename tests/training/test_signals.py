"""Stop signals inside Lightning: wherever in a step SIGTERM lands, the run ends with
``RunInterrupted`` (exit 143), never with Lightning's own ``SIGTERMException`` (exit 0)."""

import os
import signal

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from zoo.training.signals import CheckpointOnSignal, RunInterrupted, StopSignals


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        return self.training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    generator = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(64, 4, generator=generator), torch.randn(64, 1, generator=generator)), batch_size=4
    )


class SigtermAfterStep(L.Callback):
    """Sends SIGTERM to this process at the end of training step ``step``, after the callbacks
    listed before it have seen that step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermAtSanityCheck(L.Callback):
    def on_sanity_check_start(self, trainer, pl_module):
        os.kill(os.getpid(), signal.SIGTERM)


def fit(callbacks, tmp_path, **trainer_options):
    trainer = L.Trainer(
        max_steps=50,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **trainer_options,
    )
    trainer.fit(Regression(), train_dataloaders=loader(), val_dataloaders=loader())


def test_sigterm_after_the_callbacks_check_saves_the_next_step_instead_of_exiting_0(tmp_path):
    # Lightning checks its own SIGTERM flag after every on_train_batch_end; its handler would stop
    # here with SystemExit(None), exit code 0, no checkpoint.
    with StopSignals() as stop:
        on_signal = CheckpointOnSignal(stop, tmp_path)
        with pytest.raises(RunInterrupted, match="stopped by SIGTERM: checkpoint at step 4") as stopped:
            fit([on_signal, SigtermAfterStep(3)], tmp_path, num_sanity_val_steps=0)
    assert stopped.value.exit_code == 143
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 4


def test_a_signal_before_the_handlers_are_taken_back_still_ends_as_run_interrupted(tmp_path):
    # At on_sanity_check_start, a callback listed before CheckpointOnSignal runs while Lightning's
    # handler is in place: Lightning raises SIGTERMException after the first sanity batch.
    with StopSignals() as stop:
        on_signal = CheckpointOnSignal(stop, tmp_path)
        with pytest.raises(RunInterrupted, match="stopped by SIGTERM: Lightning stopped the run") as stopped:
            with stop.lightning_stops_as_interrupts():
                fit([SigtermAtSanityCheck(), on_signal], tmp_path, num_sanity_val_steps=2)
    assert stopped.value.exit_code == 143
    assert not (tmp_path / "last.ckpt").exists()


def test_the_handlers_before_a_stop_signals_block_come_back_after_it():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
    assert signal.getsignal(signal.SIGTERM) == before
