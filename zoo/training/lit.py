"""The Lightning module: next-token cross-entropy on scored positions, accuracy, AdamW + schedule."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from zoo.memory.sharding import prepare_data_parallel
from zoo.model.language_model import ModelConfig, build_model
from zoo.model.loading import stored_model_config
from zoo.tasks.base import IGNORE_INDEX
from zoo.training.guards import check_same_model, first_non_finite_gradient, first_non_finite_output
from zoo.training.metrics import BitsPerByte, KnowledgeBits
from zoo.training.optim import (
    OptimConfig,
    build_optimizer,
    clip_grad_norm,
    default_warmup,
    param_groups,
    warmup_cosine_scheduler,
)


class LitLanguageModel(L.LightningModule):
    """Trains ``build_model(model)`` on ``{"inputs", "targets"}`` batches.

    Args:
        model: the ``ModelConfig`` of ``build_model``.
        optim: the ``OptimConfig`` (None: its defaults; testing needs none).
        bytes_per_token: per split, the bytes of text a scored token covers (language modeling);
            when given, perplexity (``{split}/ppl``) and bits per byte (``{split}/bpb``) are logged.
        test_slices: names of extra test sets (``test/<slice>``), test dataloaders 1, 2, ... after
            the task's test split; each logs its own ``test/<slice>/loss`` and ``test/<slice>/acc``.
        chance_bits: the bits a scored target carries at chance (a recall task's ``chance_bits``);
            when given, validation and the test split log ``{split}/knowledge_bits``
            (``zoo.training.metrics.KnowledgeBits``, summed over the split).
        pretrained: the Hugging Face directory the run started from (``init.pretrained``), kept in the
            checkpoint so ``memzoo-export`` finds its tokenizer and token ids; the weights are loaded
            by ``zoo.training.pretrained_init.start_from_pretrained``, not here.

    Checkpoints store the configs as plain dicts (``hyper_parameters.model`` / ``.optim``: the
    dataclasses' fields), which ``torch.load(weights_only=True)`` reads and
    ``zoo.model.loading.stored_model_config`` turns back into a ``ModelConfig``.
    """

    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig | None = None,
        bytes_per_token: dict[str, float] | None = None,
        test_slices: list[str] | None = None,
        chance_bits: float | None = None,
        pretrained: str | None = None,
    ):
        super().__init__()
        self.model_config = model
        self.optim = OptimConfig() if optim is None else optim
        test_slices = list(test_slices or [])
        # train() logs them once, with the final metrics
        self.save_hyperparameters(
            {
                "model": dataclasses.asdict(model),
                "optim": dataclasses.asdict(self.optim),
                "bytes_per_token": bytes_per_token,
                "test_slices": test_slices,
                "chance_bits": chance_bits,
                "pretrained": pretrained,
            },
            logger=False,
        )
        self.model = build_model(model)
        vocab = model.vocab_size
        self.accuracy = torch.nn.ModuleDict(
            {
                f"{split}_acc": MulticlassAccuracy(num_classes=vocab, ignore_index=IGNORE_INDEX, average="micro")
                for split in ("train", "val", "test")
            }
        )
        self.test_slices = test_slices
        self.slice_accuracy = torch.nn.ModuleList(
            MulticlassAccuracy(num_classes=vocab, ignore_index=IGNORE_INDEX, average="micro") for _ in self.test_slices
        )
        self.text_metrics = torch.nn.ModuleDict()
        for split, per_token in (bytes_per_token or {}).items():
            self.text_metrics[f"{split}_ppl"] = Perplexity(ignore_index=IGNORE_INDEX)
            self.text_metrics[f"{split}_bpb"] = BitsPerByte(per_token, ignore_index=IGNORE_INDEX)
        self.knowledge = torch.nn.ModuleDict(
            {} if chance_bits is None else {split: KnowledgeBits(chance_bits) for split in ("val", "test")}
        )

    def configure_model(self) -> None:
        """After the process group exists, before DDP wraps this module and a checkpoint loads: ``prepare_data_parallel``."""
        prepare_data_parallel(self)

    def forward(self, inputs: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        """inputs: (B, L) long -> logits (B, L, V); with ``scored`` (B, L) bool, (scored.sum(), V)."""
        return self.model(inputs, scored)

    def _shared_step(self, batch: dict[str, torch.Tensor], split: str, test_set: int = 0) -> torch.Tensor:
        """Loss and metrics of ``split`` (train / val / test); ``test_set`` i >= 1: test slice i - 1.
        Logits are computed at the scored positions only (targets != IGNORE_INDEX)."""
        inputs, targets = batch["inputs"], batch["targets"]
        scored = targets != IGNORE_INDEX
        logits = self(inputs, scored)  # every rank runs the layers, padding batches too (sharded memory's collectives)
        if not scored.any():  # an evaluation batch of padding only (EvalShardSampler): nothing to count
            return logits.sum() * 0.0
        targets = targets[scored]
        loss = F.cross_entropy(logits.float(), targets)
        if test_set:
            prefix, accuracy = self.test_slices[test_set - 1], self.slice_accuracy[test_set - 1]
        else:
            prefix, accuracy = split, self.accuracy[f"{split}_acc"]
        accuracy(logits.argmax(-1), targets)
        on_step = split == "train"
        rows = None if on_step else int(scored.any(-1).sum())  # padding rows (EvalShardSampler) weigh nothing
        # every test set logs under its own name: no dataloader index appended
        self.log(
            f"{prefix}/loss",
            loss,
            on_step=on_step,
            on_epoch=not on_step,
            prog_bar=True,
            sync_dist=not on_step,
            batch_size=rows,
            add_dataloader_idx=False,
        )
        self.log(f"{prefix}/acc", accuracy, on_step=on_step, on_epoch=not on_step, prog_bar=True, add_dataloader_idx=False)
        for name in ("ppl", "bpb"):
            key = f"{split}_{name}"
            if key in self.text_metrics and not test_set:
                self.text_metrics[key](logits.float()[None], targets[None])  # (1, N, V): one "sequence" of scored tokens
                self.log(f"{split}/{name}", self.text_metrics[key], on_step=on_step, on_epoch=not on_step)
        if split in self.knowledge and not test_set:
            self.knowledge[split](logits, targets)
            self.log(f"{split}/knowledge_bits", self.knowledge[split], on_epoch=True, add_dataloader_idx=False)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        if not torch.isfinite(loss):
            where = first_non_finite_output(self.model, batch["inputs"])
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}, first in {where}; "
                "the run stops here and checkpoints/ keeps the last good checkpoint"
            )
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        where = first_non_finite_gradient(self.model)
        if where is not None:
            raise FloatingPointError(
                f"non-finite gradient at step {self.global_step} in {where}; "
                "the run stops here and checkpoints/ keeps the last good checkpoint"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        # plain types and tensors only, so the checkpoint loads with torch.load(weights_only=True)
        numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model (naming what differs); restore the RNG states."""
        check_same_model(stored_model_config(checkpoint["hyper_parameters"]["model"]), self.model_config)
        states = checkpoint.get("rng_states")
        if states is not None:
            torch.set_rng_state(states["torch"])
            random.setstate(states["python"])
            name, keys, pos, has_gauss, cached = states["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step(batch, "test", dataloader_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optim
        groups = param_groups(self.model, opt.lr, opt.weight_decay, opt.group_lr)
        optimizer = build_optimizer(groups, betas=tuple(opt.betas), eps=opt.eps)
        total = opt.total_steps or self.trainer.max_steps
        if total is None or total < 1:
            total = int(self.trainer.estimated_stepping_batches)
        warmup = default_warmup(opt.warmup_steps, total)
        scheduler = warmup_cosine_scheduler(optimizer, warmup, total, opt.min_lr_ratio)
        # logged as lr/<group> (lr/decay, lr/memory_values, ...), whichever optimizer class holds the group
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping over dense and sparse gradients alike (torch's own rejects sparse ones)."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r}; allowed: 'norm'")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clip_grad_norm(params, gradient_clip_val)
