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

Determinism: training batches come numbered (:class:`BatchRequest`) and the frames of all their
positions are drawn from one generator seeded with ``(seed, rank, batch number)``
(:meth:`FrameSampler.batch_rng`). The sequences of batch ``b`` are themselves a function of
``(seed, b)`` (``IdentityBatchSampler``), so the frames at each position of batch ``b`` are a pure
function of ``(seed, rank, b, position)``: the same with or without workers, and the same in a
resumed run as in the uninterrupted one (tested in ``tests/data/gait/test_gait_formats.py``).
A sampler called with bare items (``FrameSampler(items)``, no batch number) falls back to one
stream per process seeded from ``(seed, worker_id)``.

Every mode draws the frame positions of a whole batch at once (:meth:`FrameSampler.positions`),
so the packed store gathers a batch with one fancy index, and the pkl tree and the packed store
pick the same frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


def cut_width(width: int) -> int:
    """Columns dropped on each side of a ``width``-wide frame: ``⌊width/64⌋·10`` (64 → 44)."""
    return (width // 64) * 10


def cut_silhouettes(sils: np.ndarray) -> np.ndarray:
    """Drop ``⌊w/64⌋·10`` columns on each side (64 → 44) and scale to [0, 1].

    Args:
        sils: ``uint8 [..., h, w]``.

    Returns:
        ``float32 [..., h, w - 2·⌊w/64⌋·10]``.
    """
    width = sils.shape[-1]
    cut = cut_width(width)
    return sils[..., cut : width - cut].astype(np.float32) / 255.0


@dataclass(frozen=True)
class BatchRequest:
    """What a numbered batch sampler yields: the batch's dataset indices and its global number.

    The number keys the frame draw (:meth:`FrameSampler.batch_rng`), so a batch's frames do not
    depend on which worker collates it or on where a run was resumed.
    """

    number: int
    indices: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.indices)


def frames_to_tensor(frames: np.ndarray, cut: bool, as_uint8: bool = False) -> torch.Tensor:
    """``uint8 [n, s, h, w]`` → float32 in [0, 1], cutting ``⌊w/64⌋·10`` columns per side when
    ``cut`` (frames of the packed store are cut when packed and come with ``cut=False``).

    ``as_uint8`` keeps the 0-255 bytes (a quarter of the float batch to hand from a worker to the
    main process and to the GPU); :func:`silhouettes_to_float` scales them on the device, to the
    same float32 values ``x / 255`` gives here.
    """
    if cut:
        width = frames.shape[-1]
        frames = frames[..., cut_width(width) : width - cut_width(width)]
    out = torch.empty(frames.shape, dtype=torch.uint8 if as_uint8 else torch.float32)
    if get_worker_info() is not None:
        # Written straight into shared memory: the worker then hands the batch to the main
        # process without the extra copy DataLoader would make to move it there.
        out.share_memory_()
    if as_uint8:
        out.numpy()[...] = frames
    else:
        np.divide(frames, np.float32(255.0), out=out.numpy(), dtype=np.float32)
    return out


def silhouettes_to_float(sils: torch.Tensor) -> torch.Tensor:
    """Batch silhouettes as float32 in [0, 1]: uint8 batches (``data.uint8_batches``) are scaled
    where they are (on the GPU after the transfer); float batches pass through."""
    if sils.dtype == torch.uint8:
        return sils.to(torch.float32).div_(255.0)
    return sils


