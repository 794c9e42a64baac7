"""Every private (underscored) upstream name memzoo relies on still exists and means what memzoo
takes it to mean; each test names the symbol, so an upgrade that changes one fails here loudly."""

import importlib
import inspect

import torch
import torch.nn.functional as F

from zoo.core import private_api


def test_ddp_still_reads_its_ignore_list_from_the_wrapped_module():
    from torch.nn.parallel import DistributedDataParallel

    source = inspect.getsource(DistributedDataParallel.__init__)
    assert private_api.DDP_IGNORE_ATTRIBUTE in source, (
        f"torch.nn.parallel.DistributedDataParallel no longer reads module.{private_api.DDP_IGNORE_ATTRIBUTE}: "
        "sharded memory tables would be synchronised by DDP (zoo.core.private_api.keep_out_of_ddp)"
    )
    module = torch.nn.Linear(2, 2)
    private_api.keep_out_of_ddp(module, ["weight"])
    assert getattr(module, private_api.DDP_IGNORE_ATTRIBUTE) == ["weight"]


def test_the_distributed_checkpoint_private_globals_still_exist():
    for module, name in private_api.DCP_PRIVATE_GLOBALS:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone (zoo.core.private_api)"
    info = getattr(importlib.import_module(private_api.DCP_STORAGE_INFO[0]), private_api.DCP_STORAGE_INFO[1])
    assert {"relative_path", "offset", "length"} <= set(inspect.signature(info).parameters), (
        "torch.distributed.checkpoint.filesystem._StorageInfo changed its fields"
    )


def test_the_embedding_bag_weight_backward_op_equals_autograds_weight_gradient():
    """aten._embedding_bag_per_sample_weights_backward: the same numbers as autograd's, reads in any order."""
    gen = torch.Generator().manual_seed(0)
    table, slots = torch.randn(10, 4, dtype=torch.float64, generator=gen), torch.randint(0, 10, (3, 2), generator=gen)
    weights = torch.rand(3, 2, dtype=torch.float64, generator=gen).requires_grad_()
    grad_out = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    F.embedding_bag(slots, table, per_sample_weights=weights, mode="sum").backward(grad_out)
    order = torch.tensor([5, 0, 3, 1, 4, 2])  # reads out of token order
    dots = private_api.embedding_bag_weights_backward(grad_out, table, slots.flatten()[order], torch.arange(0, 6, 2), order // 2)
    torch.testing.assert_close(dots, weights.grad.flatten()[order])


def test_lightnings_batch_progress_and_hydras_callbacks_and_app_still_exist():
    """Used where they are: zoo/tasks/base.py (a resumed epoch's batches done, from the fit loop's
    progress), zoo/core/command_line.py (hydra._internal.callbacks.Callbacks, the Hydra object's
    compose_config) and zoo/grid/runner.py (its multirun)."""
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert trainer.fit_loop.epoch_loop.batch_progress.current.processed == 0, "Lightning's batch progress moved"
    hydra_callbacks = importlib.import_module("hydra._internal.callbacks")
    assert hasattr(hydra_callbacks, "Callbacks"), "hydra._internal.callbacks.Callbacks is gone"
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        app = GlobalHydra.instance().hydra  # zoo/core/command_line.py and zoo/grid/runner.py call these
        assert callable(app.compose_config) and callable(app.multirun), "Hydra's compose_config / multirun moved"
