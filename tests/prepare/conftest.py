"""Fixtures: tiny fabricated raw releases in every real layout (written by raw_releases.py)."""

from __future__ import annotations

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


@pytest.fixture
def casiab_raw(tmp_path: Path) -> Path:
    return write_casiab_raw(tmp_path)


@pytest.fixture
def casiab_partition_file(tmp_path: Path) -> Path:
    return write_casiab_partition_file(tmp_path)


@pytest.fixture
def oumvlp_raw(tmp_path: Path) -> Path:
    return write_oumvlp_raw(tmp_path)


@pytest.fixture
def grew_raw(tmp_path: Path) -> Path:
    return write_grew_raw(tmp_path)


@pytest.fixture
def market_raw(tmp_path: Path) -> Path:
    return write_market_raw(tmp_path)


@pytest.fixture
def duke_raw(tmp_path: Path) -> Path:
    return write_duke_raw(tmp_path)


@pytest.fixture(params=["V1", "V2"])
def msmt17_raw(request, tmp_path: Path) -> Path:
    """Parent folder holding ``MSMT17_V1`` (train/, test/) or ``MSMT17_V2`` (mask_*_v2/)."""
    folders = ("train", "test") if request.param == "V1" else ("mask_train_v2", "mask_test_v2")
    write_msmt17(tmp_path / "msmt" / f"MSMT17_{request.param}", *folders)
    return tmp_path / "msmt"


@pytest.fixture
def cuhk03_raw(tmp_path: Path) -> Path:
    return write_cuhk03_raw(tmp_path)


@pytest.fixture
def cuhksysu_raw(tmp_path: Path) -> Path:
    return write_cuhksysu_raw(tmp_path)
