"""memzoo-grid reports progress while cells train (done / failed / to go, wall time, ETA, a line per
cell with its headline metric), writes to the scratch grids/ folder unless --out says otherwise, and
records the command line's overrides in summary.md."""

import json
from pathlib import Path

import yaml

from zoo.grid.progress import GridProgress, duration, headline
from zoo.grid.runner import main

TINY = [
    "task.num_train=64",
    "task.num_test=32",
    "task.batch_size=32",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "backbone.d_model=16",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]


def test_a_two_cell_grid_prints_its_tally_eta_and_each_cells_result_into_grids_by_default(tmp_path, monkeypatch, capsys):
    grid = tmp_path / "pair.yaml"
    grid.write_text(yaml.safe_dump({"name": "pair", "studies": {"mqar": {"base": TINY, "axes": {"memory": ["none", "pkm"]}}}}))
    monkeypatch.chdir(tmp_path)
    main([str(grid), "trainer.max_steps=2"])
    out = capsys.readouterr().out
    root = tmp_path / "grids" / "pair"
    assert f"pair: 2 cells in {root}; training 2" in out
    lines = [line for line in out.splitlines() if line.startswith("[done ")]
    assert [line.split(" |")[0] for line in lines] == ["[done 1/2, failed 0, to go 1", "[done 2/2, failed 0, to go 0"]
    assert all(", ETA " in line for line in lines)
    cells = sorted(line.split("]  ")[1].split(":")[0] for line in lines)
    assert cells == ["mqar/memory=none", "mqar/memory=pkm"]
    for line in lines:
        assert " acc " in line and " loss " in line
    assert (root / "results.csv").is_file() and not (tmp_path / "results").exists()
    assert "Overrides added on the command line to every cell: `trainer.max_steps=2`." in (root / "summary.md").read_text()
    capsys.readouterr()
    main([str(grid), "trainer.max_steps=2"])  # everything done: nothing launched, no progress lines
    assert "[done" not in capsys.readouterr().out


def finished_cell(run_dir: Path, metrics: dict) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_the_eta_is_the_mean_time_per_finished_cell_times_the_cells_to_go_and_failures_count(tmp_path):
    now = [100.0]
    cells = [(f"s/c{i}", tmp_path / f"c{i}") for i in range(4)]
    lines = []

    class Stream:
        def write(self, text):
            lines.extend(t for t in text.splitlines() if t)

        def flush(self):
            pass

    done = lambda key, d: (d / "metrics.json").is_file()  # noqa: E731
    progress = GridProgress(cells, total=5, finished=done, stream=Stream(), every_s=3600, clock=lambda: now[0])
    with progress:
        now[0] = 160.0
        finished_cell(tmp_path / "c0", {"test": {"test/bpb": 2.5, "test/loss": 3.0}, "wall_time_s": 55.2})
        progress.poll()
        now[0] = 220.0
        (tmp_path / "c2").mkdir()
        (tmp_path / "c2" / "error.json").write_text(json.dumps({"error": "ValueError: bad\ntraceback"}))
        progress.poll()
        progress.poll()  # nothing new: no line
    assert lines[0] == "grid, 1 done earlier; training 4"
    assert lines[1] == "[done 2/5, failed 0, to go 3 | 1m00s, ETA 3m00s]  s/c0: bpb 2.5, loss 3, 55 s"
    assert lines[2] == "[done 2/5, failed 1, to go 2 | 2m00s, ETA 2m00s]  s/c2: FAILED ValueError: bad"
    assert len(lines) == 3


def test_durations_and_headlines_read_at_a_glance():
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3720)] == ["0s", "59s", "1m01s", "59m59s", "1h02m"]
    assert headline({"test": {"test/acc": 0.987654, "test/loss": 0.01, "test/memory/x": 1}, "wall_time_s": 3.0}) == (
        "acc 0.9877, loss 0.01, 3 s"
    )
    assert headline({}) == ""
