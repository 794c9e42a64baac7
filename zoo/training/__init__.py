"""Training and evaluation with Lightning: the entry points (``train`` = ``memzoo-train``,
``evaluate`` = ``memzoo-eval``), the run's typed config (``config``: ``RunConfig``, parsed once) and
its assembly (``run``), the LightningModule (``lit``), optimizer groups and schedule
(``optim``), metrics, throughput, checkpoints in a run (``checkpoint_io``, ``run_checkpoint``), and
what keeps a run safe: checks before compute (``run_checks``), the run-directory lock (``zoo.core.dir_lock``),
signals, stuck ranks and guards."""
