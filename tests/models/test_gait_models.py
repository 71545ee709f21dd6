"""GaitGL / MetaGait networks and their building blocks (spec metagait.md §3, §4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metareid.models.gait_layers import (
    GeMHPP,
    GLConv,
    SeparateFCs,
    TemporalMaxPool,
    conv_output_lengths,
    masked_global_average,
    temporal_max,
    tile_short_sequences,
)
from metareid.models.gaitgl import GaitGL
from metareid.models.meta_attention import (
    MHN,
    LocalAttention,
    MetaTemporalPooling,
    SELayer,
)
from metareid.models.metagait import MetaGait

REDUCED = {"channels": (4, 8, 16), "bin_num": 16, "class_num": 5}
REDUCED_LARGE = {"channels": (4, 8, 8, 16), "bin_num": 16, "class_num": 5, "variant": "large"}
PAPER_FLAGS = {
    "mta_branches": "channel+temporal+spatial",
    "meta_se": True,
    "temporal_pool": "mtp",
    "mix_norm": "softmax",
}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mhn_param_count(in_channels: int, out_channels: int, descriptor: int | None = None) -> int:
    descriptor = descriptor or in_channels
    hidden = max(16, descriptor // 16)
    return (
        descriptor * hidden
        + hidden
        + hidden * 2 * out_channels
        + 2 * out_channels
        + (out_channels * in_channels)
    )


def gaitgl_large_param_count(channels, class_num: int, parts: int = 64, head: str = "bn") -> int:
    """Analytic count of the OU-MVLP/GREW GaitGL (§4.2); every 3x3x3 conv has 27 taps."""
    c0, c1, c2, c3 = channels
    taps = 27
    convs = taps * (c0 + c0 * c0) + 3 * c0 * c0
    glconv_pairs = 2 * taps * (c0 * c1 + c1 * c1 + c1 * c2 + c2 * c2 + c2 * c3 + c3 * c3)
    head0 = parts * c3 * c3
    classifier = parts * c3 * class_num
    norm = 2 * c3 if head == "bn" else 2 * c3 * parts
    return convs + glconv_pairs + head0 + norm + classifier + 1  # +1: GeM p


# --------------------------------------------------------------------------- sizes


def test_reference_parameter_counts():
    gaitgl, metagait = GaitGL(), MetaGait()
    assert count(gaitgl) == 3_096_673
    assert count(metagait) == 3_132_000
    module_names = ("conv3d", "LTA", "GLConvA0", "GLConvA1", "GLConvB2", "Head0", "Bn", "Head1")
    per_module = {
        name: count(getattr(metagait, name)) for name in (*module_names, "eca", "se", "HPP")
    }
    assert per_module == {
        "conv3d": 864,
        "LTA": 3_072,
        "GLConvA0": 110_592,
        "GLConvA1": 442_368,
        "GLConvB2": 884_736,
        "Head0": 1_048_576,
        "Bn": 256,
        "Head1": 606_208,
        "eca": 2_559,
        "se": 32_768,
        "HPP": 1,
    }
    assert count(MHN(128, 3)) == 2_550
    assert count(LocalAttention(128)) == 2_559
    assert count(SELayer(128)) == 32_768


@pytest.mark.parametrize(
    ("class_num", "head"), [(74, "bn"), (5153, "bn"), (20000, "bnneck")], ids=str
)
def test_large_variant_parameter_count_matches_formula(class_num, head):
    with torch.device("meta"):  # counting only: no memory, no init cost
        net = GaitGL(variant="large", class_num=class_num, head=head)
    expected = gaitgl_large_param_count((32, 64, 128, 256), class_num, head=head)
    print(f"GaitGL large ({head} head, {class_num} classes): {count(net):,} parameters")
    assert count(net) == expected
    if class_num == 5153:
        assert expected == 95_620_449


def test_state_dict_keys_follow_reference_names():
    state = MetaGait().state_dict()
    expected_shapes = {
        "conv3d.0.conv3d.weight": (32, 1, 3, 3, 3),
        "LTA.0.conv3d.weight": (32, 32, 3, 1, 1),
        "GLConvA0.global_conv3d.conv3d.weight": (64, 32, 3, 3, 3),
        "GLConvA0.local_conv3d.conv3d.weight": (64, 32, 3, 3, 3),
        "GLConvA1.global_conv3d.conv3d.weight": (128, 64, 3, 3, 3),
        "GLConvA1.local_conv3d.conv3d.weight": (128, 64, 3, 3, 3),
        "GLConvB2.global_conv3d.conv3d.weight": (128, 128, 3, 3, 3),
        "GLConvB2.local_conv3d.conv3d.weight": (128, 128, 3, 3, 3),
        "HPP.p": (1,),
        "Head0.fc_bin": (64, 128, 128),
        "Bn.weight": (128,),
        "Bn.bias": (128,),
        "Bn.running_mean": (128,),
        "Bn.running_var": (128,),
        "Bn.num_batches_tracked": (),
        "Head1.fc_bin": (64, 128, 74),
        "eca.conv1.weight": (1, 1, 1),
        "eca.conv3.weight": (1, 1, 3),
        "eca.conv5.weight": (1, 1, 5),
        "eca.dynamic_conv.reduce.weight": (16, 128, 1, 1, 1),
        "eca.dynamic_conv.reduce.bias": (16,),
        "eca.dynamic_conv.wn_fc1.weight": (6, 16, 1, 1, 1),
        "eca.dynamic_conv.wn_fc1.bias": (6,),
        "eca.dynamic_conv.wn_fc2.weight": (384, 1, 1, 1, 1),
        "se.fc.0.weight": (128, 128),
        "se.fc.2.weight": (128, 128),
    }
    assert {key: tuple(value.shape) for key, value in state.items()} == expected_shapes
    gaitgl_keys = set(GaitGL().state_dict())
    assert gaitgl_keys == {k for k in expected_shapes if not k.startswith(("eca.", "se."))}

    with torch.device("meta"):
        large = GaitGL(variant="large", class_num=20000, head="bnneck").state_dict()
    assert tuple(large["conv3d.2.conv3d.weight"].shape) == (32, 32, 3, 3, 3)
    assert tuple(large["GLConvB2.1.local_conv3d.conv3d.weight"].shape) == (256, 256, 3, 3, 3)
    assert tuple(large["BNNecks.fc_bin"].shape) == (64, 256, 20000)
    assert tuple(large["BNNecks.bn1d.weight"].shape) == (256 * 64,)
    assert not any(key.startswith(("Bn.", "Head1.")) for key in large)


# --------------------------------------------------------------------------- forward shapes


def test_full_size_metagait_forward_shapes():
    net = MetaGait().eval()
    with torch.no_grad():
        out = net(torch.rand(1, 6, 64, 44))
    assert out["embeddings"].shape == (1, 64, 128)
    assert out["logits"].shape == (1, 64, 74)
    assert out["features"].shape == (1, 64, 128)
    assert torch.isfinite(out["logits"]).all()


@pytest.mark.parametrize("model_cls", [GaitGL, MetaGait])
def test_reduced_config_shapes_and_training_gradients(model_cls):
    torch.manual_seed(0)
    net = model_cls(channels=(8, 16, 32), bin_num=16, class_num=5).train()
    out = net(torch.rand(2, 5, 32, 22))
    assert out["embeddings"].shape == (2, 16, 32)
    assert out["logits"].shape == (2, 16, 5)
    out["logits"].logsumexp(-1).mean().backward()
    assert net.HPP.p.grad is not None and net.HPP.p.grad.abs() > 0
    assert net.conv3d[0].conv3d.weight.grad.abs().sum() > 0
    if model_cls is MetaGait:
        assert net.eca.dynamic_conv.wn_fc2.weight.grad.abs().sum() > 0


def test_backbone_intermediate_shapes_follow_layer_table():
    net = GaitGL(channels=(4, 8, 16), bin_num=16)
    features, lengths = net.backbone(torch.rand(2, 31, 32, 22))
    # LTA: floor((31 - 3) / 3) + 1 = 10 frames; MaxPool halves h, w; GLConvB2 doubles h back.
    assert features.shape == (2, 16, 10, 32, 11)
    assert lengths is None


def test_bnneck_head_returns_pre_bn_embeddings():
    net = GaitGL(**REDUCED_LARGE, head="bnneck").eval()
    with torch.no_grad():
        out = net(torch.rand(2, 6, 32, 22))
    torch.testing.assert_close(out["embeddings"], out["features"])
    assert out["logits"].shape == (2, 16, 5)
    # Cosine classifier on L2-normalised features: |logit| <= 1 and unit-norm part vectors.
    assert out["logits"].abs().max() <= 1 + 1e-5
    norms = out["bnneck_features"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


# --------------------------------------------------------------------------- GLConv


def test_glconv_local_branch_does_not_mix_strips():
    torch.manual_seed(0)
    conv = GLConv(2, 3, halving=2)  # height 8 -> 4 strips of 2 rows
    nn.init.zeros_(conv.global_conv3d.conv3d.weight)  # isolate the local branch
    features = torch.randn(1, 2, 3, 8, 5)
    perturbed = features.clone()
    perturbed[:, :, :, 2:4] += 5.0  # strip 1 only
    with torch.no_grad():
        delta = (conv(perturbed) - conv(features)).abs().amax(dim=(0, 1, 2, 4))
    assert (delta[2:4] > 1e-3).all()
    assert delta[:2].max() == 0 and delta[4:].max() == 0

    # The global branch does propagate across the strip border.
    conv_global = GLConv(2, 3, halving=2)
    nn.init.zeros_(conv_global.local_conv3d.conv3d.weight)
    with torch.no_grad():
        delta = (conv_global(perturbed) - conv_global(features)).abs().amax(dim=(0, 1, 2, 4))
    assert delta[1] > 1e-3 and delta[4] > 1e-3


def test_glconv_fm_sign_concatenates_global_and_local_along_height():
    torch.manual_seed(0)
    conv = GLConv(2, 3, halving=1, fm_sign=True)
    features = torch.randn(2, 2, 4, 6, 5)
    with torch.no_grad():
        out = conv(features)
        global_part = F.leaky_relu(conv.global_conv3d(features))
        local_part = torch.cat(
            [F.leaky_relu(conv.local_conv3d(s)) for s in features.split(3, 3)], 3
        )
    assert out.shape == (2, 3, 4, 12, 5)
    torch.testing.assert_close(out[:, :, :, :6], global_part)
    torch.testing.assert_close(out[:, :, :, 6:], local_part)

    summed = GLConv(2, 3, halving=1, fm_sign=False)
    assert summed(features).shape == (2, 3, 4, 6, 5)


def test_glconv_uneven_strips_match_reference_split():
    torch.manual_seed(0)
    conv = GLConv(2, 2, halving=2)  # height 9 -> strips of 2 rows: 2, 2, 2, 2, 1
    features = torch.randn(1, 2, 3, 9, 4)
    with torch.no_grad():
        expected_local = torch.cat([conv.local_conv3d(s) for s in features.split(2, 3)], 3)
        expected = F.leaky_relu(conv.global_conv3d(features)) + F.leaky_relu(expected_local)
        torch.testing.assert_close(conv(features), expected)


# --------------------------------------------------------------------------- attention


def test_mhn_hand_computed_tiny_case():
    mhn = MHN(in_channels=2, out_channels=1)
    with torch.no_grad():
        nn.init.zeros_(mhn.reduce.weight)
        nn.init.zeros_(mhn.reduce.bias)
        nn.init.zeros_(mhn.wn_fc1.weight)
        mhn.wn_fc1.bias.copy_(torch.tensor([0.0, math.log(3.0)]))  # gates 1/2 and 3/4
        mhn.wn_fc2.weight.copy_(torch.tensor([2.0, -4.0]).view(2, 1, 1, 1, 1))
        # w = 0.5 * 2 * g0 + 0.75 * (-4) * g1 = g0 - 3 g1
        out = mhn(torch.tensor([[3.0, 2.0], [1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[-3.0], [-2.0]]))


def test_mhn_matches_closed_form_at_reference_size():
    torch.manual_seed(0)
    mhn = MHN(128, 3)
    for param in mhn.parameters():
        nn.init.normal_(param, std=0.3)
    descriptor = torch.rand(2, 128)
    with torch.no_grad():
        out = mhn(descriptor)
        reduced = descriptor @ mhn.reduce.weight.view(16, 128).T + mhn.reduce.bias
        gates = torch.sigmoid(reduced @ mhn.wn_fc1.weight.view(6, 16).T + mhn.wn_fc1.bias)
        theta = mhn.wn_fc2.weight.view(3, 128)
    for sample in range(2):
        for o in range(3):
            first = (theta[o, :64] * descriptor[sample, :64]).sum()
            second = (theta[o, 64:] * descriptor[sample, 64:]).sum()
            expected = gates[sample, 2 * o] * first + gates[sample, 2 * o + 1] * second
            torch.testing.assert_close(out[sample, o], expected, rtol=1e-5, atol=1e-6)


class _FixedWeights(nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.weights = torch.tensor([weights])

    def forward(self, descriptor):
        return self.weights.expand(descriptor.shape[0], -1)


def test_local_attention_pairs_weight_1_with_kernel_5():
    attention = LocalAttention(channels=6)
    attention.dynamic_conv = _FixedWeights([1.0, 10.0, 100.0])
    with torch.no_grad():
        attention.conv1.weight.fill_(0.5)
        attention.conv3.weight.copy_(torch.tensor([[[0.0, -1.0, 0.0]]]))
        attention.conv5.weight.copy_(torch.tensor([[[0.0, 0.0, 2.0, 0.0, 0.0]]]))
        features = torch.rand(1, 6, 2, 3, 3) + 0.5
        g = features.mean(dim=(2, 3, 4)).view(1, 6, 1, 1, 1)
        gate1, gate3, gate5 = torch.sigmoid(0.5 * g), torch.sigmoid(-g), torch.sigmoid(2 * g)
        expected = features * (gate1 * 1.0 + gate5 * 10.0 + gate3 * 100.0)
        swapped = features * (gate1 * 1.0 + gate3 * 10.0 + gate5 * 100.0)
        out = attention(features)
    torch.testing.assert_close(out, expected)
    assert (out - swapped).abs().max() > 1.0


def test_se_layer_formula():
    torch.manual_seed(0)
    se = SELayer(4)
    features = torch.randn(2, 4, 3, 2, 2)
    with torch.no_grad():
        g = features.mean(dim=(2, 3, 4))
        w1, w2 = se.fc[0].weight, se.fc[2].weight
        gate = torch.sigmoid(F.leaky_relu(g @ w1.T) @ w2.T)
        torch.testing.assert_close(se(features), features * gate.view(2, 4, 1, 1, 1))
    assert se.fc[0].bias is None and se.fc[2].bias is None


def test_meta_temporal_pooling_mixes_max_mean_and_gem():
    pool = MetaTemporalPooling(channels=2, gem_p=2.0)
    pool.mhn = _FixedWeights([0.0, math.log(2.0), math.log(1.0)])  # softmax -> 1/4, 1/2, 1/4
    features = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1).repeat(1, 2, 1, 1, 1)
    with torch.no_grad():
        out = pool(features)
    gem = math.sqrt((1.0 + 9.0) / 2)
    expected = (1 * 3.0 + 2 * 2.0 + 1 * gem) / 4  # softmax([0, ln2, 0]) = [1/4, 1/2, 1/4]
    torch.testing.assert_close(out, torch.full((1, 2, 1, 1), expected))


# --------------------------------------------------------------------------- pooling, heads


def test_gem_hpp_hand_values():
    hpp = GeMHPP(bin_num=2, p=2.0)
    # height 4 -> 2 strips of 2 rows x 2 columns
    features = torch.tensor([[1.0, 1.0], [1.0, 1.0], [3.0, 1.0], [-5.0, 1.0]]).view(1, 1, 4, 2)
    out = hpp(features)
    # strip 2: clamp(-5) -> 1e-6; sqrt((9 + 1 + 1e-12 + 1) / 4)
    torch.testing.assert_close(out, torch.tensor([[[1.0, math.sqrt(11 / 4)]]]))
    assert GeMHPP().p.item() == 6.5
    with pytest.raises(ValueError, match="not divisible by bin count 3"):
        GeMHPP(bin_num=3)(torch.rand(1, 1, 4, 2))


def test_separate_fcs_is_a_per_part_matmul():
    torch.manual_seed(0)
    fcs = SeparateFCs(parts_num=3, in_channels=4, out_channels=2)
    features = torch.randn(5, 4, 3)
    out = fcs(features)
    for part in range(3):
        torch.testing.assert_close(out[:, :, part], features[:, :, part] @ fcs.fc_bin[part])


# --------------------------------------------------------------------------- initialisation


def test_reference_initialisation_statistics():
    torch.manual_seed(0)
    net = MetaGait()
    head0_bound = math.sqrt(6 / (128 * 128 + 64 * 128))
    assert head0_bound == pytest.approx(0.015625)
    head0 = net.Head0.fc_bin
    assert head0.abs().max() <= head0_bound
    assert head0.abs().max() > 0.99 * head0_bound
    assert head0.std().item() == pytest.approx(head0_bound / math.sqrt(3), rel=0.01)

    conv = net.GLConvB2.global_conv3d.conv3d.weight
    conv_bound = math.sqrt(6 / (128 * 27 + 128 * 27))
    assert conv.abs().max() <= conv_bound and conv.abs().max() > 0.99 * conv_bound

    bn_weight = net.Bn.weight
    assert bn_weight.mean().item() == pytest.approx(1.0, abs=0.01)
    assert 0.01 < bn_weight.std().item() < 0.03
    assert (net.Bn.bias == 0).all()
    assert (net.eca.dynamic_conv.reduce.bias == 0).all()
    assert (net.eca.dynamic_conv.wn_fc1.bias == 0).all()
    se_bound = math.sqrt(6 / 256)
    assert net.se.fc[0].weight.abs().max() <= se_bound
    assert net.HPP.p.item() == 6.5


# --------------------------------------------------------------------------- sequence handling


def test_length_helpers_hand_values():
    lengths = torch.tensor([3, 5, 31, 77])
    assert conv_output_lengths(lengths, kernel=3, stride=3, padding=0).tolist() == [1, 1, 10, 25]
    assert conv_output_lengths(lengths, kernel=3, stride=1, padding=1).tolist() == [3, 5, 31, 77]

    features = torch.tensor([[-4.0, -2.0, 0.0], [1.0, 5.0, 0.0]]).view(2, 1, 3, 1, 1)
    lengths = torch.tensor([2, 2])
    assert temporal_max(features, lengths).flatten().tolist() == [-2.0, 5.0]
    assert temporal_max(features, None).flatten().tolist() == [0.0, 5.0]
    assert masked_global_average(features, lengths).flatten().tolist() == [-3.0, 3.0]
    assert TemporalMaxPool()(features, torch.tensor([1, 3])).flatten().tolist() == [-4.0, 5.0]


def test_tile_short_sequences_per_sequence():
    sils = torch.zeros(3, 4, 1, 1)
    sils[0, :1] = torch.tensor([7.0]).view(1, 1, 1)
    sils[1, :2] = torch.tensor([1.0, 2.0]).view(2, 1, 1)
    sils[2, :4] = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1)
    tiled, lengths = tile_short_sequences(sils, torch.tensor([1, 2, 4]))
    assert lengths.tolist() == [3, 4, 4]
    assert tiled[:, :, 0, 0].tolist() == [[7, 7, 7, 0], [1, 2, 1, 2], [1, 2, 3, 4]]

    alone, none = tile_short_sequences(sils[1:2, :2], None)
    assert none is None and alone[0, :, 0, 0].tolist() == [1, 2, 1, 2]


def test_short_sequences_are_tiled_not_duplicated():
    torch.manual_seed(0)
    net = GaitGL(**REDUCED).eval()
    clip = torch.rand(1, 2, 32, 22)
    with torch.no_grad():
        torch.testing.assert_close(
            net(clip)["embeddings"], net(clip[:, [0, 1, 0, 1]])["embeddings"]
        )
        single = clip[:, :1]
        torch.testing.assert_close(
            net(single)["embeddings"], net(single[:, [0, 0, 0]])["embeddings"]
        )
        assert (net(clip)["embeddings"] - net(clip[:, [0, 0, 1, 1]])["embeddings"]).abs().max() > 0


@pytest.mark.parametrize(
    ("model_cls", "kwargs"),
    [
        (GaitGL, REDUCED),
        (GaitGL, {**REDUCED_LARGE, "head": "bnneck"}),
        (MetaGait, REDUCED),
        (MetaGait, {**REDUCED, **PAPER_FLAGS}),
        (
            MetaGait,
            {**REDUCED, "mta_branches": "channel+temporal+spatial", "attention_combine": "mean"},
        ),
    ],
    ids=["gaitgl", "gaitgl-large-bnneck", "metagait", "metagait-paper", "metagait-mean"],
)
def test_padded_batch_matches_one_sequence_at_a_time(model_cls, kwargs):
    torch.manual_seed(0)
    net = model_cls(**kwargs).eval()
    lengths = [2, 7, 31]
    clips = [torch.rand(length, 32, 22) for length in lengths]
    padded = torch.zeros(len(clips), max(lengths), 32, 22)
    for index, clip in enumerate(clips):
        padded[index, : len(clip)] = clip
    with torch.no_grad():
        batched = net(padded, seq_lens=torch.tensor(lengths))
        unmasked = net(padded)
        for index, clip in enumerate(clips):
            alone = net(clip.unsqueeze(0))
            for key in ("embeddings", "logits"):
                torch.testing.assert_close(batched[key][index], alone[key][0], atol=1e-5, rtol=1e-4)
            if lengths[index] < max(lengths):
                # Without lengths the padding leaks into the result: the masking is load-bearing.
                gap = (unmasked["embeddings"][index] - alone["embeddings"][0]).abs().max()
                assert gap > 1e-3


# --------------------------------------------------------------------------- paper options


def test_paper_options_default_off_and_change_counts():
    width = 128
    with torch.device("meta"):
        default = MetaGait()
        flagged = {
            "temporal": MetaGait(mta_branches="channel+temporal"),
            "spatial": MetaGait(mta_branches="channel+spatial"),
            "meta_se": MetaGait(meta_se=True),
            "mtp": MetaGait(temporal_pool="mtp"),
            "all": MetaGait(**PAPER_FLAGS),
        }
    assert default.eca.temporal_convs is None and default.eca.spatial_convs is None
    assert not default.se.meta and isinstance(default.TP, TemporalMaxPool)
    assert default.eca.mix_norm == "none"

    deltas = {
        "temporal": width * (1 + 3 + 5) + mhn_param_count(width, 3),
        "spatial": 2 * (9 + 25 + 49) + mhn_param_count(width, 3),
        "meta_se": 2 * mhn_param_count(width, width) - 2 * width * width,
        "mtp": mhn_param_count(width, 3) + 1,
    }
    assert deltas == {"temporal": 3_702, "spatial": 2_716, "meta_se": 12_832, "mtp": 2_551}
    for name, delta in deltas.items():
        assert count(flagged[name]) == 3_132_000 + delta, name
    assert count(flagged["all"]) == 3_132_000 + sum(deltas.values())


def test_paper_options_change_the_output():
    torch.manual_seed(0)
    code_faithful = MetaGait(**REDUCED).eval()
    sils = torch.rand(2, 9, 32, 22)
    with torch.no_grad():
        reference = code_faithful(sils)["embeddings"]
        paper_options = (
            {"mta_branches": "channel+temporal"},
            {"mta_branches": "channel+spatial"},
            {"mix_norm": "softmax"},
            {"meta_se": True},
            {"temporal_pool": "mtp"},
        )
        for options in paper_options:
            variant = MetaGait(**REDUCED, **options).eval()
            # Shared modules get the code-faithful weights; only the option differs.
            variant.load_state_dict(code_faithful.state_dict(), strict=False)
            assert (variant(sils)["embeddings"] - reference).abs().max() > 1e-4, options


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    net = GaitGL(**REDUCED)
    with pytest.raises(ValueError, match=r"sils must be \[n, s, h, w\]"):
        net(torch.rand(2, 1, 4, 32, 22))
    with pytest.raises(ValueError, match="divide uint8 frames by 255"):
        net(torch.zeros(1, 4, 32, 22, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"seq_lens must lie in \[1, s=4\]"):
        net(torch.rand(2, 4, 32, 22), seq_lens=torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="seq_lens must have shape"):
        net(torch.rand(2, 4, 32, 22), seq_lens=torch.tensor([4]))
    with pytest.raises(ValueError, match="needs 4 channel widths"):
        GaitGL(variant="large", channels=(32, 64, 128))
    with pytest.raises(ValueError, match="mta_branches"):
        MetaGait(mta_branches="temporal")
    with pytest.raises(ValueError, match="temporal_pool"):
        MetaGait(temporal_pool="avg")
