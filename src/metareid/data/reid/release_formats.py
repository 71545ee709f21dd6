"""Loaders for the ReID formats beyond Market-1501: DukeMTMC-reID, MSMT17, CUHK03, CUHK-SYSU.

Every class exposes ``train``, ``query`` and ``gallery`` lists of
:class:`~metareid.data.reid.dataset.ReIDImage` like :class:`Market1501`, with pids as written in
the data (no relabelling) and 0-based cameras. The folders they read are those
``python src/prepare.py <dataset>`` writes (dr50.md §5.4):

* DukeMTMC-reID: ``<root>[/DukeMTMC-reID]/{bounding_box_train,query,bounding_box_test}``.
* MSMT17: ``<root>[/MSMT17_V1|/MSMT17_V2]/{train,test}/`` (V2: ``mask_train_v2``,
  ``mask_test_v2``) with ``list_{train,val,query,gallery}.txt`` lines ``<relative path> <pid>``;
  the camera is the third ``_`` field of the file name, 1-based.
* CUHK03 (new protocol, 767/700): ``<root>/splits_new_{labeled,detected}.json`` listing
  ``[relative path, pid, camid]`` triples per split, images in ``images_{labeled,detected}/``.
* CUHK-SYSU: ``<root>[/cuhk_sysu]/cropped_images/<pid>_<scene>_<n>.jpg``; training only, one
  camera.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from metareid.data.reid.dataset import IMAGE_SUFFIXES, ReIDDataset, ReIDImage
from metareid.data.reid.market1501 import Market1501

__all__ = [
    "CUHK03",
    "CUHKSYSU",
    "MSMT17",
    "MSMT17_CAMERAS",
    "DukeMTMC",
    "cuhk03_split_file",
    "cuhksysu_pid",
    "msmt17_camid",
    "parse_msmt17_line",
]

MSMT17_CAMERAS = 15
MSMT17_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
# Folder names of the two releases: (training images, test images).
MSMT17_IMAGE_FOLDERS = {
    "MSMT17_V1": ("train", "test"),
    "MSMT17_V2": ("mask_train_v2", "mask_test_v2"),
}
CUHKSYSU_NAME = re.compile(r"^p?(\d+)_")


class DukeMTMC(Market1501):
    """DukeMTMC-reID: Market-1501 layout and naming (``0001_c2_f0046182.jpg``), cameras 1–8."""

    inner_folder = "DukeMTMC-reID"
    default_name = "dukemtmc"


def msmt17_camid(file_name: str) -> int:
    """0-based camera of an MSMT17 image, e.g. ``0000_000_01_0303morning_0015_0.jpg`` → 0."""
    fields = Path(file_name).name.split("_")
    if len(fields) < 3 or not fields[2].isdigit():
        raise ValueError(
            f"file name {file_name!r} has no camera field (expected "
            "<pid>_<index>_<camera>_..., e.g. 0000_000_01_0303morning_0015_0.jpg)"
        )
    camera = int(fields[2])
    if not 1 <= camera <= MSMT17_CAMERAS:
        raise ValueError(f"file name {file_name!r}: camera {camera} outside 1..{MSMT17_CAMERAS}")
    return camera - 1


def parse_msmt17_line(line: str) -> tuple[str, int, int]:
    """``"<relative path> <pid>"`` → (relative path, pid, 0-based camera)."""
    fields = line.split()
    if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        raise ValueError(f"expected '<relative/path.jpg> <pid>', got {line.strip()!r}")
    return fields[0], int(fields[1]), msmt17_camid(fields[0])


class MSMT17(ReIDDataset):
    """MSMT17 V1 or V2, split by its list files.

    Args:
        root: folder holding the list files, or its parent containing ``MSMT17_V1/`` or
            ``MSMT17_V2/`` (V1 preferred).
        name: domain name stored in every record.
        include_val: add ``list_val.txt`` to training (what ``combineall`` does in fast-reid).
        strict: raise on a malformed line or a listed file that is missing; ``False`` counts
            and skips it.
    """

    default_name = "msmt17"

    def __init__(
        self,
        root: str | Path,
        name: str | None = None,
        include_val: bool = False,
        strict: bool = True,
    ) -> None:
        self.root, (train_folder, test_folder) = self._resolve_root(Path(root).expanduser())
        self.name = name or self.default_name
        self.num_skipped = 0
        train_lists = ["list_train.txt"] + (["list_val.txt"] if include_val else [])
        self.train = [
            record
            for list_name in train_lists
            for record in self._read_list(list_name, train_folder, strict)
        ]
        self.query = self._read_list("list_query.txt", test_folder, strict)
        self.gallery = self._read_list("list_gallery.txt", test_folder, strict)

    @staticmethod
    def _resolve_root(root: Path) -> tuple[Path, tuple[str, str]]:
        for candidate in (root / "MSMT17_V1", root / "MSMT17_V2", root):
            if not (candidate / "list_train.txt").is_file():
                continue
            for folders in MSMT17_IMAGE_FOLDERS.values():
                if (candidate / folders[0]).is_dir():
                    return candidate, folders
        raise FileNotFoundError(
            f"MSMT17: no list_train.txt next to a train/ (V1) or mask_train_v2/ (V2) folder in "
            f"{root}, {root / 'MSMT17_V1'} or {root / 'MSMT17_V2'}. Point the root at the "
            "extracted release or at the output of `python src/prepare.py msmt17`."
        )

    def _read_list(self, list_name: str, folder: str, strict: bool) -> list[ReIDImage]:
        list_path = self.root / list_name
        if not list_path.is_file():
            raise FileNotFoundError(
                f"{list_path} is missing; copy it from the MSMT17 release or re-run "
                "`python src/prepare.py msmt17`."
            )
        records = []
        for number, line in enumerate(list_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                relative, pid, camid = parse_msmt17_line(line)
                path = self.root / folder / relative
                if not path.is_file():
                    raise ValueError(f"listed image {path} does not exist")
            except ValueError as error:
                if strict:
                    raise ValueError(
                        f"{list_path}:{number}: {error}. Fix the line or re-run "
                        "`python src/prepare.py msmt17`, or set data.strict=false to skip it."
                    ) from error
                self.num_skipped += 1
                continue
            records.append(ReIDImage(path=path, pid=pid, camid=camid, domain=self.name))
        return records


def cuhk03_split_file(root: str | Path, boxes: str) -> Path:
    """Where the prepared new-protocol split of ``boxes`` (labeled/detected) lives."""
    if boxes not in ("labeled", "detected"):
        raise ValueError(f"CUHK03 boxes must be 'labeled' or 'detected', got {boxes!r}")
    return Path(root) / f"splits_new_{boxes}.json"


class CUHK03(ReIDDataset):
    """CUHK03 under the new protocol (767 training / 700 test identities).

    Args:
        root: output folder of ``python src/prepare.py cuhk03``.
        boxes: ``"labeled"`` (hand-drawn boxes) or ``"detected"`` (DPM boxes).
        name: domain name stored in every record.
        strict: raise when a listed image is missing; ``False`` counts and skips it.
    """

    default_name = "cuhk03"

    def __init__(
        self,
        root: str | Path,
        boxes: str = "labeled",
        name: str | None = None,
        strict: bool = True,
    ) -> None:
        self.root = Path(root).expanduser()
        self.boxes = boxes
        self.name = name or self.default_name
        self.num_skipped = 0
        split_path = cuhk03_split_file(self.root, boxes)
        if not split_path.is_file():
            raise FileNotFoundError(
                f"{split_path} not found. Build it from cuhk-03.mat and the new-protocol configs "
                "with `python src/prepare.py cuhk03 --raw <cuhk03_release folder> "
                f"--out {self.root}`."
            )
        split = json.loads(split_path.read_text())
        splits = []
        for key in ("train", "query", "gallery"):
            if not isinstance(split.get(key), list):
                raise ValueError(f"{split_path}: key {key!r} missing; re-run the prepare step")
            splits.append(self._records(split[key], split_path, strict))
        self.train, self.query, self.gallery = splits

    def _records(self, entries: list, split_path: Path, strict: bool) -> list[ReIDImage]:
        records = []
        for relative, pid, camid in entries:
            path = self.root / relative
            if not path.is_file():
                if strict:
                    raise FileNotFoundError(
                        f"{path} (listed in {split_path}) is missing; re-run "
                        "`python src/prepare.py cuhk03` (it is resumable) or set data.strict=false."
                    )
                self.num_skipped += 1
                continue
            records.append(ReIDImage(path=path, pid=int(pid), camid=int(camid), domain=self.name))
        return records


def cuhksysu_pid(file_name: str) -> int:
    """Person id of a cropped CUHK-SYSU image: the number before the first ``_``."""
    match = CUHKSYSU_NAME.match(Path(file_name).name)
    if match is None:
        raise ValueError(
            f"file name {file_name!r} does not start with '<pid>_' (e.g. 00001_s1_0.jpg)"
        )
    return int(match.group(1))


class CUHKSYSU(ReIDDataset):
    """Cropped CUHK-SYSU persons; a training-only domain with a single camera.

    Args:
        root: folder holding ``cropped_images/`` (or ``cuhk_sysu/cropped_images/``).
        name: domain name stored in every record.
        strict: raise on a file name without a pid; ``False`` counts and skips it.
    """

    default_name = "cuhksysu"

    def __init__(self, root: str | Path, name: str | None = None, strict: bool = True) -> None:
        root = Path(root).expanduser()
        candidates = [root / "cropped_images", root / "cuhk_sysu" / "cropped_images"]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            raise FileNotFoundError(
                f"CUHKSYSU: no cropped_images/ folder in {root} or {root / 'cuhk_sysu'}. Crop it "
                f"from the person-search release with `python src/prepare.py cuhksysu --raw "
                f"<folder with annotation/ and Image/> --out {root}`."
            )
        self.root = folder.parent
        self.name = name or self.default_name
        self.num_skipped = 0
        self.train = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            try:
                pid = cuhksysu_pid(path.name)
            except ValueError as error:
                if strict:
                    raise ValueError(
                        f"{path}: {error}; rename it or set data.strict=false"
                    ) from error
                self.num_skipped += 1
                continue
            self.train.append(ReIDImage(path=path, pid=pid, camid=0, domain=self.name))
        if not self.train:
            raise ValueError(f"{folder}: no images named <pid>_<scene>_<n>.jpg")
        self.query, self.gallery = [], []
