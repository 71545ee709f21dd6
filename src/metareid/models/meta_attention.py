"""MetaGait's attention: the meta hyper network (MHN) and the calibration modules it drives.

The defaults reproduce the released MetaGait code exactly: ``LocalAttention`` is a multi-kernel
ECA channel gate mixed by three MHN scalars, and ``SELayer`` is a static squeeze-excitation gate.
The paper's further components (temporal and spatial attention branches, an MHN-generated SE, Meta
Temporal Pooling) are not in the released code; they are reconstructions from the abstract,
available behind constructor flags that all default to off.

Every module takes ``features [n, c, t, h, w]`` whose padded frames are zero, plus optional
``lengths [n]`` (valid frames); descriptors are averaged over valid frames only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from metareid.models.gait_layers import masked_global_average, temporal_max, temporal_mean

MIX_NORMS = ("none", "softmax")
ATTENTION_COMBINES = ("product", "mean")


def _normalise_mix(weights: torch.Tensor, mix_norm: str) -> torch.Tensor:
    # The released code leaves the MHN mixing weights unconstrained; softmax is the paper option.
    return weights.softmax(dim=-1) if mix_norm == "softmax" else weights


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


class MHN(nn.Module):
    """Meta hyper network: a WeightNet-style generator of a per-sample weight matrix.

    For a descriptor ``g`` (``[n, d]``, usually the global average of the features):

    1. ``r = reduce(g)`` — a 1x1x1 convolution ``d -> max(16, d // 16)`` with bias;
    2. ``a = sigmoid(wn_fc1(r))`` — ``M * out_channels`` gates;
    3. ``theta = wn_fc2(a)`` — a grouped 1x1x1 convolution (``G * out_channels`` groups, no bias)
       turning each group of gates into ``in_channels / G`` weight entries;
    4. ``W(g) = theta`` viewed as ``[out_channels, in_channels]``.

    ``forward`` returns ``W(g) @ inputs`` per sample (``inputs`` defaults to ``g``). With the
    reference ``M = G = 2`` and ``in = 128, out = 3`` this is
    ``w_o = a[2o] * <theta[o, :64], g[:64]> + a[2o+1] * <theta[o, 64:], g[64:]>``, with no
    normalisation of ``w``; it has 2,550 parameters.
    """

    def __init__(
        self,
        in_channels: int = 128,
        out_channels: int = 3,
        descriptor_channels: int | None = None,
        gates_per_output: int = 2,
        groups_per_output: int = 2,
    ) -> None:
        super().__init__()
        if gates_per_output % groups_per_output or in_channels % groups_per_output:
            raise ValueError(
                "MHN needs gates_per_output and in_channels divisible by groups_per_output, got "
                f"{gates_per_output=}, {in_channels=}, {groups_per_output=}"
            )
        descriptor_channels = descriptor_channels or in_channels
        hidden = max(16, descriptor_channels // 16)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.reduce = nn.Conv3d(descriptor_channels, hidden, kernel_size=1)
        self.wn_fc1 = nn.Conv3d(hidden, gates_per_output * out_channels, kernel_size=1)
        self.wn_fc2 = nn.Conv3d(
            gates_per_output * out_channels,
            out_channels * in_channels,
            kernel_size=1,
            groups=groups_per_output * out_channels,
            bias=False,
        )

    def generate_weight(self, descriptor: torch.Tensor) -> torch.Tensor:
        """``descriptor [n, d] -> W [n, out_channels, in_channels]``."""
        volume = rearrange(descriptor, "n d -> n d 1 1 1")
        gates = torch.sigmoid(self.wn_fc1(self.reduce(volume)))
        return rearrange(self.wn_fc2(gates), "n (o i) 1 1 1 -> n o i", o=self.out_channels)

    def forward(self, descriptor: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """``descriptor [n, d]``, ``inputs [n, in]`` (default: the descriptor) -> ``[n, out]``."""
        inputs = descriptor if inputs is None else inputs
        return torch.einsum("noi,ni->no", self.generate_weight(descriptor), inputs)


class LocalAttention(nn.Module):
    """Meta triple attention; the defaults are the released code's channel-only version.

    Channel branch (always on): ``y = GAP(x)`` over ``(t, h, w)`` is read as a 1-channel signal
    along the channel axis and passed through three bias-free ``Conv1d`` with kernels 1, 3 and 5;
    the sigmoid gates are mixed by ``w = MHN(y)`` as ``s1 * w[0] + s5 * w[1] + s3 * w[2]`` — the
    reference pairs weight index 1 with the k=5 gate and index 2 with the k=3 gate.

    Optional branches (reconstructions, each with its own MHN producing 3 mixing weights):

    * temporal: depthwise ``Conv1d`` over time (k = 1, 3, 5) on ``GAP_{h,w}(x)`` -> ``[n, c, t]``;
    * spatial: ``Conv2d`` (k = 3, 5, 7) on ``[mean_{c,t}(x); max_{c,t}(x)]`` -> ``[n, h, w]``.

    ``combine='product'`` multiplies the enabled gates, ``'mean'`` averages them.
    ``mix_norm='softmax'`` normalises every set of mixing weights.

    Shapes: ``[n, c, t, h, w] -> [n, c, t, h, w]``.
    """

    def __init__(
        self,
        channels: int = 128,
        temporal_branch: bool = False,
        spatial_branch: bool = False,
        combine: str = "product",
        mix_norm: str = "none",
    ) -> None:
        super().__init__()
        _check_choice("combine", combine, ATTENTION_COMBINES)
        _check_choice("mix_norm", mix_norm, MIX_NORMS)
        self.combine = combine
        self.mix_norm = mix_norm
        self.conv1 = nn.Conv1d(1, 1, kernel_size=1, padding=0, bias=False)
        self.conv3 = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.conv5 = nn.Conv1d(1, 1, kernel_size=5, padding=2, bias=False)
        self.dynamic_conv = MHN(channels, 3)

        self.temporal_convs: nn.ModuleList | None = None
        self.temporal_mhn: MHN | None = None
        if temporal_branch:
            self.temporal_convs = nn.ModuleList(
                nn.Conv1d(channels, channels, k, padding=k // 2, groups=channels, bias=False)
                for k in (1, 3, 5)
            )
            self.temporal_mhn = MHN(channels, 3)

        self.spatial_convs: nn.ModuleList | None = None
        self.spatial_mhn: MHN | None = None
        if spatial_branch:
            self.spatial_convs = nn.ModuleList(
                nn.Conv2d(2, 1, k, padding=k // 2, bias=False) for k in (3, 5, 7)
            )
            self.spatial_mhn = MHN(channels, 3)

    def _channel_gate(self, descriptor: torch.Tensor) -> torch.Tensor:
        mix = _normalise_mix(self.dynamic_conv(descriptor), self.mix_norm)
        signal = rearrange(descriptor, "n c -> n 1 c")
        gate1, gate3, gate5 = (
            torch.sigmoid(conv(signal)) for conv in (self.conv1, self.conv3, self.conv5)
        )
        gate = gate1 * mix[:, 0:1, None] + gate5 * mix[:, 1:2, None] + gate3 * mix[:, 2:3, None]
        return rearrange(gate, "n 1 c -> n c 1 1 1")

    def _temporal_gate(self, features: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        assert self.temporal_convs is not None and self.temporal_mhn is not None
        mix = _normalise_mix(self.temporal_mhn(descriptor), self.mix_norm)
        # Padded frames are zero, so the temporal convolutions see them as their zero padding.
        per_frame = features.mean(dim=(3, 4))
        gates = torch.stack([torch.sigmoid(conv(per_frame)) for conv in self.temporal_convs], -1)
        gate = torch.einsum("nctk,nk->nct", gates, mix)
        return rearrange(gate, "n c t -> n c t 1 1")

    def _spatial_gate(
        self, features: torch.Tensor, descriptor: torch.Tensor, lengths: torch.Tensor | None
    ) -> torch.Tensor:
        assert self.spatial_convs is not None and self.spatial_mhn is not None
        mix = _normalise_mix(self.spatial_mhn(descriptor), self.mix_norm)
        mean_map = temporal_mean(features, lengths).mean(dim=1, keepdim=True)
        max_map = temporal_max(features, lengths).amax(dim=1, keepdim=True)
        maps = torch.cat([mean_map, max_map], dim=1)
        gates = torch.stack([torch.sigmoid(conv(maps)) for conv in self.spatial_convs], -1)
        gate = torch.einsum("nohwk,nk->nohw", gates, mix)
        return rearrange(gate, "n 1 h w -> n 1 1 h w")

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        descriptor = masked_global_average(features, lengths)
        gates = [self._channel_gate(descriptor)]
        if self.temporal_convs is not None:
            gates.append(self._temporal_gate(features, descriptor))
        if self.spatial_convs is not None:
            gates.append(self._spatial_gate(features, descriptor, lengths))
        if len(gates) == 1:
            return features * gates[0]
        if self.combine == "product":
            for gate in gates:
                features = features * gate
            return features
        return features * (sum(gates) / len(gates))


class SELayer(nn.Module):
    """Squeeze-excitation over ``GAP_{t,h,w}``: ``x * sigmoid(W2 LeakyReLU(W1 g))``, no biases.

    The released code uses static weights with reduction 1 (32,768 parameters at 128 channels).
    ``meta=True`` replaces both matrices by MHN-generated, sample-specific ones (``fc1_mhn``
    generates ``W1``, ``fc2_mhn`` generates ``W2``, both conditioned on ``g``).

    Shapes: ``[n, c, t, h, w] -> [n, c, t, h, w]``.
    """

    def __init__(self, channels: int = 128, reduction: int = 1, meta: bool = False) -> None:
        super().__init__()
        if channels % reduction:
            raise ValueError(f"SELayer: channels {channels} not divisible by {reduction=}")
        hidden = channels // reduction
        self.meta = meta
        if meta:
            self.fc1_mhn = MHN(channels, hidden, descriptor_channels=channels)
            self.fc2_mhn = MHN(hidden, channels, descriptor_channels=channels)
        else:
            self.fc = nn.Sequential(
                nn.Linear(channels, hidden, bias=False),
                nn.LeakyReLU(inplace=True),
                nn.Linear(hidden, channels, bias=False),
                nn.Sigmoid(),
            )

    def gate(self, descriptor: torch.Tensor) -> torch.Tensor:
        """``descriptor [n, c] -> channel gate [n, c]`` in ``(0, 1)``."""
        if not self.meta:
            return self.fc(descriptor)
        hidden = F.leaky_relu(self.fc1_mhn(descriptor))
        return torch.sigmoid(self.fc2_mhn(descriptor, hidden))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        gate = self.gate(masked_global_average(features, lengths))
        return features * rearrange(gate, "n c -> n c 1 1 1")


class MetaTemporalPooling(nn.Module):
    """Meta Temporal Pooling (reconstruction): MHN-weighted mix of max, mean and GeM over time.

    ``Z = l0 * max_t(x) + l1 * mean_t(x) + l2 * GeM_t(x; p_t)`` with ``l = mix(MHN(GAP(x)))``
    (softmax by default) and a learnable scalar ``p_t`` (initial value ``gem_p``).

    Shapes: ``[n, c, t, h, w] -> [n, c, h, w]``.
    """

    def __init__(
        self, channels: int = 128, mix_norm: str = "softmax", gem_p: float = 3.0, eps: float = 1e-6
    ) -> None:
        super().__init__()
        _check_choice("mix_norm", mix_norm, MIX_NORMS)
        self.mix_norm = mix_norm
        self.mhn = MHN(channels, 3)
        self.p = nn.Parameter(torch.full((1,), float(gem_p)))
        self.eps = eps

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        mix = _normalise_mix(self.mhn(masked_global_average(features, lengths)), self.mix_norm)
        max_pooled = temporal_max(features, lengths)
        mean_pooled = temporal_mean(features, lengths)
        powered = temporal_mean(features.clamp(min=self.eps).pow(self.p), lengths)
        gem_pooled = powered.pow(1.0 / self.p)
        stacked = torch.stack([max_pooled, mean_pooled, gem_pooled], dim=-1)
        return torch.einsum("nchwk,nk->nchw", stacked, mix)
