"""Guards: token ids outside the vocabulary, a checkpoint of another model, non-finite loss and
gradients stopping the run with the step and the layer while the last checkpoint stays loadable."""

import dataclasses

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from zoo.model.loading import stored_model_config
from zoo.tasks.base import TokenDataset
from zoo.tasks.mqar import MQARDataModule
from zoo.training.checkpoint_io import AtomicCheckpointIO
from zoo.training.guards import check_same_model, check_token_ids
from zoo.training.lit import LitLanguageModel
from zoo.training.optim import OptimConfig

MODEL = {
    "vocab_size": 32,
    "d_model": 16,
    "n_layers": 2,
    "mixer": {"attention": {"num_heads": 2}},
    "memory": {"n_keys": 8, "knn": 4, "heads": 2, "k_dim": 8, "layers": [1]},
}
OPTIM = OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=1)


def test_token_ids_outside_the_vocabulary_name_the_split_and_id():
    good = TokenDataset(torch.tensor([[1, 2]]), torch.tensor([[2, -100]]))
    check_token_ids({"train": good}, vocab_size=3)
    with pytest.raises(ValueError, match=r"test split holds token id 7, outside the model's vocabulary \[0, 5\)"):
        check_token_ids({"train": good, "test": TokenDataset(torch.tensor([[1, 7]]), torch.tensor([[2, 3]]))}, 5)
    with pytest.raises(ValueError, match=r"train split holds token id 3"):
        check_token_ids({"train": TokenDataset(torch.tensor([[1, 2]]), torch.tensor([[3, -100]]))}, 3)


def test_checkpoint_of_another_model_lists_every_difference():
    other = {**MODEL, "d_model": 32, "memory": {**MODEL["memory"], "n_keys": 16, "parallel": "rows"}}
    with pytest.raises(ValueError, match=r"d_model: checkpoint 16, this run 32; memory.n_keys: checkpoint 8, this run 16$"):
        check_same_model(stored_model_config(MODEL), stored_model_config(other))
    columns = {**MODEL, "memory": {**MODEL["memory"], "parallel": "columns"}}
    check_same_model(stored_model_config(MODEL), stored_model_config(columns))  # layouts load each other


def test_a_checkpoint_stored_before_the_typed_config_is_the_same_model():
    """Checkpoints store ``hyper_parameters.model`` as a plain dict: before ``RunConfig`` it held the
    backbone keys, the vocabulary size and the memory group (with its preset name) only when a memory
    was on; now ``dataclasses.asdict(ModelConfig)``. Both read as the same ``ModelConfig``."""
    old = {
        "name": "transformer",
        "d_model": 16,
        "n_layers": 2,
        "pattern": "A",
        "channel": "mlp",
        "mixer": {"attention": {"num_heads": 2, "rotary_base": 10000.0, "bias": False, "dropout": 0.0}},
        "mlp": {"hidden_dim": None, "bias": False},
        "tie_embeddings": False,
        "norm_eps": 1e-5,
        "vocab_size": 32,
    }
    current = stored_model_config(old)
    check_same_model(stored_model_config(old), stored_model_config(dataclasses.asdict(current)))
    with_memory = {**old, "memory": {"name": "pkm", **MODEL["memory"]}}
    check_same_model(stored_model_config(with_memory), stored_model_config(dataclasses.asdict(stored_model_config(with_memory))))
    with pytest.raises(
        ValueError,
        match=r"another model: memory.gate: checkpoint None, this run False; "
        r".*memory.n_keys: checkpoint None, this run 8",
    ):
        check_same_model(stored_model_config(old), stored_model_config(with_memory))


class Poison(Callback):
    """At ``step``, make a memory value row NaN (``where='weights'``) or the memory gradients NaN."""

    def __init__(self, step: int, where: str):
        self.step, self.where = step, where

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        values = module.model.blocks[1].channel.values.weight
        if self.where == "weights":
            with torch.no_grad():
                values.fill_(float("nan"))
        else:
            values.register_hook(lambda grad: grad * float("nan"))


@pytest.mark.parametrize(
    "where,match",
    [
        ("weights", r"non-finite training loss \(nan\) at step 5, first in layer 1 \(memory\): blocks.1.channel"),
        ("gradients", r"non-finite gradient at step 5 in layer 1 \(memory\): blocks.1.channel.values.weight"),
    ],
)
def test_non_finite_loss_or_gradient_stops_the_run_and_keeps_the_last_checkpoint(where, match, tmp_path):
    L.seed_everything(0, verbose=False)
    data = MQARDataModule(vocab_size=32, seq_len=16, num_kv_pairs=2, num_train=512, num_test=32, batch_size=8)
    module = LitLanguageModel(stored_model_config(MODEL), OPTIM)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2)
    trainer = L.Trainer(
        max_steps=20,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoints, Poison(5, where)],
        plugins=[AtomicCheckpointIO()],
    )
    with pytest.raises(FloatingPointError, match=match):
        trainer.fit(module, datamodule=data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
