import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metareid.models.meta_ops import (
    MetaBNNorm,
    MetaConv2d,
    MetaGate,
    MetaIBNNorm,
    MetaINNorm,
    MetaLinear,
    MetaParam,
    MetaSELayer,
    bn_mode,
    default_step_scale,
    fast_weights,
    meta_gradients,
    set_bn_mode,
)


class TinyMetaNet(nn.Module):
    """Conv → IBN → gate → SE → frozen-bias BN → linear; one parameter name contains 'adaptor'."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = MetaConv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.adaptor_norm = MetaIBNNorm(16)
        self.fuse = MetaGate(16)
        self.se = MetaSELayer(16)
        self.neck = MetaBNNorm(16, bias_freeze=True)
        self.fc = MetaLinear(16, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images)
        features = self.se(self.fuse(self.adaptor_norm(features), features))
        pooled = self.neck(features.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return self.fc(pooled)


def test_meta_linear_is_bias_free_by_default() -> None:
    assert MetaLinear(8, 3).bias is None
    assert MetaLinear(8, 3, bias=True).bias.shape == (3,)


def test_bn_general_mode_updates_running_stats_with_momentum() -> None:
    norm = MetaBNNorm(2).train()
    inputs = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(2, 2, 1, 1)  # channel 0: {1, 5}, 1: {3, 7}
    output = norm(inputs)
    assert torch.allclose(norm.running_mean, torch.tensor([0.3, 0.5]))  # 0.1 · batch mean
    # Unbiased batch variance is 8 for both channels: 0.9 · 1 + 0.1 · 8.
    assert torch.allclose(norm.running_var, torch.tensor([1.7, 1.7]))
    assert int(norm.num_batches_tracked) == 1
    assert torch.allclose(output.flatten(), torch.tensor([-1.0, -1.0, 1.0, 1.0]), atol=1e-5)


def test_bn_hold_mode_uses_batch_stats_and_leaves_running_stats() -> None:
    norm = MetaBNNorm(2).train()
    inputs = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(2, 2, 1, 1)
    with bn_mode(norm, "hold"):
        output = norm(inputs)
    assert torch.equal(norm.running_mean, torch.zeros(2))
    assert torch.equal(norm.running_var, torch.ones(2))
    assert int(norm.num_batches_tracked) == 0
    assert torch.allclose(output.flatten(), torch.tensor([-1.0, -1.0, 1.0, 1.0]), atol=1e-5)


def test_bn_eval_uses_running_stats_in_any_mode() -> None:
    norm = MetaBNNorm(1, eps=0.0)
    norm.running_mean.fill_(2.0)
    norm.running_var.fill_(4.0)
    norm.eval()
    set_bn_mode(norm, "hold")
    assert torch.allclose(norm(torch.full((1, 1, 1, 2), 6.0)), torch.full((1, 1, 1, 2), 2.0))


def test_bn_mode_restores_previous_modes_even_on_error() -> None:
    model = TinyMetaNet()
    model.neck.running_stats_mode = "hold"
    with pytest.raises(RuntimeError), bn_mode(model, "hold"):
        assert model.adaptor_norm.BN.running_stats_mode == "hold"
        raise RuntimeError("boom")
    assert model.adaptor_norm.BN.running_stats_mode == "general"
    assert model.neck.running_stats_mode == "hold"
    with pytest.raises(ValueError, match="general"):
        set_bn_mode(model, "eval")


def test_bn_rejects_non_4d_input() -> None:
    with pytest.raises(ValueError, match=r"4-D input"):
        MetaBNNorm(3)(torch.randn(4, 3))


def test_frozen_bias_has_no_grad_and_is_untouched_by_fast_weights() -> None:
    norm = MetaBNNorm(4, bias_freeze=True)
    assert not norm.bias.requires_grad and norm.weight.requires_grad
    grads = {"weight": torch.ones(4), "bias": torch.ones(4)}
    fast = fast_weights(norm, grads, step_size=0.5)
    assert fast["bias"] is norm.bias
    assert torch.equal(fast["weight"], torch.full((4,), 0.5))


def test_instance_norm_and_ibn_split() -> None:
    torch.manual_seed(0)
    ibn = MetaIBNNorm(5).train()
    assert ibn.IN.num_features == 2 and ibn.BN.num_features == 3
    assert torch.equal(ibn.IN.weight, torch.ones(2)) and torch.equal(ibn.IN.bias, torch.zeros(2))
    inputs = torch.randn(3, 5, 4, 2)
    output = ibn(inputs)
    first = inputs[:, :2]
    expected_in = (first - first.mean(dim=(2, 3), keepdim=True)) / torch.sqrt(
        first.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    rest = inputs[:, 2:]
    expected_bn = (rest - rest.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(
        rest.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    assert torch.allclose(output[:, :2], expected_in, atol=1e-5)
    assert torch.allclose(output[:, 2:], expected_bn, atol=1e-5)
    assert MetaINNorm(3).running_mean is None


def test_gate_blends_channelwise() -> None:
    gate = MetaGate(2)
    assert gate.gate.shape == (2,)
    with torch.no_grad():
        gate.gate.copy_(torch.tensor([0.0, 100.0]))
    first, second = torch.full((1, 2, 1, 1), 4.0), torch.zeros(1, 2, 1, 1)
    assert torch.allclose(gate(first, second).flatten(), torch.tensor([2.0, 4.0]))


def test_gate_init_scale() -> None:
    torch.manual_seed(0)
    std = MetaGate(4096).gate.std().item()
    assert 0.09 < std < 0.11


def test_param_returns_squared_distances() -> None:
    centers = MetaParam(num_features=2, num_centers=3)
    assert centers.centers.shape == (3, 2)
    with torch.no_grad():
        centers.centers.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]]))
    distances = centers(torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    assert torch.allclose(distances, torch.tensor([[0.0, 25.0, 2.0], [9.0, 16.0, 5.0]]))


def test_se_layer_shapes_and_half_gate_at_zero_weights() -> None:
    se = MetaSELayer(32)
    assert se.fc1.weight.shape == (2, 32) and se.fc2.weight.shape == (32, 2)
    assert se.fc1.bias is None and se.fc2.bias is None
    with torch.no_grad():
        se.fc2.weight.zero_()
    inputs = torch.randn(2, 32, 3, 3)
    assert torch.allclose(se(inputs), inputs * 0.5)
    with pytest.raises(ValueError, match="divisible"):
        MetaSELayer(20)


def test_fast_weights_values_scaling_and_missing_grads() -> None:
    model = TinyMetaNet()
    grads = {
        "conv.weight": torch.ones_like(model.conv.weight),
        "adaptor_norm.BN.weight": torch.full((8,), 2.0),
        "fc.weight": None,
    }
    fast = fast_weights(model, grads, step_size=0.1)
    assert set(fast) == {name for name, _ in model.named_parameters()}
    assert torch.allclose(fast["conv.weight"], model.conv.weight - 0.1)
    # 'adaptor' in the name halves the step: 1 − 0.1 · 0.5 · 2.
    assert torch.allclose(fast["adaptor_norm.BN.weight"], torch.full((8,), 0.9))
    assert fast["fc.weight"] is model.fc.weight
    assert fast["se.fc1.weight"] is model.se.fc1.weight
    assert default_step_scale("backbone.adaptor3_sub.conv1.weight") == 0.5
    assert default_step_scale("backbone.router3.fc1.weight") == 1.0
    custom = fast_weights(model, {"fc.weight": torch.ones(4, 16)}, 1.0, scale_fn=lambda name: 3.0)
    assert torch.allclose(custom["fc.weight"], model.fc.weight - 3.0)


def test_fast_weights_rejects_unknown_names_and_bad_shapes() -> None:
    model = TinyMetaNet()
    with pytest.raises(KeyError, match="module.fc.weight"):
        fast_weights(model, {"module.fc.weight": torch.zeros(4, 16)}, 0.1)
    with pytest.raises(ValueError, match="fc.weight"):
        fast_weights(model, {"fc.weight": torch.zeros(16, 4)}, 0.1)


def test_meta_gradients_match_autograd_and_mark_unused() -> None:
    torch.manual_seed(0)
    model = TinyMetaNet().train()
    loss = model(torch.randn(2, 3, 4, 4)).pow(2).sum()
    grads = meta_gradients(loss, model)
    assert "neck.bias" not in grads  # frozen
    assert grads["fc.weight"] is not None and not grads["fc.weight"].requires_grad
    loss.backward()  # graph was retained for the outer step
    assert torch.allclose(grads["conv.weight"], model.conv.weight.grad)
    unused = MetaLinear(2, 2)
    model.add_module("unused", unused)
    loss = model(torch.randn(2, 3, 4, 4)).sum()
    assert meta_gradients(loss, model)["unused.weight"] is None


def test_functional_call_with_fast_weights_matches_manual_update() -> None:
    torch.manual_seed(0)
    model = TinyMetaNet().train()
    images = torch.randn(4, 3, 6, 6)
    with bn_mode(model, "hold"):
        zero = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        assert torch.equal(
            functional_call(model, fast_weights(model, zero, 0.3), (images,)), model(images)
        )
        grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
        fast_output = functional_call(model, fast_weights(model, grads, 0.3), (images,))

        manual = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in manual.named_parameters():
                if param.requires_grad:
                    param -= 0.3 * default_step_scale(name) * grads[name]
        assert torch.allclose(fast_output, manual(images), atol=1e-6)
        assert torch.equal(manual.neck.bias, model.neck.bias)
        assert not torch.allclose(fast_output, model(images), atol=1e-3)


def test_fast_weight_output_backpropagates_to_original_parameters() -> None:
    torch.manual_seed(0)
    model = TinyMetaNet().train()
    grads = {name: torch.ones_like(p) for name, p in model.named_parameters()}
    with bn_mode(model, "hold"):
        output = functional_call(model, fast_weights(model, grads, 0.1), (torch.randn(2, 3, 4, 4),))
    output.sum().backward()
    assert model.fc.weight.grad is not None and model.conv.weight.grad is not None
    assert model.neck.bias.grad is None
