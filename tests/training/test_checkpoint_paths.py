"""Checkpoints are data, never instructions about the file system: paths in a checkpoint's callback
state never make a resumed run delete anything; a distributed checkpoint is read only from regular
files inside it, and its metadata's sizes are checked before anything is allocated; last.ckpt is
the latest state through interruption and resume; memzoo-eval's checkpoint errors say what to do.
Every hostile file is built here, and every refusal must come within seconds (``deadline``)."""

import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.configs import TINY, compose_config
from helpers.sigterm import stop_after_step
from test_signals import Regression, SigtermAfterStep, loader

from zoo import load_model
from zoo.checkpoint.distributed import save_distributed
from zoo.checkpoint.files import atomic_torch_save, load_checkpoint_file
from zoo.model.language_model import build_model
from zoo.model.loading import MODEL_PREFIX
from zoo.training.evaluate import evaluate
from zoo.training.run_checkpoint import RunCheckpoint
from zoo.training.signals import CheckpointOnSignal, RunInterrupted, StopSignals
from zoo.training.train import train

BIN = Path(sys.executable).parent
REFUSED_WITHIN_S = 20  # generous for a loaded machine: a regression hangs (a FIFO) or allocates for minutes
MODEL = {"vocab_size": 16, "d_model": 16, "n_layers": 1, "mixer": {"attention": {"num_heads": 2}}}


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the test run) when the block takes longer than ``seconds``: the
    alarm's exception also interrupts a blocking ``open`` of a FIFO."""

    def expire(signum, frame):
        raise TimeoutError(f"not refused within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tensors_equal(a, b, where="") -> None:
    """Nested dicts / lists of tensors and plain values equal, tensors bit for bit."""
    if isinstance(b, dict):
        assert set(a) == set(b), where
        for key in b:
            tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            tensors_equal(x, y, f"{where}[{i}]")
    elif torch.is_tensor(b):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


# --- callback state that names paths ------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step run, copied by each test that changes it."""
    run_dir = tmp_path_factory.mktemp("finished")
    train(compose_config("train", *TINY), run_dir)
    return run_dir


def copy_run(finished_run: Path, to: Path) -> Path:
    shutil.copytree(finished_run, to)
    return to


def forge_callback_state(ckpt: Path, into: Path, dirpath: Path, target: str) -> None:
    """``ckpt`` with every checkpoint callback's state naming ``target`` as its previous last,
    best and k-th best checkpoint, and ``dirpath`` as its folder (so that Lightning's
    ModelCheckpoint restores those paths), written to ``into``."""
    checkpoint = torch.load(ckpt, weights_only=False)
    states = [state for key, state in checkpoint["callbacks"].items() if "Checkpoint{" in key]
    assert states
    for state in states:
        state.update(
            dirpath=os.path.realpath(dirpath),
            last_model_path=target,
            best_model_path=target,
            kth_best_model_path=target,
            best_k_models={target: torch.tensor(0.5)},
        )
    atomic_torch_save(checkpoint, into)


def victim_folder(root: Path) -> Path:
    victim = root / "victim"
    (victim / "inner").mkdir(parents=True)
    (victim / "inner" / "precious.txt").write_text("keep me")
    (victim / "data.ckpt").write_bytes(b"not yours")
    return victim


@pytest.mark.parametrize("form", ["../ path", "local:// URL"])
def test_a_resumed_checkpoint_naming_a_folder_outside_the_run_leaves_it_intact_and_the_run_still_trains(
    finished_run, tmp_path, form
):
    run_dir = copy_run(finished_run, tmp_path / "run")
    victim = victim_folder(tmp_path)
    before = files_in(victim)
    target = f"{run_dir}/checkpoints/../../victim" if form == "../ path" else f"local://{victim}"
    last = run_dir / "checkpoints" / "last.ckpt"
    forge_callback_state(last, last, run_dir / "checkpoints", target)

    metrics = train(compose_config("train", *TINY, "trainer.max_steps=8", "ckpt=last"), run_dir)
    assert files_in(victim) == before
    assert metrics["steps"] == 8
    assert load_checkpoint_file(last)["global_step"] == 8
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt


@pytest.mark.parametrize("state", ["as saved", "aimed at the new run"])
def test_resuming_another_runs_checkpoint_into_a_new_run_directory_leaves_the_old_run_intact(finished_run, tmp_path, state):
    old, new = copy_run(finished_run, tmp_path / "old"), tmp_path / "new"
    ckpt = old / "checkpoints" / "last.ckpt"
    if state == "aimed at the new run":  # its folder the new run's, its previous last.ckpt the old run's
        ckpt = old / "checkpoints" / "forged.ckpt"
        forge_callback_state(
            old / "checkpoints" / "last.ckpt", ckpt, new / "checkpoints", f"{new}/checkpoints/../../old/checkpoints/last.ckpt"
        )
    before = files_in(old)
    metrics = train(compose_config("train", *TINY, "trainer.max_steps=8", f"ckpt={ckpt}"), new)
    assert files_in(old) == before
    assert metrics["steps"] == 8 and load_checkpoint_file(new / "checkpoints" / "last.ckpt")["global_step"] == 8
    assert sorted(p.name for p in (new / "checkpoints").iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize(
    "name",
    [
        "{run}/checkpoints/../../victim",
        "{run}/checkpoints/../checkpoints/../config.yaml",
        "local://{root}/victim",
        "file://{root}/victim",
        "s3://bucket/victim",
        "{run}/checkpoints",
        "{run}/checkpoints/inner",
        "{run}/checkpoints/..",
        "",
    ],
)
def test_only_a_checkpoint_directly_inside_the_runs_checkpoints_folder_may_be_removed(tmp_path, name):
    run = tmp_path / "run"
    (run / "checkpoints" / "inner").mkdir(parents=True)
    (run / "config.yaml").write_text("x")
    own = run / "checkpoints" / "last.ckpt"
    own.write_bytes(b"a checkpoint")
    victim_folder(tmp_path)
    callback = RunCheckpoint(run / "checkpoints", every_n_train_steps=10)
    assert callback.own_checkpoint(name.format(run=run, root=tmp_path)) is None
    assert callback.own_checkpoint(own) == own.resolve()
    assert callback.own_checkpoint(f"file://{own}") == own.resolve()
    linked = save_distributed(
        {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"model": {}}}, run / "checkpoints" / "sharded.ckpt"
    )
    assert callback.own_checkpoint(linked) == linked.parent.resolve() / linked.name
    assert callback.own_checkpoint(linked.resolve()) is None  # its data directory: removed only with its link


# --- last.ckpt is the latest state ---------------------------------------------------------------


def test_a_run_stopped_before_its_first_periodic_checkpoint_resumes_into_last_ckpt_without_a_v1_sibling(tmp_path):
    folder = tmp_path / "checkpoints"

    def fit(ckpt_path=None, *callbacks, max_steps=10):
        trainer = L.Trainer(
            max_steps=max_steps,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp_path,
            callbacks=[RunCheckpoint(folder, every_n_train_steps=1000), *callbacks],
        )
        module = Regression()
        trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
        return module

    with StopSignals() as stop, pytest.raises(RunInterrupted, match="checkpoint at step 4"):
        fit(None, CheckpointOnSignal(stop, folder), SigtermAfterStep(3))
    module = fit(folder / "last.ckpt")
    saved = torch.load(folder / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 10
    tensors_equal(saved["state_dict"], module.state_dict())
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


RUN = [*TINY, "trainer.max_steps=45", "trainer.val_check_interval=20", "checkpoint.every_n_train_steps=10"]
LAYOUTS = {
    "single file": [],
    "distributed": ["trainer=ddp", "trainer.devices=1", "memory=pkm", "memory.n_keys=8", "memory.knn=4", "memory.parallel=rows"],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_last_ckpt_after_sigterm_resume_and_finish_is_the_final_state_bit_for_bit(tmp_path, layout):
    def cmd(run_dir, *extra):
        return [str(BIN / "memzoo-train"), *RUN, *LAYOUTS[layout], *extra, f"hydra.run.dir={run_dir}"]

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    subprocess.run(cmd(whole), check=True, capture_output=True, timeout=300)
    last = stopped / "checkpoints" / "last.ckpt"
    returncode, stopped_at, err = stop_after_step(cmd(stopped), last, 10)
    assert returncode == 143 and 10 <= stopped_at < 45, err[-2000:]

    subprocess.run(cmd(stopped, "ckpt=last"), check=True, capture_output=True, timeout=300)
    got, want = load_checkpoint_file(last), load_checkpoint_file(whole / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 45  # not a multiple of the periodic 10: saved at the end
    tensors_equal(got["state_dict"], want["state_dict"], "state_dict")
    tensors_equal(got["optimizer_states"], want["optimizer_states"], "optimizer_states")
    names = sorted(p.name for p in (stopped / "checkpoints").iterdir())
    data = [last.resolve().name] if layout == "distributed" else []  # a distributed checkpoint's data, linked
    assert names == sorted(["last.ckpt", *data])  # no last-v1.ckpt, no leftovers


# --- distributed checkpoints read nothing outside themselves --------------------------------------


@pytest.fixture
def sharded_ckpt(tmp_path) -> Path:
    """A memzoo distributed checkpoint of ``MODEL`` (with one optimizer tensor) published at
    checkpoints/last.ckpt."""
    model = build_model(MODEL)
    checkpoint = {
        "state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(16, 16)}}}],
        "hyper_parameters": {"model": MODEL, "optim": {}},
        "global_step": 3,
    }
    return save_distributed(checkpoint, tmp_path / "checkpoints" / "last.ckpt")


def edit_metadata(ckpt: Path, edit) -> None:
    path = ckpt.resolve() / ".metadata"
    metadata = pickle.loads(path.read_bytes())  # our own file: plain pickle is fine here
    edit(metadata)
    path.write_bytes(pickle.dumps(metadata))


def test_an_intact_distributed_checkpoint_loads(sharded_ckpt):
    with deadline(30):
        assert load_model(sharded_ckpt).config.d_model == 16


@pytest.mark.parametrize("which", ["data file", ".metadata", "checkpoint.pt"])
def test_a_distributed_checkpoint_file_that_links_outside_it_is_refused(sharded_ckpt, tmp_path, which):
    data_dir = sharded_ckpt.resolve()
    inside = next(data_dir.glob("*.distcp")) if which == "data file" else data_dir / which
    outside = tmp_path / "outside" / inside.name
    outside.parent.mkdir()
    shutil.copy(inside, outside)  # the same bytes: only where they lie is wrong
    inside.unlink()
    inside.symlink_to(outside)
    match = rf"{re.escape(inside.name)}' is a link to '{re.escape(str(outside))}', outside the checkpoint directory"
    with deadline(REFUSED_WITHIN_S), pytest.raises(ValueError, match=match):
        load_model(sharded_ckpt)


@pytest.mark.parametrize("relative", ["../stolen.distcp", "{tmp}/stolen.distcp", "sub/stolen.distcp"])
def test_distributed_metadata_naming_a_file_outside_the_checkpoint_is_refused(sharded_ckpt, tmp_path, relative):
    data_dir = sharded_ckpt.resolve()
    data = next(data_dir.glob("*.distcp"))
    relative = relative.format(tmp=tmp_path)
    for copy in (data_dir / relative, tmp_path / "stolen.distcp"):
        if copy.parent.is_dir():
            shutil.copy(data, copy)

    def point_outside(metadata):
        for info in metadata.storage_data.values():
            info.relative_path = relative

    edit_metadata(sharded_ckpt, point_outside)
    match = rf"data file '{re.escape(relative)}' is not a file name inside the checkpoint directory"
    with deadline(REFUSED_WITHIN_S), pytest.raises(ValueError, match=match):
        load_model(sharded_ckpt)


def test_a_checkpoint_that_is_a_fifo_is_refused_without_opening_it(sharded_ckpt, tmp_path):
    data = next(sharded_ckpt.resolve().glob("*.distcp"))
    data.unlink()
    os.mkfifo(data)  # opening it for reading would wait for a writer forever
    with deadline(REFUSED_WITHIN_S), pytest.raises(ValueError, match=rf"'{data.name}' is a FIFO, not a regular file"):
        load_model(sharded_ckpt)
    fifo = tmp_path / "fifo.ckpt"
    os.mkfifo(fifo)
    with deadline(REFUSED_WITHIN_S), pytest.raises(ValueError, match=r"fifo.ckpt' is not a regular file \(a FIFO or device\?\)"):
        load_model(fifo)
    done = subprocess.run(
        [
            str(BIN / "memzoo-eval"),
            f"ckpt={sharded_ckpt}",
            "task.num_train=16",
            "task.num_test=64",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and f"'{data.name}' is a FIFO, not a regular file" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("key", ["state_dict/model.embedding.weight", "optimizer_states/0/state/0/exp_avg"])
def test_distributed_metadata_claiming_ten_trillion_elements_is_refused_before_allocating(sharded_ckpt, key):
    def inflate(metadata):
        metadata.state_dict_metadata[key].size = torch.Size([10**13])

    edit_metadata(sharded_ckpt, inflate)
    claim = r"describes 40,000,0\d\d,\d\d\d,\d\d\d bytes of tensors .* but its data files hold [\d,]+ bytes"
    with deadline(REFUSED_WITHIN_S), pytest.raises(ValueError, match=claim):
        load_checkpoint_file(sharded_ckpt)  # bytes against the data files
    shapes = r"model.embedding.weight: checkpoint \(10000000000000,\), model \(16, 16\)"
    against_model = shapes if key.startswith("state_dict") else claim
    with deadline(REFUSED_WITHIN_S), pytest.raises(ValueError, match=against_model):
        load_model(sharded_ckpt)  # shapes against the model of its settings first


def test_a_published_link_pointing_outside_the_checkpoints_folder_is_refused(sharded_ckpt, tmp_path):
    moved = tmp_path / "elsewhere" / sharded_ckpt.resolve().name
    moved.parent.mkdir()
    shutil.move(sharded_ckpt.resolve(), moved)
    sharded_ckpt.unlink()
    sharded_ckpt.symlink_to(os.path.relpath(moved, sharded_ckpt.parent))
    with (
        deadline(REFUSED_WITHIN_S),
        pytest.raises(ValueError, match=rf"last.ckpt' links to '{re.escape(str(moved))}', outside its folder"),
    ):
        load_model(sharded_ckpt)


# --- checkpoint errors of load_model and memzoo-eval -------------------------------------------


def eval_cfg(ckpt, *overrides):
    return compose_config(
        "eval",
        f"ckpt={ckpt}",
        "task.num_train=16",
        "task.num_test=64",
        "trainer.enable_progress_bar=false",
        "+trainer.limit_test_batches=1",
        *overrides,
    )


def test_a_checkpoint_whose_settings_disagree_with_its_weights_names_the_file_and_the_shapes(finished_run, tmp_path):
    checkpoint = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["model"]["d_model"] = 32
    bad = tmp_path / "bad.ckpt"
    atomic_torch_save(checkpoint, bad)
    vocab = checkpoint["state_dict"]["model.embedding.weight"].shape[0]
    match = (
        rf"checkpoint '{re.escape(str(bad))}': its weights do not fit .*"
        rf"model.embedding.weight: checkpoint \({vocab}, 16\), model \({vocab}, 32\)"
    )
    with pytest.raises(ValueError, match=match):
        load_model(bad)
    with pytest.raises(ValueError, match=match):
        evaluate(eval_cfg(bad), tmp_path / "eval")


def test_memzoo_eval_tests_a_checkpoint_without_optimizer_settings(finished_run, tmp_path):
    checkpoint = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    del checkpoint["hyper_parameters"]["optim"]
    atomic_torch_save(checkpoint, tmp_path / "no_optim.ckpt")
    metrics = evaluate(eval_cfg(tmp_path / "no_optim.ckpt"), tmp_path / "eval")
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0


def test_memzoo_eval_of_a_run_directory_tests_its_last_checkpoint_or_says_what_to_pass(finished_run, tmp_path):
    metrics = evaluate(eval_cfg(finished_run), tmp_path / "eval")
    assert metrics["test"] == evaluate(eval_cfg(finished_run / "checkpoints" / "last.ckpt"), tmp_path / "file")["test"]
    assert metrics["ckpt"] == str(finished_run / "checkpoints" / "last.ckpt")  # the file tested is recorded
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "step-3.ckpt").write_bytes(b"x")
    without = r"is a training run directory without checkpoints/last.ckpt .*pass one of its checkpoint files: \['step-3.ckpt'\]"
    with pytest.raises(ValueError, match=without):
        evaluate(eval_cfg(unfinished), tmp_path / "eval2")
    with pytest.raises(ValueError, match=r"is a directory, but neither a training run directory"):
        evaluate(eval_cfg(tmp_path / "eval"), tmp_path / "eval3")
