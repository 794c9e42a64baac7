"""The lm_memory grid keeps every memory model's FLOPs per token within 5% of its backbone's MLP
model, trains every main cell on one token budget, and gives each MLP model a dense compute curve."""

import pytest
from hydra import compose, initialize_config_module

from zoo.grid.runner import expand, load_grid
from zoo.model.flops import forward_flops_per_token
from zoo.model.language_model import build_model
from zoo.training.config import RunConfig


@pytest.fixture(scope="module")
def cells():
    return expand(load_grid("lm_memory"))


def test_memory_models_stay_within_5_percent_of_the_mlp_models_flops(cells):
    flops = {}
    with initialize_config_module(config_module="zoo.configs", version_base="1.3"):
        for cell in cells:
            if cell.seed != 0 or cell.study == "mlp_compute":
                continue
            cfg = compose("train", overrides=list(cell.overrides))
            model = build_model(RunConfig.from_hydra(cfg).model)
            flops[(cfg.backbone.name, dict(cell.settings).get("memory.n_keys", "mlp"))] = forward_flops_per_token(
                model, cfg.task.seq_len
            )
    assert {b for b, _ in flops} == {"transformer", "mamba2", "gated_deltanet", "hybrid"}
    for backbone in ("transformer", "mamba2", "gated_deltanet", "hybrid"):
        mlp = flops[(backbone, "mlp")]
        for n_keys in ("128", "256"):
            assert 0.95 * mlp <= flops[(backbone, n_keys)] <= 1.05 * mlp, (backbone, n_keys, flops[(backbone, n_keys)], mlp)


def test_main_cells_share_one_token_budget_and_each_mlp_has_a_compute_curve(cells):
    main = {dict(c.settings)["trainer.max_steps"] for c in cells if c.study in ("mlp", "memory")}
    assert main == {"160"}
    assert {c.seed for c in cells if c.study in ("mlp", "memory")} == {0, 1, 2}
    for backbone in ("transformer", "mamba2", "gated_deltanet", "hybrid"):
        curve = {
            dict(c.settings)["trainer.max_steps"]
            for c in cells
            if c.study == "mlp_compute" and dict(c.settings)["backbone"] == backbone
        }
        assert curve == {"80", "320", "640"}  # 1/2x, 2x, 4x the main budget
