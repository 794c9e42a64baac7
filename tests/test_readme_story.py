"""README read as a story and run as written, in order, on a tiny budget: every memzoo command of its
```bash blocks and every ```python block, in a fresh directory, each using what the ones before it
made (the quick start's ``runs/myrun`` for the Python example), then the evaluation example of
docs/runs.md on that same run; and docs/pretrained.md's story the same way, lm-eval on its local task
included, with the hubs switched off. A stale path, a renamed option or an example that no longer runs
fails here. (Set-up lines — venv, pip, a story's ``mkdir`` / ``cd``, for which the test's own fresh
directory stands in — and the test command are what CI itself runs; viewers such as tensorboard are
not run.)"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.configs import TINY
from tests.test_readme import FENCE, ROOT, split_line

BIN = Path(sys.executable).parent
SET_UP = {"python3", "pip", ".", "source", "mkdir", "cd", "tensorboard"}  # set-up and viewers
# the same commands, shortened: TINY (tests/helpers/configs.py) after every memzoo-train line's own
# overrides, and these after a grid line's, for every cell
TINY_GRID = [
    "trainer.max_steps=2",
    "optim.warmup_steps=1",
    "trainer.val_check_interval=2",
    "++trainer.limit_val_batches=1",  # ++: some grids set it already
    "++trainer.limit_test_batches=1",
]


def story(page: Path, only: str | None = None) -> list[tuple[str, object]]:
    """A page's runnable steps in order: ("bash", argv) per memzoo command, ("python", code) per block."""
    steps = []
    for indent, language, code in FENCE.findall(page.read_text()):
        code = "".join(line[len(indent) :] + "\n" for line in code.splitlines())
        if language == "python" and only is None:
            steps.append(("python", code))
        if language != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            for argv in split_line(line):
                if argv[0] in SET_UP or argv[:3] == ["python", "-m", "pytest"]:
                    continue
                if only is None or argv[0] == only:
                    steps.append(("bash", argv))
    return steps


def shortened(argv: list[str]) -> list[str]:
    """The command on a tiny budget: training overrides after a memzoo-train line's own, a grid's
    for every cell; a grid listing its cells, or memzoo-eval, as written."""
    if argv[0] == "memzoo-train":
        return [*argv, *TINY]
    if argv[0] in ("memzoo-grid", "memzoo-bench") and "--list" not in argv:
        return [*argv, *TINY_GRID]
    return argv


def run_story(steps: list[tuple[str, object]], cwd: Path, shorten=shortened) -> list[str]:
    """Each step in ``cwd``, in order: a python block as a script, a command on its tiny budget;
    every one must exit 0 without a traceback. Returns each step's stdout."""
    outputs = []
    for kind, step in steps:
        if kind == "python":
            script = cwd / "example.py"
            script.write_text(step)
            command = [sys.executable, str(script)]
        else:
            command = [str(BIN / step[0]), *shorten(step)[1:]]
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        if kind == "python" and "model says" in step:
            assert done.stdout.startswith("model says "), done.stdout
        outputs.append(done.stdout)
    return outputs


def test_readme_runs_as_written_in_order_then_the_evaluation_example(tmp_path):
    steps = story(ROOT / "README.md") + story(ROOT / "docs" / "runs.md", only="memzoo-eval")
    kinds = [argv[0] if kind == "bash" else kind for kind, argv in steps]
    assert {"memzoo-train", "memzoo-grid", "memzoo-eval", "python"} <= set(kinds), kinds
    run_story(steps, tmp_path)
    assert (tmp_path / "runs" / "myrun" / "checkpoints" / "last.ckpt").is_file()  # what the examples share
    assert (tmp_path / "grids" / "quick" / "summary.md").is_file() and not (tmp_path / "results").exists()


# docs/pretrained.md's runs on text, shortened
TINY_TEXT = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]
STORY_DIR = "mkdir -p /tmp/memzoo-story && cd /tmp/memzoo-story"  # the page's own directory: tmp_path stands in
STORY_FILES = {"tiny-llama", "runs", "exported", "tasks", "hf_cache"}  # all the page writes there


def test_the_pretrained_page_runs_offline_in_order_lm_eval_on_its_local_task_included(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")
    page = ROOT / "docs" / "pretrained.md"
    text = page.read_text()
    assert STORY_DIR in text and text.index(STORY_DIR) < text.index("```python"), (
        f"docs/pretrained.md must `{STORY_DIR}` before its first block writes a file"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a step that needs a hub fails here instead of downloading
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    steps = story(page)
    kinds = [argv[0] if kind == "bash" else kind for kind, argv in steps]
    assert kinds.count("memzoo-export") == 2 and {"memzoo-train", "memzoo-lm-eval"} <= set(kinds), kinds
    outputs = run_story(steps, tmp_path, shorten=lambda argv: [*argv, *TINY_TEXT] if argv[0] == "memzoo-train" else argv)
    assert re.search(r"^\|\s*python_docs\s*\|.*\|\s*acc\s*\|", outputs[kinds.index("memzoo-lm-eval")], re.M), outputs[-1]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "exported" / "tiny-llama-memory").iterdir()
    }
    assert {p.name for p in tmp_path.iterdir()} - {"example.py"} <= STORY_FILES
