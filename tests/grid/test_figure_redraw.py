"""A committed grid's figures redrawn from its results.csv alone: the rows read back as the report
wrote them, every figure but the LM curves rewritten when the grid has no curves.csv (their redraw
from it: test_lm_curves.py)."""

from helpers.grid_rows import finished_row

from zoo.grid.report import redraw
from zoo.grid.table import read_csv, write_csv


def run(task, memory, seed, acc):
    cell = f"{task}_{memory}"
    return {
        **finished_row(task, cell, seed),
        "task": task,
        "backbone": "transformer",
        "memory": memory,
        "slots": None if memory == "none" else 1024,
        "channel": "mlp",
        "lr": 0.003,
        "d_model": 64,
        "task.seq_len": 64,
        "task.num_kv_pairs": 4,
        "params": 1000,
        "flops_per_token": 66_000,
        "state_size": 131_072,
        "test_acc": acc,
        **({"train_flops": 1e12, "val_bpb": 2.5, "test_bpb": 2.5} if task == "lm" else {}),
    }


def test_results_csv_reads_back_as_the_rows_less_their_empty_cells(tmp_path):
    rows = [run("mqar", m, s, 0.25 + s / 10) for m in ("none", "pkm") for s in range(2)]
    read = read_csv(write_csv(rows, tmp_path / "results.csv"))
    assert read == [{k: v for k, v in r.items() if v is not None} for r in rows]
    assert isinstance(read[0]["seed"], int) and isinstance(read[0]["lr"], float)


def test_redraw_without_curves_csv_rewrites_the_figures_but_the_lm_curves(tmp_path):
    rows = [run(task, m, 0, 0.5) for task in ("mqar", "lm") for m in ("none", "pkm")]
    write_csv(rows, tmp_path / "results.csv")
    (tmp_path / "lm_val_bpb_vs_train_flops.png").write_bytes(b"kept")
    paths = redraw(tmp_path)
    assert sorted(p.name for p in paths) == ["mqar_accuracy_vs_d_model.png", "mqar_accuracy_vs_state_size.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    assert (tmp_path / "lm_val_bpb_vs_train_flops.png").read_bytes() == b"kept"
