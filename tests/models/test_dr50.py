import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metareid.models.dr50 import DR50, ExpertBottleneck, HyperRouter
from metareid.models.meta_ops import (
    MetaBNNorm,
    bn_mode,
    default_step_scale,
    fast_weights,
    meta_gradients,
)
from metareid.models.reid_baseline import ReIDBaseline
from metareid.models.reid_head import GeneralizedMeanPooling, MetaEmbeddingHead

SMALL_WIDTH = 0.125  # stage widths 32/64/128/256


@pytest.fixture(scope="module")
def full_size_baseline() -> ReIDBaseline:
    # Shapes and names only: the meta device allocates no memory and runs no initialiser.
    with torch.device("meta"):
        backbone = DR50()
        return ReIDBaseline(backbone, MetaEmbeddingHead(2048, num_classes=[11934, 751, 1041]))


def _small_model(num_classes=(5, 3)) -> ReIDBaseline:
    torch.manual_seed(0)
    backbone = DR50(width_mult=SMALL_WIDTH)
    return ReIDBaseline(backbone, MetaEmbeddingHead(backbone.out_channels, num_classes))


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 64, 32, generator=torch.Generator().manual_seed(1)) * 255


def _count(module: torch.nn.Module) -> int:
    return sum(param.numel() for param in module.parameters())


def test_small_forward_shapes_and_routing_distributions() -> None:
    backbone = DR50(width_mult=SMALL_WIDTH).train()
    feature_map, routing, stage_features = backbone(torch.randn(2, 3, 64, 32))
    assert feature_map.shape == (2, 256, 4, 2)  # last stride 1: 64×32 / 16
    assert routing.shape == (2, 16)
    assert torch.allclose(routing.view(2, 4, 4).sum(-1), torch.ones(2, 4), atol=1e-6)
    assert (routing > 0).all()
    assert [feature.shape for feature in stage_features] == [
        (2, 32),
        (2, 64),
        (2, 128),
        (2, 256),
    ]
    for feature in stage_features:
        assert torch.allclose(feature.norm(dim=1), torch.ones(2), atol=1e-5)


def test_last_stride_two_halves_the_final_map() -> None:
    backbone = DR50(width_mult=SMALL_WIDTH, last_stride=2, num_experts=2).eval()
    feature_map, routing, _ = backbone(torch.randn(1, 3, 64, 32))
    assert feature_map.shape == (1, 256, 2, 1)
    assert routing.shape == (1, 8)


def test_full_size_parameter_count_matches_spec(full_size_baseline: ReIDBaseline) -> None:
    backbone = full_size_baseline.backbone
    total = _count(backbone)
    print(f"DR50 backbone parameters: {total:,}")
    assert total == 29_621_312
    assert abs(total - 29.62e6) / 29.62e6 < 0.005
    # Spec §2.6 per stage (M): main blocks / static / dynamic / router / norms+gate+SE+map.
    spec = {
        1: (0.146, 0.070, 0.044, 0.024, 0.010),
        2: (0.940, 0.280, 0.173, 0.088, 0.036),
        3: (5.98, 1.12, 0.68, 0.34, 0.14),
        4: (10.50, 4.46, 2.71, 1.34, 0.54),
    }
    exact = {
        1: (145_408, 70_400, 44_288, 23_552, 9_984),
        2: (939_520, 280_064, 172_544, 88_064, 36_352),
        3: (5_981_184, 1_117_184, 680_960, 339_968, 138_240),
        4: (10_502_144, 4_462_592, 2_705_408, 1_335_296, 538_624),
    }
    stem = _count(backbone.conv1) + _count(backbone.bn1)
    assert stem + sum(map(sum, exact.values())) == total
    for stage, expected in spec.items():
        fusion = sum(
            _count(getattr(backbone, f"{name}{stage}"))
            for name in ("invariant_norm", "specific_norm", "meta_fuse", "meta_se", "map")
        )
        counts = (
            _count(getattr(backbone, f"layer{stage}")),
            _count(getattr(backbone, f"adaptor{stage}_base")),
            _count(getattr(backbone, f"adaptor{stage}_sub")),
            _count(getattr(backbone, f"router{stage}")),
            fusion,
        )
        assert counts == exact[stage]
        for count, millions in zip(counts, expected, strict=True):
            # The spec's analytical figures agree to one unit of their last quoted digit.
            last_digit = 10.0 ** -len(str(millions).split(".")[1])
            assert abs(count / 1e6 - millions) <= last_digit, (stage, counts)


