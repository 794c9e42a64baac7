"""``memzoo-export ckpt=PATH out=DIR [format=memzoo|hf]``: a trained model as a model directory.

``format=memzoo`` (default): ``config.json`` (the ``ModelConfig``) + ``model.safetensors`` + the
tokenizer files of the pretrained model the run started from; ``zoo.load_model(DIR)`` reads it.
``format=hf``: the directory transformers itself loads (``LlamaForCausalLM`` / ``MambaForCausalLM`` /
``Mamba2ForCausalLM``), for a model that is one of them (an unchanged import, or a memzoo model of the
same shape: no memory)."""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from zoo.core.command_line import usage_errors
from zoo.model.language_model import LanguageModel
from zoo.model.loading import model_from_checkpoint, read_checkpoint
from zoo.pretrained.directory import (
    CONFIG_FILE,
    MEMZOO_TYPE,
    WEIGHTS_FILE,
    is_model_dir,
    load_model_dir,
    publish_dir,
    read_config,
    safetensors_torch,
    save_model_dir,
)
from zoo.pretrained.importing import ARCHITECTURES

FORMATS = ("memzoo", "hf")
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
OPTIONS = {"ckpt": None, "out": None, "format": "memzoo"}


def read_trained(ckpt: str | os.PathLike) -> tuple[LanguageModel, Path | None]:
    """A ``memzoo-train`` checkpoint (or run directory, or model directory) -> (its model in eval
    mode, the local pretrained directory it started from, if any and still there)."""
    if is_model_dir(ckpt):
        return load_model_dir(ckpt), Path(ckpt)
    checkpoint, config = read_checkpoint(ckpt)
    pretrained = checkpoint["hyper_parameters"].get("pretrained")
    source = Path(pretrained) if pretrained and Path(pretrained).is_dir() else None
    return model_from_checkpoint(checkpoint, config), source


def export(ckpt: str | os.PathLike, out: str | os.PathLike, format: str = "memzoo") -> Path:
    """Write the model of ``ckpt`` to the new directory ``out`` in ``format`` (see the module);
    the source's token ids (bos, eos, pad) and tokenizer files come along."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; allowed: {list(FORMATS)}")
    model, source = read_trained(ckpt)
    source_config = read_config(source) if source is not None else {}
    if format == "memzoo":
        token_ids = {key: source_config[key] for key in TOKEN_ID_FIELDS if key in source_config}
        return save_model_dir(model, out, tokenizer_dir=source, extra_config=token_ids)
    return save_hf(model, out, source_config, tokenizer_dir=source)


def save_hf(model: LanguageModel, out: str | os.PathLike, source_config: dict[str, Any], tokenizer_dir=None) -> Path:
    """``model`` as the Hugging Face directory of the architecture it is (``config.json`` over
    ``source_config``, ``model.safetensors`` in that architecture's names); ``ValueError`` saying why
    when it is none of them."""
    reasons = {}
    for name, arch in ARCHITECTURES.items():
        why = arch.expressible(model)
        if why is None:
            break
        reasons[name] = why
    else:
        shown = "; ".join(f"not {name}: {why}" for name, why in reasons.items())
        raise ValueError(
            f"format=hf writes {sorted(ARCHITECTURES)}, and this {model.config.name} model is none ({shown}); use format=memzoo"
        )
    state = {key: value.detach().contiguous() for key, value in arch.to_hf(model.state_dict(), model.config).items()}
    config = arch.hf_config(model, {k: v for k, v in source_config.items() if k != MEMZOO_TYPE})

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        safetensors_torch().save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})

    return publish_dir(out, write, tokenizer_dir)


def parse(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments -> options; ``ValueError`` for an unknown key (with the nearest one),
    a token without ``=``, or a missing ckpt / out."""
    options = dict(OPTIONS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"{arg!r} is not key=value; usage: memzoo-export ckpt=PATH out=DIR [format=memzoo|hf]")
        if key not in OPTIONS:
            near = difflib.get_close_matches(key, OPTIONS, n=1)
            raise ValueError(f"unknown key {key!r}" + (f"; did you mean {near[0]!r}?" if near else f"; keys: {list(OPTIONS)}"))
        options[key] = value
    missing = [key for key, value in options.items() if value is None]
    if missing:
        raise ValueError(
            f"missing {', '.join(f'{k}=...' for k in missing)}; usage: memzoo-export ckpt=PATH out=DIR [format=memzoo|hf]"
        )
    return options


def main(argv: list[str] | None = None) -> None:
    """The ``memzoo-export`` command: one line naming the directory written, or one error (exit 2)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(__doc__)
        return
    with usage_errors("memzoo-export"):
        options = parse(argv)
        with torch.no_grad():
            out = export(options["ckpt"], options["out"], options["format"])
        print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
