"""A run's record is its metrics.json: what it measured (``run_metrics``) and, under ``settings``,
what it was (``RunSettings``, taken from its typed ``RunConfig``), so a grid's report reads typed
settings and never re-parses a run's config.yaml."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from zoo.training.config import RunConfig

TASK_KNOBS = ("seq_len", "num_kv_pairs", "num_facts", "tokenizer", "vocab_size")  # the task options results show


@dataclass(frozen=True)
class RunSettings:
    """What a run was, as results tables name it: slots is the memory's n_keys^2 (None without a
    memory, whose name is ``none``); steps_planned is ``trainer.max_steps``; task_knobs holds the
    task's options named in ``TASK_KNOBS`` that it has, in that order."""

    seed: int
    backbone: str
    memory: str
    slots: int | None
    d_model: int
    n_layers: int
    channel: str | list[str]
    task: str
    lr: float
    steps_planned: int
    task_knobs: dict[str, Any]

    @classmethod
    def of(cls, run: RunConfig) -> RunSettings:
        """The settings of a checked run."""
        model, task, memory = run.model, run.task, run.model.memory
        return cls(
            seed=run.seed,
            backbone=model.name,
            memory=run.memory_name,
            slots=None if memory is None else memory.n_slots,
            d_model=model.d_model,
            n_layers=model.n_layers,
            channel=model.channel,
            task=task["name"],
            lr=run.optim.lr,
            steps_planned=run.trainer.max_steps,
            task_knobs={k: task[k] for k in TASK_KNOBS if k in task},
        )

    @classmethod
    def read(cls, record: dict[str, Any], source: str) -> RunSettings:
        """The settings in a run's record (metrics.json's content, read from ``source``); ``ValueError``
        when it has none (a run trained before memzoo recorded them)."""
        if "settings" not in record:
            raise ValueError(
                f"{source} has no 'settings' (trained before runs recorded them); "
                "train the run again: remove its metrics.json and rerun memzoo-grid"
            )
        return cls(**record["settings"])


SETTINGS = tuple(f.name for f in fields(RunSettings) if f.name != "task_knobs")  # results.csv's columns of them