class FrameSampler:
    """Picks the frames of each sequence of a batch and stacks the batch.

    Args:
        sample_type: one of ``SAMPLE_TYPES`` (see the module docstring).
        frames_num_fixed: ``F`` of the ``fixed_*`` modes.
        frames_skip_num: ``S`` of the ordered ``fixed``/``unfixed`` modes.
        frames_num_min, frames_num_max: inclusive range of ``F`` for the ``unfixed_*`` modes.
        frames_all_limit: optional cap on frames per sequence in the ``all_*`` modes.
        seed: base seed of the frame-choice random streams.

    The gait datasets call :meth:`positions` with a whole batch's lengths and gather the frames
    themselves. Called as a collate function with a list of dataset items (dicts with ``sils``
    uint8 ``[T, 64, W]``, ``label``, ``subject``, ``type_index``, ``view_index`` and optionally
    ``index``) it returns

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
        uint8_batches: bool = False,
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
        self.uint8_batches = uint8_batches
        self.reseed(0)

    # -------------------------------------------------------------- randomness
    def reseed(self, worker_id: int) -> None:
        """Restart the per-process fallback stream at ``(seed, worker_id)``."""
        self.worker_id = worker_id
        self.rng = np.random.default_rng([self.seed, worker_id])

    def worker_init_fn(self, worker_id: int) -> None:
        """``DataLoader(worker_init_fn=...)`` hook: give each worker its own fallback stream.

        Runs inside the worker, on the worker's copy of this object. Numbered batches
        (:class:`BatchRequest`) do not use it.
        """
        self.reseed(worker_id)

    def batch_rng(self, batch_number: int, rank: int = 0) -> np.random.Generator:
        """The generator of global batch ``batch_number`` on ``rank``: a pure function of
        ``(seed, rank, batch_number)``."""
        return np.random.default_rng([self.seed, rank, batch_number, 0x6A17])

    @property
    def variable_length(self) -> bool:
        """Whether batches carry ``seq_lens`` (``unfixed_*`` and ``all_*`` modes)."""
        return self.amount != "fixed"

    @property
    def random(self) -> bool:
        """Whether the mode draws anything (``all_*`` modes do not)."""
        return self.amount != "all"

    # ---------------------------------------------------------------- sampling
    def positions(
        self, lengths: Sequence[int] | np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frame indices for a whole batch, drawn row by row from ``rng`` in one vectorised pass.

        Args:
            lengths: frames of each sequence, ``[n]``, all >= 1.
            rng: the batch's generator (default: the per-process stream).

        Returns:
            ``positions`` int64 ``[n, s]`` (frame index within its sequence, ``-1`` past the
            row's count) and ``counts`` int64 ``[n]`` (frames taken per row; ``s = counts.max()``).
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.ndim != 1 or len(lengths) == 0:
            raise ValueError("positions() needs a non-empty 1-D list of sequence lengths")
        if lengths.min() < 1:
            raise ValueError("cannot sample frames from an empty sequence")
        rng = self.rng if rng is None else rng
        n = len(lengths)
        if self.amount == "all":
            counts = (
                lengths
                if self.frames_all_limit is None
                else np.minimum(lengths, self.frames_all_limit)
            )
            columns = np.arange(counts.max())
            return np.where(columns < counts[:, None], columns, -1), counts
        if self.amount == "fixed":
            counts = np.full(n, self.frames_num_fixed, dtype=np.int64)
        else:
            counts = rng.integers(self.frames_num_min, self.frames_num_max + 1, size=n)
        width = int(counts.max())
        columns = np.arange(width)
        if self.order == "unordered":
            positions = self._unordered(lengths, counts, width, rng)
        else:
            positions = self._ordered(lengths, counts, width, rng)
        return np.where(columns < counts[:, None], positions, -1), counts

    def _ordered(
        self, lengths: np.ndarray, counts: np.ndarray, width: int, rng: np.random.Generator
    ) -> np.ndarray:
        # A window of count + S positions starts uniformly in the sequence repeated
        # ceil(window / length) times; with S > 0 a sorted random count-subset of it is kept.
        skip = self.frames_skip_num
        windows = counts + skip
        repeated = lengths * -(-windows // lengths)
        starts = rng.integers(0, repeated - windows + 1)
        window_columns = np.arange(width + skip)
        positions = (starts[:, None] + window_columns) % lengths[:, None]
        if not skip:
            return positions
        keys = rng.random((len(lengths), width + skip))
        keys[window_columns >= windows[:, None]] = np.inf
        kept = np.argsort(keys, axis=1, kind="stable")[:, :width]
        kept = np.where(np.arange(width) < counts[:, None], kept, width + skip)
        kept = np.sort(kept, axis=1)
        return np.take_along_axis(positions, np.minimum(kept, width + skip - 1), axis=1)

    def _unordered(
        self, lengths: np.ndarray, counts: np.ndarray, width: int, rng: np.random.Generator
    ) -> np.ndarray:
        # Without replacement (a random permutation's first `count`) unless the sequence is
        # shorter than `count`; in drawing order.
        longest = int(lengths.max())
        keys = rng.random((len(lengths), longest))
        keys[np.arange(longest) >= lengths[:, None]] = np.inf
        permuted = np.argsort(keys, axis=1, kind="stable")
        if longest < width:
            permuted = np.pad(permuted, ((0, 0), (0, width - longest)))
        with_replacement = rng.integers(0, lengths[:, None], size=(len(lengths), width))
        return np.where((lengths < counts)[:, None], with_replacement, permuted[:, :width])

    def sample_indices(self, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Frame indices (int64 ``[F]``) to take from one sequence of ``length`` frames."""
        positions, counts = self.positions([length], rng)
        return positions[0, : counts[0]]

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        info = get_worker_info()
        if info is not None and info.id != self.worker_id:
            # Safety net for loaders built without ``worker_init_fn``: forked workers would
            # otherwise all replay the parent's stream.
            self.reseed(info.id)
        sequences = [item["sils"] for item in items]
        positions, counts = self.positions([len(sils) for sils in sequences])
        frames = gather_frames(sequences, positions)
        return collate_batch(
            frames_to_tensor(frames, cut=True, as_uint8=self.uint8_batches),
            counts if self.variable_length else None,
            labels=[item["label"] for item in items],
            subjects=[item["subject"] for item in items],
            type_index=[item["type_index"] for item in items],
            view_index=[item["view_index"] for item in items],
            indices=[item["index"] for item in items] if all("index" in i for i in items) else None,
        )

    def collate_rows(
        self,
        frames: np.ndarray,
        counts: np.ndarray,
        *,
        cut: bool,
        labels: np.ndarray,
        annotations: np.ndarray,
        indices: Sequence[int],
    ) -> dict[str, torch.Tensor]:
        """The batch of frames ``uint8 [n, s, h, w]`` chosen for dataset rows whose annotations
        are ``[n, 3]`` (subject, type index, view index): what both gait formats return."""
        return collate_batch(
            frames_to_tensor(frames, cut=cut, as_uint8=self.uint8_batches),
            counts if self.variable_length else None,
            labels=labels,
            subjects=annotations[:, 0],
            type_index=annotations[:, 1],
            view_index=annotations[:, 2],
            indices=indices,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sample_type={self.sample_type!r}, seed={self.seed})"


