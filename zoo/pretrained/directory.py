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

from zoo.model.language_model import LanguageModel, build_model
from zoo.model.loading import load_model as load_checkpoint_model
from zoo.model.loading import one_process, stored_model_config

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
    """A model directory's ``config.json`` as a dict; ``ValueError`` naming the directory when there
    is none or it is not a JSON object."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{str(path)!r} is not a model directory: it has no {CONFIG_FILE}")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{file}: must hold a JSON object, not {type(config).__name__}")
    return config


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (a model directory, not a run directory)."""
    return (Path(path) / CONFIG_FILE).is_file()


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
    ``tokenizer_dir`` into it, then rename it to ``out``: ``out`` is absent or whole, never
    half-written. ``out`` must not exist, or be an empty directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out={str(out)!r} exists and is not an empty directory; choose a new one (nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write(tmp)
        for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
        for file in tmp.iterdir():
            file.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_model_dir(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LanguageModel:
    """A model directory -> its ``LanguageModel`` in eval mode: memzoo's own (``save_model_dir``) or a
    Hugging Face architecture memzoo imports (``zoo.pretrained.importing.from_pretrained``). Reads
    JSON and safetensors only: no pickle."""
    config = read_config(path)
    if config.get("model_type") != MEMZOO_TYPE:
        from zoo.pretrained.importing import from_pretrained

        return from_pretrained(path, map_location=map_location).eval()
    values = config.get(MEMZOO_TYPE)
    if not isinstance(values, dict):
        raise ValueError(f"{Path(path) / CONFIG_FILE}: a memzoo model directory needs its model settings under {MEMZOO_TYPE!r}")
    try:
        model_config = one_process(stored_model_config(values))
    except (ValueError, TypeError) as err:
        where = Path(path) / CONFIG_FILE
        raise ValueError(f"{where}: its {MEMZOO_TYPE!r} settings do not describe a model memzoo builds: {err}") from err
    model = build_model(model_config)
    load_weights(model, Path(path) / WEIGHTS_FILE, map_location)
    return model.eval()


def load_weights(model: torch.nn.Module, file: Path, map_location: str | torch.device = "cpu") -> None:
    """``file`` (safetensors) into ``model``, every entry present and shaped as the model's (tied and
    shared weights stored once); ``ValueError`` naming the file and the entries that differ."""
    if not file.is_file():
        raise ValueError(f"{file}: missing (a model directory holds its weights in {WEIGHTS_FILE})")
    try:
        missing, unexpected = safetensors_torch().load_model(model, str(file), strict=False, device=str(map_location))
    except RuntimeError as err:  # shapes differ
        raise ValueError(f"{file}: its weights do not fit the model of its config.json: {err}") from err
    if missing or unexpected:
        shown = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
        raise ValueError(f"{file}: its weights do not fit the model of its config.json: {'; '.join(shown[:8])}")


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LanguageModel:
    """``zoo.load_model``: a model directory (``config.json`` + ``model.safetensors``: ``memzoo-export``'s,
    or a Hugging Face Llama / Mamba / Mamba-2; ``load_model_dir``, no pickle) or a ``memzoo-train``
    checkpoint, file or run directory (``zoo.model.loading.load_model``) -> its model in eval mode."""
    if is_model_dir(path):
        return load_model_dir(path, map_location)
    return load_checkpoint_model(path, map_location)
