"""Model directories in the Hugging Face layout: ``config.json`` + ``model.safetensors`` (+ the
tokenizer's files). A memzoo model is written with its ``ModelConfig`` under ``config.json``'s
``memzoo`` key and read back without pickle; a directory of an architecture memzoo imports
(``zoo.pretrained.importing``) is read through that import. A directory is published whole: it is
written beside its target and renamed into place."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from zoo.core.dir_lock import exclusive_dir
from zoo.model.language_model import LanguageModel, build_model
from zoo.model.loading import load_model as load_checkpoint_model
from zoo.model.loading import one_process, stored_model_config, weight_problems
from zoo.model.size_budget import Budget, check_model_size, host_memory
from zoo.pretrained.files import CONFIG_MAX_BYTES, has_file, model_file, read_model_json, safetensors_header, tokenizer_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MEMZOO_TYPE = "memzoo"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)


def safetensors_torch():
    """``safetensors.torch``, or an ImportError saying which extra installs it."""
    try:
        import safetensors.torch
    except ImportError as err:
        raise ImportError("reading and writing model.safetensors needs safetensors: pip install 'memzoo[hf]'") from err
    return safetensors.torch


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A model directory's ``config.json`` as a dict (a regular file inside it, at most
    ``CONFIG_MAX_BYTES``, nesting bounded); ``ValueError`` naming the file when there is none or it is
    not a JSON object."""
    if not is_model_dir(path):
        raise ValueError(f"{str(path)!r} is not a model directory: it has no {CONFIG_FILE}")
    config = read_model_json(path, CONFIG_FILE, "config", CONFIG_MAX_BYTES)
    if not isinstance(config, dict):
        raise ValueError(f"{Path(path) / CONFIG_FILE}: must hold a JSON object, not {type(config).__name__}")
    return config


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` entry (a model directory, not a run directory)."""
    return Path(path).is_dir() and has_file(path, CONFIG_FILE)


def save_model_dir(
    model: LanguageModel,
    out: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to the new directory ``out``: ``config.json`` (its ``ModelConfig`` under
    ``memzoo``, plus ``extra_config``, e.g. the tokenizer's ``eos_token_id``), ``model.safetensors``
    (tied and shared weights stored once) and the tokenizer files found in ``tokenizer_dir``.
    ``ValueError`` when ``out`` exists and is not empty (nothing is overwritten)."""
    config = {
        **(extra_config or {}),
        "architectures": ["MemzooForCausalLM"],
        "model_type": MEMZOO_TYPE,
        "vocab_size": model.config.vocab_size,
        MEMZOO_TYPE: dataclasses.asdict(model.config),
    }
    return publish_dir(out, lambda tmp: _write_memzoo(model, tmp, config), tokenizer_dir)


def _write_memzoo(model: LanguageModel, tmp: Path, config: dict[str, Any]) -> None:
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    safetensors_torch().save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})


def publish_dir(out: str | os.PathLike, write, tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Run ``write(tmp)`` on a fresh directory beside ``out``, copy the tokenizer files of
    ``tokenizer_dir`` into it, then move its files into ``out``, ``config.json`` last (the directory is
    a model directory only once whole). ``out`` is held with the lock training and evaluation take
    (``zoo.core.dir_lock``) throughout, and must be new or an empty directory that no other process
    holds; on any failure what was moved in is removed again, and ``out`` too if this call made it:
    nothing this call did not create is replaced or deleted."""
    out = Path(out)
    made = not (out.exists() or out.is_symlink())
    with exclusive_dir(out, "model", "choose another out="):
        if any(out.iterdir()):
            raise ValueError(f"out={str(out)!r} exists and is not an empty directory; choose a new one (nothing is overwritten)")
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        moved = []
        try:
            write(tmp)
            for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
                if has_file(tokenizer_dir, name):
                    shutil.copyfile(tokenizer_file(tokenizer_dir, name), tmp / name)
            for file in sorted(tmp.iterdir(), key=lambda p: (p.name == CONFIG_FILE, p.name)):
                file.chmod(0o644)
                os.rename(file, out / file.name)
                moved.append(out / file.name)
        except BaseException:
            for file in moved:
                file.unlink(missing_ok=True)
            if made:
                out.rmdir()
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_model_dir(path: str | os.PathLike, map_location: str | torch.device = "cpu", size_check: bool = True) -> LanguageModel:
    """A model directory -> its ``LanguageModel`` in eval mode: memzoo's own (``save_model_dir``) or a
    Hugging Face architecture memzoo imports (``zoo.pretrained.importing.from_pretrained``). Reads
    JSON and safetensors only (no pickle), each file checked first (``zoo.pretrained.files``); the
    model's size is checked against this machine's memory before it is built (``size_check``)."""
    config = read_config(path)
    if config.get("model_type") != MEMZOO_TYPE:
        from zoo.pretrained.importing import from_pretrained

        return from_pretrained(path, map_location=map_location, size_check=size_check).eval()
    values = config.get(MEMZOO_TYPE)
    if not isinstance(values, dict):
        raise ValueError(f"{Path(path) / CONFIG_FILE}: a memzoo model directory needs its model settings under {MEMZOO_TYPE!r}")
    try:
        model_config = one_process(stored_model_config(values))
    except (ValueError, TypeError) as err:
        where = Path(path) / CONFIG_FILE
        raise ValueError(f"{where}: its {MEMZOO_TYPE!r} settings do not describe a model memzoo builds: {err}") from err
    if size_check:
        check_model_size(
            model_config, str(Path(path) / CONFIG_FILE), lambda key: f"{MEMZOO_TYPE}.{key}", device_budget(map_location)
        )
    model = build_model(model_config)
    load_weights(model, Path(path) / WEIGHTS_FILE, map_location)
    return model.eval()


def load_weights(model: torch.nn.Module, file: Path, map_location: str | torch.device = "cpu") -> None:
    """``file`` (safetensors) into ``model``, every entry present and shaped as the model's (tied and
    shared weights stored once), checked from the file's header before any tensor is read;
    ``ValueError`` naming the file and the entries that differ."""
    if not has_file(file.parent, file.name):
        raise ValueError(f"{file}: missing (a model directory holds its weights in {WEIGHTS_FILE})")
    header = safetensors_header(model_file(file.parent, file.name, "weights"))
    check_state_fits(file, {name: entry.meta() for name, entry in header.items()}, model.state_dict())
    missing, unexpected = safetensors_torch().load_model(model, str(file), strict=False, device=str(map_location))
    if missing or unexpected:  # a name the state dict keeps twice (shared weights) that the file lacks
        shown = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
        raise ValueError(f"{file}: its weights do not fit the model of its config.json: {'; '.join(shown[:8])}")


def check_state_fits(where: str | os.PathLike, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """``state`` (meta tensors from headers) fits ``own`` (the model's state dict): no entry the model
    lacks, none of another shape, none of the model's missing but weights it shares with an entry
    ``state`` holds (tied weights stored once); ``ValueError`` naming ``where`` and the first entries
    that differ (``zoo.model.loading.weight_problems``), before any tensor is read."""
    stored = {own[key].data_ptr() for key in state if key in own}
    shared = [key for key, tensor in own.items() if key not in state and tensor.data_ptr() in stored]
    problems = weight_problems({key: tensor.shape for key, tensor in own.items()}, state, "file", shared)
    if problems:
        raise ValueError(f"{where}: its weights do not fit the model of its config.json: {problems}")


def device_budget(map_location: str | torch.device) -> Budget:
    """The memory a model read to ``map_location`` may take: its CUDA device's, else this machine's."""
    device = torch.device(map_location)
    if device.type == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(device)
        return Budget(properties.total_memory, f"the memory of {torch.cuda.get_device_name(device)}")
    return Budget(*host_memory())


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LanguageModel:
    """``zoo.load_model``: a model directory (``config.json`` + ``model.safetensors``: ``memzoo-export``'s,
    or a Hugging Face Llama / Mamba / Mamba-2; ``load_model_dir``, no pickle) or a ``memzoo-train``
    checkpoint, file or run directory (``zoo.model.loading.load_model``) -> its model in eval mode."""
    if is_model_dir(path):
        return load_model_dir(path, map_location)
    return load_checkpoint_model(path, map_location)
