"""``model.compile`` / ``model.channels_last`` (issue 8 §3): same numbers as the eager network.

Inductor compiles of the real networks take minutes on 2 CPU cores, so those parity tests are
``slow``; the default suite checks the wiring (weights registered once, in-place memory format,
task modules built from the configs) and compile parity on a small Conv3d + BN network with the
``aot_eager`` backend (Dynamo + AOTAutograd, the same graph capture without kernel generation).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.func import functional_call

from hydra_helpers import TINY_GAIT, TINY_REID
from metareid.losses.gait_triplet import BatchAllTripletLoss
from metareid.losses.part_cross_entropy import PartCrossEntropyLoss
from metareid.models import DR50, GaitGL, MetaEmbeddingHead, MetaGait, ReIDBaseline
from metareid.models.compile import to_channels_last, training_forward
from metareid.models.meta_ops import bn_mode, fast_weights, meta_gradients

# Float reassociation only (a compiled graph fuses and reorders reductions).
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def assert_close(actual, expected, what: str) -> None:
    torch.testing.assert_close(actual, expected, **TOLERANCE, msg=lambda m: f"{what}: {m}")


def assert_same_state(module: nn.Module, reference: nn.Module) -> None:
    """Parameters' gradients and buffers (BN running statistics) agree by name."""
    for (name, param), (_, expected) in zip(
        module.named_parameters(), reference.named_parameters(), strict=True
    ):
        if expected.grad is None:
            assert param.grad is None, name
        else:
            assert_close(param.grad, expected.grad, f"grad of {name}")
    for (name, buffer), (_, expected) in zip(
        module.named_buffers(), reference.named_buffers(), strict=True
    ):
        assert_close(buffer, expected, f"buffer {name}")


# --------------------------------------------------------------------------- wiring


