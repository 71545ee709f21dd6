"""The ReID dataset types every reader produces: :class:`ReIDImage` records, :class:`ReIDDataset`.

A dataset object only indexes files: it exposes three lists of :class:`ReIDImage` records
(``train``, ``query``, ``gallery``). Decoding, relabelling and batching live in
:mod:`metareid.data.reid.multisource`. This module owns the types; the readers
(:mod:`~metareid.data.reid.market1501`, :mod:`~metareid.data.reid.release_formats`) depend on it
and :mod:`~metareid.data.reid.registry` looks them up by name, so imports run one way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES",
    "JUNK_PID",
    "MARKET_FILENAME_PATTERN",
    "MARKET_SPLIT_FOLDERS",
    "ReIDDataset",
    "ReIDImage",
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
