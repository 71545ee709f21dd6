"""Packed gait store: every frame of a dataset in one memory-mapped uint8 array plus an index.

Layout (written next to the pkl tree, ``<root>/packed/``):

- ``frames.uint8``: raw ``uint8 [N, 64, W']``, the frames of all sequences back to back, already
  cut to the network's width (``W' = W - 2·⌊W/64⌋·10``, 64 → 44) once, in bulk, when packing;
- ``index.json``: format tag and version, ``frame_shape`` ``[64, W']``, ``source_width`` ``W``,
  ``total_frames`` ``N``, the layout name, and per sequence (in the order written; readers sort
  by subject, type, view like the tree): ``subject``, ``type``, ``view``, ``offset`` (first frame
  in ``frames.uint8``), ``length`` (frames) and ``blank`` (every pixel of the uncut frames zero).

Reading a batch is one fancy index into the memory map (``frames[offsets + positions]``), with
no pickle involved, so a shared store cannot carry code either. The store is written into a
temporary folder and renamed into place, so an interrupted packing never leaves a half store
that a loader would take as complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metareid.data.gait.frame_sampling import (
    FrameSampler,
    cut_width,
)
from metareid.utils.progress import track

log = logging.getLogger(__name__)

PACKED_DIR = "packed"
FRAMES_FILE = "frames.uint8"
INDEX_FILE = "index.json"
FORMAT_TAG = "metareid-gait-packed"
FORMAT_VERSION = 1


def packed_dir(root: str | Path) -> Path:
    """Where the packed store of the tree at ``root`` lives."""
    return Path(root) / PACKED_DIR


def has_packed_store(root: str | Path) -> bool:
    """Whether ``root`` holds a (complete) packed store."""
    return (packed_dir(root) / INDEX_FILE).is_file()


def write_packed_store(
    root: str | Path,
    sequences: Iterable[tuple[str, str, str, np.ndarray]],
    layout: str,
    source: str,
    total: int | None = None,
    progress: bool = True,
) -> Path:
    """Pack ``(subject, type, view, uint8 [T, 64, W])`` sequences into ``root/packed``.

    Sequences are written in the order given. Every frame is cut to ``W - 2·⌊W/64⌋·10``
    columns here, once; all sequences must share ``W``.

    Args:
        root: dataset folder (the store goes to ``root/packed``, replacing an older one).
        sequences: the sequences (any iterable; consumed once, streaming to disk).
        layout: gait layout name recorded in the index (``casiab``, ``oumvlp``, ``grew``).
        source: what was packed, for messages (e.g. the tree's path).
        total: number of sequences, for the progress bar (taken from ``len(sequences)`` when
            it has one; otherwise the bar counts without an end).
        progress: draw a progress bar over the sequences.

    Returns:
        The store folder.
    """
    root = Path(root)
    final = packed_dir(root)
    partial = root / f".{PACKED_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    columns: dict[str, list[Any]] = {k: [] for k in ("subject", "type", "view", "offset")}
    columns.update(length=[], blank=[])
    shape: tuple[int, int] | None = None
    source_width = None
    offset = 0
    if total is None and hasattr(sequences, "__len__"):
        total = len(sequences)
    with open(partial / FRAMES_FILE, "wb") as stream:
        for subject, type_name, view, array in track(
            sequences, total, f"Packing {source}", progress
        ):
            name = f"{subject}/{type_name}/{view}"
            if array.dtype != np.uint8 or array.ndim != 3 or len(array) == 0:
                raise ValueError(
                    f"{source}: sequence {name} must be uint8 [T>=1, 64, W], got "
                    f"{array.dtype} {list(array.shape)}"
                )
            if source_width is None:
                source_width = array.shape[2]
            if array.shape[1:] != (64, source_width):
                raise ValueError(
                    f"{source}: sequence {name} has frames {list(array.shape[1:])}, but the first "
                    f"sequence had [64, {source_width}]; a packed store needs one frame size "
                    "(keep using the pkl tree with data.format=pkl)"
                )
            cut = cut_width(source_width)
            frames = np.ascontiguousarray(array[:, :, cut : source_width - cut])
            shape = frames.shape[1:]
            stream.write(frames.tobytes())
            for key, value in (
                ("subject", subject),
                ("type", type_name),
                ("view", view),
                ("offset", offset),
                ("length", len(frames)),
                ("blank", not array.any()),
            ):
                columns[key].append(value)
            offset += len(frames)
    if shape is None:
        shutil.rmtree(partial)
        raise ValueError(f"{source}: no sequence to pack")
    index = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "layout": layout,
        "source": str(source),
        "frame_shape": [int(shape[0]), int(shape[1])],
        "source_width": int(source_width),
        "total_frames": offset,
        "sequences": columns,
    }
    (partial / INDEX_FILE).write_text(json.dumps(index))
    if final.exists():
        stale = root / f".{PACKED_DIR}.old"
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        shutil.rmtree(stale)
    os.replace(partial, final)
    return final


@dataclass(frozen=True)
class PackedIndex:
    """The parsed ``index.json`` of a store (per-sequence arrays aligned with each other)."""

    folder: Path
    layout: str
    frame_shape: tuple[int, int]
    source_width: int
    total_frames: int
    subjects: list[str]
    types: list[str]
    views: list[str]
    offsets: np.ndarray
    lengths: np.ndarray
    blank: np.ndarray


def read_packed_index(folder: str | Path) -> PackedIndex:
    """Read and check ``folder/index.json`` against ``folder/frames.uint8``.

    Raises:
        ValueError: naming the file and what is inconsistent, with the command that rebuilds it.
    """
    folder = Path(folder)
    path = folder / INDEX_FILE
    fix = "rebuild it with `python src/prepare.py <dataset> --pack <root>` (or use data.format=pkl)"
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable packed-store index ({error}); {fix}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT_TAG:
        raise ValueError(f"{path}: not a metareid packed gait index; {fix}")
    if content.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: packed-store version {content.get('version')}, this code reads "
            f"{FORMAT_VERSION}; {fix}"
        )
    try:
        columns = content["sequences"]
        height, width = (int(v) for v in content["frame_shape"])
        total = int(content["total_frames"])
        offsets = np.asarray(columns["offset"], dtype=np.int64)
        lengths = np.asarray(columns["length"], dtype=np.int64)
        blank = np.asarray(columns["blank"], dtype=bool)
        names = [list(map(str, columns[key])) for key in ("subject", "type", "view")]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: malformed packed-store index ({error!r}); {fix}") from None
    count = len(offsets)
    if any(len(column) != count for column in (lengths, blank, *names)):
        raise ValueError(f"{path}: index columns have different lengths; {fix}")
    if height != 64:
        raise ValueError(f"{path}: frames must be 64 rows high, the index says {height}; {fix}")
    ends = np.concatenate([[0], np.cumsum(lengths)])
    if count and (lengths.min() < 1 or not np.array_equal(offsets, ends[:-1]) or ends[-1] != total):
        raise ValueError(f"{path}: sequence offsets/lengths do not tile the {total} frames; {fix}")
    frames_path = folder / FRAMES_FILE
    expected_bytes = total * height * width
    actual = frames_path.stat().st_size if frames_path.is_file() else None
    if actual != expected_bytes:
        found = "missing" if actual is None else f"{actual:,} bytes"
        raise ValueError(
            f"{frames_path}: expected {expected_bytes:,} bytes ({total} frames of {height}x"
            f"{width}), found {found} (truncated or from another packing); {fix}"
        )
    return PackedIndex(
        folder=folder,
        layout=str(content.get("layout")),
        frame_shape=(height, width),
        source_width=int(content.get("source_width", width)),
        total_frames=total,
        subjects=names[0],
        types=names[1],
        views=names[2],
        offsets=offsets,
        lengths=lengths,
        blank=blank,
    )


def open_frames(index: PackedIndex) -> np.ndarray:
    """The store's frames, memory-mapped read-only: ``uint8 [N, 64, W']``."""
    if index.total_frames == 0:
        return np.zeros((0, *index.frame_shape), dtype=np.uint8)
    return np.memmap(
        index.folder / FRAMES_FILE,
        dtype=np.uint8,
        mode="r",
        shape=(index.total_frames, *index.frame_shape),
    )


class PackedFrames:
    """Batch reads from a store: frame positions → one fancy index into the memory map.

    The memory map is opened lazily in each process (a ``DataLoader`` worker opens its own
    instead of receiving a pickled copy of the mapping).
    """

    def __init__(self, index: PackedIndex) -> None:
        self.index = index
        self._frames: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"index": self.index, "_frames": None}

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames = open_frames(self.index)
        return self._frames

    def gather(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Frames of store rows ``rows`` [n] at ``positions`` [n, s] (``-1`` = zero padding).

        Returns:
            ``uint8 [n, s, 64, W']``.
        """
        valid = positions >= 0
        flat = self.index.offsets[rows][:, None] + positions
        if valid.all():
            return self.frames[flat.reshape(-1)].reshape(*positions.shape, *self.index.frame_shape)
        out = np.zeros((*positions.shape, *self.index.frame_shape), dtype=np.uint8)
        out[valid] = self.frames[flat[valid]]
        return out

    def sequence(self, row: int) -> np.ndarray:
        """``uint8 [T, 64, W']`` of store row ``row``."""
        start = int(self.index.offsets[row])
        return np.asarray(self.frames[start : start + int(self.index.lengths[row])])


