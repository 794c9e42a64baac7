"""Each task's figures for a grid's report, beside the tasks: ``FIGURES`` maps a task's config name
to its maker, ``make(cells, curves) -> {file name: matplotlib figure}`` over that task's cells (best
learning rate, mean over seeds; ``zoo.grid.table``) and the LM validation curves (None when the grid
has none). A task with figures is one module here plus one line in ``FIGURES``. They live in the
tasks' room, not the grid's, because a figure reads a task's own measurements; ``zoo.grid.report``
imports them downward, and they import only ``zoo.tasks.figures.plot``."""

from zoo.tasks.figures import facts, lm, mqar

FIGURES = {"mqar": mqar.figures, "facts": facts.figures, "lm": lm.figures}  # in the order the report draws them
