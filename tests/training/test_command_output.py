"""What memzoo-train prints, run as a user runs it: no dependency chatter (warnings, tips, Lightning's
model summary), one message and exit code 2 for bad input, run folders named by what they hold,
and a validation even when the run is shorter than the validation interval."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = [sys.executable, "-m", "zoo.training.train"]
SMALL = ["backbone.d_model=16", "task.num_train=256", "task.num_test=64", "task.batch_size=32", "trainer.max_steps=4"]
NOISE = ("Warning", "warning", "Tip", "💡", "Total Flops", "GPU available", "Traceback", "LeafSpec", "Trainer.fit")


def memzoo_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN, *overrides], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_run_prints_its_progress_and_result_and_nothing_from_its_dependencies(tmp_path):
    done = memzoo_train(tmp_path, *SMALL, "memory=pkm", "memory.n_keys=8", "memory.knn=4", "trainer.enable_progress_bar=false")
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert not [line for line in output.splitlines() if any(word in line for word in NOISE)], output
    lines = output.splitlines()
    # the run is shorter than the default 250-step interval: one validation, at its end, and a line saying so
    assert lines[0] == "trainer.val_check_interval=250 is beyond trainer.max_steps=4: validating once, at step 4"
    assert lines[1].startswith("transformer+pkm64/") and " step 4/4: val/acc " in lines[1], lines
    assert lines[2].startswith("test/acc ") and "parameters, " in lines[2] and "FLOPs/token); metrics.json in " in lines[2]
    (run_dir,) = (tmp_path / "runs" / "mqar").iterdir()
    assert run_dir.name == "transformer+pkm64"  # the backbone, the memory preset and its slots (8^2)


def test_a_run_with_its_progress_bar_shows_the_bar_and_still_no_warning(tmp_path):
    done = memzoo_train(tmp_path, *SMALL, "trainer.val_check_interval=2")
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "Epoch 0" in output  # Lightning's bar
    assert not [line for line in output.replace("\r", "\n").splitlines() if any(word in line for word in NOISE)], output
    assert [p.name for p in (tmp_path / "runs" / "mqar").iterdir()] == ["transformer"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["memory=pkm", "memory.knn=abc"], "memzoo-train: error: memory.knn=abc: Value 'abc' of type 'str' could not be"),
        (
            ["backbone.d_modle=3"],
            "memzoo-train: error: backbone.d_modle is not a key of the memzoo-train config; did you mean backbone.d_model?",
        ),
        (["backbone.pattern=X"], "memzoo-train: error: backbone.pattern='X' has unknown mixer letter 'X'; allowed letters:"),
        (["task.num_kv_pairs=40"], "memzoo-train: error: task.seq_len=64 is too short for num_kv_pairs=40"),
        (["task=mqr"], "memzoo-train: error: task=mqr is not a choice of task; did you mean task=mqar? (choices: compression,"),
        (["backbone=mamaba"], "memzoo-train: error: backbone=mamaba is not a choice of backbone; did you mean backbone=mamba?"),
    ],
)
def test_bad_input_ends_in_one_message_and_exit_code_2(tmp_path, overrides, message):
    done = memzoo_train(tmp_path, *overrides)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == "" and not (tmp_path / "runs").exists()  # nothing made


def test_hydra_full_error_brings_the_traceback_back(tmp_path):
    done = subprocess.run(
        [*TRAIN, "backbone.pattern=X"], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"}
    )
    assert done.returncode == 1 and "Traceback" in done.stderr and "unknown mixer letter 'X'" in done.stderr


@pytest.mark.parametrize("command", ["zoo.training.train", "zoo.training.evaluate"])
def test_help_says_what_the_command_does_its_groups_keys_and_docs(tmp_path, command):
    done = subprocess.run([sys.executable, "-m", command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert text.startswith(("memzoo-train: train one sequence model", "memzoo-eval: test a trained checkpoint"))
    assert "task: compression, facts, fuzzy_icr, icr, lm, memorization, mqar" in text and "Most used keys:" in text
    assert "--cfg job" in text and "docs/runs.md" in text and len(text.splitlines()) < 40  # not the full config dump
