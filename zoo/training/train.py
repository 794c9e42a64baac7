"""``memzoo-train`` (= ``python -m zoo.training.train``): Hydra config -> ``RunConfig`` -> Lightning fit
+ test -> metrics.json. The run itself is assembled in ``zoo.training.run``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from zoo.checkpoint.files import resume_path
from zoo.core.command_line import check_overrides, usage_errors
from zoo.core.dir_lock import exclusive_dir
from zoo.core.io import format_metrics
from zoo.core.quiet import quiet_dependencies
from zoo.training.run import check_run_config, fit_and_test
from zoo.training.run_checks import claim_run_dir, remove_stale_temp_files
from zoo.training.signals import RunInterrupted
from zoo.training.stuck_ranks import CollectiveTimeout

__all__ = ["check_run_config", "main", "train"]


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Fit and test one configuration; writes config.yaml, tb/, checkpoints/ and metrics.json in ``run_dir``.

    Everything that can be checked is checked before any data, model or file is made
    (``check_run_config``). SIGTERM or SIGINT saves checkpoints/last.ckpt at the current step and
    raises ``RunInterrupted``.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    run = check_run_config(cfg)  # every value, and the size budget, before any data, model or file is made
    resume = resume_path(run.ckpt, run_dir)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)  # the run's record of its composed config
    if rank_zero_only.rank != 0:  # the ranks Lightning or torchrun start later share rank 0's directory
        return fit_and_test(run, run_dir, resume, config_yaml, started)
    with exclusive_dir(run_dir):  # one run per directory: a second memzoo-train into it is refused
        claim_run_dir(run_dir, resuming=resume is not None, overwrite=run.overwrite)
        remove_stale_temp_files(run_dir)
        return fit_and_test(run, run_dir, resume, config_yaml, started)


def main() -> None:
    """``memzoo-train [OVERRIDE ...]``: a bad key or value ends in one message and exit code 2
    (``zoo.core.command_line``), before Hydra makes a run directory; so does a value memzoo's checks
    refuse (``check_run_config``)."""
    check_overrides("train", "memzoo-train", sys.argv[1:], check=check_run_config)
    _hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://zoo.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    quiet_dependencies(verbose=bool(HydraConfig.get().verbose))
    try:
        with usage_errors("memzoo-train"):
            metrics = train(cfg, run_dir)
    except RunInterrupted as stopped:  # 143 (SIGTERM) / 130 (SIGINT): a sweep stops here too
        print(f"{stopped}; resume with: memzoo-train ... hydra.run.dir={run_dir} ckpt=last", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except CollectiveTimeout as stuck:
        print(f"{stuck}; the last checkpoint is in {run_dir}/checkpoints (resume with ckpt=last)", file=sys.stderr)
        sys.exit(1)
    if rank_zero_only.rank == 0:
        print(
            f"{format_metrics(metrics['test'])} in {metrics['wall_time_s']:.0f}s ({metrics['params']['total']:,} parameters, "
            f"{metrics['flops_per_token']:,} FLOPs/token); metrics.json in {run_dir}"
        )


if __name__ == "__main__":
    main()