class SmallGaitLikeNet(nn.Module):
    """``[n, s, h, w] -> [n, 4]`` through Conv3d + BatchNorm3d + a max over frames."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 4)

    def forward(self, sils: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.norm(self.conv(sils[:, None])))
        return self.fc(features.amax(dim=(2, 3, 4)))


def test_training_forward_registers_no_second_copy_of_the_weights():
    holder = nn.Module()
    holder.net = SmallGaitLikeNet()
    holder.forward_fn = training_forward(holder.net, compile=True, backend="aot_eager")
    expected = {f"net.{key}" for key in holder.net.state_dict()}
    assert set(holder.state_dict()) == expected
    plain = training_forward(holder.net)
    assert plain.__self__ is holder.net


def test_compiled_training_forward_matches_eager_forward_backward_and_bn_statistics():
    torch.manual_seed(0)
    net = SmallGaitLikeNet().train()
    eager = copy.deepcopy(net)
    compiled = training_forward(net, compile=True, backend="aot_eager")
    for step in range(2):  # the second call reuses the graph
        sils = torch.rand(3, 5, 8, 6)
        output, expected = compiled(sils), eager(sils)
        assert_close(output, expected, f"output of step {step}")
        output.pow(2).sum().backward()
        expected.pow(2).sum().backward()
        assert_same_state(net, eager)


def test_channels_last_converts_conv_weights_in_place_by_rank():
    backbone = DR50(width_mult=0.0625)
    conv_weight = backbone.conv1.weight
    training_forward(backbone, channels_last=True)
    assert backbone.conv1.weight is conv_weight  # optimizers keep their parameters
    four_d = [p for p in backbone.parameters() if p.dim() == 4]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    assert not all(p.is_contiguous() for p in four_d)

    gait = to_channels_last(GaitGL(channels=(4, 8, 8), class_num=3, bin_num=4))
    five_d = [p for p in gait.parameters() if p.dim() == 5]
    assert five_d and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in five_d)


def gait_step(forward, sils, labels):
    outputs = forward(sils)
    triplet, _ = BatchAllTripletLoss(0.2)(outputs["embeddings"], labels)
    cross_entropy, _ = PartCrossEntropyLoss()(outputs["logits"], labels)
    (triplet + cross_entropy).backward()
    return outputs


@pytest.mark.parametrize("network", [GaitGL, MetaGait])
def test_channels_last_gait_networks_match_contiguous(network):
    torch.manual_seed(0)
    net = network(channels=(4, 8, 8), class_num=3, bin_num=4).train()
    reference = copy.deepcopy(net)
    forward = training_forward(net, channels_last=True)
    sils, labels = torch.rand(4, 6, 32, 22).round(), torch.tensor([0, 0, 1, 1])
    outputs, expected = gait_step(forward, sils, labels), gait_step(reference, sils, labels)
    for key in ("embeddings", "logits"):
        assert_close(outputs[key], expected[key], key)
    assert_same_state(net, reference)


def tiny_dr50(classes=(4, 4)) -> ReIDBaseline:
    """A 1/16-width DR50 in float64: at init its routers L2-normalise near-zero vectors, which
    amplifies float reassociation in the gradients by ~1e4, beyond any fp32 tolerance."""
    backbone = DR50(width_mult=0.0625)
    net = ReIDBaseline(backbone, MetaEmbeddingHead(backbone.out_channels, list(classes)))
    return net.double().train()


IMAGES = torch.rand(8, 3, 64, 32, generator=torch.Generator().manual_seed(0)).double() * 255


def smooth_loss(outputs: dict) -> torch.Tensor:
    """A fixed random linear function of every output tensor (the ACL losses mine hard pairs,
    whose choice flips between near-tied distances)."""
    generator = torch.Generator().manual_seed(1)
    tensors = [
        t for value in outputs.values() for t in (value if isinstance(value, list) else [value])
    ]
    return sum((t * torch.randn(t.shape, generator=generator).double()).sum() for t in tensors)


def dr50_meta_iteration(net: ReIDBaseline, forward) -> list[torch.Tensor]:
    """ReIDModule's iteration: basic forward and meta-train forward on ``forward``, first-order
    inner step, meta-test through ``functional_call`` on the plain module, backward of all
    three. Returns the three losses."""
    with bn_mode(net, "general"):
        basic = smooth_loss(forward(IMAGES))
    with bn_mode(net, "hold"):
        meta_train = smooth_loss(forward(IMAGES))
        weights = fast_weights(net, meta_gradients(meta_train, net), step_size=1e-4)
        weights.update(dict(net.named_buffers()))
        meta_test = smooth_loss(functional_call(net, weights, (IMAGES[:4],)))
    (basic + meta_train + meta_test).backward()
    return [basic, meta_train, meta_test]


@pytest.mark.slow
def test_channels_last_dr50_meta_iteration_matches_contiguous():
    torch.manual_seed(0)
    net = tiny_dr50()
    reference = copy.deepcopy(net)
    losses = dr50_meta_iteration(net, training_forward(net, channels_last=True))
    expected = dr50_meta_iteration(reference, reference)
    for name, value, target in zip(
        ("basic", "meta_train", "meta_test"), losses, expected, strict=True
    ):
        assert_close(value, target, name)
    assert_same_state(net, reference)


@pytest.mark.parametrize(
    ("overrides", "net_class"),
    [(TINY_GAIT, GaitGL), ([*TINY_REID, "model.net.head.num_classes=[4,4]"], ReIDBaseline)],
)
def test_model_configs_build_a_compiled_training_forward(make_config, overrides, net_class):
    plain = instantiate(make_config("train", overrides).model)
    compiled = instantiate(
        make_config("train", [*overrides, "model.compile=true", "model.channels_last=true"]).model
    )
    assert plain.hparams.compile is False and compiled.hparams.compile is True
    assert isinstance(compiled.net, net_class)
    assert isinstance(compiled._training_forward.__self__, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled._training_forward.__self__._orig_mod is compiled.net
    assert plain._training_forward.__self__ is plain.net
    assert set(compiled.state_dict()) == set(plain.state_dict())


# ----------------------------------------------------------------- inductor parity (slow)


@pytest.mark.slow
@pytest.mark.parametrize("network", [GaitGL, MetaGait])
def test_inductor_compiled_gait_training_step_matches_eager(network):
    torch.manual_seed(0)
    net = network(channels=(4, 8, 8), class_num=3, bin_num=4).train()
    reference = copy.deepcopy(net)
    compiled = training_forward(net, compile=True)
    labels = torch.tensor([0, 0, 1, 1])
    for step in range(2):
        sils = torch.rand(4, 6, 32, 22).round()
        outputs, expected = gait_step(compiled, sils, labels), gait_step(reference, sils, labels)
        for key in ("embeddings", "logits"):
            assert_close(outputs[key], expected[key], f"{key} at step {step}")
        assert_same_state(net, reference)


@pytest.mark.slow
def test_inductor_compiled_dr50_meta_iteration_matches_eager():
    torch.manual_seed(0)
    net = tiny_dr50()
    reference = copy.deepcopy(net)
    losses = dr50_meta_iteration(net, training_forward(net, compile=True))
    expected = dr50_meta_iteration(reference, reference)
    for name, value, target in zip(
        ("basic", "meta_train", "meta_test"), losses, expected, strict=True
    ):
        assert_close(value, target, name)
    assert_same_state(net, reference)
