"""``memzoo-train`` (= ``python -m zoo.training.train``): Hydra config -> ``RunConfig`` -> Lightning fit
+ test -> metrics.json. The run itself is assembled in ``zoo.training.run``."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
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
from zoo.training.resume_config import describe, record_resume, resumed_config, saved_config
from zoo.training.run import check_run_config, fit_and_test
from zoo.training.run_checks import claim_run_dir, remove_stale_temp_files
from zoo.training.signals import RunInterrupted
from zoo.training.stuck_ranks import CollectiveTimeout

__all__ = ["check_run_config", "main", "train"]


def train(cfg: DictConfig, run_dir: str | Path, resumed: dict[str, Any] | None = None, notices: bool = True) -> dict[str, Any]:
    """Fit and test one configuration; writes config.yaml, tb/, checkpoints/ and metrics.json in ``run_dir``.

    Everything that can be checked is checked before any data, model or file is made
    (``check_run_config``). SIGTERM or SIGINT saves checkpoints/last.ckpt at the current step and
    raises ``RunInterrupted``. ``resumed``: ``cfg`` is the run's own saved config (``resume_base``)
    with these changes; config.yaml stays as it is and the changes are recorded beside it.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    run = check_run_config(cfg)  # every value, and the size budget, before any data, model or file is made
    resume = resume_path(run.ckpt, run_dir)
    if notices and rank_zero_only.rank == 0:
        for notice in run.notices:
            print(notice, flush=True)
    config_yaml = None if resumed is not None else OmegaConf.to_yaml(cfg, resolve=True)  # the run's record of its config
    if rank_zero_only.rank != 0:  # the ranks Lightning or torchrun start later share rank 0's directory
        return fit_and_test(run, run_dir, resume, config_yaml, started)
    with exclusive_dir(run_dir):  # one run per directory: a second memzoo-train into it is refused
        claim_run_dir(run_dir, resuming=resume is not None, overwrite=run.overwrite)
        remove_stale_temp_files(run_dir)
        if resumed:
            record_resume(run_dir, resumed, str(run.ckpt))
        return fit_and_test(run, run_dir, resume, config_yaml, started)


def resume_base(cfg: DictConfig, overrides: Sequence[str], run_dir: Path | None) -> tuple[DictConfig, dict[str, Any] | None]:
    """(``cfg``, None), or for a resume (``ckpt=``) in a directory that holds a run's config.yaml,
    (that config with the resume-safe ``overrides`` applied, the changes): ``zoo.training.resume_config``."""
    saved = saved_config(run_dir) if cfg.ckpt is not None and run_dir is not None else None
    if saved is None:
        return cfg, None
    return resumed_config(saved, cfg, overrides)


def run_dir_in(argv: Sequence[str]) -> Path | None:
    """The ``hydra.run.dir=DIR`` a command line names (its last), or None."""
    dirs = [arg.split("=", 1)[1] for arg in argv if arg.startswith("hydra.run.dir=")]
    return Path(dirs[-1]) if dirs else None


def main() -> None:
    """``memzoo-train [OVERRIDE ...]``: a bad key or value ends in one message and exit code 2
    (``zoo.core.command_line``), before Hydra makes a run directory; so does a value memzoo's checks
    refuse (``check_run_config``), and a resume override that would change the saved run."""
    argv = sys.argv[1:]
    check_overrides(
        "train", "memzoo-train", argv, check=lambda cfg: check_run_config(resume_base(cfg, argv, run_dir_in(argv))[0])
    )
    _hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://zoo.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.get()
    run_dir = hydra_config.runtime.output_dir
    quiet_dependencies(verbose=bool(hydra_config.verbose))
    try:
        with usage_errors("memzoo-train"):
            cfg, resumed = resume_base(cfg, list(hydra_config.overrides.task), Path(run_dir))
            if resumed is not None and rank_zero_only.rank == 0:
                print(describe(resumed), file=sys.stderr)
            metrics = train(cfg, run_dir, resumed)
    except RunInterrupted as stopped:  # 143 (SIGTERM) / 130 (SIGINT): a sweep stops here too
        print(f"{stopped}; resume with: memzoo-train hydra.run.dir={run_dir} ckpt=last", file=sys.stderr)
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
