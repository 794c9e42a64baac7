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
from omegaconf import DictConfig

from zoo.checkpoint.files import resume_path
from zoo.core.command_line import hydra_flags, run_composed, usage_errors
from zoo.core.dir_lock import exclusive_dir
from zoo.core.io import format_metrics
from zoo.core.quiet import quiet_dependencies
from zoo.training.config import RunConfig
from zoo.training.resume_config import describe, record_resume, resumed_config, saved_config
from zoo.training.run import check_run_config, fit_and_test
from zoo.training.run_checks import claim_run_dir, remove_stale_temp_files
from zoo.training.signals import RunInterrupted
from zoo.training.stuck_ranks import CollectiveTimeout

__all__ = ["check_run_config", "main", "train"]


def train(
    run: RunConfig | DictConfig, run_dir: str | Path, resumed: dict[str, Any] | None = None, notices: bool = True
) -> dict[str, Any]:
    """Fit and test one run; writes config.yaml, tb/, checkpoints/ and metrics.json in ``run_dir``.

    ``run``: the checked run (``check_run_config``; a composed config is checked here first): every
    value and the size budget are checked before any data, model or file is made. SIGTERM or SIGINT
    saves checkpoints/last.ckpt at the current step and raises ``RunInterrupted``. ``resumed``: the
    run is the saved config.yaml with these changes (``checked_run``); config.yaml stays as it is and
    the changes are recorded beside it.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    if not isinstance(run, RunConfig):
        run = check_run_config(run)
    resume = resume_path(run.ckpt, run_dir)
    if notices and rank_zero_only.rank == 0:
        for notice in run.notices:
            print(notice, flush=True)
    config_yaml = None if resumed is not None else run.config_yaml  # the run's record of its config
    if rank_zero_only.rank != 0:  # the ranks Lightning or torchrun start later share rank 0's directory
        return fit_and_test(run, run_dir, resume, config_yaml, started)
    with exclusive_dir(run_dir):  # one run per directory: a second memzoo-train into it is refused
        claim_run_dir(run_dir, resuming=resume is not None, overwrite=run.overwrite)
        remove_stale_temp_files(run_dir)
        if resumed:
            record_resume(run_dir, resumed, str(run.ckpt))
        return fit_and_test(run, run_dir, resume, config_yaml, started)


def run_dir_in(argv: Sequence[str]) -> Path | None:
    """The ``hydra.run.dir=DIR`` a command line names (its last), or None."""
    dirs = [arg.split("=", 1)[1] for arg in argv if arg.startswith("hydra.run.dir=")]
    return Path(dirs[-1]) if dirs else None


def checked_run(cfg: DictConfig, overrides: Sequence[str], run_dir: Path | None) -> tuple[RunConfig, dict[str, Any] | None]:
    """The composed config -> (its checked ``RunConfig``, the resume's changes or None): a resume
    (``ckpt=`` in a directory holding a run's config.yaml) checks that saved config with the
    resume-safe ``overrides`` applied (``zoo.training.resume_config``)."""
    saved = saved_config(run_dir) if cfg.ckpt is not None and run_dir is not None else None
    resumed = None
    if saved is not None:
        cfg, resumed = resumed_config(saved, cfg, overrides)
    return check_run_config(cfg), resumed


def main() -> None:
    """``memzoo-train [OVERRIDE ...]``: the config is composed once and checked once
    (``check_run_config``) before Hydra makes the run directory; a bad key or value, or a resume
    override that would change the saved run, ends in one message and exit code 2
    (``zoo.core.command_line``). Hydra's flags (``--help``, ``--cfg``, ``-m``) go to Hydra."""
    argv = sys.argv[1:]
    if hydra_flags(argv):
        _hydra_main()
        return
    run_composed(
        "train", "memzoo-train", argv, lambda cfg: checked_run(cfg, argv, run_dir_in(argv)), lambda checked: _run_job(*checked)
    )


@hydra.main(version_base="1.3", config_path="pkg://zoo.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    """A run Hydra composed (a command line with Hydra's flags: each job of ``-m``), checked here."""
    from hydra.core.hydra_config import HydraConfig

    with usage_errors("memzoo-train"):
        run, resumed = checked_run(cfg, list(HydraConfig.get().overrides.task), Path(HydraConfig.get().runtime.output_dir))
    _run_job(run, resumed)


def _run_job(run: RunConfig, resumed: dict[str, Any] | None) -> None:
    """Train the checked ``run`` in the directory Hydra made for this job; the last line says where."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.get()
    run_dir = hydra_config.runtime.output_dir
    quiet_dependencies(verbose=bool(hydra_config.verbose))
    try:
        if resumed is not None and rank_zero_only.rank == 0:
            print(describe(resumed), file=sys.stderr)
        with usage_errors("memzoo-train"):
            metrics = train(run, run_dir, resumed)
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
