import pytest
import torch

from metareid.models.dr50 import DR50
from metareid.models.dr50_pretrained import (
    load_ibn_resnet50_pretrained,
    map_ibn_resnet_state_dict,
)


def ibn_resnet_a_state_dict(
    stem: int = 64, blocks=(3, 4, 6, 3), seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random tensors with the key names and shapes of IBN-Net's ``resnet50_ibn_a`` release.

    IBN (``bn1.IN`` / ``bn1.BN``) in every block of layer1-3, plain BN in layer4, a 1000-way
    ``fc``; BN counters included (the release may lack them; the loader must not care).
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_ch: int, in_ch: int, kernel: int) -> None:
        state[name] = torch.randn(out_ch, in_ch, kernel, kernel, generator=generator)

    def batch_norm(name: str, channels: int) -> None:
        for param in ("weight", "bias", "running_mean"):
            state[f"{name}.{param}"] = torch.randn(channels, generator=generator)
        state[f"{name}.running_var"] = torch.rand(channels, generator=generator) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1.weight", stem, 3, 7)
    batch_norm("bn1", stem)
    in_channels = stem
    for stage, num_blocks in enumerate(blocks, start=1):
        planes = stem * 2 ** (stage - 1)
        out_channels = 4 * planes
        for block in range(num_blocks):
            prefix = f"layer{stage}.{block}"
            conv(f"{prefix}.conv1.weight", planes, in_channels if block == 0 else out_channels, 1)
            if stage < 4:
                half = planes // 2
                state[f"{prefix}.bn1.IN.weight"] = torch.randn(half, generator=generator)
                state[f"{prefix}.bn1.IN.bias"] = torch.randn(half, generator=generator)
                batch_norm(f"{prefix}.bn1.BN", planes - half)
            else:
                batch_norm(f"{prefix}.bn1", planes)
            conv(f"{prefix}.conv2.weight", planes, planes, 3)
            batch_norm(f"{prefix}.bn2", planes)
            conv(f"{prefix}.conv3.weight", out_channels, planes, 1)
            batch_norm(f"{prefix}.bn3", out_channels)
            if block == 0:
                conv(f"{prefix}.downsample.0.weight", out_channels, in_channels, 1)
                batch_norm(f"{prefix}.downsample.1", out_channels)
        in_channels = out_channels
    state["fc.weight"] = torch.randn(1000, in_channels, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    return state


@pytest.fixture(scope="module")
def full_size_mapping():
    torch.manual_seed(0)
    model = DR50()
    source = ibn_resnet_a_state_dict()
    updates, report = map_ibn_resnet_state_dict(model, source)
    return model, source, updates, report


def test_fabricated_checkpoint_has_resnet50_ibn_a_size(full_size_mapping) -> None:
    _, state, _, _ = full_size_mapping
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    weights = sum(v.numel() for k, v in state.items() if not k.endswith(buffers))
    assert weights == 25_557_032  # ResNet-50 with its 1000-way fc


def test_conv3_is_channel_averaged_and_tiled(full_size_mapping) -> None:
    _, source, updates, report = full_size_mapping
    mapped = updates["adaptor1_sub.conv3.weight"]
    original = source["layer1.2.conv3.weight"]  # [256, 64, 1, 1]
    assert mapped.shape == (1024, 16, 1, 1)
    # Expert 3, output channel 5, input channel 2 = mean of source input channels 8..11.
    assert torch.isclose(mapped[3 * 256 + 5, 2, 0, 0], original[5, 8:12, 0, 0].mean())
    averaged = original.view(256, 16, 4, 1, 1).mean(dim=2)
    for expert in range(4):
        assert torch.allclose(mapped[expert * 256 : (expert + 1) * 256], averaged)
    assert report.mapped["adaptor1_sub.conv3.weight"].startswith("layer1.2.conv3.weight")
    assert updates["adaptor4_sub.conv3.weight"].shape == (8192, 128, 1, 1)


def test_bn3_is_tiled_per_expert(full_size_mapping) -> None:
    _, source, updates, _ = full_size_mapping
    for param in ("weight", "bias", "running_mean", "running_var"):
        tiled = updates[f"adaptor2_sub.bn3.{param}"]
        original = source[f"layer2.3.bn3.{param}"]
        assert tiled.shape == (2048,)
        assert torch.equal(tiled[3 * 512 + 7], original[7])
        assert torch.equal(tiled, torch.cat([original] * 4))


def test_stage4_expert_bn1_splits_plain_bn(full_size_mapping) -> None:
    _, source, updates, report = full_size_mapping
    assert torch.equal(updates["adaptor4_sub.bn1.IN.weight"], source["layer4.2.bn1.weight"][:256])
    assert torch.equal(updates["adaptor4_sub.bn1.IN.bias"], source["layer4.2.bn1.bias"][:256])
    for param in ("weight", "bias", "running_mean", "running_var"):
        expected = source[f"layer4.2.bn1.{param}"][256:]
        assert torch.equal(updates[f"adaptor4_sub.bn1.BN.{param}"], expected)
    assert "adaptor4_sub.bn1.BN.num_batches_tracked" in report.skipped
    # Stages 1-3 already have an IBN source: plain copies.
    assert torch.equal(updates["adaptor1_sub.bn1.IN.bias"], source["layer1.2.bn1.IN.bias"])
    assert torch.equal(
        updates["adaptor3_sub.bn1.BN.running_var"], source["layer3.5.bn1.BN.running_var"]
    )


def test_other_expert_keys_copy_or_average(full_size_mapping) -> None:
    _, source, updates, _ = full_size_mapping
    assert torch.equal(updates["adaptor2_sub.conv1.weight"], source["layer2.3.conv1.weight"])
    assert torch.equal(
        updates["adaptor3_sub.bn2.running_mean"], source["layer3.5.bn2.running_mean"]
    )
    conv2 = updates["adaptor3_sub.conv2.weight"]
    assert conv2.shape == (256, 64, 3, 3)
    assert torch.isclose(
        conv2[10, 5, 1, 2], source["layer3.5.conv2.weight"][10, 20:24, 1, 2].mean()
    )


def test_static_branch_copies_matching_keys_only(full_size_mapping) -> None:
    model, source, updates, report = full_size_mapping
    assert torch.equal(updates["adaptor3_base.conv2.weight"], source["layer3.5.conv2.weight"])
    assert torch.equal(updates["adaptor2_base.bn3.bias"], source["layer2.3.bn3.bias"])
    assert torch.equal(updates["adaptor4_base.bn1.weight"], source["layer4.2.bn1.weight"])
    for stage in (1, 2, 3):  # IBN source keys differ from the base's IN keys
        assert f"adaptor{stage}_base.bn1.weight" in report.initialised
        assert f"adaptor{stage}_base.bn1.weight" not in updates


def test_report_accounts_for_every_key(full_size_mapping) -> None:
    model, source, updates, report = full_size_mapping
    groups = [
        set(report.loaded),
        set(report.sliced),
        set(report.mapped),
        set(report.initialised),
        set(report.skipped),
    ]
    assert sum(map(len, groups)) == len(set().union(*groups)) == len(model.state_dict())
    assert set(updates) == set(report.loaded) | set(report.sliced) | set(report.mapped)
    # 17 expert keys per stage; static: 7 per stage + the stage-4 bn1 weight/bias.
    assert len(report.mapped) == 4 * 17 + 4 * 7 + 2
    assert report.sliced == []
    assert {"conv1.weight", "layer3.4.conv1.weight", "layer1.0.downsample.1.running_var"} <= set(
        report.loaded
    )
    never_pretrained = ("router", "invariant_norm", "specific_norm", "meta_fuse", "meta_se", "map")
    expected_init = {
        name
        for name in model.state_dict()
        if name.startswith(never_pretrained) and not name.endswith("num_batches_tracked")
    } | {f"adaptor{s}_base.bn1.{p}" for s in (1, 2, 3) for p in ("weight", "bias")}
    assert set(report.initialised) == expected_init
    assert {"fc.weight", "fc.bias"} <= set(report.unused)
    assert not any(name.startswith("layer1.2.conv") for name in report.unused)
    assert "98 mapped" in report.summary()


def test_load_from_wrapped_file_into_reduced_model(tmp_path) -> None:
    source = ibn_resnet_a_state_dict(stem=8)
    path = tmp_path / "resnet50_ibn_a-d9d0bb7b.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, path)
    torch.manual_seed(0)
    model = DR50(width_mult=0.125)
    report = load_ibn_resnet50_pretrained(model, path)
    assert torch.equal(model.layer2[0].conv1.weight, source["layer2.0.conv1.weight"])
    assert torch.equal(
        model.adaptor4_sub.bn1.BN.running_var, source["layer4.2.bn1.running_var"][32:]
    )
    assert torch.equal(model.adaptor1_sub.bn3.weight, source["layer1.2.bn3.weight"].repeat(4))
    assert int(model.bn1.num_batches_tracked) == 0
    assert len(report.mapped) == 98 and report.sliced == []


def test_reduced_model_takes_leading_slices_of_full_checkpoint() -> None:
    source = ibn_resnet_a_state_dict()
    model = DR50(width_mult=0.125)
    updates, report = map_ibn_resnet_state_dict(model, source)
    assert torch.equal(updates["conv1.weight"], source["conv1.weight"][:8])
    assert torch.equal(updates["layer1.0.bn1.IN.weight"], source["layer1.0.bn1.IN.weight"][:4])
    assert "conv1.weight" in report.sliced
    assert "adaptor1_sub.conv1.weight" in report.initialised


def test_missing_file_names_download_and_config_key(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_ibn_resnet50_pretrained(DR50(width_mult=0.125), tmp_path / "absent.pth")
    message = str(error.value)
    assert "resnet50_ibn_a-d9d0bb7b.pth" in message
    assert "github.com/XingangPan/IBN-Net" in message
    assert "model.net.backbone.pretrained_path" in message


def test_bad_inputs_raise_clear_errors(tmp_path) -> None:
    path = tmp_path / "not_weights.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_ibn_resnet50_pretrained(DR50(width_mult=0.125), path)
    with pytest.raises(TypeError, match="backbone"):
        map_ibn_resnet_state_dict(torch.nn.Linear(2, 2), {})


def test_depth_101_code_blocks_take_the_last_original_block() -> None:
    source = ibn_resnet_a_state_dict(stem=8, blocks=(3, 4, 23, 3))
    model = DR50(depth=101, width_mult=0.125)
    updates, report = map_ibn_resnet_state_dict(model, source)
    assert report.mapped["adaptor3_sub.bn2.weight"] == "layer3.22.bn2.weight (copy)"
    assert torch.equal(updates["adaptor3_base.conv1.weight"], source["layer3.22.conv1.weight"])
    assert "layer3.21.conv1.weight" in report.loaded
    assert report.sliced == []
