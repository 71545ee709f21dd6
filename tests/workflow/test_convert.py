"""Converting OpenGait/MetaGait and ACL checkpoints into metareid (Lightning) checkpoints.

The reference checkpoints are fabricated from our own reduced networks, whose module names are
the reference key names, wrapped in the reference containers.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import convert
from metareid.checkpoints import (
    CheckpointError,
    convert_checkpoint,
    describe_gait_state,
    describe_reid_state,
    load_checkpoint_file,
    map_state_dict,
    network_from_config,
    source_state_dict,
)
from metareid.models import DR50, GaitGL, MetaEmbeddingHead, MetaGait, ReIDBaseline
from metareid.tasks.gait import GaitModule
from metareid.utils.instantiate import build_run

TINY_GAIT = dict(channels=(4, 8, 8), bin_num=4, class_num=3)


def randomise_batch_norm_statistics(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running statistics, so a lost or misplaced buffer changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(
                torch.rand(module.running_var.shape, generator=generator) + 0.5
            )
            module.num_batches_tracked.fill_(7)
    return net


def opengait_container(net: torch.nn.Module, iteration: int = 80000) -> dict:
    """The layout OpenGait's ``save_ckpt`` writes, here from a DDP-wrapped model."""
    state = {f"module.{key}": value for key, value in net.state_dict().items()}
    return {"model": state, "optimizer": {}, "scheduler": {}, "iteration": iteration}


def tiny_reid(num_classes=(3, 2), seed: int = 0) -> ReIDBaseline:
    torch.manual_seed(seed)
    net = ReIDBaseline(DR50(width_mult=0.125), MetaEmbeddingHead(256, num_classes))
    return randomise_batch_norm_statistics(net, seed)


