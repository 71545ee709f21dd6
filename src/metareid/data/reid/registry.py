"""Build a ReID dataset by name: the one lookup of every reader.

New formats are added by writing a class with ``train``/``query``/``gallery`` lists of
:class:`~metareid.data.reid.dataset.ReIDImage` and one line in :data:`DATASET_FACTORIES`; there is
no registry to import for its side effects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from metareid.data.reid import release_formats
from metareid.data.reid.dataset import ReIDDataset
from metareid.data.reid.market1501 import Market1501, SyntheticReID

__all__ = ["DATASET_FACTORIES", "load_reid_dataset"]

# Lower-case keys without separators; see ``_normalise_name``.
DATASET_FACTORIES: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": Market1501,
    "synthetic": SyntheticReID,
    "dukemtmc": release_formats.DukeMTMC,
    "msmt17": release_formats.MSMT17,
    "cuhk03": release_formats.CUHK03,
    "cuhksysu": release_formats.CUHKSYSU,
}


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
    key = _normalise_name(name)
    if key not in DATASET_FACTORIES:
        known = ", ".join(sorted(DATASET_FACTORIES))
        raise ValueError(
            f"Unknown ReID dataset {name!r}. Known names: {known}. New formats are added to "
            "metareid.data.reid.registry.DATASET_FACTORIES."
        )
    return DATASET_FACTORIES[key](root, **kwargs)