def test_head_parameter_count_for_three_sources(full_size_baseline: ReIDBaseline) -> None:
    # 2 × 2048 × 13,726 (classifiers + centres) + BNNeck weight and frozen bias.
    assert _count(full_size_baseline.heads) == 2 * 2048 * 13_726 + 2 * 2048


def test_state_dict_keys_match_reference_names(full_size_baseline: ReIDBaseline) -> None:
    shapes = {name: tuple(t.shape) for name, t in full_size_baseline.state_dict().items()}
    expected = {
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.bn1.running_var": (64,),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer1.0.downsample.1.bias": (256,),
        "backbone.layer1.1.bn1.IN.weight": (32,),
        "backbone.layer3.4.bn1.BN.running_mean": (128,),
        "backbone.layer4.1.bn1.weight": (512,),  # no IBN in stage 4
        "backbone.adaptor1_base.bn1.weight": (64,),
        "backbone.adaptor4_base.conv3.weight": (2048, 512, 1, 1),
        "backbone.adaptor1_sub.conv1.weight": (64, 256, 1, 1),
        "backbone.adaptor2_sub.conv2.weight": (128, 32, 3, 3),
        "backbone.adaptor4_sub.conv3.weight": (8192, 128, 1, 1),
        "backbone.adaptor4_sub.bn1.IN.weight": (256,),
        "backbone.adaptor4_sub.bn1.BN.running_var": (256,),
        "backbone.adaptor3_sub.bn3.weight": (4096,),
        "backbone.router1.fc1.weight": (16, 256),
        "backbone.router1.fc2.weight": (1024, 16),
        "backbone.router4.fc_classifier.weight": (3, 8192),
        "backbone.invariant_norm2.running_mean": (512,),
        "backbone.specific_norm3.weight": (1024,),
        "backbone.meta_fuse1.gate": (256,),
        "backbone.meta_se4.fc1.weight": (128, 2048),
        "backbone.meta_se4.fc2.weight": (2048, 128),
        "backbone.map4.bias": (2048,),
        "heads.bottleneck.0.weight": (2048,),
        "heads.bottleneck.0.running_mean": (2048,),
        "heads.weight1.weight": (11934, 2048),
        "heads.weight3.weight": (1041, 2048),
        "heads.center.centers": (13726, 2048),
    }
    assert {name: shapes.get(name) for name in expected} == expected
    assert not any("pixel_" in name or name.endswith(".IN.running_mean") for name in shapes)
    assert not any(name.startswith("backbone.adaptor1_base.bn1.IN") for name in shapes)
    backbone = full_size_baseline.backbone
    assert [len(getattr(backbone, f"layer{s}")) for s in range(1, 5)] == [2, 3, 5, 2]
    assert all(
        name.endswith(("weight", "bias", "gate", "centers"))
        for name, _ in full_size_baseline.named_parameters()
    )


def test_initialisation_follows_spec() -> None:
    torch.manual_seed(0)
    backbone = DR50(width_mult=0.25)
    conv = backbone.layer3[1].conv2.weight  # 64 → 64, 3×3: fan-out 576
    assert abs(conv.std().item() - math.sqrt(2 / (9 * 64))) < 0.05 * math.sqrt(2 / (9 * 64))
    expert_conv = backbone.adaptor4_sub.conv3.weight  # fan-out uses all 4·C output channels
    expected = math.sqrt(2 / 2048)
    assert abs(expert_conv.std().item() - expected) < 0.05 * expected
    for module in backbone.modules():
        if isinstance(module, MetaBNNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    assert torch.equal(backbone.adaptor2_base.bn2.weight, torch.ones(32))
    for stage in range(1, 5):
        assert not getattr(backbone, f"map{stage}").bias.requires_grad
        assert getattr(backbone, f"router{stage}").fc1.bias is None


def test_invalid_configurations_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="depth"):
        DR50(depth=34)
    with pytest.raises(ValueError, match="multiple of 4"):
        DR50(width_mult=0.1)
    with pytest.raises(ValueError, match="num_experts=8"):
        DR50(width_mult=0.0625, num_experts=8)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        DR50(width_mult=SMALL_WIDTH)(torch.randn(2, 1, 64, 32))


