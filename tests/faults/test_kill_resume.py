"""kill -9 at any moment, during a checkpoint write included, loses nothing.

A tiny CPU run with a checkpoint after every step is killed once after a checkpoint and once in
the middle of writing one (a test-only hook pauses the write half way), resumed each time from
its ``last.ckpt``, and must end with the weights, optimizer state and test metrics of an
uninterrupted run with the same seed, bit for bit.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_helpers import EVERY_STEP_CALLBACKS, TRAIN, run_train

from hydra_helpers import REPO, TINY_GAIT, TINY_REID
from metareid.checkpoint_io import WRITE_DELAY_ENV, WRITE_PAUSE_AFTER
from metareid.checkpoints import load_checkpoint_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _start(overrides: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, TRAIN, *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def _kill_when(process: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _step_checkpoints(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"]


def _final_metrics(output: str) -> dict[str, float]:
    match = re.search(r"Final metrics: (\{.*\})", output)
    assert match, output[-3000:]
    return {k: v for k, v in ast.literal_eval(match.group(1)).items() if k.startswith("test/")}


def _state(path: Path) -> dict:
    checkpoint = load_checkpoint_file(path)
    return {
        "state_dict": checkpoint["state_dict"],
        "optimizer_states": checkpoint["optimizer_states"],
        "lr_schedulers": checkpoint["lr_schedulers"],
        "global_step": checkpoint["global_step"],
        "loops": checkpoint["loops"],
    }


def _assert_identical(resumed, uninterrupted, where: str = "") -> None:
    if isinstance(uninterrupted, torch.Tensor):
        assert torch.equal(resumed, uninterrupted), where
    elif isinstance(uninterrupted, dict):
        assert resumed.keys() == uninterrupted.keys(), where
        for key in uninterrupted:
            _assert_identical(resumed[key], uninterrupted[key], f"{where}/{key}")
    elif isinstance(uninterrupted, list | tuple):
        assert len(resumed) == len(uninterrupted), where
        for index, (a, b) in enumerate(zip(resumed, uninterrupted, strict=True)):
            _assert_identical(a, b, f"{where}[{index}]")
    else:
        assert resumed == uninterrupted, where


def _kill_and_resume(base: list[str], tmp_path: Path, first_kill_after: int) -> None:
    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = run_train([*base, f"paths.output_dir={reference_dir}"], check=True)

    checkpoints = killed_dir / "checkpoints"
    run = [*base, f"paths.output_dir={killed_dir}"]
    resume = [*run, f"ckpt_path={checkpoints / 'last.ckpt'}"]
    # 1. kill -9 right after a checkpoint (with the next step under way).
    process = _start(run)
    _kill_when(
        process,
        lambda: len(_step_checkpoints(checkpoints)) >= first_kill_after,
        f"{first_kill_after} checkpoints",
    )
    # 2. resume, and kill -9 in the middle of the next checkpoint write.
    written = set(_step_checkpoints(checkpoints))
    started_ns = time.time_ns()
    process = _start(resume, env={WRITE_DELAY_ENV: "120"})

    def paused_in_a_write() -> bool:
        """A temporary file of this process (not one the first kill left) is half written."""
        for partial in checkpoints.glob(".*.tmp"):
            try:
                status = partial.stat()
            except FileNotFoundError:  # renamed into place meanwhile
                continue
            if status.st_mtime_ns >= started_ns and status.st_size >= WRITE_PAUSE_AFTER:
                return True
        return False

    _kill_when(process, paused_in_a_write, "a checkpoint write half way")
    assert set(_step_checkpoints(checkpoints)) == written  # nothing incomplete under a real name
    load_checkpoint_file(checkpoints / "last.ckpt")  # the previous last.ckpt, whole
    # 3. resume again, to the end.
    resumed = run_train(resume, check=True)

    assert _final_metrics(resumed.stdout) == _final_metrics(reference.stdout)
    _assert_identical(
        _state(checkpoints / "last.ckpt"), _state(reference_dir / "checkpoints" / "last.ckpt")
    )


DETERMINISTIC = ["trainer.deterministic=true", "logger=[]", "report=false", *EVERY_STEP_CALLBACKS]


def test_gait_run_killed_twice_ends_as_if_never_interrupted(synthetic_gait_root, tmp_path):
    base = [
        *TINY_GAIT,
        f"data.root={synthetic_gait_root}",
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
        *DETERMINISTIC,
    ]
    _kill_and_resume(base, tmp_path, first_kill_after=2)


@pytest.mark.slow
def test_dr50_run_killed_twice_ends_as_if_never_interrupted(tmp_path_factory, tmp_path):
    base = [
        *TINY_REID,
        f"data.synthetic.root={tmp_path_factory.mktemp('synthetic_reid')}",
        "model.initial_basic_steps=2",
        "model.meta_interval=2",
        "trainer.max_epochs=2",
        *DETERMINISTIC,
    ]
    _kill_and_resume(base, tmp_path, first_kill_after=3)
