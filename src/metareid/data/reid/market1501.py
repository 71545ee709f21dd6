"""Readers of the Market-1501 folder layout: Market-1501 itself and the synthetic domains.

Files are indexed, never decoded; records are :class:`~metareid.data.reid.dataset.ReIDImage`.
"""

from __future__ import annotations

import re
from pathlib import Path

from metareid.data.reid.dataset import (
    IMAGE_SUFFIXES,
    JUNK_PID,
    MARKET_FILENAME_PATTERN,
    MARKET_SPLIT_FOLDERS,
    ReIDDataset,
    ReIDImage,
)

__all__ = ["Market1501", "SyntheticReID", "read_market_style_folder"]


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
                    "0002_c1s1_000451_03.jpg). Rename or remove the file, or set data.strict=false "
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
        if not root.is_dir():
            raise FileNotFoundError(f"{cls.__name__} root {root} is a file, not a folder.")
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
    """One domain written by :func:`metareid.data.reid.synthetic.generate_synthetic_reid`.

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
