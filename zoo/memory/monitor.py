"""What a run logs about its memory layers, as a Lightning callback owned by the memory package:
per layer, every validation and over the test set, the fraction of slots read and KL(read mass ||
uniform) (Lample et al. 2019), with a read-count histogram at validation; once, the bytes each layer
sends per token when sharded."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from zoo.memory.comm import comm_bytes_per_token
from zoo.memory.layer import memory_layers
from zoo.memory.usage import kl_from_uniform, usage_fraction


def sent_bytes_per_token(model: nn.Module, world_size: int) -> dict[str, float]:
    """Bytes one memory layer of ``model`` sends per token (forward / backward) in its layout."""
    layers = list(memory_layers(model).values())
    if not layers:
        return {"forward": 0.0, "backward": 0.0}
    layer = layers[0]
    element_bytes = layer.w1.weight.element_size()
    return comm_bytes_per_token(layer.config, layer.d_model, world_size, element_bytes)


class MemoryMonitor(Callback):
    """Logs ``memory/layer{i}/usage``, ``memory/layer{i}/kl_uniform`` (summed over ranks) and the
    histogram ``memory/layer{i}/read_counts`` after each validation, ``test/memory/layer{i}/usage``
    and ``test/memory/layer{i}/kl_uniform`` with the test metrics (so in metrics.json), and
    ``memory/comm_bytes_per_token/{forward,backward}`` at the start of training when the table is
    sharded (a local table sends nothing, and logs no zeros)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sent = sent_bytes_per_token(pl_module, trainer.world_size)
        if trainer.logger is not None and any(sent.values()):  # a sharded table; a local one sends nothing
            trainer.logger.log_metrics({f"memory/comm_bytes_per_token/{k}": v for k, v in sent.items()}, step=0)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for idx, counts in self._log_usage(trainer, pl_module, "memory").items():
            if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
                trainer.logger.experiment.add_histogram(f"memory/layer{idx}/read_counts", counts, trainer.global_step)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_usage(trainer, pl_module, "test/memory")

    @staticmethod
    def _start(pl_module: L.LightningModule) -> None:
        for layer in memory_layers(pl_module).values():
            layer.usage.start()

    @staticmethod
    def _log_usage(trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> dict:
        """Log ``{prefix}/layer{i}/usage`` and ``.../kl_uniform`` over the reads since ``_start``
        (all ranks'); returns the read counts (N,) by layer index."""
        read_counts = {}
        for idx, layer in memory_layers(pl_module).items():
            layer.usage.stop()
            if trainer.sanity_checking or layer.usage.counts is None:
                continue
            counts = trainer.strategy.reduce(layer.usage.counts.double(), reduce_op="sum")
            mass = trainer.strategy.reduce(layer.usage.mass, reduce_op="sum")
            pl_module.log(f"{prefix}/layer{idx}/usage", usage_fraction(counts), sync_dist=True)  # equal on every rank
            pl_module.log(f"{prefix}/layer{idx}/kl_uniform", kl_from_uniform(mass), sync_dist=True)
            read_counts[idx] = counts
        return read_counts
