"""The capacity figure: facts recalled against total parameters, memory cells as one line per
backbone, MLP cells as squares and a wider (more FLOPs) MLP as a star, mean ± std over seeds, and
the memory cells' test-set usage beside it; the capacity grid keeps FLOPs per token matched."""

import pytest
from helpers.grid_rows import finished_row
from hydra import compose, initialize_config_module
from matplotlib.container import ErrorbarContainer

from zoo import build_model
from zoo.grid.runner import expand, load_grid
from zoo.grid.table import aggregate, best_of_lr, summary_markdown
from zoo.model.flops import forward_flops_per_token
from zoo.tasks.figures.facts import capacity_figure
from zoo.training.config import RunConfig


def run(cell, seed, params, flops, recalled, memory="pkm", usage=None):
    r = {
        **finished_row("s", cell, seed),
        "task": "facts",
        "backbone": "transformer",
        "memory": memory,
        "channel": "mlp",
        "lr": 0.003,
        "task.num_facts": 1000,
        "params": params,
        "flops_per_token": flops,
        "facts_recalled": recalled,
        "test_acc": 0.5,
    }
    if usage is not None:
        r["test_memory_layer1_usage"] = usage
    return r


@pytest.fixture
def rows():
    return [
        *(run("mem_small", s, 2000, 95_000, 300 + 10 * s, usage=0.9) for s in range(3)),
        *(run("mem_large", s, 20000, 97_000, 600 + 10 * s, usage=0.5) for s in range(3)),
        *(run("mlp", s, 1000, 100_000, 200 + 10 * s, memory="none") for s in range(3)),
        *(run("wide", s, 8000, 300_000, 400 + 10 * s, memory="none") for s in range(3)),
    ]


def test_memory_cells_form_a_line_with_error_bars_and_mlps_are_marked(rows):
    fig = capacity_figure(best_of_lr(aggregate(rows)))
    facts_ax, usage_ax = fig.axes
    assert facts_ax.get_xscale() == "log"
    lines = {c.get_label(): c for c in facts_ax.containers if isinstance(c, ErrorbarContainer)}
    memory = lines["transformer + memory (95-97 kFLOP/tok)"]
    assert memory.lines[0].get_xydata().tolist() == [[2000, pytest.approx(310)], [20000, pytest.approx(610)]]
    assert lines["transformer MLP (100 kFLOP/tok)"].lines[0].get_marker() == "s"
    assert lines["transformer wide MLP (300 kFLOP/tok)"].lines[0].get_marker() == "*"
    (_, _, (segments,)) = memory.lines
    ((_, low), (_, high)), _ = segments.get_segments()
    assert (low, high) == (pytest.approx(300), pytest.approx(320))  # mean ± std over the 3 seeds
    (usage,) = [c for c in usage_ax.containers if isinstance(c, ErrorbarContainer)]
    assert usage.lines[0].get_xydata().tolist() == [[2000, pytest.approx(0.9)], [20000, pytest.approx(0.5)]]


def test_summary_lists_the_memory_usage_column(rows):
    summary = summary_markdown(rows)
    header = next(line for line in summary.splitlines() if line.startswith("| cell | backbone"))
    assert "test_memory_layer1_usage" in header and "kl_uniform" not in header and "mfu" not in header
    assert "0.9 ± 0" in summary


def test_capacity_ladder_keeps_every_memory_model_within_5_percent_of_its_mlp_models_flops():
    cost = {}  # (backbone, channel) -> {(FLOPs per token, parameters)} over the ladder
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        for cell in expand(load_grid("capacity")):
            if cell.seed != 0:
                continue
            cfg = compose("train", overrides=list(cell.overrides))
            model = build_model(RunConfig.from_hydra(cfg).model)  # the vocabulary from the task's sizes
            settings = dict(cell.settings)
            key = (cfg.backbone.name, settings.get("memory.n_keys", "mlp"))
            cost.setdefault(key, set()).add((forward_flops_per_token(model, cfg.task.seq_len), model.num_parameters()))
    assert {b for b, _ in cost} == {"transformer", "mamba2", "gated_deltanet"}
    for backbone in ("transformer", "mamba2", "gated_deltanet"):
        ((mlp, mlp_params),) = cost[(backbone, "mlp")]  # one size over the ladder: the vocabulary is fixed
        sizes = [cost[(backbone, n)] for n in ("64", "128", "256")]
        assert all(len(s) == 1 for s in sizes)
        sizes = [next(iter(s)) for s in sizes]
        assert all(0.95 * mlp <= f <= 1.05 * mlp for f, _ in sizes), (backbone, mlp, sizes)
        assert [p for _, p in sizes] == sorted(p for _, p in sizes) and sizes[-1][1] > 30 * mlp_params