def test_expert_branch_equals_independent_bottlenecks() -> None:
    torch.manual_seed(0)
    channels, planes, experts = 16, 8, 4
    branch = ExpertBottleneck(channels, planes, num_experts=experts, with_ibn=False)
    for norm in (branch.bn1, branch.bn2, branch.bn3):
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    branch.eval()  # running stats (0, 1): each norm is a fixed per-channel affine map
    inputs = torch.randn(2, channels, 3, 3)
    output = branch(inputs)
    assert output.shape == (2, experts, channels, 3, 3)

    def affine(norm: MetaBNNorm, features: torch.Tensor, rows: slice) -> torch.Tensor:
        scale = norm.weight[rows] / math.sqrt(1 + norm.eps)
        return features * scale.view(1, -1, 1, 1) + norm.bias[rows].view(1, -1, 1, 1)

    width = planes // experts
    for expert in range(experts):
        narrow = slice(expert * width, (expert + 1) * width)
        wide = slice(expert * channels, (expert + 1) * channels)
        hidden = F.relu(affine(branch.bn1, F.conv2d(inputs, branch.conv1.weight[narrow]), narrow))
        hidden = F.conv2d(hidden, branch.conv2.weight[narrow], padding=1)
        hidden = F.relu(affine(branch.bn2, hidden, narrow))
        hidden = affine(branch.bn3, F.conv2d(hidden, branch.conv3.weight[wide]), wide)
        assert torch.allclose(output[:, expert], F.relu(hidden + inputs), atol=1e-5)


def test_expert_branch_ibn_split_covers_first_half_of_experts() -> None:
    branch = ExpertBottleneck(32, 8, num_experts=4, with_ibn=True)
    assert branch.bn1.IN.num_features == 4 and branch.bn1.BN.num_features == 4
    assert branch.conv1.weight.shape == (8, 32, 1, 1) and branch.conv1.groups == 4


def test_router_matches_hand_computation() -> None:
    router = HyperRouter(16, num_experts=2)
    with torch.no_grad():
        router.fc1.weight.zero_()
        router.fc1.weight[0, 0] = 1.0  # hidden = relu(normalize([v0, 0])) = [1, 0] when v0 > 0
        router.fc2.weight.zero_()
        # fc2 output index c·K + k holds M[c, k]: M[0, 0] = 2 and M[1, 1] = −1.
        router.fc2.weight[0 * 2 + 0, 0] = 2.0
        router.fc2.weight[1 * 2 + 1, 0] = -1.0
    inputs = torch.zeros(1, 16, 2, 2)
    inputs[0, 0] = 3.0
    inputs[0, 1] = 1.0
    # logits = vᵀM = [3·2, 1·(−1)] = [6, −1]
    assert torch.allclose(router(inputs), torch.softmax(torch.tensor([[6.0, -1.0]]), dim=-1))
    assert router.fc_classifier.weight.shape == (3, 32)


def test_fast_weight_forward_equals_manually_updated_model() -> None:
    model = _small_model().train()
    images = _images()
    with bn_mode(model, "hold"):
        zero = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        plain, fast = model(images), functional_call(model, fast_weights(model, zero, 0.04), images)
        for key in ("neck_feat", "routing_weights", "center_distmat"):
            assert torch.allclose(plain[key], fast[key], atol=1e-6)

        loss = plain["neck_feat"].pow(2).mean() + plain["logits"][0].logsumexp(1).mean()
        grads = meta_gradients(loss, model)
        assert grads["backbone.router1.fc_classifier.weight"] is None  # never in the graph
        updated = functional_call(model, fast_weights(model, grads, 0.04), images)

        manual = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in manual.named_parameters():
                if grads.get(name) is not None and param.requires_grad:
                    param -= 0.04 * default_step_scale(name) * grads[name]
        expected = manual(images)
    for key in ("neck_feat", "routing_weights", "center_distmat", "features"):
        assert torch.allclose(updated[key], expected[key], atol=1e-5), key
    assert not torch.allclose(updated["neck_feat"], plain["neck_feat"], atol=1e-4)


