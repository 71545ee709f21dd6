"""Frame sampling and batch collation for silhouette sequences (OpenGait ``sample_type`` modes).

Modes (``sample_type``):

- ``fixed_ordered``: a clip of ``F = frames_num_fixed`` frames in temporal order. A window of
  ``F + S`` positions (``S = frames_skip_num``) starts at a uniformly random position of the
  sequence repeated end-to-end often enough to hold it (so short sequences wrap around:
  length 7, start 3 gives frames 3,4,5,6,0,1,...); with ``S > 0`` a sorted random ``F``-subset of
  the window is kept.
- ``fixed_unordered``: ``F`` frames drawn uniformly, without replacement unless the sequence is
  shorter than ``F``; in drawing order.
- ``unfixed_ordered`` / ``unfixed_unordered``: as above with ``F`` drawn uniformly from
  ``[frames_num_min, frames_num_max]`` for every sequence.
- ``all_ordered`` / ``all_unordered``: every frame in temporal order (both names, as in the
  reference code), truncated to the first ``frames_all_limit`` frames when that is set.

Sequences of one batch are never concatenated along time: variable-length batches are zero-padded
to the longest sequence and carry ``seq_lens`` so the network can mask the padding.

Determinism: all randomness comes from one ``numpy.random.Generator`` per process, seeded from
``(seed, worker_id)`` (the main process counts as worker 0). Given the seed, the order of batches a
worker collates and ``worker_init_fn`` (or the automatic re-seed on the first call inside a
worker), the frames drawn are reproducible. Workers restarted by a non-persistent ``DataLoader``
restart their streams, so use ``persistent_workers=True`` (or a seed that changes per epoch) when
the same batches would otherwise be collated twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

SAMPLE_TYPES = (
    "fixed_ordered",
    "fixed_unordered",
    "unfixed_ordered",
    "unfixed_unordered",
    "all_ordered",
    "all_unordered",
)


def wrapped_window(length: int, window: int, start: int) -> np.ndarray:
    """Frame indices ``start, start+1, ...`` (``window`` of them) of a sequence of ``length``
    frames repeated end-to-end, i.e. ``(start + arange(window)) % length``."""
    if length < 1:
        raise ValueError("cannot sample frames from an empty sequence")
    return (start + np.arange(window)) % length


def cut_silhouettes(sils: np.ndarray) -> np.ndarray:
    """Drop ``⌊w/64⌋·10`` columns on each side (64 → 44) and scale to [0, 1].

    Args:
        sils: ``uint8 [..., h, w]``.

    Returns:
        ``float32 [..., h, w - 2·⌊w/64⌋·10]``.
    """
    width = sils.shape[-1]
    cut = (width // 64) * 10
    return sils[..., cut : width - cut].astype(np.float32) / 255.0


class FrameSampler:
    """Collate function: picks frames of each sequence and stacks a batch.

    Args:
        sample_type: one of ``SAMPLE_TYPES`` (see the module docstring).
        frames_num_fixed: ``F`` of the ``fixed_*`` modes.
        frames_skip_num: ``S`` of the ordered ``fixed``/``unfixed`` modes.
        frames_num_min, frames_num_max: inclusive range of ``F`` for the ``unfixed_*`` modes.
        frames_all_limit: optional cap on frames per sequence in the ``all_*`` modes.
        seed: base seed of the frame-choice random stream.

    Call with a list of dataset items (dicts with ``sils`` uint8 ``[T, 64, W]``, ``label``,
    ``subject``, ``type_index``, ``view_index`` and optionally ``index``); returns

    - ``sils``: float32 ``[n, s, 64, W - 2·⌊W/64⌋·10]`` in [0, 1] (zero-padded to the longest
      sequence in variable-length modes),
    - ``seq_lens``: int64 ``[n]`` frames per sequence, only in ``unfixed_*`` and ``all_*`` modes,
    - ``labels``, ``subjects``, ``type_index``, ``view_index`` (and ``indices``): int64 ``[n]``.
    """

    def __init__(
        self,
        sample_type: str = "fixed_ordered",
        frames_num_fixed: int = 30,
        frames_skip_num: int = 0,
        frames_num_min: int = 25,
        frames_num_max: int = 50,
        frames_all_limit: int | None = None,
        seed: int = 0,
    ) -> None:
        if sample_type not in SAMPLE_TYPES:
            raise ValueError(f"sample_type must be one of {SAMPLE_TYPES}, got {sample_type!r}")
        if frames_num_fixed < 1 or frames_skip_num < 0:
            raise ValueError("need frames_num_fixed >= 1 and frames_skip_num >= 0")
        if not 1 <= frames_num_min <= frames_num_max:
            raise ValueError(
                f"need 1 <= frames_num_min <= frames_num_max, got {frames_num_min}, "
                f"{frames_num_max}"
            )
        if frames_all_limit is not None and frames_all_limit < 1:
            raise ValueError("frames_all_limit must be None or >= 1")
        self.sample_type = sample_type
        self.amount, self.order = sample_type.split("_")
        self.frames_num_fixed = frames_num_fixed
        self.frames_skip_num = frames_skip_num
        self.frames_num_min = frames_num_min
        self.frames_num_max = frames_num_max
        self.frames_all_limit = frames_all_limit
        self.seed = seed
        self.reseed(0)

    # -------------------------------------------------------------- randomness
    def reseed(self, worker_id: int) -> None:
        """Restart the random stream at ``(seed, worker_id)``."""
        self.worker_id = worker_id
        self.rng = np.random.default_rng([self.seed, worker_id])

    def worker_init_fn(self, worker_id: int) -> None:
        """``DataLoader(worker_init_fn=...)`` hook: give each worker its own stream.

        Runs inside the worker, on the worker's copy of this object (the same copy that is
        used as its ``collate_fn``).
        """
        self.reseed(worker_id)

    @property
    def variable_length(self) -> bool:
        """Whether batches carry ``seq_lens`` (``unfixed_*`` and ``all_*`` modes)."""
        return self.amount != "fixed"

    # ---------------------------------------------------------------- sampling
    def sample_indices(self, length: int) -> np.ndarray:
        """Frame indices (int64 ``[F]``) to take from a sequence of ``length`` frames."""
        if length < 1:
            raise ValueError("cannot sample frames from an empty sequence")
        if self.amount == "all":
            count = length if self.frames_all_limit is None else min(length, self.frames_all_limit)
            return np.arange(count)
        if self.amount == "fixed":
            count = self.frames_num_fixed
        else:
            count = int(self.rng.integers(self.frames_num_min, self.frames_num_max + 1))
        if self.order == "unordered":
            return self.rng.choice(length, size=count, replace=length < count)
        window = count + self.frames_skip_num
        repeated_length = length * math.ceil(window / length)
        start = int(self.rng.integers(0, repeated_length - window + 1))
        positions = wrapped_window(length, window, start)
        if self.frames_skip_num:
            keep = np.sort(self.rng.choice(window, size=count, replace=False))
            positions = positions[keep]
        return positions

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        info = get_worker_info()
        if info is not None and info.id != self.worker_id:
            # Safety net for loaders built without ``worker_init_fn``: forked workers would
            # otherwise all replay the parent's stream.
            self.reseed(info.id)
        clips = [item["sils"][self.sample_indices(len(item["sils"]))] for item in items]
        lengths = [len(clip) for clip in clips]
        height, width = clips[0].shape[1:]
        if any(clip.shape[1:] != (height, width) for clip in clips):
            raise ValueError(
                f"all sequences of a batch must share the frame size; got "
                f"{sorted({tuple(c.shape[1:]) for c in clips})}"
            )
        padded = np.zeros((len(clips), max(lengths), height, width), dtype=np.uint8)
        for row, clip in enumerate(clips):
            padded[row, : len(clip)] = clip
        batch = {
            "sils": torch.from_numpy(cut_silhouettes(padded)),
            "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
            "subjects": torch.tensor([item["subject"] for item in items], dtype=torch.long),
            "type_index": torch.tensor([item["type_index"] for item in items], dtype=torch.long),
            "view_index": torch.tensor([item["view_index"] for item in items], dtype=torch.long),
        }
        if self.variable_length:
            batch["seq_lens"] = torch.tensor(lengths, dtype=torch.long)
        if all("index" in item for item in items):
            batch["indices"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return batch

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sample_type={self.sample_type!r}, seed={self.seed})"