def gather_frames(sequences: Sequence[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Stack the frames ``positions`` picks from each sequence (pkl path: one array each).

    Args:
        sequences: ``uint8 [T_i, h, w]`` per row.
        positions: int64 ``[n, s]``, ``-1`` = padding (left zero).

    Returns:
        ``uint8 [n, s, h, w]``.
    """
    height, width = sequences[0].shape[1:]
    if any(sils.shape[1:] != (height, width) for sils in sequences):
        raise ValueError(
            f"all sequences of a batch must share the frame size; got "
            f"{sorted({tuple(s.shape[1:]) for s in sequences})}"
        )
    frames = np.zeros((len(sequences), positions.shape[1], height, width), dtype=np.uint8)
    for row, sils in enumerate(sequences):
        valid = positions[row] >= 0
        frames[row, valid] = sils[positions[row, valid]]
    return frames


def collate_batch(
    sils: torch.Tensor,
    counts: np.ndarray | None,
    *,
    labels: Sequence[int],
    subjects: Sequence[int],
    type_index: Sequence[int],
    view_index: Sequence[int],
    indices: Sequence[int] | None,
) -> dict[str, torch.Tensor]:
    """The batch dict of the gait tasks (keys: see :class:`FrameSampler`)."""

    def longs(values: Sequence[int] | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.int64))

    batch = {
        "sils": sils,
        "labels": longs(labels),
        "subjects": longs(subjects),
        "type_index": longs(type_index),
        "view_index": longs(view_index),
    }
    if counts is not None:
        batch["seq_lens"] = longs(counts)
    if indices is not None:
        batch["indices"] = longs(indices)
    return batch