def test_bn_hold_keeps_and_general_updates_running_stats() -> None:
    model = _small_model().train()
    norms = [m for m in model.modules() if isinstance(m, MetaBNNorm)]
    before = [norm.running_mean.clone() for norm in norms]
    with bn_mode(model, "hold"):
        model(_images())
    assert all(torch.equal(a, n.running_mean) for a, n in zip(before, norms, strict=True))
    with bn_mode(model, "general"):
        model(_images())
    changed = [not torch.equal(a, n.running_mean) for a, n in zip(before, norms, strict=True)]
    assert all(changed)


def test_gem_pooling_hand_computed() -> None:
    inputs = torch.tensor([1.0, 2.0, -5.0, 0.0]).view(1, 1, 2, 2)
    expected = ((1 + 8 + 2e-18) / 4) ** (1 / 3)  # negatives and zeros clamp to 1e-6
    assert torch.allclose(GeneralizedMeanPooling(3.0)(inputs).flatten(), torch.tensor([expected]))


def test_head_training_outputs_for_any_number_of_domains() -> None:
    torch.manual_seed(0)
    for num_classes in ([7], [4, 2, 3, 5]):
        head = MetaEmbeddingHead(8, num_classes).train()
        outputs = head(torch.rand(3, 8, 4, 2))
        assert [t.shape for t in outputs["logits"]] == [(3, n) for n in num_classes]
        assert outputs["center_distmat"].shape == (3, sum(num_classes))
        neck = outputs["neck_feat"]
        assert torch.allclose(outputs["features"], F.normalize(neck, dim=1))
        expected = torch.cdist(neck, head.center.centers).pow(2)
        assert torch.allclose(outputs["center_distmat"], expected, atol=1e-4)
        assert torch.allclose(outputs["logits"][-1], neck @ head.classifiers[-1].weight.t())
    assert not head.bottleneck[0].bias.requires_grad
    assert 0.008 < MetaEmbeddingHead(64, [4000]).weight1.weight.std().item() < 0.012


def test_head_eval_and_neck_before() -> None:
    torch.manual_seed(0)
    features = torch.rand(3, 8, 4, 2)
    head = MetaEmbeddingHead(8, [4], neck_feat="before").train()
    pooled = GeneralizedMeanPooling()(features).flatten(1)
    assert torch.allclose(head(features)["features"], pooled)
    head.eval()
    with torch.no_grad():
        head.bottleneck[0].running_mean.fill_(0.5)
        head.bottleneck[0].running_var.fill_(1.0)
    expected = (pooled - 0.5) / math.sqrt(1 + 1e-5)
    assert torch.allclose(head(features), expected, atol=1e-5)
    with pytest.raises(ValueError, match="neck_feat"):
        MetaEmbeddingHead(8, [4], neck_feat="middle")
    with pytest.raises(ValueError, match="num_classes"):
        MetaEmbeddingHead(8, [])


def test_baseline_normalises_without_touching_input() -> None:
    model = _small_model().train()
    images = _images(4)
    original = images.clone()
    outputs = model(images)
    assert torch.equal(images, original)
    assert set(outputs) == {"logits", "center_distmat", "neck_feat", "features", "routing_weights"}
    assert outputs["routing_weights"].shape == (4, 16)
    white = torch.full((1, 3, 1, 1), 255.0)
    expected = (255 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375]
    )
    assert torch.allclose(model.normalize(white).flatten(), expected)
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (4, 256)


def test_depth_101_stage_layout() -> None:
    with torch.device("meta"):
        backbone = DR50(depth=101)
    assert [len(getattr(backbone, f"layer{s}")) for s in range(1, 5)] == [2, 3, 22, 2]
    # 17 more standard stage-3 bottlenecks of 1,117,184 parameters each.
    assert _count(backbone) == 29_621_312 + 17 * 1_117_184
