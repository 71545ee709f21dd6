"""Bad overrides and data roots: a clear error naming the key or path and the fix, nothing
written to the data on disk."""

from __future__ import annotations

import pytest

from hydra_helpers import TINY_GAIT
from metareid.utils.errors import ConfigValueError
from metareid.utils.instantiate import check_config_types


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.p=2.5", r"data\.p=2\.5 \(float\) must be int \(argument 'p' of .*GaitDataModule\)"),
        ("trainer.max_steps=abc", r"trainer\.max_steps='abc' \(str\) must be int"),
        ("data.num_workers=true", r"data\.num_workers=True \(bool\) must be int"),
        ("model.triplet_margin=wide", r"model\.triplet_margin='wide' \(str\) must be float"),
    ],
)
def test_wrong_typed_values_name_the_key(make_config, override, expected):
    """Before: data.p=2.5 failed deep in the sampler, max_steps=abc inside Lightning."""
    with pytest.raises(ConfigValueError, match=expected):
        check_config_types(make_config("train", [*TINY_GAIT, override]))


def test_well_typed_recipes_pass(make_config):
    for overrides in (
        TINY_GAIT,
        ["experiment=metagait_casiab"],
        ["experiment=dr50_mix"],
        ["data.validate=false", "data.p=4", "model.triplet_margin=1"],  # declared; int for float
    ):
        check_config_types(make_config("train", overrides))


def test_a_data_root_that_is_a_file_is_named_as_such(make_config, tmp_path):
    import hydra

    root = tmp_path / "CASIA-B-pkl"
    root.write_bytes(b"not a folder")
    cfg = make_config("train", ["data=casiab", f"data.root={root}"])
    datamodule = hydra.utils.instantiate(cfg.data, seed=0)
    with pytest.raises(FileNotFoundError, match=r"data\.root=.*CASIA-B-pkl' is a file, not a"):
        datamodule.setup("fit")
    assert root.read_bytes() == b"not a folder"
    missing = make_config("train", ["data=casiab", f"data.root={tmp_path / 'absent'}"])
    with pytest.raises(FileNotFoundError, match="absent' does not exist"):
        hydra.utils.instantiate(missing.data, seed=0).setup("fit")
    assert not (tmp_path / "absent").exists()
