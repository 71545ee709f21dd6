"""CASIA-B silhouette sequences stored as a pkl tree ``root/<id>/<type>/<view>/<file>.pkl``.

Every pkl holds one pickled numpy array ``uint8 [T, 64, 64]`` (the output of the usual OpenGait
pretreatment). The tree is checked against a partition JSON at construction, so a wrong ``root``,
missing subjects or broken files are reported before training starts instead of mid-epoch.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

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

SIL_SIZE = 64
PARTITIONS_DIR = Path(__file__).parent / "partitions"
_SPLIT_KEYS = {"train": "TRAIN_SET", "test": "TEST_SET"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


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


def load_partition(partition_file: str | Path) -> Partition:
    """Read ``{"TRAIN_SET": [...], "TEST_SET": [...]}``; ids must be strings of digits."""
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
                '{"TRAIN_SET": ["001", ...], "TEST_SET": [...]}.'
            )
        ids = content[key]
        if not isinstance(ids, list):
            ids_ok, bad = False, [ids]
        else:
            bad = [i for i in ids if not (isinstance(i, str) and i.isdigit())]
            ids_ok = not bad
        if not ids_ok:
            raise ValueError(
                f"Partition file {path}, key {key!r}: subject ids must be a list of digit "
                f'strings such as "001"; bad entries: {bad[:5]}'
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
    """One silhouette sequence on disk."""

    subject: str
    type: str
    view: str
    path: Path


def read_silhouettes(path: Path) -> np.ndarray:
    """Load and check one pkl; raises ``ValueError`` naming the file when it is unusable.

    Returns:
        ``uint8 [T, 64, 64]`` with ``T >= 1``.
    """
    try:
        with open(path, "rb") as handle:
            array = pickle.load(handle)
    except EOFError as error:
        raise ValueError(f"{path}: empty or truncated pkl file") from error
    except Exception as error:  # any unpickling failure means the same thing to the user
        raise ValueError(f"{path}: cannot unpickle ({type(error).__name__}: {error})") from error
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected a pickled numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: expected dtype uint8, got {array.dtype}")
    if array.ndim != 3 or array.shape[1:] != (SIL_SIZE, SIL_SIZE):
        raise ValueError(f"{path}: expected shape [T, 64, 64], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError(f"{path}: sequence has no frames")
    return array


class TreeLayoutError(ValueError):
    """The directory tree does not have the ``root/<id>/<type>/<view>/*.pkl`` depth."""


def _visible_children(path: Path) -> list[Path]:
    return sorted(child for child in path.iterdir() if not child.name.startswith("."))


def _diagnose_missing_root(root: Path, wanted: tuple[str, ...], partition_file: Path) -> str:
    """Explain why no partition id was found directly under ``root``."""
    children = _visible_children(root)
    dirs = [c for c in children if c.is_dir()]
    names = {c.name for c in dirs}
    expected = "root/<id>/<type>/<view>/<file>.pkl"
    if names & set(TYPES):
        return (
            f"root={root} contains condition directories {sorted(names & set(TYPES))[:3]}: it "
            f"points at one subject, one level too low. Set root to {root.parent} (layout "
            f"{expected})."
        )
    if any(c.suffix == ".pkl" for c in children):
        return (
            f"root={root} contains .pkl files directly: it points at a single view directory, "
            f"three levels too low. Set root to {root.parent.parent.parent} (layout {expected})."
        )
    for child in dirs:
        if child.name in VIEWS and any(p.suffix == ".pkl" for p in child.iterdir()):
            return (
                f"root={root} contains view directories with .pkl files: it points at one "
                f"condition of one subject, two levels too low. Set root to {root.parent.parent} "
                f"(layout {expected})."
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
        f"exists under root={root} (found {sample}). Check root (layout {expected}) and "
        "partition_file."
    )


class CasiaBDataset(Dataset):
    """Sequences of one split of a CASIA-B pkl tree.

    Args:
        root: directory with one sub-directory per subject id.
        partition_file: partition JSON path, or the name of a bundled one
            (``CASIA-B_include_005.json``, ``CASIA-B.json``).
        split: ``"train"`` or ``"test"``.
        strict: raise on the first unusable pkl (``ValueError`` naming it); when ``False``,
            unusable sequences are left out and listed in ``skipped`` as ``(path, reason)``.
        cache: keep every sequence in memory after its first load.
        validate: load every pkl at construction (so ``__getitem__`` cannot fail mid-epoch);
            with ``False`` only the tree is checked and a bad file raises when it is loaded.
        expected_types, expected_views: the sequences each subject should have; absent ones
            are reported in ``missing_sequences``. ``None``: every condition/view directory
            name met anywhere in the split (all of CASIA-B for a real tree, the rendered subset
            for a synthetic one).

    Attributes:
        samples: ``SequenceRecord`` per sequence, sorted by (subject, type, view).
        label_set: sorted subject ids present; ``labels[i]`` indexes into it.
        indices_by_label: label index -> list of sample indices.
        missing_ids: partition ids of this split with no directory under ``root``.
        missing_sequences: ``(subject, type, view)`` absent or with an empty view directory.
        skipped: ``(path, reason)`` of sequences left out (``strict=False`` only).
    """

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
    ) -> None:
        self.root = Path(root)
        self.partition_file = resolve_partition_file(partition_file)
        self.split = split
        self.strict = strict
        self.cache = cache
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Dataset root {self.root} does not exist or is not a directory"
            )
        wanted = load_partition(self.partition_file).ids(split)
        self.skipped: list[tuple[Path, str]] = []
        self._cached: dict[int, np.ndarray] = {}
        records = self._scan(wanted, expected_types, expected_views)
        self._set_records(records)
        self._report()
        if validate:
            self.validate()

    # ------------------------------------------------------------------ scanning
    def _skip_or_raise(self, path: Path, reason: str) -> None:
        if self.strict:
            raise ValueError(f"{path}: {reason} (pass strict=False to skip such sequences)")
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
            raise TreeLayoutError(_diagnose_missing_root(self.root, wanted, self.partition_file))
        records = []
        found: dict[str, set[tuple[str, str]]] = {subject: set() for subject in present}
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
        types = set(seen_types if expected_types is None else expected_types)
        views = set(seen_views if expected_views is None else expected_views)
        self.missing_sequences: list[tuple[str, str, str]] = [
            (subject, t, v)
            for subject in present
            for t in TYPES
            if t in types
            for v in VIEWS
            if v in views and (t, v) not in found[subject]
        ]
        return records

    def _check_type_dir(self, type_dir: Path) -> None:
        if type_dir.suffix == ".pkl":
            raise TreeLayoutError(
                f"{type_dir}: a .pkl file right below a subject directory. root={self.root} "
                "probably points at a condition directory (e.g. .../001/nm-01, two levels too "
                f"low, whose view names look like subject ids); set root to "
                f"{self.root.parent.parent} (layout root/<id>/<type>/<view>/<file>.pkl)"
            )
        if type_dir.is_file():
            raise TreeLayoutError(
                f"{type_dir}: a file where a condition directory (e.g. nm-01) was expected; the "
                "layout must be root/<id>/<type>/<view>/<file>.pkl"
            )
        if type_dir.name not in TYPES:
            hint = (
                " It looks like a view directory: the condition level is missing."
                if type_dir.name in VIEWS
                else ""
            )
            raise TreeLayoutError(
                f"{type_dir}: {type_dir.name!r} is not a CASIA-B condition {list(TYPES)}.{hint} "
                "The layout must be root/<id>/<type>/<view>/<file>.pkl"
            )

    def _scan_view_dir(self, subject: str, type_name: str, view_dir: Path) -> SequenceRecord | None:
        if view_dir.is_file() or view_dir.name not in VIEWS:
            raise TreeLayoutError(
                f"{view_dir}: expected a view directory named one of {list(VIEWS)}; the layout "
                "must be root/<id>/<type>/<view>/<file>.pkl"
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
                "silhouettes. Run the pretreatment first (one uint8 [T, 64, 64] pkl per view "
                "directory) and point root at its output."
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

    def _set_records(self, records: list[SequenceRecord]) -> None:
        self.samples = records
        self.label_set = sorted({r.subject for r in records})
        position = {subject: i for i, subject in enumerate(self.label_set)}
        self.labels = [position[r.subject] for r in records]
        self.indices_by_label: dict[int, list[int]] = {i: [] for i in range(len(self.label_set))}
        for index, label in enumerate(self.labels):
            self.indices_by_label[label].append(index)

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
        kept = []
        arrays = {}
        for record in self.samples:
            try:
                array = read_silhouettes(record.path)
            except ValueError as error:
                if self.strict:
                    raise ValueError(
                        f"{error} (pass strict=False to skip such sequences)"
                    ) from None
                self.skipped.append((record.path, str(error)))
                continue
            if self.cache:
                arrays[len(kept)] = array
            kept.append(record)
        self._set_records(kept)
        self._cached = arrays
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
        """``uint8 [T, 64, 64]`` of sequence ``index``."""
        if index in self._cached:
            return self._cached[index]
        array = read_silhouettes(self.samples[index].path)
        if self.cache:
            self._cached[index] = array
        return array

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sequence: ``sils`` uint8 [T, 64, 64] plus its integer annotations.

        ``label`` indexes ``label_set``; ``subject`` is the id as an int (``"075"`` -> 75);
        ``type_index``/``view_index`` index ``TYPES``/``VIEWS``; ``index`` echoes the argument
        so that evaluation can restore dataset order after sharding across ranks.
        """
        record = self.samples[index]
        return {
            "sils": self.load(index),
            "label": self.labels[index],
            "subject": int(record.subject),
            "type_index": TYPES.index(record.type),
            "view_index": VIEWS.index(record.view),
            "index": index,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"sequences={len(self)}, subjects={len(self.label_set)}, "
            f"missing_ids={len(self.missing_ids)}, skipped={len(self.skipped)})"
        )
