"""A model directory is read like a checkpoint (docs/files.md): each hostile directory below is built
from a tiny model saved with transformers' own classes (or memzoo's export), then corrupted, and must
be refused within a second under a ``signal.alarm`` guard, with one ``ValueError`` naming the file,
and without allocating beyond what the valid model needs (peak RSS, measured in a fresh process)."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.hf_models import save_tiny

import zoo
from zoo.pretrained.directory import save_model_dir
from zoo.pretrained.export import export, main

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """(a tiny Llama directory, a tiny memzoo directory), saved once."""
    root = tmp_path_factory.mktemp("valid")
    save_tiny("llama", root / "llama")
    model = zoo.build_model({"vocab_size": 50, "d_model": 32, "n_layers": 2, "memory": {"n_keys": 8, "k_dim": 8}})
    save_model_dir(model, root / "memzoo")
    return root / "llama", root / "memzoo"


def edit_config(file: Path, **changes) -> None:
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


def write_safetensors(file: Path, header: dict, data: bytes = b"", length: int | None = None) -> None:
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


def fifo(file: Path) -> None:
    file.unlink()
    os.mkfifo(file)


def index_of(directory: Path, weight_map) -> None:
    (directory / "model.safetensors").rename(directory / "shard-1.safetensors")
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, **weight_map}))


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
# (name, corruption of a copy of the valid Llama directory, what the error says, the file it names)
HOSTILE = [
    ("layers", lambda d: edit_config(d / "config.json", num_hidden_layers=10**9), r"lower num_hidden_layers", "config.json"),
    (
        "hidden size",
        lambda d: edit_config(d / "config.json", hidden_size=2**22, head_dim=2**20, intermediate_size=48),
        r"lower hidden_size",
        "config.json",
    ),
    ("vocabulary", lambda d: edit_config(d / "config.json", vocab_size=10**15), r"lower vocab_size", "config.json"),
    ("mlp width", lambda d: edit_config(d / "config.json", intermediate_size=10**15), r"lower intermediate_size", "config.json"),
    ("size not a number", lambda d: edit_config(d / "config.json", hidden_size="big"), r"hidden_size='big'", "config.json"),
    ("size missing", lambda d: edit_config(d / "config.json", vocab_size=None), r"vocab_size=None", "config.json"),
    ("deep config", lambda d: (d / "config.json").write_text("[" * 100_000 + "]" * 100_000), r"nests deeper", "config.json"),
    ("huge config", lambda d: (d / "config.json").write_text(" " * 2**21 + "{}"), r"more than the", "config.json"),
    ("config fifo", lambda d: fifo(d / "config.json"), r"is a FIFO", "config.json"),
    ("weights fifo", lambda d: fifo(d / "model.safetensors"), r"is a FIFO", "model.safetensors"),
    (
        "weights link out",
        lambda d: (d / "model.safetensors").unlink() or (d / "model.safetensors").symlink_to(d.parent / "elsewhere"),
        r"outside the model directory",
        "model.safetensors",
    ),
    (
        "header past the end",
        lambda d: write_safetensors(d / "model.safetensors", {}, length=10**12),
        r"header claims 1,000,000,000,000 bytes",
        "model.safetensors",
    ),
    (
        "truncated",
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
        r"header claims",
        "model.safetensors",
    ),
    (
        "data truncated",
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-4]),
        r"truncated",
        "model.safetensors",
    ),
    (
        "unknown dtype",
        lambda d: write_safetensors(d / "model.safetensors", {"a": {**F32, "dtype": "X9"}}, bytes(8)),
        r"dtype 'X9' is not one memzoo reads",
        "model.safetensors",
    ),
    (
        "offsets outside",
        lambda d: write_safetensors(d / "model.safetensors", {"a": {**F32, "data_offsets": [10**15, 10**15 + 8]}}, bytes(8)),
        r"leaves bytes 0-1000000000000000 unused",
        "model.safetensors",
    ),
    (
        "offsets overlap",
        lambda d: write_safetensors(d / "model.safetensors", {"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, bytes(12)),
        r"tensor 'b' at bytes 4-12 overlaps",
        "model.safetensors",
    ),
    (
        "offsets disagree with shape",
        lambda d: write_safetensors(d / "model.safetensors", {"a": {**F32, "shape": [10**9]}}, bytes(8)),
        r"its shape needs 4,000,000,000",
        "model.safetensors",
    ),
    (
        "header not JSON",
        lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{" + bytes(8)),
        r"not valid JSON",
        "model.safetensors",
    ),
    (
        "weights of another model",
        lambda d: write_safetensors(d / "model.safetensors", {"model.embed_tokens.weight": F32}, bytes(8)),
        r"do not map onto",
        "",
    ),
    ("index without its map", lambda d: index_of(d, {}), r"needs a weight_map", "model.safetensors.index.json"),
    (
        "index naming a path out",
        lambda d: index_of(d, {"weight_map": {"lm_head.weight": "../elsewhere"}}),
        r"not a file name inside",
        "model.safetensors.index.json",
    ),
    (
        "shard fifo",
        lambda d: index_of(d, {"weight_map": {"lm_head.weight": "shard-1.safetensors"}}) or fifo(d / "shard-1.safetensors"),
        r"is a FIFO",
        "shard-1.safetensors",
    ),
]


def hostile_copy(valid: Path, tmp_path: Path, corrupt) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(valid, directory)
    (tmp_path / "elsewhere").write_bytes(b"secret")
    corrupt(directory)
    return directory


class Alarm(Exception):
    pass


def refused_within_a_second(load, directory: Path, match: str):
    """``load(directory)`` raises ``ValueError`` matching ``match`` within one second of wall time."""

    def ring(signum, frame):
        raise Alarm("still running after 1 s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(ValueError, match=match) as caught:
            load(directory)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return str(caught.value)


@pytest.mark.parametrize("name, corrupt, match, file", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_hugging_face_directory_is_refused_within_a_second_naming_the_file(valid, tmp_path, name, corrupt, match, file):
    directory = hostile_copy(valid[0], tmp_path, corrupt)
    message = refused_within_a_second(zoo.from_pretrained, directory, match)
    assert str(directory / file) in message or f"model directory {str(directory)!r}" in message
    assert "\n" not in message


MEMZOO_HOSTILE = [
    (
        lambda d: edit_config(
            d / "config.json", memzoo={**json.loads((d / "config.json").read_text())["memzoo"], "n_layers": 10**9}
        ),
        r"lower memzoo\.n_layers",
    ),
    (
        lambda d: edit_config(
            d / "config.json", memzoo={**json.loads((d / "config.json").read_text())["memzoo"], "d_model": 2**24}
        ),
        r"lower memzoo\.d_model",
    ),
    (lambda d: fifo(d / "model.safetensors"), r"is a FIFO"),
    (
        lambda d: write_safetensors(d / "model.safetensors", {"embedding.weight": F32}, bytes(8)),
        r"embedding\.weight: file \(2,\), model \(50, 32\)",
    ),
]


@pytest.mark.parametrize("corrupt, match", MEMZOO_HOSTILE, ids=["layers", "width", "fifo", "shapes"])
def test_a_hostile_memzoo_directory_is_refused_by_load_model_within_a_second(valid, tmp_path, corrupt, match):
    directory = hostile_copy(valid[1], tmp_path, corrupt)
    refused_within_a_second(zoo.load_model, directory, match)


def test_size_check_false_skips_the_size_check_only(valid, tmp_path):
    directory = hostile_copy(valid[0], tmp_path, lambda d: edit_config(d / "config.json", intermediate_size=10**15))
    with pytest.raises(Exception) as caught:  # noqa: B017  past the check, the allocation itself fails
        zoo.from_pretrained(directory, size_check=False)
    assert "size check" not in str(caught.value)


RSS_SCRIPT = """
import json, resource, shutil, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import zoo
from test_model_dir_safety import HOSTILE, hostile_copy
valid, work = Path(sys.argv[1]), Path(sys.argv[2])
zoo.from_pretrained(valid)  # the valid model once: imports, kernels and its own tensors
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
refused = 0
for i, (name, corrupt, match, file) in enumerate(HOSTILE):
    try:
        zoo.from_pretrained(hostile_copy(valid, work / str(i), corrupt))
    except ValueError:
        refused += 1
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"refused": refused, "grew_kib": after - before}}))
"""


def test_refusing_every_hostile_directory_allocates_nothing_beyond_the_valid_model(valid, tmp_path):
    script = RSS_SCRIPT.format(tests=str(TESTS / "pretrained"))
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    done = subprocess.run([sys.executable, "-c", script, str(valid[0]), str(tmp_path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["refused"] == len(HOSTILE)
    assert result["grew_kib"] < 64 * 1024  # peak RSS grew by less than 64 MiB over the whole list


def test_memzoo_export_refuses_a_hostile_source_with_one_line_and_exit_2(valid, tmp_path, capsys):
    directory = hostile_copy(valid[0], tmp_path, lambda d: fifo(d / "model.safetensors"))
    with pytest.raises(SystemExit) as exit_info:
        main([f"ckpt={directory}", f"out={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.safetensors" in err and "is a FIFO" in err
    assert not (tmp_path / "out").exists()


def test_export_never_replaces_a_directory_another_process_holds(valid, tmp_path):
    from zoo.core.dir_lock import exclusive_dir

    out = tmp_path / "held"
    with exclusive_dir(out):  # as a training run or an evaluation holds its directory
        inode = out.stat().st_ino
        with pytest.raises(ValueError, match=r"model directory '.*held' is in use by process"):
            export(valid[1], out)
        assert out.stat().st_ino == inode and list(out.iterdir()) == []


def test_export_under_a_regular_file_is_refused_with_exit_2_not_a_traceback(valid, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main([f"ckpt={valid[1]}", f"out={tmp_path / 'file' / 'out'}"])
    assert exit_info.value.code == 2
    assert "cannot be made or opened" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"


def test_export_fills_an_existing_empty_directory_in_place_and_refuses_a_full_one(valid, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    inode = out.stat().st_ino
    export(valid[1], out)
    assert out.stat().st_ino == inode and sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match=r"exists and is not an empty directory"):
        export(valid[1], out)
    assert zoo.load_model(out).config == zoo.load_model(valid[1]).config


def test_a_failed_export_leaves_nothing_it_made_and_keeps_what_was_there(valid, tmp_path, monkeypatch):
    from zoo.pretrained import directory

    def broken(model, tmp, config):
        (tmp / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(directory, "_write_memzoo", broken)
    with pytest.raises(OSError, match="disk full"):
        export(valid[1], tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError, match="disk full"):
        export(valid[1], tmp_path / "kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and list((tmp_path / "kept").iterdir()) == []
