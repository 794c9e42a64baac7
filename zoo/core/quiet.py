"""Quiet by default: what memzoo's commands print is memzoo's own lines and real warnings, not the
chatter of its dependencies. ``quiet_dependencies`` turns Lightning's informational logging (device
availability, promotional tips, the model summary whose FLOPs column reads 0, "fit stopped" notes)
down to warnings and ignores known warnings that are not the user's to act on; ``verbose`` (a
command's ``hydra.verbose=true`` or ``memzoo-grid -v``) leaves everything as the dependencies set it."""

from __future__ import annotations

import logging
import warnings

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")

# warnings raised inside dependencies, each with why it is not the user's to act on
KNOWN_NOISE = (
    # Lightning's pytree helper calls a torch API that torch 2.13 deprecates, on every step
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # memzoo counts steps, not epochs: a small training set is many short epochs, and metrics are logged by step
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)


def quiet_dependencies(verbose: bool = False) -> None:
    """Lightning's info-level logging off and ``KNOWN_NOISE`` ignored, for this process (a grid's
    job calls it in its worker); nothing when ``verbose``."""
    if verbose:
        return
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
