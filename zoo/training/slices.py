"""Test slices (zoology's extrapolation curve from one run): beside its test split, a run is tested on
variants of it, each reported on its own (``test/<slice>/acc`` in TensorBoard, metrics.json and
results.csv). A slice is a mapping of task knobs, e.g. ``{seq_len: 128, num_kv_pairs: 8}`` for MQAR
trained at (64, 4); the task itself generates it, as its test split with ``test_<knob>`` set to
each value, so a slice is checked like the task's own test split and is what ``memzoo-eval`` with
those options would test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zoo.tasks import build_datamodule
from zoo.tasks.base import GeneratedDataModule, TokenDataset


def slice_name(knobs: Mapping[str, Any]) -> str:
    """``{seq_len: 128, num_kv_pairs: 8}`` -> ``"test/seq_len=128_num_kv_pairs=8"``."""
    return "test/" + "_".join(f"{key}={value}" for key, value in knobs.items())


def slice_datamodules(task: Mapping[str, Any], slices: Sequence[Mapping[str, Any]]) -> dict[str, GeneratedDataModule]:
    """Slice name -> the task's datamodule whose test split is that slice (nothing generated yet).
    ``ValueError`` naming ``test_slices[i]`` for a knob the task cannot vary at test time or
    sizes it cannot generate."""
    out = {}
    for i, knobs in enumerate(slices):
        if not isinstance(knobs, Mapping) or not knobs:
            raise ValueError(
                f"test_slices[{i}]={knobs!r} must be a non-empty mapping of task knobs, e.g. {{seq_len: 128, num_kv_pairs: 8}}"
            )
        try:
            out[slice_name(knobs)] = build_datamodule({**task, **{f"test_{key}": value for key, value in knobs.items()}})
        except ValueError as err:
            raise ValueError(f"test_slices[{i}]={dict(knobs)} (each knob sets the task's test_<knob> option): {err}") from err
    if len(out) < len(slices):
        raise ValueError(f"test_slices={[dict(k) for k in slices]} repeats a slice")
    return out


def generate_slices(datamodules: Mapping[str, GeneratedDataModule]) -> dict[str, TokenDataset]:
    """Slice name -> its test examples (``slice_datamodules``' test splits), rows (num_test, slice length)."""
    return {name: TokenDataset(*datamodule.generate("test")) for name, datamodule in datamodules.items()}
