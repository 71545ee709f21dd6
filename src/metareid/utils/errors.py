"""Errors that end a command with a message instead of a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
Function = TypeVar("Function", bound=Callable[..., Any])


class ConfigValueError(ValueError):
    """A config value has the wrong type or range; the message names the key and the fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message already says what went wrong and how to fix it."""
    # Imported here: the modules import Lightning, which the error helpers should not need.
    from metareid.callbacks.non_finite import NonFiniteTrainingError
    from metareid.checkpoints import CheckpointError
    from metareid.data.reid.image_check import UndecodableImagesError
    from metareid.evaluation.guards import NonFiniteFeaturesError

    return (
        CheckpointError,
        ConfigValueError,
        FileNotFoundError,
        NonFiniteFeaturesError,
        NonFiniteTrainingError,
        UndecodableImagesError,
    )


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def exit_on_user_error(main: Function) -> Function:
    """Wrap a Hydra ``main``: a user error is logged as ``error: <message>`` and the process
    exits with status 1 (Hydra would print a traceback around the same message). In a ``-m``
    sweep the error is raised as it is: one failed trial must not end the sweep."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except user_errors() as error:
            if _in_multirun():
                raise  # a failed sweep job, reported by the sweeper; the sweep goes on
            log.error("error: %s", error)
            raise SystemExit(1) from None

    return wrapped  # type: ignore[return-value]
