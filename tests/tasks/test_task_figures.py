"""The figure registry beside the tasks: every entry names a task memzoo has, and the report draws
each task's figures from that task's cells only."""

from zoo.grid.report import figures
from zoo.tasks import TASKS
from zoo.tasks.figures import FIGURES


def test_every_registered_figure_maker_names_a_known_task():
    assert set(FIGURES) <= set(TASKS)


def test_a_task_without_figures_adds_none_and_hides_no_other_tasks_figures():
    run = {"study": "s", "cell": "c"}
    lm = {"task": "lm", "backbone": "transformer", "memory": "none", "channel": "mlp", "n": 1, "runs": [run]}
    curves = {("s", "c"): [{"step": 1, "val_bpb": 2.0}]}
    assert figures([{**lm, "task": "icr"}], curves) == {}
    assert list(figures([lm, {**lm, "task": "icr"}], curves)) == ["lm_val_bpb_vs_step"]  # no train_flops: no compute figure
