"""A run's size check (``zoo.model.size_budget``) over its typed settings: the memory its model, task
data and test slices take against this machine's, naming the task, backbone or memory key whose
value drives the excess (the one that, set back to its default, lowers the estimate most)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from zoo.model.size_budget import (
    Budget,
    Drivers,
    Part,
    check_size_budget,
    integer_options,
    machine_budget,
    model_key_value,
    model_size_keys,
    processes,
    run_parts,
    with_model_key,
)
from zoo.tasks import TASKS, build_datamodule
from zoo.training.config import RunConfig
from zoo.training.slices import slice_datamodules

MODEL_KEY_GROUPS = {"memory": "memory"}  # a model path's first part -> its config group; the rest are the backbone's


def config_key(path: str) -> str:
    """A ``model_size_keys`` path -> the run's config key (``d_model`` -> ``backbone.d_model``)."""
    return path if path.split(".")[0] in MODEL_KEY_GROUPS else f"backbone.{path}"


def task_defaults(name: str) -> dict[str, Any]:
    """The default of each option of task ``name`` (its datamodule's signature)."""
    parameters = inspect.signature(TASKS[name]).parameters
    return {key: p.default for key, p in parameters.items() if p.default is not inspect.Parameter.empty}


def check_run_fits(run: RunConfig, budget: Budget | None = None) -> None:
    """``ValueError`` when ``run`` would not fit ``budget`` (None: this machine's), naming the key to
    lower; nothing is generated or built."""
    world = processes(run.trainer.devices)

    def parts(model, task: dict[str, Any]) -> list[Part]:
        """The parts of ``model`` on the datamodules of ``task`` (the run's own, already built, for its task)."""
        datamodule = run.data if task is run.task else build_datamodule(task)
        slices = run.slices if task is run.task else slice_datamodules(task, run.test_slices)
        if run.init.pretrained is None:  # the vocabulary is the task's, unless the network is imported
            model = dataclasses.replace(model, vocab_size=int(datamodule.vocab_size))
        return run_parts(model, datamodule, list(slices.values()), world)

    model_keys = model_size_keys(run.model, with_backbone=run.init.pretrained is None)
    model_keys.pop("vocab_size", None)  # set by the task's options, which are tried instead
    options = {key: value for key, value in run.task.items() if key != "name"}
    task_keys = integer_options(options, task_defaults(run.task["name"]))
    paths = {config_key(path): path for path in model_keys}
    values = {key: model_key_value(run.model, path) for key, path in paths.items()}
    values.update({f"task.{key}": options[key] for key in task_keys})
    references = {config_key(path): reference for path, reference in model_keys.items()}
    references.update({f"task.{key}": reference for key, reference in task_keys.items()})

    def recount(key: str, value: Any) -> list[Part]:
        if key.startswith("task."):
            return parts(run.model, {**run.task, key.removeprefix("task."): value})
        return parts(with_model_key(run.model, paths[key], value), run.task)

    drivers = Drivers(values, references, recount)
    check_size_budget(parts(run.model, run.task), budget or machine_budget(run.trainer.accelerator), world, drivers)