def net_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def test_opengait_metagait_checkpoint_loads_strictly_and_reproduces_outputs():
    torch.manual_seed(0)
    reference = randomise_batch_norm_statistics(MetaGait(**TINY_GAIT)).eval()
    target = MetaGait(**TINY_GAIT)  # different initialisation

    checkpoint, report = convert_checkpoint(
        opengait_container(reference, iteration=80000), "opengait", target
    )

    assert report.compatible and not report.filled and not report.dropped
    assert checkpoint["global_step"] == 80000 and checkpoint["epoch"] == 0
    assert checkpoint["pytorch-lightning_version"]
    assert all(key.startswith("net.") for key in checkpoint["state_dict"])
    assert len(checkpoint["state_dict"]) == len(reference.state_dict()) == 26
    target.load_state_dict(net_weights(checkpoint), strict=True)
    target.eval()
    sils = torch.rand(2, 9, 64, 44)
    with torch.no_grad():
        expected, actual = reference(sils), target(sils)
    for key in ("embeddings", "logits"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


def test_acl_checkpoint_loads_strictly_and_reproduces_neck_features():
    reference = tiny_reid(seed=0).eval()
    target = tiny_reid(seed=1)
    state = dict(reference.state_dict())
    # fast-reid may store numpy arrays, and before 2021 kept the pixel statistics as buffers.
    state["heads.center.centers"] = state["heads.center.centers"].numpy()
    state["pixel_mean"] = reference.pixel_mean.clone()
    state["pixel_std"] = reference.pixel_std.clone()
    container = {"model": state, "optimizer": {}, "scheduler": {}, "epoch": 59, "metric": 0.4}

    checkpoint, report = convert_checkpoint(container, "acl", target)

    assert report.compatible and not report.notes
    assert sorted(report.dropped) == ["pixel_mean", "pixel_std"]
    assert checkpoint["epoch"] == 59 and checkpoint["global_step"] == 0
    assert any(key.startswith("net.backbone.router4.") for key in checkpoint["state_dict"])
    assert "net.heads.weight2.weight" in checkpoint["state_dict"]
    target.load_state_dict(net_weights(checkpoint), strict=True)
    target.eval()
    images = torch.rand(2, 3, 64, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(target(images), reference(images), rtol=0, atol=0)


def test_acl_pixel_statistics_that_differ_are_reported():
    net = tiny_reid()
    state = dict(net.state_dict(), pixel_mean=torch.zeros(1, 3, 1, 1), pixel_std=net.pixel_std)
    _, report = map_state_dict(state, net, "acl")
    assert report.compatible
    assert len(report.notes) == 1 and "pixel_mean" in report.notes[0]


def test_class_count_mismatch_tells_which_setting_to_change():
    source = opengait_container(MetaGait(**TINY_GAIT))
    target = MetaGait(**{**TINY_GAIT, "class_num": 5})
    with pytest.raises(CheckpointError) as caught:
        convert_checkpoint(source, "opengait", target, origin="GaitGL-80000.pt")
    message = str(caught.value)
    assert "GaitGL-80000.pt" in message
    assert "Head1.fc_bin: [4, 8, 3] vs [4, 8, 5]" in message
    assert "set data.num_classes=3" in message

    acl = {"model": tiny_reid((3, 2)).state_dict(), "epoch": 0}
    with pytest.raises(CheckpointError) as caught:
        convert_checkpoint(acl, "acl", tiny_reid((4, 2)))
    assert "num_classes=[3, 2]" in str(caught.value)
    assert "heads.center.centers" in str(caught.value)


def test_architecture_mismatches_name_the_keys_and_the_model_option():
    metagait_state = opengait_container(MetaGait(**TINY_GAIT))
    with pytest.raises(CheckpointError) as caught:
        convert_checkpoint(metagait_state, "opengait", GaitGL(**TINY_GAIT))
    message = str(caught.value)
    assert "not in the network (10)" in message and "eca.dynamic_conv.wn_fc2.weight" in message
    assert "use --model metagait" in message

    wider = opengait_container(MetaGait(channels=(4, 8, 16), bin_num=2, class_num=3))
    with pytest.raises(CheckpointError) as caught:
        convert_checkpoint(wider, "opengait", MetaGait(**TINY_GAIT))
    message = str(caught.value)
    assert "set model.net.channels=[4,8,16]" in message
    assert "set model.net.bin_num=2" in message


def test_describe_reads_settings_from_reference_keys():
    gait = describe_gait_state(
        MetaGait(channels=(4, 8, 16), bin_num=[2, 4], class_num=7).state_dict()
    )
    assert gait == dict(channels=[4, 8, 16], bin_num=6, class_num=7, head="bn", attention=True)
    large = GaitGL(channels=(4, 8, 8, 16), variant="large", head="bnneck", bin_num=4, class_num=5)
    assert describe_gait_state(large.state_dict()) == dict(
        channels=[4, 8, 8, 16], bin_num=4, class_num=5, head="bnneck", attention=False
    )
    reid = describe_reid_state(tiny_reid((3, 2)).state_dict())
    assert reid == dict(width_mult=0.125, num_classes=[3, 2], feat_dim=256)


def test_missing_batch_norm_counters_are_filled_from_the_network():
    net = MetaGait(**TINY_GAIT)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    _, report = map_state_dict(state, net, "opengait")
    assert report.compatible
    assert report.filled == ["Bn.num_batches_tracked"]  # the only BatchNorm of MetaGait


def test_ignore_keys_drops_extra_entries_that_would_otherwise_fail():
    net = MetaGait(**TINY_GAIT)
    state = dict(net.state_dict(), **{"loss_aggregator.losses.triplet.margin": torch.tensor(0.2)})
    _, report = map_state_dict(state, net, "opengait")
    assert report.unexpected == ["loss_aggregator.losses.triplet.margin"]
    _, report = map_state_dict(state, net, "opengait", ignore_keys=[r"^loss_aggregator\."])
    assert report.compatible and report.dropped == ["loss_aggregator.losses.triplet.margin"]


def test_part_major_bnneck_vectors_are_reordered_channel_major():
    net = GaitGL(channels=(4, 4, 8, 8), variant="large", head="bnneck", bin_num=4, class_num=3)
    parts, channels = 4, 8
    state = dict(net.state_dict())
    # Old OpenGait indexed the BNNeck vector part-major: entry p*C + c holds the value p*C + c.
    state["BNNecks.bn1d.weight"] = torch.arange(parts * channels, dtype=torch.float32)

    converted, report = map_state_dict(state, net, "opengait", bnneck_layout="part-major")

    assert report.compatible
    weight = converted["BNNecks.bn1d.weight"]
    for c in range(channels):
        for p in range(parts):
            assert weight[c * parts + p] == p * channels + c


def test_bare_state_dicts_and_lightning_checkpoints_are_told_apart():
    net = MetaGait(**TINY_GAIT)
    assert set(source_state_dict(net.state_dict())) == set(net.state_dict())
    with pytest.raises(CheckpointError, match="already a Lightning checkpoint"):
        source_state_dict({"state_dict": {}, "pytorch-lightning_version": "2.6.6"})
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        source_state_dict({"weights": {}, "iteration": 3})


def test_pickled_objects_need_trust(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "metric": np.float64(0.4)}, path)
    with pytest.raises(CheckpointError, match="objects such as numpy.+trust_pickle=true"):
        load_checkpoint_file(path)
    assert float(load_checkpoint_file(path, trust_pickle=True)["metric"]) == pytest.approx(0.4)
    with pytest.raises(FileNotFoundError):
        load_checkpoint_file(tmp_path / "absent.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint_file(tmp_path / "notes.pth")


# Overrides of conf/eval.yaml (model=metagait_demo, data=casiab_synthetic) for a seconds-long run.
TINY_RUN = [
    "model.net.channels=[4,8,8]",
    "++model.net.bin_num=4",
    "data.synthetic.num_subjects=6",
    "data.synthetic.train_subjects=3",
    "+data.synthetic.views=[000,090,180]",
    "+data.synthetic.frames=[8,14]",
    "data.num_workers=0",
    "data.test_batch_size=8",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
]


def test_converted_checkpoint_is_restored_by_the_eval_entry_point(tmp_path, make_config):
    """convert.py's output goes through trainer.test(ckpt_path=...), as src/eval.py runs it."""
    torch.manual_seed(0)
    reference = randomise_batch_norm_statistics(MetaGait(**TINY_GAIT))
    source, converted = tmp_path / "GaitGL-01200.pt", tmp_path / "metagait.ckpt"
    torch.save(opengait_container(reference, iteration=1200), source)

    options = ["--src", str(source), "--out", str(converted), "--model", "metagait_demo"]
    status = convert.main(["opengait", *options, "--data", "casiab_synthetic", *TINY_RUN])
    assert status == 0

    cfg = make_config(
        "eval",
        ["model=metagait_demo", "data=casiab_synthetic", *TINY_RUN]
        + [f"ckpt_path={converted}", f"data.root={tmp_path / 'synthetic'}"],
    )
    datamodule, model, trainer = build_run(cfg, with_callbacks=False)
    trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    assert "test/Mean" in trainer.callback_metrics
    restored = model.net.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(restored[key], value), key


def test_convert_cli_reports_errors_without_writing(tmp_path, caplog):
    source, out = tmp_path / "src.pt", tmp_path / "out.ckpt"
    torch.save(opengait_container(MetaGait(**TINY_GAIT)), source)
    status = convert.main(
        ["opengait", "--src", str(source), "--out", str(out), "--model", "gaitgl", *TINY_RUN]
        + ["--data", "casiab_synthetic"]
    )
    assert status == 1 and not out.exists()
    assert "use --model metagait" in caplog.text


def test_extra_module_state_is_kept_for_strict_lightning_loading():
    net = MetaGait(**TINY_GAIT)
    module = GaitModule(net, optimizer=functools.partial(torch.optim.Adam))
    extra = {"some_buffer": torch.ones(2)}
    checkpoint, _ = convert_checkpoint(opengait_container(net), "opengait", net, extra_state=extra)
    assert torch.equal(checkpoint["state_dict"]["some_buffer"], torch.ones(2))
    del checkpoint["state_dict"]["some_buffer"]
    module.load_state_dict(checkpoint["state_dict"], strict=True)


def test_acl_cli_takes_head_widths_from_the_checkpoint(tmp_path, make_config):
    """conf/model/dr50_demo leaves num_classes to the data; the converter reads them instead."""
    reference = tiny_reid((3, 2), seed=0).eval()
    narrow = ["model.net.backbone.width_mult=0.125", "model.net.head.in_channels=256"]
    source, out = tmp_path / "model_final.pth", tmp_path / "dr50.ckpt"
    torch.save({"model": reference.state_dict(), "epoch": 11, "optimizer": {}}, source)

    assert (
        convert.main(
            ["acl", "--src", str(source), "--out", str(out), "--model", "dr50_demo", *narrow]
        )
        == 0
    )

    cfg = make_config("eval", ["model=dr50_demo", *narrow])
    assert cfg.model.net.head.num_classes is None
    net = network_from_config(cfg.model.net, out)
    assert net.heads.num_classes == (3, 2)
    images = torch.rand(2, 3, 64, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(net(images), reference(images), rtol=0, atol=0)
    assert torch.load(out, weights_only=True)["epoch"] == 11
