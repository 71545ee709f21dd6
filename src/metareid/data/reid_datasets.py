"""Person re-identification datasets stored as image folders (Market-1501 layout and relatives).

A dataset object only indexes files: it exposes three lists of :class:`ReIDImage` records
(``train``, ``query``, ``gallery``). Decoding, relabelling and batching live in
:mod:`metareid.data.reid_multisource`.

New formats are added by writing a class with the same three attributes and one line in
:data:`DATASET_FACTORIES`; :func:`load_reid_dataset` is the only lookup, so there is no registry
to import for its side effects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATASET_FACTORIES",
    "IMAGE_SUFFIXES",
    "MARKET_FILENAME_PATTERN",
    "Market1501",
    "ReIDDataset",
    "ReIDImage",
    "SyntheticReID",
    "load_reid_dataset",
    "read_market_style_folder",
]

# Market-1501 names look like ``0002_c1s1_000451_03.jpg``: person id, then ``c`` + camera digit.
# The id group allows a minus sign because junk boxes are stored as ``-1_c1s1_...``.
MARKET_FILENAME_PATTERN = re.compile(r"([-\d]+)_c(\d)")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
JUNK_PID = -1
MARKET_SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


@dataclass(frozen=True)
class ReIDImage:
    """One person crop.

    Attributes:
        path: image file.
        pid: person id as written in the file name (0 marks a Market distractor).
        camid: 0-based camera index within its dataset.
        domain: name of the dataset (domain) the image comes from.
    """

    path: Path
    pid: int
    camid: int
    domain: str


class ReIDDataset:
    """Common shape of every dataset: three lists of :class:`ReIDImage` plus a name.

    Attributes:
        name: domain name written into every record.
        train: training images (junk removed).
        query: query images of the test split (junk removed).
        gallery: gallery images of the test split (junk removed, distractors kept).
        num_skipped: files ignored because their names did not parse (only with ``strict=False``).
    """

    name: str
    train: list[ReIDImage]
    query: list[ReIDImage]
    gallery: list[ReIDImage]
    num_skipped: int = 0

    @property
    def num_train_pids(self) -> int:
        return len({item.pid for item in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({item.camid for item in self.train})

    def summary(self) -> str:
        """One-line description with image and identity counts per split."""

        def split_counts(items: Sequence[ReIDImage]) -> str:
            return f"{len(items)} images / {len({item.pid for item in items})} ids"

        return (
            f"{self.name}: train {split_counts(self.train)}, query {split_counts(self.query)}, "
            f"gallery {split_counts(self.gallery)}"
            + (f" ({self.num_skipped} unparsable files skipped)" if self.num_skipped else "")
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.summary()})"


def read_market_style_folder(
    folder: Path,
    domain: str,
    pattern: re.Pattern[str] = MARKET_FILENAME_PATTERN,
    strict: bool = True,
) -> tuple[list[ReIDImage], int]:
    """Index one folder of crops whose names start with ``<pid>_c<camera>``.

    Cameras are 1-based in the names and 0-based in the records. Junk crops (pid -1) are dropped;
    everything else, including pid 0 distractors, is kept. Files whose suffix is not an image
    suffix (e.g. ``Thumbs.db``) are ignored silently.

    Args:
        folder: directory holding the images (not searched recursively).
        domain: value of :attr:`ReIDImage.domain` for every record.
        pattern: regex whose first two groups are the pid and the 1-based camera.
        strict: raise on an image whose name does not parse; with ``False`` count and skip it.

    Returns:
        The records sorted by file name, and the number of skipped files.
    """
    records: list[ReIDImage] = []
    num_skipped = 0
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        match = pattern.search(path.name)
        camera = int(match.group(2)) if match else 0
        if match is None or camera < 1:
            if strict:
                raise ValueError(
                    f"{path}: file name does not follow the Market-1501 pattern "
                    f"'<pid>_c<camera 1-9>...' (regex {pattern.pattern!r}, e.g. "
                    "0002_c1s1_000451_03.jpg). Rename or remove the file, or pass strict=False "
                    "to skip such files."
                )
            num_skipped += 1
            continue
        pid = int(match.group(1))
        if pid == JUNK_PID:
            continue
        records.append(ReIDImage(path=path, pid=pid, camid=camera - 1, domain=domain))
    return records, num_skipped


class Market1501(ReIDDataset):
    """Market-1501 (or any dataset written in its layout).

    ``root`` may be the folder that holds ``bounding_box_train/``, ``query/`` and
    ``bounding_box_test/`` directly, or the folder one level above that contains
    ``Market-1501-v15.09.15/``.

    Args:
        root: dataset folder, see above.
        name: domain name stored in every record (default ``market1501``).
        strict: raise on unparsable file names; ``False`` counts them in ``num_skipped``.
    """

    inner_folder = "Market-1501-v15.09.15"
    default_name = "market1501"

    def __init__(self, root: str | Path, name: str | None = None, strict: bool = True) -> None:
        self.root = self._resolve_root(Path(root).expanduser())
        self.name = name or self.default_name
        self.num_skipped = 0
        splits = []
        for folder_name in MARKET_SPLIT_FOLDERS:
            records, num_skipped = read_market_style_folder(
                self.root / folder_name, self.name, strict=strict
            )
            if not records:
                raise ValueError(
                    f"{self.root / folder_name}: no usable images named like "
                    "0002_c1s1_000451_03.jpg were found; check that the "
                    f"{type(self).__name__} root points at the right folder."
                )
            splits.append(records)
            self.num_skipped += num_skipped
        self.train, self.query, self.gallery = splits

    @classmethod
    def _resolve_root(cls, root: Path) -> Path:
        candidates = [root, root / cls.inner_folder]
        for candidate in candidates:
            if all((candidate / sub).is_dir() for sub in MARKET_SPLIT_FOLDERS):
                return candidate
        if not root.exists():
            raise FileNotFoundError(f"{cls.__name__} root {root} does not exist.")
        # Report against the candidate that got furthest, so the message names what is missing.
        best = max(
            candidates, key=lambda c: sum((c / sub).is_dir() for sub in MARKET_SPLIT_FOLDERS)
        )
        missing = [sub for sub in MARKET_SPLIT_FOLDERS if not (best / sub).is_dir()]
        raise FileNotFoundError(
            f"{cls.__name__}: missing subfolder(s) {', '.join(missing)} in {best}. Expected "
            f"<root>/{{{','.join(MARKET_SPLIT_FOLDERS)}}} or "
            f"<root>/{cls.inner_folder}/{{{','.join(MARKET_SPLIT_FOLDERS)}}}."
        )


class SyntheticReID(Market1501):
    """One domain written by :func:`metareid.data.synthetic_reid.generate_synthetic_reid`.

    Args:
        root: the domain folder (``<out>/synA``), or the generator's output folder together
            with ``domain``.
        domain: sub-folder to read below ``root``; also the default domain name.
        name: domain name stored in every record (default: ``domain`` or the folder name).
        strict: as for :class:`Market1501`.
    """

    def __init__(
        self,
        root: str | Path,
        domain: str | None = None,
        name: str | None = None,
        strict: bool = True,
    ) -> None:
        domain_root = Path(root).expanduser()
        if domain is not None:
            domain_root = domain_root / domain
        super().__init__(domain_root, name=name or domain or domain_root.name, strict=strict)


# Lower-case keys without separators; see ``_normalise_name``.
DATASET_FACTORIES: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": Market1501,
    "synthetic": SyntheticReID,
}


def _register_release_formats() -> None:
    # reid_formats subclasses the readers above, so it can only be imported once they exist.
    from metareid.data import reid_formats

    DATASET_FACTORIES.update(
        dukemtmc=reid_formats.DukeMTMC,
        msmt17=reid_formats.MSMT17,
        cuhk03=reid_formats.CUHK03,
        cuhksysu=reid_formats.CUHKSYSU,
    )


def _normalise_name(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).lower()


def load_reid_dataset(name: str, root: str | Path, /, **kwargs) -> ReIDDataset:
    """Build a dataset by name.

    Args:
        name: a key of :data:`DATASET_FACTORIES`; case, ``-`` and ``_`` are ignored
            (``Market-1501`` works). Positional-only, so ``name=`` in ``kwargs`` is the
            constructor's domain name.
        root: dataset folder passed to the class.
        **kwargs: extra constructor arguments (``strict``, ``name``, ``domain`` ...).
    """
    if "cuhk03" not in DATASET_FACTORIES:
        _register_release_formats()
    key = _normalise_name(name)
    if key not in DATASET_FACTORIES:
        known = ", ".join(sorted(DATASET_FACTORIES))
        raise ValueError(
            f"Unknown ReID dataset {name!r}. Known names: {known}. New formats are added to "
            "metareid.data.reid_datasets.DATASET_FACTORIES."
        )
    return DATASET_FACTORIES[key](root, **kwargs)
