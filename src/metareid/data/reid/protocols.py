"""Leave-one-domain-out ReID protocols and the per-dataset counts they rely on, as plain data.

The DR50/ACL setting (dr50.md §1.6, §5.1) trains on three of {Market-1501 (M), MSMT17 (MS),
CUHK-SYSU (CS), CUHK03 (C3)} and tests on the standard query/gallery of the fourth. The order of
``sources`` is the domain id order (domain 0 first), as in ``DATASETS.NAMES`` of the reference;
CUHK-SYSU has no query/gallery, so it is always a source. The Hydra configs under ``conf/`` are
the runnable form of these entries; this module is what code and tests compare them with.

Dataset keys match :func:`metareid.data.reid.registry.load_reid_dataset`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "PROTOCOLS",
    "RELEASE_COUNTS",
    "DGProtocol",
    "get_protocol",
    "release_counts",
]

# Counts of the official releases under the standard loaders' rules: junk (pid -1) removed,
# Market/Duke distractors (pid 0) kept in the gallery, MSMT17 training = list_train only,
# CUHK03 = new protocol (767/700). Keys: "<split>_images" and "<split>_ids".
RELEASE_COUNTS: dict[str, dict[str, int]] = {
    "market1501": {
        "train_images": 12_936,
        "train_ids": 751,
        "query_images": 3_368,
        "query_ids": 750,
        "gallery_images": 15_913,
        "gallery_ids": 752,
    },
    "dukemtmc": {
        "train_images": 16_522,
        "train_ids": 702,
        "query_images": 2_228,
        "query_ids": 702,
        "gallery_images": 17_661,
        "gallery_ids": 1_110,
    },
    "msmt17": {
        "train_images": 30_248,
        "train_ids": 1_041,
        "query_images": 11_659,
        "query_ids": 3_060,
        "gallery_images": 82_161,
        "gallery_ids": 3_060,
    },
    "cuhk03_labeled": {
        "train_images": 7_368,
        "train_ids": 767,
        "query_images": 1_400,
        "query_ids": 700,
        "gallery_images": 5_328,
        "gallery_ids": 700,
    },
    "cuhk03_detected": {
        "train_images": 7_365,
        "train_ids": 767,
        "query_images": 1_400,
        "query_ids": 700,
        "gallery_images": 5_332,
        "gallery_ids": 700,
    },
    # fast-reid's docstring for its cropped copy; a crop of annotation/Person.mat can differ
    # (dr50.md §4.2, UNVERIFIED).
    "cuhksysu": {"train_images": 34_574, "train_ids": 11_934},
}


def release_counts(dataset: str, cuhk03_boxes: str = "labeled") -> dict[str, int]:
    """Release counts of ``dataset`` (for ``cuhk03``, of the chosen box type)."""
    key = f"cuhk03_{cuhk03_boxes}" if dataset == "cuhk03" else dataset
    if key not in RELEASE_COUNTS:
        raise KeyError(f"no release counts for {key!r}; known: {', '.join(RELEASE_COUNTS)}")
    return dict(RELEASE_COUNTS[key])


@dataclass(frozen=True)
class DGProtocol:
    """One multi-source domain-generalisation protocol.

    Attributes:
        name: key in :data:`PROTOCOLS`.
        sources: training datasets; position = domain id and classifier index.
        target: the unseen test dataset (its query/gallery are evaluated).
        combineall: also train on the sources' query+gallery (the "full-dataset" variant);
            ``False`` is the training-split protocol the paper reports ("Protocol-2").
        cuhk03_boxes: ``"labeled"`` or ``"detected"`` crops wherever CUHK03 appears.
    """

    name: str
    sources: tuple[str, ...]
    target: str
    combineall: bool = False
    cuhk03_boxes: str = "labeled"

    def __post_init__(self) -> None:
        if self.target in self.sources:
            raise ValueError(f"{self.name}: target {self.target} is also a source")
        if self.target == "cuhksysu":
            raise ValueError(f"{self.name}: CUHK-SYSU has no query/gallery and cannot be a target")
        if self.cuhk03_boxes not in ("labeled", "detected"):
            raise ValueError(f"{self.name}: cuhk03_boxes must be 'labeled' or 'detected'")

    @property
    def short_name(self) -> str:
        """E.g. ``CS+M+MS→C3``."""
        abbreviations = {"market1501": "M", "msmt17": "MS", "cuhksysu": "CS", "cuhk03": "C3"}
        return "+".join(abbreviations[s] for s in self.sources) + "→" + abbreviations[self.target]

    def expected_counts(self) -> dict[str, dict[str, int]]:
        """Release counts of every dataset the protocol reads, keyed by dataset."""
        return {
            name: release_counts(name, self.cuhk03_boxes) for name in (*self.sources, self.target)
        }

    def train_totals(self) -> tuple[int, int] | None:
        """(training images, identities) over all sources, or ``None`` with ``combineall``.

        With ``combineall`` the total depends on how each loader filters junk and distractors
        in query/gallery, which the reference does not pin down, so no number is claimed.
        """
        if self.combineall:
            return None
        counts = [release_counts(s, self.cuhk03_boxes) for s in self.sources]
        return sum(c["train_images"] for c in counts), sum(c["train_ids"] for c in counts)

    def variant(self, **changes) -> DGProtocol:
        """A copy with other settings, e.g. ``variant(cuhk03_boxes="detected")``."""
        return dataclasses.replace(self, **changes)


PROTOCOLS: dict[str, DGProtocol] = {
    # The released DR50 config (bagtricks_DR50_mix.yml): domains CS=0, M=1, MS=2.
    "mix_to_cuhk03": DGProtocol(
        "mix_to_cuhk03", sources=("cuhksysu", "market1501", "msmt17"), target="cuhk03"
    ),
    "mix_to_msmt17": DGProtocol(
        "mix_to_msmt17", sources=("cuhksysu", "market1501", "cuhk03"), target="msmt17"
    ),
    "mix_to_market1501": DGProtocol(
        "mix_to_market1501", sources=("cuhksysu", "msmt17", "cuhk03"), target="market1501"
    ),
    # Same as the released setting but tested on the detector boxes of CUHK03 (the paper does
    # not say which box type it reports, dr50.md §5.1).
    "mix_to_cuhk03_detected": DGProtocol(
        "mix_to_cuhk03_detected",
        sources=("cuhksysu", "market1501", "msmt17"),
        target="cuhk03",
        cuhk03_boxes="detected",
    ),
}


def get_protocol(name: str, **changes) -> DGProtocol:
    """Look a protocol up by name, optionally as a variant (``combineall=True`` ...)."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    return protocol.variant(**changes) if changes else protocol
