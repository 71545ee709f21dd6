"""Result tables go to stdout and, under the entry points, into the run's ``<task>.log`` too."""

from __future__ import annotations

import logging

log = logging.getLogger("metareid.results")


def publish_table(text: str) -> None:
    """Print a result table and append it to every log file of the root logger.

    Under ``src/train.py`` / ``src/eval.py`` Hydra gives the root logger a file handler
    (``<run>/<task>.log``); the table goes there directly rather than through logging, so the
    console shows it once, as printed, whatever handlers a notebook or a test harness installed.
    """
    print(text, flush=True)
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (text,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def evaluation_stage(trainer) -> str:
    """``"test"`` for ``trainer.test`` (the final report), ``"val"`` for in-training evaluations:
    the prefix of the logged metrics, so a run's history and its final numbers stay apart."""
    return "test" if trainer.testing else "val"
