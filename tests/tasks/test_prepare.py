"""memzoo-prepare and task.data refuse bad input with one line naming the problem (exit code 2 on the
command line) and leave nothing half-written; a run on a prepared corpus stopped mid-epoch by SIGTERM
and resumed ends bit for bit like an uninterrupted one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.sigterm import stop_after_step
from test_token_shards import prepare_corpus, write_corpus

from zoo.checkpoint.files import load_checkpoint_file
from zoo.tasks.lm import LanguageModelingDataModule
from zoo.tasks.token_shards import MANIFEST, read_manifest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PREPARE = [sys.executable, "-c", "import sys; sys.argv[0] = 'memzoo-prepare'; from zoo.tasks.prepare import main; main()"]
TRAIN = [sys.executable, "-m", "zoo.training.train"]


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess, command: str, *words: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith(f"{command}: error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert all(word in done.stderr for word in words), done.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("source") / "corpus")


@pytest.fixture(scope="module")
def bpe_dir(source, tmp_path_factory) -> Path:
    return prepare_corpus(source, tmp_path_factory.mktemp("bpe") / "out", "task.tokenizer=bpe", "task.vocab_size=300")


@pytest.fixture(scope="module")
def byte_dir(source, tmp_path_factory) -> Path:
    return prepare_corpus(source, tmp_path_factory.mktemp("byte") / "out")


# --- memzoo-prepare: one line, exit code 2, no OUT and no OUT.partial ----------------------------


def test_an_empty_source_directory_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run([*PREPARE, "task.path=empty", "out=OUT"], tmp_path), "memzoo-prepare", "task.path='empty'", "empty corpus")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_bpe_vocabulary_the_source_cannot_reach_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "small.txt").write_text("a small text, too small for two thousand merges\n" * 4)
    done = run([*PREPARE, "task.path=small.txt", "out=OUT", "task.tokenizer=bpe", "task.vocab_size=2000"], tmp_path)
    one_line_error(done, "memzoo-prepare", "not task.vocab_size=2000", "lower task.vocab_size")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.txt"]


def test_a_binary_source_is_refused_without_allow_binary_and_nothing_is_written(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "noise.dat").write_bytes(os.urandom(50_000))
    done = run([*PREPARE, "task.path=bin", "out=OUT", "block_bytes=1024"], tmp_path)
    one_line_error(done, "memzoo-prepare", "task.path='bin'", "does not look like text", "task.allow_binary=true")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_an_existing_out_is_refused_without_overwrite_and_left_as_it_was(source, tmp_path):
    (tmp_path / "OUT").mkdir()
    (tmp_path / "OUT" / "mine.txt").write_text("keep me")
    one_line_error(
        run([*PREPARE, f"task.path={source}", "out=OUT"], tmp_path),
        "memzoo-prepare",
        "out='OUT' already exists",
        "overwrite=true",
    )
    assert [p.name for p in (tmp_path / "OUT").iterdir()] == ["mine.txt"] and (
        tmp_path / "OUT" / "mine.txt"
    ).read_text() == "keep me"
    assert not (tmp_path / "OUT.partial").exists()


def test_a_binary_source_is_prepared_with_allow_binary_and_overwrite_replaces_out(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "noise.dat").write_bytes(os.urandom(5_000))
    (tmp_path / "OUT").mkdir()
    prepare_corpus(tmp_path / "bin", tmp_path / "OUT", "task.allow_binary=true", "overwrite=true")
    assert MANIFEST in {p.name for p in (tmp_path / "OUT").iterdir()} and not (tmp_path / "OUT.partial").exists()
    assert sum(r.bytes for r in read_manifest(tmp_path / "OUT").splits.values()) > 5_000  # undecodable bytes as U+FFFD


# --- task.data: the manifest and shards checked before a run reads them ---------------------------


def copy_of(prepared: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "data"))


def edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def truncate(folder: Path) -> None:
    shard = folder / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])  # one uint16 token short


def flip_a_byte(folder: Path) -> None:
    shard = folder / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))


def outside(folder: Path) -> None:
    shutil.copy(folder / "train-00000.bin", folder.parent / "x.bin")  # the right size and checksum, but outside

    def edit(manifest):
        manifest["splits"]["train"]["shards"][0]["file"] = "../x.bin"

    edit_manifest(folder, edit)


def wide_vocabulary(folder: Path) -> None:
    edit_manifest(folder, lambda manifest: manifest.update(vocab_size=70_000))


BROKEN = {
    "truncated shard": (truncate, r"shard 'train-00000\.bin' is [\d,]+ bytes, not [\d,]+ uint16 tokens: truncated"),
    "tampered shard": (flip_a_byte, r"shard 'train-00000\.bin' does not match its SHA-256"),
    "shard outside": (outside, r"shard '\.\./x\.bin' is not a file name inside the prepared corpus directory"),
    "vocabulary over the dtype": (wide_vocabulary, r"dtype 'uint16' cannot hold vocab_size=70000"),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_prepared_directory_is_refused_naming_the_problem(bpe_dir, tmp_path, broken):
    break_it, message = BROKEN[broken]
    data = copy_of(bpe_dir, tmp_path)
    LanguageModelingDataModule(data=str(data), tokenizer="bpe", vocab_size=300)  # intact: accepted
    break_it(data)
    with pytest.raises(ValueError, match=message) as refused:
        LanguageModelingDataModule(data=str(data), tokenizer="bpe", vocab_size=300)
    assert str(refused.value).startswith(f"task.data={str(data)!r}") and "\n" not in str(refused.value)


@pytest.mark.parametrize(("tokenizer", "vocab_size"), [("byte", 256), ("bpe", 400)], ids=["byte tokenizer", "larger vocabulary"])
def test_shards_of_another_tokenizer_are_refused_naming_both(bpe_dir, tokenizer, vocab_size):
    with pytest.raises(ValueError) as refused:
        LanguageModelingDataModule(data=str(bpe_dir), tokenizer=tokenizer, vocab_size=vocab_size)
    message = str(refused.value)
    assert "was prepared with task.tokenizer=bpe task.vocab_size=300; " in message, message
    assert f"this run has task.tokenizer={tokenizer} task.vocab_size={vocab_size}" in message and "\n" not in message


def test_memzoo_train_on_a_tampered_prepared_directory_exits_2_with_one_line_and_makes_no_run(bpe_dir, tmp_path):
    data = copy_of(bpe_dir, tmp_path)
    flip_a_byte(data)
    done = run(
        [*TRAIN, "task=lm", f"task.data={data}", "task.tokenizer=bpe", "task.vocab_size=300", "trainer.max_steps=2"], tmp_path
    )
    one_line_error(done, "memzoo-train", f"task.data={str(data)!r}", "does not match its SHA-256")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no runs/ folder


# --- a run stopped mid-epoch resumes to the uninterrupted run's state ----------------------------

RUN = [
    "task=lm",
    "task.seq_len=32",
    "task.batch_size=8",
    "backbone.d_model=16",
    "trainer.max_steps=45",
    "trainer.val_check_interval=20",
    "checkpoint.every_n_train_steps=10",
    "trainer.enable_progress_bar=false",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]


def test_a_prepared_corpus_run_stopped_mid_epoch_by_sigterm_resumes_bit_for_bit(byte_dir, tmp_path):
    windows = read_manifest(byte_dir).splits["train"].tokens // 33
    assert windows // 8 > 45  # the whole run is inside the first epoch: the stop is mid-epoch

    def cmd(run_dir, *extra):
        return [*TRAIN, *RUN, f"task.data={byte_dir}", *extra, f"hydra.run.dir={run_dir}"]

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    subprocess.run(cmd(whole), check=True, capture_output=True, env=ENV, cwd=tmp_path, timeout=300)
    last = stopped / "checkpoints" / "last.ckpt"
    returncode, stopped_at, err = stop_after_step(cmd(stopped), last, 10, env=ENV, cwd=tmp_path)
    assert returncode == 143 and 10 <= stopped_at < 45, err[-2000:]

    done = subprocess.run(cmd(stopped, "ckpt=last"), capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not resumable" not in done.stdout + done.stderr  # the loader's position is in the checkpoint
    got, want = load_checkpoint_file(last), load_checkpoint_file(whole / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 45
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (stopped, whole))
    assert a["test"] == b["test"] and a["steps"] == b["steps"] == 45
