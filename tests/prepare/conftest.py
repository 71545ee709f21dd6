"""Fixtures: tiny fabricated raw releases in every real layout (written by raw_releases.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from raw_releases import (
    write_casiab_partition_file,
    write_casiab_raw,
    write_cuhk03_raw,
    write_cuhksysu_raw,
    write_duke_raw,
    write_grew_raw,
    write_market_raw,
    write_msmt17,
    write_oumvlp_raw,
)


def _written_by(writer: Callable[[Path], Path]):
    """A fixture giving the path ``writer`` returns after fabricating a release in ``tmp_path``."""

    def fabricated(tmp_path: Path) -> Path:
        return writer(tmp_path)

    fabricated.__doc__ = (
        f"``{writer.__name__}(tmp_path)``: {writer.__doc__ or 'see raw_releases.py'}"
    )
    return pytest.fixture(fabricated)


casiab_raw = _written_by(write_casiab_raw)
casiab_partition_file = _written_by(write_casiab_partition_file)
oumvlp_raw = _written_by(write_oumvlp_raw)
grew_raw = _written_by(write_grew_raw)
market_raw = _written_by(write_market_raw)
duke_raw = _written_by(write_duke_raw)
cuhk03_raw = _written_by(write_cuhk03_raw)
cuhksysu_raw = _written_by(write_cuhksysu_raw)


@pytest.fixture(params=["V1", "V2"])
def msmt17_raw(request, tmp_path: Path) -> Path:
    """Parent folder holding ``MSMT17_V1`` (train/, test/) or ``MSMT17_V2`` (mask_*_v2/)."""
    folders = ("train", "test") if request.param == "V1" else ("mask_train_v2", "mask_test_v2")
    write_msmt17(tmp_path / "msmt" / f"MSMT17_{request.param}", *folders)
    return tmp_path / "msmt"
