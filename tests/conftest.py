"""Shared fixtures: composed Hydra configs and a shared synthetic CASIA-B root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from hydra_helpers import compose_config


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    def _make(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
        return compose_config(config_name, overrides or [], tmp_path / "run")

    return _make


@pytest.fixture(scope="session")
def synthetic_gait_root(tmp_path_factory) -> Path:
    """One tiny synthetic CASIA-B tree shared by the end-to-end tests."""
    return tmp_path_factory.mktemp("synthetic_casiab")
