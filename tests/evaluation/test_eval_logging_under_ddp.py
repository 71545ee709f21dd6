"""Evaluation logging raises no per-evaluation ``sync_dist`` warning in a DDP run."""

import socket
import warnings

import pytest
import torch.distributed as dist

from hydra_helpers import TINY_GAIT, TINY_REID
from metareid.utils.instantiate import build_run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(TINY_GAIT, id="gait"),
        pytest.param(TINY_REID, id="reid", marks=pytest.mark.slow),
    ],
)
def test_validation_logs_ask_for_no_sync_dist(make_config, tmp_path, monkeypatch, overrides):
    # One DDP process (gloo): Lightning then checks every epoch-level log for sync_dist.
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    extra = [f"data.synthetic.root={tmp_path / 'synthetic'}"] if overrides is TINY_REID else []
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1"]
    cfg = make_config(
        "train",
        [*overrides, *extra, *ddp, "trainer.sync_batchnorm=false", "logger=csv", "callbacks=none"],
    )
    datamodule, model, trainer = build_run(cfg)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.validate(model, datamodule=datamodule)
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert model.last_results  # the evaluation ran and logged
    assert not [str(w.message)[:90] for w in caught if "sync_dist=True" in str(w.message)]
