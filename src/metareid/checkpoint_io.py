"""How Lightning writes and reads metareid checkpoints: atomically, and without running code.

``build_run`` hands :class:`AtomicSafeCheckpointIO` to every Trainer, so every ``ModelCheckpoint``
save and every ``trainer.fit/test(ckpt_path=...)`` load goes through it:

* **write**: into a temporary file next to the target, flushed and ``fsync``-ed, then
  ``os.replace``-d over the target (and the folder ``fsync``-ed). A process killed at any moment
  (``kill -9``; tests/faults/test_kill_resume.py) leaves either the previous complete
  ``last.ckpt`` or the new complete one, never a truncated file (the fsyncs carry this over to a
  machine crash as far as the file system honours them); a leftover temporary file is replaced
  by the next save of the same target.
* **read**: :func:`metareid.checkpoints.load_checkpoint_file` with an explicit
  ``weights_only=True`` (Lightning leaves it to torch's default, which
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` or an older torch turns into arbitrary code execution);
  ``trust_pickle=true`` is the only way out. Truncated or corrupt files give a
  :class:`~metareid.checkpoints.CheckpointError` naming the file and the newest loadable
  checkpoint next to it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from metareid.checkpoints import load_checkpoint_file

# Test-only fault injection: seconds to pause after writing half of a checkpoint, so that a test
# can kill the process in the middle of a write. Unset in normal use.
WRITE_DELAY_ENV = "METAREID_TEST_CHECKPOINT_WRITE_DELAY"
# Bytes written (flushed and fsync-ed) before that pause: torch writes a zip in many chunks.
WRITE_PAUSE_AFTER = 4096
TEMPORARY_SUFFIX = ".tmp"


class _PausingWriter:
    """File wrapper that pauses once, after ``pause_after`` bytes (fault-injection tests)."""

    def __init__(self, file, pause_after: int, seconds: float) -> None:
        self.file, self.pause_after, self.seconds = file, pause_after, seconds
        self.written = 0
        self.paused = False

    def write(self, data) -> int:
        count = self.file.write(data)
        self.written += count
        if not self.paused and self.written >= self.pause_after:
            self.paused = True
            self.file.flush()
            os.fsync(self.file.fileno())
            time.sleep(self.seconds)
        return count

    def flush(self) -> None:
        self.file.flush()


def temporary_path(path: Path) -> Path:
    """Where the checkpoint for ``path`` is written before it is renamed into place (a hidden
    file in the same folder: ``os.replace`` is only atomic within one file system)."""
    return path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_torch_save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save(checkpoint, path)`` such that ``path`` is never seen incomplete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    delay = float(os.environ.get(WRITE_DELAY_ENV, 0) or 0)
    with open(temporary, "wb") as file:
        if delay > 0:
            writer = _PausingWriter(file, pause_after=WRITE_PAUSE_AFTER, seconds=delay)
            torch.save(checkpoint, writer)
        else:
            torch.save(checkpoint, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


class AtomicSafeCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes, ``weights_only=True`` reads (see module doc).

    Args:
        trust_pickle: read checkpoints that pickle arbitrary Python objects (runs their
            unpickling code: only for files from a source you trust).
    """

    def __init__(self, trust_pickle: bool = False) -> None:
        super().__init__()
        self.trust_pickle = bool(trust_pickle)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} does not take storage_options; got {storage_options!r}"
            )
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Lightning's own `weights_only` request is ignored: only `trust_pickle` relaxes the load.
        return load_checkpoint_file(
            path, trust_pickle=self.trust_pickle, map_location=map_location or "cpu"
        )
