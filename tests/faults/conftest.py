"""Fixtures of the fault suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_helpers import EVERY_STEP_CALLBACKS

from hydra_helpers import TINY_GAIT


@pytest.fixture
def tiny_gait_cli(synthetic_gait_root: Path) -> list[str]:
    """Overrides of a tiny gait CLI run on the shared synthetic tree (no report, no logger)."""
    return [
        *TINY_GAIT,
        f"data.root={synthetic_gait_root}",
        "logger=[]",
        "report=false",
        *EVERY_STEP_CALLBACKS,
    ]
