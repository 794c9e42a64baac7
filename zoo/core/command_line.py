"""Bad input on a memzoo command line ends in one message and exit code 2, not a traceback: a key
that does not exist (with the nearest existing keys, not Hydra's ``+key`` that would add the typo),
a value of the wrong type, or a value memzoo's checks refuse (their ``ValueError`` names the key,
the value and what is allowed). ``HYDRA_FULL_ERROR=1`` raises instead, traceback and all."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn, TypeVar

from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

COMPOSITION_ERRORS = (HydraException, OmegaConfBaseException)  # what composing a config with bad overrides raises
USAGE_EXIT = 2  # the exit code of a command-line error, as argparse and the shells use it
T = TypeVar("T")


def full_errors() -> bool:
    """``HYDRA_FULL_ERROR=1``: the user wants the traceback."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_usage(command: str, message: str) -> NoReturn:
    """Print ``<command>: error: <message>`` to stderr and exit with code 2."""
    print(f"{command}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


@contextmanager
def usage_errors(command: str) -> Iterator[None]:
    """A ``ValueError`` inside (memzoo's checks: the key, the value, what is allowed) ends the command
    with ``exit_usage``; under ``HYDRA_FULL_ERROR=1`` it propagates, traceback and all."""
    try:
        yield
    except ValueError as bad:
        if full_errors():
            raise
        exit_usage(command, str(bad))


def config_keys(values: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a config's container (nested mappings flattened; ``hydra`` left out)."""
    keys = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if dotted == "hydra":
            continue
        keys.append(dotted)
        if isinstance(value, dict):
            keys += config_keys(value, f"{dotted}.")
    return keys


def nearest_key(key: str, keys: Sequence[str]) -> str | None:
    """The one of ``keys`` closest to the mistyped ``key`` (difflib's ratio, at least 0.6), or None."""
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return near[0] if near else None


def hydra_flags(argv: Sequence[str]) -> bool:
    """A command line with Hydra's own flags (``--cfg``, ``--help``, ``--multirun``, ...): Hydra runs it."""
    return any(arg.startswith("-") for arg in argv)


def run_composed(
    config_name: str, command: str, argv: Sequence[str], check: Callable[[DictConfig], T], job: Callable[[T], object]
) -> object:
    """Compose ``config_name`` (``zoo/configs``) with the override arguments once, as ``hydra.main``
    would, pass it (less its ``hydra`` node) to ``check``, and run ``job(checked)`` as Hydra's job:
    in the run directory Hydra makes then (``HydraConfig`` set, its ``.hydra/`` record written). A key
    that does not exist or a value the config's type refuses (``composition_error``), or one ``check``
    refuses with a ``ValueError``, exits with code 2 and one message before any directory is made;
    under ``HYDRA_FULL_ERROR=1`` they raise. Returns what ``job`` returned; its exception propagates."""
    from hydra import initialize_config_module
    from hydra._internal.callbacks import Callbacks  # private: Hydra.run builds the same for its run_job
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode

    overrides = list(argv)
    with initialize_config_module(config_module="zoo.configs", version_base="1.3", job_name=config_name):
        app = GlobalHydra.instance().hydra
        try:
            cfg = app.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=True)
            checked = check(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]))
        except COMPOSITION_ERRORS as err:
            if full_errors():
                raise
            exit_usage(command, composition_error(err, config_name, command, overrides))
        except ValueError as bad:  # memzoo's checks: the key, the value, what is allowed
            if full_errors():
                raise
            exit_usage(command, str(bad))
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg))
        context.callbacks.on_run_start(config=cfg, config_name=config_name)
        done = run_job(lambda _: job(checked), cfg, job_dir_key="hydra.run.dir", job_subdir_key=None, hydra_context=context)
        context.callbacks.on_run_end(config=cfg, config_name=config_name, job_return=done)
        return done.return_value  # raises the job's exception


def composition_error(err: Exception, config_name: str, command: str, overrides: Sequence[str]) -> str:
    """Hydra's or OmegaConf's error composing ``config_name`` with ``overrides`` as one line: for a key
    that does not exist, the nearest existing key; else the message, led by the override it is
    about. Inside an initialized Hydra (it composes again, without the bad key, to list the keys)."""
    from hydra import compose
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = err.__cause__ if isinstance(err.__cause__, COMPOSITION_ERRORS) else err
    if isinstance(cause, MissingConfigException) and cause.options and cause.missing_cfg_file:
        return _unknown_choice(cause.missing_cfg_file, cause.options, command)
    key = getattr(cause, "full_key", None)
    if not (isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key):
        return _one_message(cause, key, overrides)
    others = [o for o in overrides if _override_key(o) != key]
    try:
        known = config_keys(OmegaConf.to_container(compose(config_name, overrides=others), resolve=False))
    except COMPOSITION_ERRORS:
        known = []
    near = nearest_key(key, known)
    hint = f"; did you mean {near}?" if near else ""
    return f"{key} is not a key of the {command} config{hint} (`{command} --cfg job` prints them all)"


def _unknown_choice(missing: str, options: Sequence[str], command: str) -> str:
    """``backbone/mamaba`` not found among ``options`` -> one line with the nearest choice."""
    group, _, choice = missing.rpartition("/")
    near = difflib.get_close_matches(choice, options, n=1, cutoff=0.6)
    hint = f"; did you mean {group}={near[0]}?" if near else ""
    choices = ", ".join(options)
    return f"{group}={choice} is not a choice of {group}{hint} (choices: {choices}; `{command} --help` lists the groups)"


def _override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``: the config key an override is about."""
    return override.split("=", 1)[0].lstrip("+~")


def _one_message(err: Exception, key: str | None, overrides: Sequence[str]) -> str:
    """OmegaConf's or Hydra's message on one line, led by the override it is about."""
    lines = [line.strip() for line in str(err).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith(("full_key:", "object_type=", "reference_type=")))
    text = text.split(" Config search path:")[0]  # Hydra's list of where it looked, after a missing option
    given = next((o for o in overrides if key and _override_key(o) == key), None)
    return f"{given}: {text}" if given else text
