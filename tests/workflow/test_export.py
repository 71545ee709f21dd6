"""TorchScript and ONNX export of the feature extractors, checked against the eager networks."""

from __future__ import annotations

import pytest
import torch

import export
from metareid.checkpoints import lightning_checkpoint
from metareid.export import (
    GaitEmbedder,
    ReIDEmbedder,
    check_export,
    embedder_for,
    export_onnx,
    export_torchscript,
    run_onnx,
    tile_short_clips_static,
)
from metareid.models import DR50, GaitGL, MetaEmbeddingHead, MetaGait, ReIDBaseline


def tiny_metagait(seed: int = 0) -> MetaGait:
    torch.manual_seed(seed)
    net = MetaGait(channels=(4, 8, 8), bin_num=4, class_num=3)
    net.Bn.running_mean.normal_()
    net.Bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


def tiny_reid() -> ReIDBaseline:
    torch.manual_seed(0)
    return ReIDBaseline(DR50(width_mult=0.125), MetaEmbeddingHead(256, [3, 2])).eval()


def padded_clips(
    lengths: list[int], frames: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, frames, 64, 44]`` clips zero beyond their ``lengths``, and the lengths."""
    generator = torch.Generator().manual_seed(seed)
    sils = torch.rand(len(lengths), frames, 64, 44, generator=generator)
    for row, length in enumerate(lengths):
        sils[row, length:] = 0
    return sils, torch.tensor(lengths)


def eager_embeddings(net: GaitGL, sils, seq_lens=None) -> torch.Tensor:
    with torch.no_grad():
        return net(sils, seq_lens=seq_lens)["embeddings"]


def test_static_tiling_loops_short_clips_on_a_fixed_axis():
    sils = torch.tensor([[1.0, 2.0, 0.0], [5.0, 0.0, 0.0], [7.0, 8.0, 9.0]]).view(3, 3, 1, 1)
    tiled, lengths = tile_short_clips_static(sils, torch.tensor([2, 1, 3]))
    assert lengths.tolist() == [4, 3, 3]
    assert tiled.view(3, 5).tolist() == [
        [1, 2, 1, 2, 0],  # AB -> ABAB
        [5, 5, 5, 0, 0],  # A -> AAA
        [7, 8, 9, 0, 0],  # long enough: unchanged
    ]


def test_gait_embedder_equals_the_network_on_short_and_padded_clips():
    net = tiny_metagait()
    embedder = GaitEmbedder(net)
    for frames in (1, 2, 7):
        sils = torch.rand(2, frames, 64, 44)
        torch.testing.assert_close(embedder(sils), eager_embeddings(net, sils), rtol=0, atol=1e-6)
    sils, seq_lens = padded_clips([7, 1, 2, 4], frames=7)
    torch.testing.assert_close(
        embedder(sils, seq_lens), eager_embeddings(net, sils, seq_lens), rtol=0, atol=1e-6
    )


def test_gait_bnneck_embedder_returns_pre_bnneck_features():
    torch.manual_seed(0)
    net = GaitGL(channels=(4, 8, 8), bin_num=4, class_num=3, head="bnneck").eval()
    sils = torch.rand(2, 6, 64, 44)
    embeddings = GaitEmbedder(net)(sils)
    assert embeddings.shape == (2, 4, 8)
    torch.testing.assert_close(embeddings, eager_embeddings(net, sils), rtol=0, atol=1e-6)


def test_gait_torchscript_has_dynamic_batch_and_frames(tmp_path):
    net = tiny_metagait()
    embedder = embedder_for(net)
    path = export_torchscript(embedder, (torch.rand(2, 9, 64, 44),), tmp_path / "gait.pt")
    scripted = torch.jit.load(str(path))
    for batch, frames in [(1, 5), (3, 12), (2, 2)]:
        sils = torch.rand(batch, frames, 64, 44)
        output = scripted(sils)
        assert output.shape == (batch, 4, 8)
        torch.testing.assert_close(output, eager_embeddings(net, sils), rtol=0, atol=1e-5)


def test_gait_onnx_with_seq_lens_matches_eager_at_new_batch_sizes_and_frame_counts(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net = tiny_metagait()
    embedder = embedder_for(net)
    path = export_onnx(embedder, padded_clips([9, 6], frames=9), tmp_path / "gait.onnx")
    for lengths, frames in [([5], 5), ([12, 2, 7], 12)]:
        sils, seq_lens = padded_clips(lengths, frames, seed=frames)
        output = run_onnx(path, (sils, seq_lens))
        assert output.shape == (len(lengths), 4, 8)
        torch.testing.assert_close(
            output, eager_embeddings(net, sils, seq_lens), rtol=1e-4, atol=1e-5
        )


def test_reid_exports_have_a_dynamic_batch_and_return_neck_features(tmp_path):
    pytest.importorskip("onnxruntime")
    net = tiny_reid()
    embedder = embedder_for(net)
    example = (torch.rand(2, 3, 64, 32) * 255,)
    onnx_path = export_onnx(embedder, example, tmp_path / "reid.onnx", exporter="torchscript")
    script_path = export_torchscript(embedder, example, tmp_path / "reid.pt")
    scripted = torch.jit.load(str(script_path))
    for batch in (1, 3):
        images = torch.rand(batch, 3, 64, 32) * 255
        with torch.no_grad():
            expected = net(images)
        assert expected.shape == (batch, 256)
        torch.testing.assert_close(run_onnx(onnx_path, (images,)), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(scripted(images), expected, rtol=0, atol=1e-5)


def test_check_export_exposes_a_different_network(tmp_path):
    inputs = (torch.rand(2, 6, 64, 44),)
    path = export_torchscript(embedder_for(tiny_metagait(seed=0)), inputs, tmp_path / "a.pt")
    assert check_export(embedder_for(tiny_metagait(seed=0)), path, [inputs]) == 0.0
    assert check_export(embedder_for(tiny_metagait(seed=1)), path, [inputs]) > 1e-2


def test_embedder_options_and_unsupported_networks():
    features = ReIDEmbedder(tiny_reid(), l2_normalize=True)(torch.rand(2, 3, 64, 32) * 255)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="ReID option"):
        embedder_for(tiny_metagait(), l2_normalize=True)
    with pytest.raises(TypeError, match="No feature extractor"):
        embedder_for(torch.nn.Linear(2, 2))


def test_export_entry_point_loads_the_checkpoint_and_verifies(tmp_path, make_config):
    net = tiny_metagait(seed=3)
    checkpoint = tmp_path / "tiny.ckpt"
    torch.save(lightning_checkpoint(net.state_dict()), checkpoint)
    cfg = make_config(
        "export",
        [
            "model.net.channels=[4,8,8]",
            "model.net.bin_num=4",
            "data.synthetic.train_subjects=3",
            f"ckpt_path={checkpoint}",
            "seq_lens_input=true",
            "onnx.exporter=torchscript",
            "example.frames=9",
        ],
    )
    written = export.export(cfg)

    out = tmp_path / "run"  # the run directory of make_config; files named after model=
    assert written == {
        "torchscript": out / "metagait_demo.torchscript.pt",
        "onnx": out / "metagait_demo.onnx",
    }
    sils, seq_lens = padded_clips([11, 3, 1], frames=11)
    expected = eager_embeddings(net, sils, seq_lens)
    scripted = torch.jit.load(str(written["torchscript"]))
    torch.testing.assert_close(scripted(sils, seq_lens), expected, rtol=0, atol=1e-5)
    pytest.importorskip("onnxruntime")
    output = run_onnx(written["onnx"], (sils, seq_lens))
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("experiment", ["metagait_casiab", "gaitgl_casiab", "dr50_mix"])
def test_export_config_composes_with_the_released_experiments(make_config, experiment):
    cfg = make_config("export", [f"experiment={experiment}"])
    assert cfg.model.net._target_.rsplit(".", 1)[-1] in ("MetaGait", "GaitGL", "ReIDBaseline")
    assert cfg.name == cfg.hydra.runtime.choices.model and cfg.format == "both"
