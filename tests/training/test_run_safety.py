"""Runs that would train wrongly or not at all are refused before any compute, naming only the
failing field; a run directory is never silently overwritten; stale temp files are cleaned up."""

import json
import os

import pytest
import torch
from helpers.configs import tiny_train_config as make_cfg

from zoo.checkpoint.distributed import remove_distributed, save_distributed
from zoo.checkpoint.files import load_checkpoint_file
from zoo.training.optim import OptimConfig
from zoo.training.run_checks import check_batches, claim_run_dir, fit_schedule, remove_stale_temp_files
from zoo.training.train import train


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["optim.lr=-1"], r"^optim.lr=-1.0 must be a finite number > 0$"),
        (["optim.lr=nan"], r"^optim.lr=nan must be a finite number > 0$"),
        (
            ["+optim.group_lr.memory_values=0.01"],
            r"^optim.group_lr.memory_values=0.01: the memory value table's learning rate has one knob, memory.value_lr; ",
        ),
        (["+optim.group_lr.other=0"], r"^optim.group_lr.other=0.0 must be a finite number > 0$"),
        (["trainer.gradient_clip_val=-1"], r"^trainer.gradient_clip_val=-1.0 must be a finite number >= 0"),
        (["trainer.max_steps=0"], r"^trainer.max_steps=0 must be an integer >= 1$"),
        (["task.num_train=10"], r"^the train split has 10 examples, fewer than one batch of task.batch_size=32"),
    ],
)
def test_settings_that_would_train_wrongly_fail_before_anything_is_written(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train(make_cfg(*overrides), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_schedule_check_names_only_the_failing_field():
    good_optim = OptimConfig(lr=1e-3, warmup_steps=None)
    assert fit_schedule(good_optim, 10) == (good_optim, None)  # warmup null = a tenth of the schedule
    with pytest.raises(ValueError) as err:
        fit_schedule(good_optim, 0)
    assert "warmup" not in str(err.value) and "min_lr_ratio" not in str(err.value)


def test_a_warmup_as_long_as_a_shortened_schedule_becomes_a_tenth_of_it_with_a_notice():
    optim, notice = fit_schedule(OptimConfig(lr=1e-3, warmup_steps=50), 20)
    assert optim.warmup_steps == 2 and optim.lr == 1e-3
    assert notice == (
        "optim.warmup_steps=50 is not shorter than the schedule's 20 steps (trainer.max_steps): warming up for 2 steps "
        "instead, a tenth of it"
    )
    optim, notice = fit_schedule(OptimConfig(lr=1e-3, warmup_steps=5, total_steps=5), 100)
    assert optim.warmup_steps == 0 and "(optim.total_steps)" in notice


def test_every_rank_needs_a_full_training_batch_and_an_evaluation_example():
    check_batches({"train": 64, "val": 2, "test": 2}, batch_size=32, world_size=2)
    with pytest.raises(
        ValueError,
        match=r"the train split has 64 examples, fewer than one batch of task.batch_size=32 "
        r"for each of 3 rank\(s\) \(96 needed\)",
    ):
        check_batches({"train": 64, "test": 64}, batch_size=32, world_size=3)
    with pytest.raises(ValueError, match=r"the test split has 1 examples, fewer than one example for each of 2 rank\(s\)"):
        check_batches({"train": 64, "test": 1}, batch_size=32, world_size=2)


def test_a_second_run_into_a_finished_run_directory_is_refused_and_overwrite_replaces_it(tmp_path):
    first = train(make_cfg(), tmp_path)
    record = (tmp_path / "metrics.json").read_text()
    with pytest.raises(
        ValueError,
        match=r"already holds a run \(config.yaml, metrics.json, checkpoints, tb\): "
        r"resume it with ckpt=last, pass overwrite=true",
    ):
        train(make_cfg("optim.lr=0.01"), tmp_path)
    assert (tmp_path / "metrics.json").read_text() == record  # untouched
    assert "lr: 0.003" in (tmp_path / "config.yaml").read_text()
    second = train(make_cfg("optim.lr=0.01", "overwrite=true"), tmp_path)
    assert "lr: 0.01" in (tmp_path / "config.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    assert json.loads((tmp_path / "metrics.json").read_text()) == second != first


def test_a_refused_resume_writes_nothing(tmp_path):
    train(make_cfg(), tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"d_model: checkpoint 16, this run 32"):
        train(make_cfg("backbone.d_model=32", "ckpt=last"), tmp_path)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # config.yaml, tb/ and checkpoints/ untouched, no new file
    assert "d_model: 16" in (tmp_path / "config.yaml").read_text()


def test_an_unwritable_checkpoint_location_is_refused_before_training(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink("/proc/1/no-such-dir", run_dir / "checkpoints")  # no one, root included, can create it
    with pytest.raises(ValueError, match=r"checkpoints' is not writable"):
        claim_run_dir(run_dir, resuming=False, overwrite=False)


def test_temp_files_left_by_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".last.ckpt.k2j4h1.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = tmp_path / "checkpoints" / "last.ckpt"
    keep.write_bytes(b"whole")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and keep.exists()


def test_data_of_distributed_checkpoints_that_no_checkpoint_links_to_is_removed_at_the_next_start(tmp_path):
    checkpoint = {"state_dict": {"w": torch.ones(3)}, "hyper_parameters": {"model": {}}}
    linked = save_distributed(checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    replaced = linked.resolve()
    save_distributed(checkpoint, linked)  # the new checkpoint is published, the previous one's data removed
    assert not replaced.exists()
    half_written = tmp_path / "checkpoints" / ".last.ckpt.0a1b2c3d4e5f.dcp"  # a save killed before publishing
    half_written.mkdir()
    (half_written / "__0_0.distcp").write_bytes(b"half a shard")
    assert remove_stale_temp_files(tmp_path) == [half_written]
    assert not half_written.exists()
    assert torch.equal(load_checkpoint_file(linked)["state_dict"]["w"], torch.ones(3))
    data = linked.resolve()
    remove_distributed(linked)  # what a strategy's remove_checkpoint does: the link and its data
    assert not linked.is_symlink() and not data.exists()
