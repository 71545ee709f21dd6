"""DR50: the Meta Dynamic Router ResNet backbone of ACL (ECCV 2022), as a plain ``nn.Module``.

Layout (spec dr50.md §2.3): an IBN-a ResNet whose last block in every stage is replaced by a
CODE block::

    static  = invariant_norm{i}(adaptor{i}_base(x))             # IN bottleneck
    experts = adaptor{i}_sub(x)                                 # K grouped bottlenecks
    weights = router{i}(x)                                      # [N, K], per sample
    dynamic = specific_norm{i}(Σ_k weights_k · experts_k)
    x       = meta_se{i}(meta_fuse{i}(static, dynamic))         # gate, then SE
    side    = L2norm(map{i}(GAP(x)))                            # unused by the losses

Module names reproduce the ACL checkpoint keys exactly (``conv1``, ``bn1``, ``layer1..4``,
``adaptor{i}_base``, ``adaptor{i}_sub``, ``router{i}.{fc1,fc2,fc_classifier}``,
``invariant_norm{i}``, ``specific_norm{i}``, ``meta_fuse{i}.gate``, ``meta_se{i}.{fc1,fc2}``,
``map{i}``; IBN ``bn1.IN`` / ``bn1.BN``; ``downsample.0`` / ``downsample.1``).

Reduced models for CPU demos use the same code through ``width_mult``: every channel count is
scaled from a stem width ``round(64 · width_mult)``, which must be a positive multiple of both 4
(routers and SE layers reduce the stage width ``4 · planes`` by 16) and ``num_experts`` (the
grouped expert convolutions split ``planes`` channels into ``num_experts`` groups). The smallest
valid stem with K = 4 is 4 (``width_mult=0.0625``); ``width_mult=0.125`` gives stage widths
32/64/128/256. The input must leave more than one pixel at stride 16 (instance norm needs two
spatial elements), e.g. 64×32 or larger.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from metareid.models.meta_ops import (
    MetaBNNorm,
    MetaConv2d,
    MetaGate,
    MetaIBNNorm,
    MetaINNorm,
    MetaLinear,
    MetaSELayer,
)

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
NUM_STAGES = 4


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4) built from meta layers.

    ``norm="BN"`` uses MetaBNNorm (``bn1`` becomes MetaIBNNorm when ``with_ibn``); ``norm="IN"``
    uses affine MetaINNorm for all three norms (the static CODE branch).

    Shapes: ``[N, in_channels, H, W] -> [N, 4·planes, H/stride, W/stride]``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        norm: str = "BN",
        with_ibn: bool = False,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if norm not in ("BN", "IN"):
            raise ValueError(f"Bottleneck norm must be 'BN' or 'IN', got {norm!r}")
        norm_layer = MetaINNorm if norm == "IN" else MetaBNNorm
        self.conv1 = MetaConv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = MetaIBNNorm(planes) if with_ibn else norm_layer(planes)
        self.conv2 = MetaConv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = MetaConv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.downsample = downsample

    def forward(self, inputs: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(inputs)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = inputs if self.downsample is None else self.downsample(inputs)
        return F.relu(out + shortcut)


class ExpertBottleneck(nn.Module):
    """The dynamic CODE branch ("Bottleneck2"): K independent bottleneck experts as grouped convs.

    The input is tiled K times along channels; group k of every convolution belongs to expert k,
    so expert k maps the full C-channel input to C channels through a ``planes / K`` wide
    bottleneck with its own weights and BatchNorm channels. With ``with_ibn`` the IBN split of
    ``bn1`` is by channel, not by expert: its IN half covers the first K/2 experts.

    Shapes: ``[N, C, H, W] -> [N, K, C, H, W]`` with ``C = 4 · planes``.
    """

    def __init__(
        self, channels: int, planes: int, num_experts: int = 4, with_ibn: bool = True
    ) -> None:
        super().__init__()
        if planes % num_experts:
            raise ValueError(
                f"ExpertBottleneck: planes={planes} must be divisible by num_experts={num_experts}"
            )
        self.num_experts = num_experts
        tiled = channels * num_experts
        self.conv1 = MetaConv2d(tiled, planes, kernel_size=1, groups=num_experts, bias=False)
        self.bn1 = MetaIBNNorm(planes) if with_ibn else MetaBNNorm(planes)
        self.conv2 = MetaConv2d(
            planes, planes, kernel_size=3, padding=1, groups=num_experts, bias=False
        )
        self.bn2 = MetaBNNorm(planes)
        self.conv3 = MetaConv2d(planes, tiled, kernel_size=1, groups=num_experts, bias=False)
        self.bn3 = MetaBNNorm(tiled)

    def forward(self, inputs: Tensor) -> Tensor:
        tiled = inputs.repeat(1, self.num_experts, 1, 1)
        out = F.relu(self.bn1(self.conv1(tiled)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.relu(self.bn3(self.conv3(out)) + tiled)
        return rearrange(out, "n (k c) h w -> n k c h w", k=self.num_experts)


class HyperRouter(nn.Module):
    """Domain-aware adaptor: per-sample routing weights over the K experts.

    v = GAP(x); h = ReLU(L2norm(fc1 v)); M = fc2 h reshaped to [C, K] (a routing matrix generated
    per sample); weights = softmax_K(vᵀ M). ``fc_classifier`` (C·K → 3) exists only so ACL
    checkpoints load; its output was never used, so it is not computed.

    Shapes: ``[N, C, H, W] -> [N, K]`` (rows sum to 1).
    """

    def __init__(
        self, channels: int, num_experts: int = 4, reduction: int = 16, num_domain_logits: int = 3
    ) -> None:
        super().__init__()
        if channels % reduction:
            raise ValueError(
                f"HyperRouter: channels={channels} must be divisible by reduction={reduction}"
            )
        self.num_experts = num_experts
        self.fc1 = MetaLinear(channels, channels // reduction)
        self.fc2 = MetaLinear(channels // reduction, channels * num_experts)
        self.fc_classifier = MetaLinear(channels * num_experts, num_domain_logits)

    def forward(self, inputs: Tensor) -> Tensor:
        pooled = inputs.mean(dim=(2, 3))
        hidden = F.relu(F.normalize(self.fc1(pooled), p=2, dim=-1))
        # Channel-major layout [C, K] matches the fc2 rows of ACL checkpoints.
        routing_matrix = rearrange(self.fc2(hidden), "n (c k) -> n c k", k=self.num_experts)
        return torch.einsum("nc,nck->nk", pooled, routing_matrix).softmax(dim=-1)


class DR50(nn.Module):
    """Meta Dynamic Router ResNet (DR50 for ``depth=50``).

    Args:
        depth: 50, 101 or 152 (bottleneck ResNets; the CODE block assumes bottleneck widths).
        with_ibn: IBN-a ``bn1`` in stages 1–3 and in every expert branch.
        last_stride: stride of stage 4 (1 keeps a 16×8 map for 256×128 inputs).
        num_experts: K, experts per CODE block.
        width_mult: channel multiplier for reduced models (see the module docstring).

    ``forward(images [N, 3, H, W])`` takes pixel-normalised images and returns
    ``(feature_map [N, 32·stem, H/16, W/16], routing_weights [N, 4·K], stage_features)``
    where ``stage_features`` lists 4 L2-normalised ``[N, C_i]`` side outputs (unused by the
    ACL losses; computed so the ``map{i}`` running statistics evolve as in the reference).
    With defaults, ``feature_map`` is ``[N, 2048, H/16, W/16]`` (``H/16`` rounded up).
    """

    def __init__(
        self,
        depth: int = 50,
        with_ibn: bool = True,
        last_stride: int = 1,
        num_experts: int = 4,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(
                f"DR50 depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}; "
                "18/34 (BasicBlock) are unsupported because the CODE block assumes bottleneck "
                "widths (the reference builds them but they cannot run)."
            )
        if num_experts < 1:
            raise ValueError(f"DR50 num_experts must be >= 1, got {num_experts}")
        stem_width = round(64 * width_mult)
        if stem_width <= 0 or stem_width % 4 or stem_width % num_experts:
            raise ValueError(
                f"DR50 width_mult={width_mult} gives a stem width of {stem_width}; it must be a "
                f"positive multiple of 4 and of num_experts={num_experts} "
                "(e.g. width_mult=0.125 for K=4)."
            )
        self.depth = depth
        self.num_experts = num_experts
        self.blocks_per_stage = BLOCKS_PER_STAGE[depth]
        stage_planes = [stem_width * 2**stage for stage in range(NUM_STAGES)]
        self.stage_channels = tuple(planes * Bottleneck.expansion for planes in stage_planes)
        self.out_channels = self.stage_channels[-1]
        stage_strides = (1, 2, 2, last_stride)

        self.conv1 = MetaConv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = MetaBNNorm(stem_width)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)

        in_channels = stem_width
        for index in range(NUM_STAGES):
            stage = index + 1
            planes, channels = stage_planes[index], self.stage_channels[index]
            # Only the ImageNet IBN-a stages 1-3 carry IBN in their standard blocks.
            stage_ibn = with_ibn and stage < NUM_STAGES
            self.add_module(
                f"layer{stage}",
                _make_stage(
                    in_channels,
                    planes,
                    self.blocks_per_stage[index] - 1,
                    stage_strides[index],
                    stage_ibn,
                ),
            )
            in_channels = channels
            self.add_module(f"adaptor{stage}_base", Bottleneck(channels, planes, norm="IN"))
            self.add_module(
                f"adaptor{stage}_sub",
                ExpertBottleneck(channels, planes, num_experts=num_experts, with_ibn=with_ibn),
            )
            self.add_module(f"router{stage}", HyperRouter(channels, num_experts=num_experts))
            self.add_module(f"invariant_norm{stage}", MetaBNNorm(channels))
            self.add_module(f"specific_norm{stage}", MetaBNNorm(channels))
            self.add_module(f"meta_fuse{stage}", MetaGate(channels))
            self.add_module(f"meta_se{stage}", MetaSELayer(channels))
            self.add_module(f"map{stage}", MetaBNNorm(channels, bias_freeze=True))

        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal convolutions (fan-out), BatchNorm 1/0 (spec §2.5); other layers keep theirs."""
        for module in self.modules():
            if isinstance(module, MetaConv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _code_block(self, stage: int, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """CODE block ``stage``: ``[N, C, H, W] -> (same, weights [N, K], side [N, C])``."""
        static = getattr(self, f"adaptor{stage}_base")(inputs)
        experts = getattr(self, f"adaptor{stage}_sub")(inputs)
        routing = getattr(self, f"router{stage}")(inputs)
        dynamic = torch.einsum("nk,nkchw->nchw", routing, experts)
        static = getattr(self, f"invariant_norm{stage}")(static)
        dynamic = getattr(self, f"specific_norm{stage}")(dynamic)
        fused = getattr(self, f"meta_se{stage}")(
            getattr(self, f"meta_fuse{stage}")(static, dynamic)
        )
        side = getattr(self, f"map{stage}")(fused.mean(dim=(2, 3), keepdim=True))
        return fused, routing, F.normalize(side.flatten(1), p=2, dim=1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"DR50 expects images [N, 3, H, W], got {tuple(images.shape)}")
        features = self.maxpool(F.relu(self.bn1(self.conv1(images))))
        routing_weights, stage_features = [], []
        for stage in range(1, NUM_STAGES + 1):
            features = getattr(self, f"layer{stage}")(features)
            features, routing, side = self._code_block(stage, features)
            routing_weights.append(routing)
            stage_features.append(side)
        return features, torch.cat(routing_weights, dim=1), stage_features


def _make_stage(
    in_channels: int, planes: int, num_blocks: int, stride: int, with_ibn: bool
) -> nn.Sequential:
    """Standard bottlenecks of one stage; the first one changes stride/width via ``downsample``."""
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            MetaConv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            MetaBNNorm(out_channels),
        )
    blocks = [Bottleneck(in_channels, planes, stride, with_ibn=with_ibn, downsample=downsample)]
    blocks += [Bottleneck(out_channels, planes, with_ibn=with_ibn) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)
