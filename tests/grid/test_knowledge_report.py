"""The knowledge ladder's report: knowledge bits against facts (a panel per backbone, a line per
channel, the all-facts diagonal) and capacity against parameters (the plateau of each channel, a
2 bits/parameter reference), mean ± std over seeds; summary.md lists the knowledge columns."""

import pytest
from helpers.grid_rows import finished_row
from matplotlib.container import ErrorbarContainer

from zoo.grid.table import aggregate, best_of_lr, summary_markdown
from zoo.tasks.figures.facts import capacity_bits_figure, knowledge_figure


def run(backbone, slots, facts, seed, bits, params):
    cell = f"{backbone}_{slots}_{facts}"
    return {
        **finished_row(f"facts_{facts}", cell, seed),
        "task": "facts",
        "backbone": backbone,
        "memory": "none" if slots is None else "pkm",
        "slots": slots,
        "channel": "mlp",
        "lr": 0.003,
        "task.num_facts": facts,
        "params": params,
        "flops_per_token": 66_000,
        "test_acc": 0.5,
        "facts_recalled": facts / 2,
        "knowledge_bits": bits,
        "knowledge_bits_max": 6.0 * facts,
        "bits_per_parameter": bits / params,
        "bits_per_channel_parameter": bits / 1000,
        "bits_per_kflop": bits / 66,
        "exposures": 100.0,
    }


@pytest.fixture
def best():
    rows = []
    for backbone in ("mamba2", "transformer"):
        for facts, seeds in ((1000, [0]), (4000, [0, 1, 2])):
            # the MLP saturates at 5000 bits; the 2^16 table holds more at 4000 facts
            rows += [run(backbone, None, facts, s, min(5000, 5.0 * facts) + 100 * s, 35_000) for s in seeds]
            rows += [run(backbone, 2**16, facts, s, 5.5 * facts + 100 * s, 2_100_000) for s in seeds]
    return best_of_lr(aggregate(rows))


def test_knowledge_panels_have_a_line_per_channel_and_the_all_facts_diagonal(best):
    fig = knowledge_figure(best)
    assert [ax.get_title() for ax in fig.axes] == ["mamba2", "transformer"]
    ax = fig.axes[1]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert bars["memory 2^16 (66 kFLOP/tok)"].lines[0].get_xydata().tolist() == [[1000, 5500], [4000, pytest.approx(22100)]]
    mlp = bars["MLP (66 kFLOP/tok)"]
    assert mlp.lines[0].get_xydata().tolist() == [[1000, 5000], [4000, pytest.approx(5100)]]
    (segments,) = mlp.lines[2]  # ± one std (100) at 4000 facts, none at 1000 (one seed)
    assert [seg[:, 1].tolist() for seg in segments.get_segments()][1] == [pytest.approx(5000), pytest.approx(5200)]
    diagonal = next(line for line in ax.get_lines() if line.get_label() == "all facts")
    assert diagonal.get_xydata().tolist() == [[1000, 6000], [4000, 24000]]


def test_capacity_is_each_channels_plateau_against_parameters_with_a_2_bits_reference(best):
    ax = capacity_bits_figure(best).axes[0]
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    # the MLP's plateau (5100 ± 100 at 4000 facts) and the 2^16 table's (22100)
    assert bars["transformer (66 kFLOP/tok)"].lines[0].get_xydata().tolist() == [
        [35_000, pytest.approx(5100)],
        [2_100_000, pytest.approx(22100)],
    ]
    reference = next(line for line in ax.get_lines() if line.get_label() == "2 bits / parameter")
    assert reference.get_xydata().tolist() == [[35_000, 70_000], [2_100_000, 4_200_000]]


def test_summary_lists_the_knowledge_columns_and_table_sizes(best):
    rows = [r for cell in best for r in cell["runs"]]
    header = summary_markdown(rows).split("## facts_4000")[1].splitlines()[2]
    for column in ("slots", "knowledge_bits", "bits_per_parameter", "bits_per_channel_parameter", "bits_per_kflop", "exposures"):
        assert f" {column} " in header
    assert "22.1k ± 100" in summary_markdown(rows)  # human units
