"""memzoo-grid dispatches its cells through Hydra's launchers: joblib runs cells side by side and
writes the files (and metrics) of the serial run, submitit_local runs them as submitit jobs, an
interrupted parallel grid resumes, and a job on a machine with several GPUs claims a free one."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from zoo.grid.devices import claim
from zoo.grid.runner import main

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="hydra-joblib-launcher is not installed (memzoo[joblib])")

TINY = [
    "task.num_train=64",
    "task.num_test=32",
    "task.batch_size=32",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "backbone.d_model=16",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]
# cells of some seconds each, so that one worker starting late (a loaded machine) cannot hide their overlap
LONGER = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
LONGER += ["trainer.max_steps=200", "trainer.val_check_interval=200"]
PAIR = {"name": "pair", "studies": {"mqar": {"base": LONGER, "axes": {"memory": ["none", "pkm"]}}}}


def write(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / f"{grid['name']}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def files(root: Path) -> set[str]:
    """Every file under a grid's results, with the parts that name a time or a process made equal."""
    names = set()
    for path in root.rglob("*"):
        if path.is_file():
            parts = list(path.relative_to(root).parts)
            if parts[0] == "jobs":
                parts[1] = "TIME"
            if parts[-1].startswith("events.out.tfevents."):
                parts[-1] = "events"
            names.add("/".join(parts))
    return names


def results(root: Path) -> dict[str, dict[str, str]]:
    return {r["cell"]: r for r in csv.DictReader((root / "results.csv").open())}


def worker_threads(n_jobs: int) -> int:
    """torch's thread count in a joblib (loky) worker of ``n_jobs``: loky divides the cores among them."""
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs)(delayed(torch.get_num_threads)() for _ in range(n_jobs))[0]


def test_joblib_trains_two_cells_at_once_and_writes_the_files_and_metrics_of_the_serial_run(tmp_path):
    """The serial run at the workers' thread count: torch's CPU sums (matmul, reductions) split by
    threads, and a tiny memory model's 200 steps carry that last-bit difference into its loss."""
    grid = write(tmp_path, PAIR)
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads(2))
    try:
        main([str(grid), "--out", str(tmp_path / "serial")])
    finally:
        torch.set_num_threads(threads)
    main([str(grid), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "--out", str(tmp_path / "joblib")])
    serial, parallel = tmp_path / "serial" / "pair", tmp_path / "joblib" / "pair"
    assert files(parallel) == files(serial)
    assert {"runs/mqar/memory=pkm/metrics.json", "jobs/TIME/mqar/memory=pkm/.hydra/config.yaml", "summary.md"} <= files(serial)
    assert not [name for name in files(serial) if name.endswith(".log")]  # no empty log files
    for cell, row in results(serial).items():  # the same training, wherever it ran
        other = results(parallel)[cell]
        assert other["test_acc"] == row["test_acc"] and abs(float(other["test_loss"]) - float(row["test_loss"])) < 1e-5
    # side by side: each cell started (config.yaml) before the other finished (metrics.json)
    spans = [
        ((d / "config.yaml").stat().st_mtime, (d / "metrics.json").stat().st_mtime)
        for d in (parallel / "runs" / "mqar").iterdir()
    ]
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a
    assert len(list((parallel / "jobs").rglob("overrides.yaml"))) == 2  # Hydra's record of each job


def test_submitit_local_trains_the_cells_as_submitit_jobs(tmp_path):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed (memzoo[submitit])"
    )
    grid = write(tmp_path, {"name": "jobs", "studies": {"mqar": {"base": TINY, "axes": {"memory": ["none"]}}}})
    main([str(grid), "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "--out", str(tmp_path)])
    root = tmp_path / "jobs"
    assert json.loads((root / "runs" / "mqar" / "memory=none" / "metrics.json").read_text())["steps"] == 2
    assert [r["status"] for r in results(root).values()] == ["done"]
    (job_log,) = (root / "jobs").glob("*/.submitit/*/*_log.out")  # submitit ran it as its own job
    assert "Job completed successfully" in job_log.read_text()


def test_a_parallel_grid_stopped_by_sigterm_reports_the_finished_cells_and_resumes(tmp_path):
    slow = [o for o in TINY if not o.startswith(("trainer.max_steps", "task.num_train"))]
    studies = {
        "fast": {"base": TINY, "axes": {"memory": ["none"]}},
        "slow": {
            "base": [*slow, "task.num_train=2048", "trainer.max_steps=5000", "checkpoint.every_n_train_steps=5"],
            "axes": {"memory": ["none"]},
        },
    }
    grid = write(tmp_path, {"name": "stopped", "studies": studies})
    bench = [
        sys.executable,
        "-m",
        "zoo.grid.runner",
        str(grid),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "--out",
        str(tmp_path),
    ]
    root = tmp_path / "stopped"
    fast, slow_dir = root / "runs" / "fast" / "memory=none", root / "runs" / "slow" / "memory=none"
    proc = subprocess.Popen(bench, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # until the fast cell is done and the slow one is training
    while (
        not ((fast / "metrics.json").is_file() and (slow_dir / "checkpoints" / "last.ckpt").is_file())
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "1 of 2 cells done" in out and "stopped by SIGTERM" in err
    assert [(r["study"], r["status"]) for r in results(root).values()] == [("fast", "done")]
    finished = (fast / "metrics.json").stat().st_mtime_ns
    studies["slow"]["base"][-2] = "trainer.max_steps=8"  # a short rerun: the stopped cell, changed, starts over
    write(tmp_path, {"name": "stopped", "studies": studies})
    rerun = subprocess.run(bench, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "2 of 2 cells done" in rerun.stdout
    assert (fast / "metrics.json").stat().st_mtime_ns == finished  # not trained again
    assert json.loads((slow_dir / "metrics.json").read_text())["steps"] == 8


def test_a_job_claims_a_device_no_other_job_holds_and_frees_it_when_done(tmp_path):
    first, first_lock = claim(["gpu-a", "gpu-b"], tmp_path, fallback=0)
    second, second_lock = claim(["gpu-a", "gpu-b"], tmp_path, fallback=0)
    assert (first, second) == (0, 1)
    first_lock.close()
    third, third_lock = claim(["gpu-a", "gpu-b"], tmp_path, fallback=1)
    assert third == 0
    second_lock.close(), third_lock.close()


def test_a_launcher_that_is_not_installed_or_mistyped_stops_before_any_cell_trains(tmp_path):
    grid = write(tmp_path, PAIR)
    with pytest.raises(ValueError, match=r"launcher overrides \['hydra/launcher=jobllib'\] are invalid .*pip install"):
        main([str(grid), "hydra/launcher=jobllib", "--out", str(tmp_path / "results")])
    assert not (tmp_path / "results").exists()
