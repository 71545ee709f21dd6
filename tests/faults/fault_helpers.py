"""Shared pieces of the fault suite: tiny runs driven through the entry points."""

from __future__ import annotations

import os
import subprocess
import sys

from hydra_helpers import REPO

TRAIN = str(REPO / "src" / "train.py")

# Deterministic CPU runs with a checkpoint after every step (callbacks kept to the default
# group's checkpoint + non-finite guard; no progress bar, no LR monitor).
EVERY_STEP_CALLBACKS = [
    "callbacks=none",
    "+callbacks.model_checkpoint._target_=pytorch_lightning.callbacks.ModelCheckpoint",
    "+callbacks.model_checkpoint.dirpath=${paths.output_dir}/checkpoints",
    "+callbacks.model_checkpoint.every_n_train_steps=1",
    "+callbacks.model_checkpoint.save_top_k=-1",
    "+callbacks.model_checkpoint.save_last=true",
    "+callbacks.non_finite._target_=metareid.callbacks.non_finite.NonFiniteGuard",
]


def run_train(
    overrides: list[str], env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess:
    """``python src/train.py <overrides>`` in a subprocess, as a user runs it; ``.stdout`` holds
    its whole output."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    result = subprocess.run(
        [sys.executable, TRAIN, *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # Hydra logs to stdout, tracebacks go to stderr: one stream
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout[-4000:]}")
    return result
