"""Checkpoints are read with weights_only=True (a distributed checkpoint's DCP metadata through an
allow-list): a file carrying code is refused before the code runs, and a missing, empty, truncated
or foreign file gets one error naming the path and what is wrong."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from zoo import load_model
from zoo.checkpoint.distributed import save_distributed
from zoo.checkpoint.files import atomic_torch_save, load_checkpoint_file

MODEL = {"vocab_size": 16, "d_model": 16, "n_layers": 1, "mixer": {"attention": {"num_heads": 2}}}


class Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def memzoo_checkpoint(**extra):
    return {"state_dict": {}, "hyper_parameters": {"model": MODEL, "optim": {}}, **extra}


@pytest.mark.parametrize("where", ["whole file", "inside a valid checkpoint"])
def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = Payload(marker)
    torch.save(payload if where == "whole file" else memzoo_checkpoint(extra=payload), path)
    with pytest.raises(ValueError, match=r"evil.ckpt' holds objects other than tensors and plain containers"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["its metadata", "a non-tensor item"])
def test_a_distributed_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    save_distributed(memzoo_checkpoint(state_dict={"w": torch.ones(3)}), path)
    data_dir = path.resolve()
    if where == "its metadata":  # DCP's own reader would unpickle it with plain pickle
        (data_dir / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    else:  # DCP's own reader would torch.load(weights_only=False) it
        dcp.save({"state_dict/w": Payload(marker)}, checkpoint_id=data_dir, no_dist=True)
    with pytest.raises(ValueError, match=r"holds objects other than DCP's tensor metadata"):
        load_model(path)
    assert not marker.exists()


def test_memzoo_eval_refuses_a_code_carrying_checkpoint_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        pickle.dump(Payload(marker), handle)  # a bare pickle, not even a torch zip file
    script = Path(sys.executable).parent / "memzoo-eval"
    done = subprocess.run(
        [str(script), f"ckpt={path}", f"hydra.run.dir={tmp_path / 'eval'}"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert not marker.exists()
    assert "evil.ckpt" in done.stderr


def test_empty_truncated_and_foreign_files_get_one_clear_error(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.ckpt' is empty \(0 bytes\)"):
        load_checkpoint_file(empty)
    whole = tmp_path / "whole.ckpt"
    atomic_torch_save(memzoo_checkpoint(state_dict={"w": torch.ones(1000)}), whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.ckpt' is truncated or not a torch checkpoint"):
        load_checkpoint_file(truncated)
    plain = tmp_path / "state_dict.pt"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(
        ValueError, match=r"state_dict.pt' is not a memzoo-train checkpoint: it lacks \['state_dict', 'hyper_parameters'\]"
    ):
        load_checkpoint_file(plain)
    with pytest.raises(ValueError, match=r"nowhere.ckpt' does not exist"):
        load_checkpoint_file(tmp_path / "nowhere.ckpt")
    assert load_checkpoint_file(whole)["state_dict"]["w"].shape == (1000,)


def test_a_distributed_checkpoint_with_truncated_files_gets_one_clear_error(tmp_path):
    path = save_distributed(memzoo_checkpoint(state_dict={"w": torch.ones(1000)}), tmp_path / "cut.ckpt")
    data = next(path.resolve().glob("*.distcp"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut.ckpt.*: its tensor files are missing, truncated or corrupt"):
        load_checkpoint_file(path)
    metadata = path.resolve() / ".metadata"
    metadata.write_bytes(metadata.read_bytes()[:10])
    with pytest.raises(ValueError, match=r"cut.ckpt.*: .metadata is missing or truncated"):
        load_checkpoint_file(path)
