"""Resume continues the run that was saved: ``memzoo-train hydra.run.dir=DIR ckpt=last`` takes DIR's
own ``config.yaml`` as its settings, not today's defaults. Overrides given on resume apply on top only
where they cannot change the model, the data or the optimizer state (``RESUME_SAFE``: more steps,
logging, checkpoint interval, another logger); an override that would change anything else is
refused naming it, unless it restates the saved value. ``config.yaml`` is never rewritten: the changes
are listed in one line and recorded beside it, in ``resumes.json``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.core.io import atomic_write_json
from zoo.core.safe_read import MiB, bounded_size, parse_json

CONFIG_FILE = "config.yaml"
RESUMES_FILE = "resumes.json"
CONFIG_MAX_BYTES = 1 * MiB
# keys (and groups) an override may change on resume: none touches the model, the data or the optimizer state
RESUME_SAFE = (
    "ckpt",
    "trainer.max_steps",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "checkpoint.every_n_train_steps",
    "collective_timeout_s",
    "size_check",
    "logger",
    "throughput",
)


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The config paths command-line overrides set (``a.b=1``, ``+a.b=1``, ``~a.b``, a group choice
    ``logger=wandb`` -> ``logger``), Hydra's own (``hydra.run.dir=...``) left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group.replace("/", ".")
        if not (key == "hydra" or key.startswith("hydra.")):
            keys.append(key)
    return keys


def saved_config(run_dir: Path) -> DictConfig | None:
    """``run_dir``'s ``config.yaml`` (the settings the run started with), or None when it has none."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    bounded_size(path, CONFIG_MAX_BYTES, str(path))
    try:
        return OmegaConf.create(OmegaConf.to_container(OmegaConf.load(path)))
    except Exception as err:  # OmegaConf and PyYAML raise many kinds for a malformed file
        raise ValueError(f"{path}: not the config.yaml of a memzoo run ({type(err).__name__}: {err})") from err


def _changed_leaves(key: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(path, old, new) of every value under ``key`` that differs between two configs' values there: a
    group choice (``trainer=ddp``) is compared key by key, so it changes only what really differs."""
    old = OmegaConf.to_container(old, resolve=True) if OmegaConf.is_config(old) else old
    new = OmegaConf.to_container(new, resolve=True) if OmegaConf.is_config(new) else new
    if isinstance(old, dict) and isinstance(new, dict):
        return [leaf for k in dict.fromkeys([*old, *new]) for leaf in _changed_leaves(f"{key}.{k}", old.get(k), new.get(k))]
    return [] if old == new else [(key, old, new)]


def resumed_config(saved: DictConfig, composed: DictConfig, overrides: Sequence[str]) -> tuple[DictConfig, dict[str, Any]]:
    """(the saved run's config with the resume-safe ``overrides`` applied, what changed: key -> [old,
    new]); ``composed`` is today's config composed with ``overrides``, where their values are read.
    ``ValueError`` naming every override that would change a key outside ``RESUME_SAFE``. More steps
    keep the saved schedule: with ``optim.total_steps`` null it is pinned to the saved max_steps."""
    config = saved.copy()
    changes, refused = {}, []
    for key in override_keys(overrides):
        for leaf, old, new in _changed_leaves(key, OmegaConf.select(saved, key), OmegaConf.select(composed, key)):
            if not any(leaf == safe or leaf.startswith(f"{safe}.") for safe in RESUME_SAFE):
                refused.append(f"{leaf} ({old!r} -> {new!r})")
                continue
            OmegaConf.update(config, leaf, new, merge=False, force_add=True)
            if leaf != "ckpt":
                changes[leaf] = [old, new]
    if refused:
        raise ValueError(
            f"resuming the saved run would change {', '.join(refused)}: these change its model, data or optimizer "
            f"state. Resume without them, or start a new run in another hydra.run.dir (resume may change only "
            f"{', '.join(RESUME_SAFE[1:])})"
        )
    if "trainer.max_steps" in changes and OmegaConf.select(saved, "optim.total_steps") is None:
        config.optim.total_steps = saved.trainer.max_steps
        changes["optim.total_steps"] = [None, saved.trainer.max_steps]
    return config, changes


def describe(changes: dict[str, Any]) -> str:
    """The one line a resume prints: what it changed, or that it changed nothing."""
    if not changes:
        return "resuming the saved run with its own config.yaml"
    shown = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
    return f"resuming the saved run with its own config.yaml, changed: {shown}"


def record_resume(run_dir: Path, changes: dict[str, Any], ckpt: str) -> None:
    """Append this resume's changes to ``run_dir/resumes.json`` (a list), beside the untouched config.yaml."""
    path = run_dir / RESUMES_FILE
    previous = parse_json(path.read_bytes(), str(path)) if path.is_file() else []
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "ckpt": ckpt, "changes": changes}
    atomic_write_json(path, [*(previous if isinstance(previous, list) else []), entry])
