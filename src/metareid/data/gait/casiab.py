"""Gait silhouette sequences stored as a pkl tree ``root/<id>/<type>/<view>/<file>.pkl``.

Every pkl holds one pickled numpy array ``uint8 [T, 64, W]`` (the output of the usual OpenGait
pretreatment; ``W = 64`` for CASIA-B and OU-MVLP). The tree is checked against a partition JSON
at construction, so a wrong ``root``, missing subjects or broken files are reported before
training starts instead of mid-epoch.

Three datasets share the layout and differ in what the levels hold, described by a
:class:`GaitLayout`:

* ``casiab``: ids ``001``..``124``, the 10 walking conditions, 11 views ``000``..``180``;
* ``oumvlp``: ids ``00001``..``10307``, sequences ``00``/``01``, 14 views ``000``..``090``,
  ``180``..``270``;
* ``grew``: ids ``00001train`` (training), ``00001`` (test gallery) and ``probe``; types ``00``
  (training), ``01``/``02`` (the two gallery sequences of a subject), ``03`` (unlabelled probe);
  the view level holds the sequence's own name (GREW has no view annotation).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metareid.data.gait.frame_sampling import (
    FrameSampler,
    gather_frames,
)
from metareid.data.gait.packed import (
    PackedFrames,
    has_packed_store,
    packed_dir,
    read_batch_packed,
    read_packed_index,
)
from metareid.data.gait.safe_pickle import load_silhouette_pickle

log = logging.getLogger(__name__)

#: The 10 walking conditions of CASIA-B, in the order ``type_index`` refers to.
TYPES: tuple[str, ...] = (
    "nm-01",
    "nm-02",
    "nm-03",
    "nm-04",
    "nm-05",
    "nm-06",
    "bg-01",
    "bg-02",
    "cl-01",
    "cl-02",
)
#: The 11 camera views (degrees, zero-padded), in the order ``view_index`` refers to.
VIEWS: tuple[str, ...] = tuple(f"{angle:03d}" for angle in range(0, 181, 18))
#: Evaluation protocol: gallery conditions and the three probe sets.
GALLERY_TYPES: tuple[str, ...] = ("nm-01", "nm-02", "nm-03", "nm-04")
PROBE_TYPES: dict[str, tuple[str, ...]] = {
    "NM": ("nm-05", "nm-06"),
    "BG": ("bg-01", "bg-02"),
    "CL": ("cl-01", "cl-02"),
}

#: OU-MVLP: two walks per subject and view, 14 views (0-90 and 180-270 degrees, step 15).
OUMVLP_TYPES: tuple[str, ...] = ("00", "01")
OUMVLP_VIEWS: tuple[str, ...] = tuple(
    f"{angle:03d}" for angle in (*range(0, 91, 15), *range(180, 271, 15))
)
#: GREW sequence types: training, first and second gallery sequence, unlabelled probe.
GREW_TYPES: tuple[str, ...] = ("00", "01", "02", "03")

SIL_SIZE = 64
PARTITIONS_DIR = Path(__file__).parent / "partitions"
PARTITION_NAME = "partition.json"
_SPLIT_KEYS = {"train": "TRAIN_SET", "test": "TEST_SET"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
#: ``data.format`` values: the packed store when ``root/packed`` exists, else the pkl tree.
FORMATS = ("auto", "packed", "pkl")


@dataclass(frozen=True)
class GaitLayout:
    """What the levels of one dataset's pkl tree hold.

    Attributes:
        name: key in ``GAIT_LAYOUTS`` (``casiab``, ``oumvlp``, ``grew``).
        title: dataset name used in messages.
        types: sequence-type directory names; ``type_index`` indexes this tuple.
        views: view directory names, ``view_index`` indexes this tuple; ``None`` when the level
            holds free-form names (GREW's sequence ids): ``view_index`` then indexes the sorted
            names of the split (``GaitDataset.views``) and carries no meaning across splits.
        id_pattern: regular expression every partition id must match in full.
        id_example: an id shown in error messages.
        integer_ids: the batch's ``subjects`` are ``int(id)`` (all-digit ids); otherwise the
            position of the id in the sorted ids of the partition (train and test together).
        frame_width: expected silhouette width ``W``; ``None`` accepts any width.
        default_partition: bundled partition used when none is given and ``root`` has no
            ``partition.json``; ``None``: the partition must be given or written by prepare.
        view_word: what the view level is called in messages.
    """

    name: str
    title: str
    types: tuple[str, ...]
    views: tuple[str, ...] | None
    id_pattern: str
    id_example: str
    integer_ids: bool
    frame_width: int | None = SIL_SIZE
    default_partition: str | None = None
    view_word: str = "view"

    def id_is_valid(self, subject: object) -> bool:
        return isinstance(subject, str) and re.fullmatch(self.id_pattern, subject) is not None


CASIAB_LAYOUT = GaitLayout(
    name="casiab",
    title="CASIA-B",
    types=TYPES,
    views=VIEWS,
    id_pattern=r"\d+",
    id_example="001",
    integer_ids=True,
    default_partition="CASIA-B_include_005.json",
)
OUMVLP_LAYOUT = GaitLayout(
    name="oumvlp",
    title="OU-MVLP",
    types=OUMVLP_TYPES,
    views=OUMVLP_VIEWS,
    id_pattern=r"\d+",
    id_example="00001",
    integer_ids=True,
)
GREW_LAYOUT = GaitLayout(
    name="grew",
    title="GREW",
    types=GREW_TYPES,
    views=None,
    # Training subjects carry a "train" suffix; all probe sequences sit under the id "probe".
    id_pattern=r"\d+(train)?|probe",
    id_example="00001train",
    integer_ids=False,
    # GREW frames are stored as released (no CASIA-B alignment), whatever their width.
    frame_width=None,
    view_word="sequence",
)
GAIT_LAYOUTS: dict[str, GaitLayout] = {
    layout.name: layout for layout in (CASIAB_LAYOUT, OUMVLP_LAYOUT, GREW_LAYOUT)
}


def get_layout(layout: str | GaitLayout) -> GaitLayout:
    """The layout of that name (or the layout itself)."""
    if isinstance(layout, GaitLayout):
        return layout
    if layout not in GAIT_LAYOUTS:
        raise ValueError(f"Unknown gait layout {layout!r}; choose one of {sorted(GAIT_LAYOUTS)}")
    return GAIT_LAYOUTS[layout]


@dataclass(frozen=True)
class Partition:
    """Subject ids (strings such as ``"001"``) of the training and test splits."""

    train: tuple[str, ...]
    test: tuple[str, ...]

    def ids(self, split: str) -> tuple[str, ...]:
        if split not in _SPLIT_KEYS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.train if split == "train" else self.test


def resolve_partition_file(partition_file: str | Path) -> Path:
    """An existing path as given, else a bundled partition of the same file name."""
    path = Path(partition_file)
    if path.is_file():
        return path
    bundled = PARTITIONS_DIR / path.name
    if bundled.is_file():
        return bundled
    names = sorted(p.name for p in PARTITIONS_DIR.glob("*.json"))
    raise FileNotFoundError(
        f"Partition file {str(partition_file)!r} not found; give an existing path or one of the "
        f"bundled partitions {names}."
    )


def find_partition_file(
    root: str | Path, partition_file: str | Path | None, layout: str | GaitLayout = "casiab"
) -> Path:
    """The partition JSON to use for a tree.

    ``partition_file`` when given (a path, or the name of a bundled partition); otherwise
    ``root/partition.json`` (written by ``src/prepare.py``), else the layout's bundled default.
    """
    layout = get_layout(layout)
    if partition_file is not None:
        return resolve_partition_file(partition_file)
    local = Path(root) / PARTITION_NAME
    if local.is_file():
        return local
    if layout.default_partition is not None:
        return PARTITIONS_DIR / layout.default_partition
    raise FileNotFoundError(
        f"No partition for the {layout.title} tree {root}: it has no {PARTITION_NAME}. Prepare it "
        f"with `python src/prepare.py {layout.name} --raw <release> --out {root}` (which writes "
        f"{PARTITION_NAME}) or give the partition JSON (OpenGait's file works) as partition_file."
    )


def load_partition(partition_file: str | Path, layout: str | GaitLayout = "casiab") -> Partition:
    """Read ``{"TRAIN_SET": [...], "TEST_SET": [...]}``; ids must match ``layout.id_pattern``
    (strings of digits for CASIA-B and OU-MVLP)."""
    layout = get_layout(layout)
    path = resolve_partition_file(partition_file)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"Partition file {path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(
            f"Partition file {path} must hold an object with keys TRAIN_SET and TEST_SET."
        )
    splits = {}
    for split, key in _SPLIT_KEYS.items():
        if key not in content:
            raise ValueError(
                f"Partition file {path} has no key {key!r} (found {sorted(content)}); expected "
                f'{{"TRAIN_SET": ["{layout.id_example}", ...], "TEST_SET": [...]}}.'
            )
        ids = content[key]
        bad = [ids] if not isinstance(ids, list) else [i for i in ids if not layout.id_is_valid(i)]
        if bad:
            raise ValueError(
                f"Partition file {path}, key {key!r}: {layout.title} subject ids must be a list of "
                f"strings matching {layout.id_pattern!r} such as {layout.id_example!r}; bad "
                f"entries: {bad[:5]}"
            )
        splits[split] = tuple(ids)
    overlap = sorted(set(splits["train"]) & set(splits["test"]))
    if overlap:
        raise ValueError(
            f"Partition file {path}: ids in both TRAIN_SET and TEST_SET: {overlap[:10]}"
        )
    return Partition(train=splits["train"], test=splits["test"])


@dataclass(frozen=True)
class SequenceRecord:
    """One silhouette sequence on disk: its pkl, or (packed store) its row in the index."""

    subject: str
    type: str
    view: str
    path: Path
    row: int | None = None

    @property
    def name(self) -> str:
        return f"{self.subject}/{self.type}/{self.view}"


def resolve_format(root: str | Path, format: str) -> str:
    """``"packed"`` or ``"pkl"`` for ``data.format`` (``auto``: packed when ``root/packed``
    holds a store)."""
    if format not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {format!r}")
    if format == "auto":
        return "packed" if has_packed_store(root) else "pkl"
    if format == "packed" and not has_packed_store(root):
        raise FileNotFoundError(
            f"data.format=packed but {packed_dir(root)} holds no packed store. Build it with "
            f"`python src/prepare.py <dataset> --pack {root}`, or set data.format=auto/pkl."
        )
    return format


def read_silhouettes(path: Path, frame_width: int | None = SIL_SIZE) -> np.ndarray:
    """Load and check one pkl; raises ``ValueError`` naming the file when it is unusable.

    Args:
        path: the pkl file.
        frame_width: expected width ``W``; ``None`` accepts any.

    Returns:
        ``uint8 [T, 64, W]`` with ``T >= 1``.
    """
    array = load_silhouette_pickle(path)
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected a pickled numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: expected dtype uint8, got {array.dtype}")
    width_ok = array.ndim == 3 and (frame_width is None or array.shape[2] == frame_width)
    if not width_ok or array.shape[1] != SIL_SIZE:
        width = "W" if frame_width is None else str(frame_width)
        raise ValueError(f"{path}: expected shape [T, 64, {width}], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError(f"{path}: sequence has no frames")
    return array


class TreeLayoutError(ValueError):
    """The directory tree does not have the ``root/<id>/<type>/<view>/*.pkl`` depth."""


def _visible_children(path: Path) -> list[Path]:
    return sorted(child for child in path.iterdir() if not child.name.startswith("."))


def _holds_pkl(folder: Path) -> bool:
    return any(p.suffix == ".pkl" for p in folder.iterdir())


def _diagnose_missing_root(
    root: Path, wanted: tuple[str, ...], partition_file: Path, layout: GaitLayout
) -> str:
    """Explain why no partition id was found directly under ``root``."""
    children = _visible_children(root)
    dirs = [c for c in children if c.is_dir()]
    names = {c.name for c in dirs}
    expected = "root/<id>/<type>/<view>/<file>.pkl"
    if names & set(layout.types):
        return (
            f"root={root} contains {layout.title} sequence-type directories "
            f"{sorted(names & set(layout.types))[:3]}: it points at one subject, one level too "
            f"low. Set root to {root.parent} (layout {expected})."
        )
    if any(c.suffix == ".pkl" for c in children):
        return (
            f"root={root} contains .pkl files directly: it points at a single "
            f"{layout.view_word} directory, three levels too low. Set root to "
            f"{root.parent.parent.parent} (layout {expected})."
        )
    for child in dirs:
        named_like_a_view = layout.views is None or child.name in layout.views
        if named_like_a_view and _holds_pkl(child):
            return (
                f"root={root} contains {layout.view_word} directories with .pkl files: it points "
                "at one condition of one subject, two levels too low. Set root to "
                f"{root.parent.parent} (layout {expected})."
            )
    for child in dirs:
        grand = {g.name for g in child.iterdir() if g.is_dir()}
        if grand & set(wanted):
            return (
                f"root={root} holds the subject directories one level further down, in {child}: "
                f"root is one level too high. Set root to {child} (layout {expected})."
            )
    sample = sorted(names)[:5]
    return (
        f"None of the {len(wanted)} subject ids of {partition_file} (e.g. {list(wanted[:3])}) "
        f"exists under root={root} (found {sample}). Check root (layout {expected}), "
        f"partition_file and the dataset layout (now {layout.name!r})."
    )


class GaitDataset(Dataset):
    """Sequences of one split of a CASIA-B, OU-MVLP or GREW pkl tree.

    Args:
        root: directory with one sub-directory per subject id.
        partition_file: partition JSON path, or the name of a bundled one
            (``CASIA-B_include_005.json``, ``CASIA-B.json``); ``None``: ``root/partition.json``
            (written by ``src/prepare.py``), else the layout's bundled default.
        split: ``"train"`` or ``"test"``.
        layout: ``"casiab"``, ``"oumvlp"``, ``"grew"`` or a :class:`GaitLayout`.
        strict: raise on the first unusable pkl (``ValueError`` naming it); when ``False``,
            unusable sequences are left out and listed in ``skipped`` as ``(path, reason)``.
        cache: keep every sequence in memory after its first load.
        validate: load every pkl at construction (so ``__getitem__`` cannot fail mid-epoch);
            with ``False`` only the tree is checked and a bad file raises when it is loaded.
        expected_types, expected_views: the sequences each subject should have; absent ones
            are reported in ``missing_sequences``. ``None``: every type/view directory name met
            anywhere in the split (all of the dataset for a real tree, the rendered subset for
            a synthetic one). Layouts without fixed views (GREW) report only empty directories.
        format: ``"pkl"`` (the tree), ``"packed"`` (the store in ``root/packed``, see
            :mod:`metareid.data.gait.packed`; its frames come cut to ``W'``) or ``"auto"``
            (packed when present).

    Attributes:
        layout: the :class:`GaitLayout`.
        types, views: the names ``type_index`` / ``view_index`` refer to (the layout's, or for
            GREW's free-form view level the sorted names present in this split).
        subject_ids: sorted ids of the whole partition; ``subjects`` of a layout without
            ``integer_ids`` index this tuple.
        samples: ``SequenceRecord`` per sequence, sorted by (subject, type, view).
        label_set: sorted subject ids present; ``labels[i]`` indexes into it.
        indices_by_label: label index -> list of sample indices.
        missing_ids: partition ids of this split with no directory under ``root``.
        missing_sequences: ``(subject, type, view)`` absent or with an empty view directory.
        skipped: ``(path, reason)`` of sequences left out (``strict=False`` only).
        blank_sequences, single_frame_sequences: ``"id/type/view"`` of the sequences whose
            frames are all zero / that have a single frame (``None``: not counted, a pkl tree
            read with ``validate=False``).
    """

    def __init__(
        self,
        root: str | Path,
        partition_file: str | Path | None = None,
        split: str = "train",
        layout: str | GaitLayout = "casiab",
        strict: bool = True,
        cache: bool = False,
        validate: bool = True,
        expected_types: Sequence[str] | None = None,
        expected_views: Sequence[str] | None = None,
        format: str = "pkl",
    ) -> None:
        self.root = Path(root)
        self.layout = get_layout(layout)
        self.split = split
        self.strict = strict
        self.cache = cache
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Dataset root {self.root} does not exist or is not a directory"
            )
        self.partition_file = find_partition_file(self.root, partition_file, self.layout)
        partition = load_partition(self.partition_file, self.layout)
        wanted = partition.ids(split)
        self.subject_ids: tuple[str, ...] = tuple(sorted(partition.train + partition.test))
        self._subject_position = {subject: i for i, subject in enumerate(self.subject_ids)}
        self.types: tuple[str, ...] = self.layout.types
        self.skipped: list[tuple[Path, str]] = []
        self._cached: dict[int, np.ndarray] = {}
        self.format = resolve_format(self.root, format)
        self.store: PackedFrames | None = None
        # Sequences whose frames are all zero / that have one frame; None until counted (a
        # pkl tree is counted by ``validate``, a packed store from its index).
        self.blank_sequences: list[str] | None = None
        self.single_frame_sequences: list[str] | None = None
        if self.format == "packed":
            self.store = PackedFrames(read_packed_index(packed_dir(self.root)))
            records = self._scan_packed(wanted, expected_types, expected_views)
        else:
            records = self._scan(wanted, expected_types, expected_views)
        self.views: tuple[str, ...] = (
            self.layout.views
            if self.layout.views is not None
            else tuple(sorted({r.view for r in records}))
        )
        self._set_records(records)
        self._report()
        if self.store is not None:
            index = self.store.index
            rows = [r.row for r in records]
            self.blank_sequences = [records[i].name for i in np.flatnonzero(index.blank[rows])]
            self.single_frame_sequences = [
                records[i].name for i in np.flatnonzero(index.lengths[rows] == 1)
            ]
        elif validate:
            self.validate()

    # ------------------------------------------------------------------ scanning
    def _skip_or_raise(self, path: Path, reason: str) -> None:
        if self.strict:
            raise ValueError(f"{path}: {reason} (set data.strict=false to skip such sequences)")
        self.skipped.append((path, reason))

    def _scan(
        self,
        wanted: tuple[str, ...],
        expected_types: Sequence[str] | None,
        expected_views: Sequence[str] | None,
    ) -> list[SequenceRecord]:
        present = [i for i in wanted if (self.root / i).is_dir()]
        self.missing_ids = [i for i in wanted if not (self.root / i).is_dir()]
        if not present:
            raise TreeLayoutError(
                _diagnose_missing_root(self.root, wanted, self.partition_file, self.layout)
            )
        records = []
        found: dict[str, set[tuple[str, str]]] = {subject: set() for subject in present}
        empty_dirs: list[tuple[str, str, str]] = []
        seen_types, seen_views = set(), set()
        for subject in present:
            for type_dir in _visible_children(self.root / subject):
                self._check_type_dir(type_dir)
                seen_types.add(type_dir.name)
                for view_dir in _visible_children(type_dir):
                    record = self._scan_view_dir(subject, type_dir.name, view_dir)
                    seen_views.add(view_dir.name)
                    if record is not None:
                        records.append(record)
                        found[subject].add((type_dir.name, view_dir.name))
                    elif not _visible_children(view_dir):
                        empty_dirs.append((subject, type_dir.name, view_dir.name))
        if self.layout.views is None:
            # Free-form view names: nothing to expect beyond the directories that exist.
            self.missing_sequences: list[tuple[str, str, str]] = empty_dirs
            return records
        types = set(seen_types if expected_types is None else expected_types)
        views = set(seen_views if expected_views is None else expected_views)
        self.missing_sequences = [
            (subject, t, v)
            for subject in present
            for t in self.layout.types
            if t in types
            for v in self.layout.views
            if v in views and (t, v) not in found[subject]
        ]
        return records

    def _scan_packed(
        self,
        wanted: tuple[str, ...],
        expected_types: Sequence[str] | None,
        expected_views: Sequence[str] | None,
    ) -> list[SequenceRecord]:
        """The store rows of this split, checked like the tree (ids, type and view names)."""
        index = self.store.index
        where = index.folder / "index.json"
        if index.layout != self.layout.name:
            raise ValueError(
                f"{where}: packed from a {index.layout!r} tree, but data.layout="
                f"{self.layout.name!r}; set the layout or rebuild the store"
            )
        width = self.layout.frame_width
        if width is not None and index.source_width != width:
            raise ValueError(
                f"{where}: frames {index.source_width} wide, {self.layout.title} needs {width}"
            )
        wanted_set = set(wanted)
        on_disk = set(index.subjects)
        self.missing_ids = [i for i in wanted if i not in on_disk]
        if not wanted_set & on_disk:
            raise TreeLayoutError(
                f"None of the {len(wanted)} subject ids of {self.partition_file} (e.g. "
                f"{list(wanted[:3])}) is in the packed store {where} (it holds e.g. "
                f"{sorted(on_disk)[:3]}). Check data.partition_file, or rebuild the store from "
                "the right tree."
            )
        records = []
        found: dict[str, set[tuple[str, str]]] = {s: set() for s in wanted_set & on_disk}
        for row, (subject, type_name, view) in enumerate(
            zip(index.subjects, index.types, index.views, strict=True)
        ):
            if subject not in wanted_set:
                continue
            views = self.layout.views
            if type_name not in self.layout.types or (views is not None and view not in views):
                raise TreeLayoutError(
                    f"{where}: sequence {subject}/{type_name}/{view} is not a {self.layout.title} "
                    f"condition/{self.layout.view_word}; rebuild the store from a valid tree"
                )
            records.append(SequenceRecord(subject, type_name, view, index.folder, row))
            found[subject].add((type_name, view))
        # The directory order of the tree, so that index i is the same sequence in both formats.
        records.sort(key=lambda r: (r.subject, r.type, r.view))
        if self.layout.views is None:
            self.missing_sequences = []
            return records
        types = set(index.types if expected_types is None else expected_types)
        views = set(index.views if expected_views is None else expected_views)
        self.missing_sequences = [
            (subject, t, v)
            for subject in sorted(found)
            for t in self.layout.types
            if t in types
            for v in self.layout.views
            if v in views and (t, v) not in found[subject]
        ]
        return records

    def _check_type_dir(self, type_dir: Path) -> None:
        layout = self.layout
        if type_dir.suffix == ".pkl":
            raise TreeLayoutError(
                f"{type_dir}: a .pkl file right below a subject directory. root={self.root} "
                "probably points at a condition directory (e.g. .../001/nm-01, two levels too "
                f"low, whose view names look like subject ids); set root to "
                f"{self.root.parent.parent} (layout root/<id>/<type>/<view>/<file>.pkl)"
            )
        if type_dir.is_file():
            raise TreeLayoutError(
                f"{type_dir}: a file where a {layout.title} sequence-type directory (e.g. "
                f"{layout.types[0]}) was expected; the layout must be "
                "root/<id>/<type>/<view>/<file>.pkl"
            )
        if type_dir.name not in layout.types:
            looks_like_view = layout.views is not None and type_dir.name in layout.views
            hint = (
                " It looks like a view directory: the condition level is missing."
                if looks_like_view
                else f" Is the dataset layout right (now {layout.name!r})?"
            )
            raise TreeLayoutError(
                f"{type_dir}: {type_dir.name!r} is not a {layout.title} condition "
                f"{list(layout.types)}.{hint} The layout must be "
                "root/<id>/<type>/<view>/<file>.pkl"
            )

    def _scan_view_dir(self, subject: str, type_name: str, view_dir: Path) -> SequenceRecord | None:
        views = self.layout.views
        if view_dir.is_file() or (views is not None and view_dir.name not in views):
            expected = f"named one of {list(views)}" if views is not None else "(not a file)"
            raise TreeLayoutError(
                f"{view_dir}: expected a {self.layout.view_word} directory of {self.layout.title} "
                f"{expected}; the layout must be root/<id>/<type>/<view>/<file>.pkl"
            )
        entries = _visible_children(view_dir)
        subdirs = [e for e in entries if e.is_dir()]
        if subdirs:
            raise TreeLayoutError(
                f"{view_dir} contains directories ({subdirs[0].name}, ...): the tree is one level "
                "too deep; each view directory must directly hold its .pkl file"
            )
        if not entries:
            return None
        pkls = [e for e in entries if e.suffix == ".pkl"]
        others = [e for e in entries if e.suffix != ".pkl"]
        if any(e.suffix.lower() in _IMAGE_SUFFIXES for e in others):
            raise TreeLayoutError(
                f"{view_dir} holds image files ({others[0].name}, ...): this looks like the raw "
                "silhouettes. Run the pretreatment first (`python src/prepare.py "
                f"{self.layout.name} ...`: one uint8 [T, 64, W] pkl per view directory) and "
                "point root at its output."
            )
        if others:
            self._skip_or_raise(others[0], "not a .pkl file in a view directory")
            return None
        if len(pkls) > 1:
            self._skip_or_raise(
                view_dir, f"expected one .pkl per view directory, found {len(pkls)}"
            )
            return None
        return SequenceRecord(subject, type_name, view_dir.name, pkls[0])

    def subject_number(self, subject: str) -> int:
        """The integer a batch's ``subjects`` carries for id ``subject``."""
        if self.layout.integer_ids:
            return int(subject)
        return self._subject_position[subject]

    def _set_records(self, records: list[SequenceRecord]) -> None:
        self.samples = records
        self.label_set = sorted({r.subject for r in records})
        position = {subject: i for i, subject in enumerate(self.label_set)}
        self.labels = [position[r.subject] for r in records]
        self.indices_by_label: dict[int, list[int]] = {i: [] for i in range(len(self.label_set))}
        for index, label in enumerate(self.labels):
            self.indices_by_label[label].append(index)
        # Per-sample integers, looked up once: GREW's view list has one name per sequence.
        type_position = {name: i for i, name in enumerate(self.types)}
        view_position = {name: i for i, name in enumerate(self.views)}
        self._annotations = np.array(
            [
                (self.subject_number(r.subject), type_position[r.type], view_position[r.view])
                for r in records
            ],
            dtype=np.int64,
        ).reshape(len(records), 3)
        self._label_array = np.asarray(self.labels, dtype=np.int64)
        self._rows = np.array([-1 if r.row is None else r.row for r in records], dtype=np.int64)

    def _report(self) -> None:
        if self.missing_ids:
            log.warning(
                "%s split of %s: %d of its subject ids are missing under %s: %s",
                self.split,
                self.partition_file.name,
                len(self.missing_ids),
                self.root,
                ", ".join(self.missing_ids[:20]) + (" ..." if len(self.missing_ids) > 20 else ""),
            )
        if self.missing_sequences:
            per_subject = Counter(s for s, _, _ in self.missing_sequences)
            log.warning(
                "%s split: %d sequences missing (or empty view directories) across %d subjects; "
                "most affected: %s",
                self.split,
                len(self.missing_sequences),
                len(per_subject),
                ", ".join(f"{s} ({n})" for s, n in per_subject.most_common(5)),
            )

    # ---------------------------------------------------------------- validation
    def validate(self) -> list[tuple[Path, str]]:
        """Load every pkl; drop (``strict=False``) or raise on the unusable ones.

        Returns:
            the ``skipped`` list, now including the files found unusable here.
        """
        if self.store is not None:
            return self.skipped  # the index was checked against the frames file on opening
        kept = []
        arrays = {}
        blank, single = [], []
        for record in self.samples:
            try:
                array = read_silhouettes(record.path, self.layout.frame_width)
            except ValueError as error:
                if self.strict:
                    raise ValueError(
                        f"{error} (set data.strict=false to skip such sequences)"
                    ) from None
                self.skipped.append((record.path, str(error)))
                continue
            if self.cache:
                arrays[len(kept)] = array
            if not array.any():
                blank.append(record.name)
            if len(array) == 1:
                single.append(record.name)
            kept.append(record)
        self._set_records(kept)
        self._cached = arrays
        self.blank_sequences, self.single_frame_sequences = blank, single
        if self.skipped:
            log.warning(
                "%s split: skipped %d unusable sequences, e.g. %s",
                self.split,
                len(self.skipped),
                self.skipped[0][1],
            )
        return self.skipped

    # ------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> np.ndarray:
        """``uint8 [T, 64, W]`` of sequence ``index`` (packed store: ``[T, 64, W']``, cut)."""
        if self.store is not None:
            return self.store.sequence(int(self._rows[index]))
        if index in self._cached:
            return self._cached[index]
        array = read_silhouettes(self.samples[index].path, self.layout.frame_width)
        if self.cache:
            self._cached[index] = array
        return array

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sequence: ``sils`` uint8 [T, 64, W] plus its integer annotations.

        ``label`` indexes ``label_set``; ``subject`` is the id as an int (``"075"`` -> 75) for
        digit-id layouts, else its position in ``subject_ids``; ``type_index``/``view_index``
        index ``types``/``views``; ``index`` echoes the argument so that evaluation can restore
        dataset order after sharding across ranks.
        """
        subject, type_index, view_index = (int(v) for v in self._annotations[index])
        return {
            "sils": self.load(index),
            "label": self.labels[index],
            "subject": subject,
            "type_index": type_index,
            "view_index": view_index,
            "index": index,
        }

    def read_batch(
        self,
        indices: Sequence[int],
        sampler: FrameSampler,
        rng: np.random.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sequences ``indices`` with frames chosen by ``sampler`` (from ``rng``), collated.

        The packed store gathers the whole batch with one fancy index; the pkl tree loads one
        pkl per sequence. Both pick the same frames for the same ``rng`` and give the same batch
        (keys: see :class:`~metareid.data.gait.frame_sampling.FrameSampler`).
        """
        chosen = np.asarray(indices, dtype=np.int64)
        annotations = self._annotations[chosen]
        labels = self._label_array[chosen]
        if self.store is not None:
            return read_batch_packed(
                self.store, self._rows[chosen], annotations, labels, indices, sampler, rng
            )
        sequences = [self.load(int(i)) for i in chosen]
        positions, counts = sampler.positions([len(s) for s in sequences], rng)
        frames = gather_frames(sequences, positions)
        return sampler.collate_rows(
            frames, counts, cut=True, labels=labels, annotations=annotations, indices=indices
        )

    def summary(self) -> str:
        """One line for the start-up log: format, counts, and the suspicious sequences."""

        def counted(names: list[str] | None, what: str) -> str:
            if names is None:
                return f"{what}: not counted (validate=false)"
            examples = f" (e.g. {', '.join(names[:3])})" if names else ""
            return f"{what}: {len(names)}{examples}"

        return (
            f"{self.split}: {len(self)} sequences of {len(self.label_set)} subjects from the "
            f"{self.format} {'store' if self.store is not None else 'tree'} under {self.root}, "
            f"partition {self.partition_file}; missing ids: {len(self.missing_ids)}, skipped: "
            f"{len(self.skipped)}, {counted(self.blank_sequences, 'all-blank sequences')}, "
            f"{counted(self.single_frame_sequences, '1-frame sequences')}"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, layout={self.layout.name!r}, "
            f"split={self.split!r}, sequences={len(self)}, subjects={len(self.label_set)}, "
            f"missing_ids={len(self.missing_ids)}, skipped={len(self.skipped)})"
        )


class CasiaBDataset(GaitDataset):
    """A CASIA-B tree: :class:`GaitDataset` with ``layout="casiab"`` and the 74-id partition
    (``CASIA-B_include_005.json``) by default."""

    def __init__(
        self,
        root: str | Path,
        partition_file: str | Path = "CASIA-B_include_005.json",
        split: str = "train",
        strict: bool = True,
        cache: bool = False,
        validate: bool = True,
        expected_types: Sequence[str] | None = None,
        expected_views: Sequence[str] | None = None,
        format: str = "pkl",
    ) -> None:
        super().__init__(
            root,
            partition_file,
            split,
            layout=CASIAB_LAYOUT,
            strict=strict,
            cache=cache,
            validate=validate,
            expected_types=expected_types,
            expected_views=expected_views,
            format=format,
        )


def pack_gait_tree(
    root: str | Path,
    layout: str | GaitLayout = "casiab",
    partition_file: str | Path | None = None,
) -> Path:
    """Write the packed store ``root/packed`` of the pkl tree at ``root``.

    Packs the sequences of every partition id (train and test) present, in the tree's order,
    after the same checks as loading the tree (layout, partition, readable uint8 pkls of the
    layout's width); ids outside the partition are left out.

    Returns:
        The store folder.
    """
    from metareid.data.gait.packed import write_packed_store

    layout = get_layout(layout)
    splits = [
        GaitDataset(root, partition_file, split, layout=layout, validate=False, format="pkl")
        for split in ("train", "test")
    ]
    records = sorted(
        (r for dataset in splits for r in dataset.samples),
        key=lambda r: (r.subject, r.type, r.view),
    )

    def sequences():
        for record in records:
            array = read_silhouettes(record.path, layout.frame_width)
            yield record.subject, record.type, record.view, array

    return write_packed_store(
        root, sequences(), layout=layout.name, source=str(root), total=len(records)
    )
