"""A ``memzoo-train`` checkpoint read into its model: the weights checked against the model its
settings describe (on the meta device: nothing allocated), then loaded on one process."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint.files import checkpoint_in, load_checkpoint_file
from zoo.core.dataclass_config import typed
from zoo.model.language_model import LanguageModel, ModelConfig, build_model

MODEL_PREFIX = "model."  # the LanguageModel's entries in a Lightning checkpoint's state_dict


def stored_model_config(values: Mapping[str, Any]) -> ModelConfig:
    """A checkpoint's model settings (``hyper_parameters.model``, ``ModelConfig``'s fields as a plain
    dict, as ``LitLanguageModel`` stores them; a key left out takes its default) -> ``ModelConfig``.
    The one place a stored dict becomes the typed config."""
    return typed(ModelConfig, values, "model")


def one_process(config: ModelConfig) -> ModelConfig:
    """``config`` with a sharded memory (``memory.parallel`` rows / columns) read whole in one process."""
    if config.memory is None or config.memory.parallel == "none":
        return config
    return dataclasses.replace(config, memory=dataclasses.replace(config.memory, parallel="none"))


def model_shapes(model_values: Mapping[str, Any]) -> dict[str, torch.Size]:
    """A checkpoint's model settings (``hyper_parameters.model``) -> the shape of each state_dict
    entry of its model (``MODEL_PREFIX`` + name), from a model built on the meta device (nothing
    allocated; a sharded memory as one whole table, as a distributed checkpoint stores it)."""
    config = one_process(stored_model_config(model_values))
    with torch.device("meta"):
        model = build_model(config)
    return {MODEL_PREFIX + key: value.shape for key, value in model.state_dict().items()}


def check_weights(path: str | os.PathLike, model_values: Any, shapes: dict[str, Any]) -> None:
    """The ``state_dict`` entries ``shapes`` (key -> shape or tensor) of the checkpoint ``path``
    against the model its ``model_values`` describe: ``ValueError`` naming the file and each missing,
    unexpected or differently shaped entry."""
    where = f"checkpoint {str(path)!r}"
    try:
        want = model_shapes(model_values)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
        raise ValueError(f"{where}: its hyper_parameters.model does not describe a model memzoo builds: {err}") from err
    problems = weight_problems(want, shapes)  # a LitLanguageModel's state is its model's: any other entry is unexpected
    if problems:
        raise ValueError(f"{where}: its weights do not fit the model of its hyper_parameters.model: {problems}")


def weight_problems(
    want: Mapping[str, Any], got: Mapping[str, Any], source: str = "checkpoint", optional: Collection[str] = ()
) -> str | None:
    """The entries of ``got`` (key -> shape or tensor, from a ``source`` file) against ``want`` (key ->
    the model's shape): each differently shaped one, missing one (but those ``optional``: tied weights
    stored once) and unexpected one, the first 8 on one line; None when they fit."""
    problems = [  # a shape that differs says most about what the file holds: named first
        f"{key}: {source} {_shape(got[key])}, model {tuple(shape)}"
        for key, shape in want.items()
        if key in got and _shape(got[key]) != tuple(shape)
    ]
    problems += [f"missing {key}" for key in want if key not in got and key not in optional]
    problems += [f"unexpected {key}" for key in got if key not in want]
    if not problems:
        return None
    return "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")


def _shape(value: Any) -> tuple | str:
    if isinstance(value, torch.Size):
        return tuple(value)
    return tuple(value.shape) if torch.is_tensor(value) else f"a {type(value).__name__}, not a tensor"


def read_checkpoint(ckpt: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], ModelConfig]:
    """A ``memzoo-train`` checkpoint (file, distributed, or a training run directory's last one) ->
    (the checkpoint, its model config for one process).

    A sharded memory (``memory.parallel`` rows / columns) becomes ``none``: one process reads the
    table whole (a distributed checkpoint's parts assembled). Raises ``ValueError`` as
    ``checkpoint_in`` and ``load_checkpoint_file`` do; the weights fit the model the config builds.
    """
    checkpoint = load_checkpoint_file(checkpoint_in(ckpt), map_location, check_weights=check_weights)
    return checkpoint, one_process(stored_model_config(checkpoint["hyper_parameters"]["model"]))


def load_model(ckpt: str | Path, map_location: str | torch.device = "cpu") -> LanguageModel:
    """A ``memzoo-train`` checkpoint -> its ``LanguageModel`` in eval mode, on one process (a sharded
    run's distributed checkpoint is read whole: the ranks' parts assembled into the full table)."""
    return model_from_checkpoint(*read_checkpoint(ckpt, map_location))


def model_from_checkpoint(checkpoint: dict[str, Any], config: ModelConfig) -> LanguageModel:
    """A checkpoint read by ``read_checkpoint`` and its model config -> the model with its weights, in eval mode."""
    model = build_model(config)
    model.load_state_dict({k[len(MODEL_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)})
    return model.eval()