def read_batch_packed(
    store: PackedFrames,
    rows: np.ndarray,
    annotations: np.ndarray,
    labels: np.ndarray,
    indices: Sequence[int],
    sampler: FrameSampler,
    rng: np.random.Generator | None,
) -> dict[str, torch.Tensor]:
    """A collated batch read from the store (see :class:`FrameSampler` for the keys)."""
    positions, counts = sampler.positions(store.index.lengths[rows], rng)
    frames = store.gather(rows, positions)
    return sampler.collate_rows(
        frames, counts, cut=False, labels=labels, annotations=annotations, indices=indices
    )


class GaitBatches(Dataset):
    """Map-style dataset whose ``__getitems__`` returns a whole collated batch.

    ``DataLoader`` hands a batch sampler's output straight to ``__getitems__``: a
    :class:`~metareid.data.gait.frame_sampling.BatchRequest` (numbered training batch: frames
    drawn from ``sampler.batch_rng(number, rank)``) or a plain list of indices (evaluation, or
    the per-process stream). Use it with ``collate_fn=passthrough_collate``: the batch is
    collated already, inside the worker.

    Args:
        dataset: a :class:`~metareid.data.gait.casiab.GaitDataset` (pkl tree or packed store).
        sampler: the frame sampler.
        rank: this process's rank (part of the frame-draw key).
    """

    def __init__(self, dataset: Any, sampler: FrameSampler, rank: int = 0) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.rank = rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, request: Any) -> dict[str, torch.Tensor]:
        number = getattr(request, "number", None)
        indices = list(getattr(request, "indices", request))
        rng = None if number is None else self.sampler.batch_rng(number, self.rank)
        return self.dataset.read_batch(indices, self.sampler, rng)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])


def passthrough_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``collate_fn`` for :class:`GaitBatches`: the batch is collated already."""
    return batch
