"""The ReID meta-architecture: pixel normalisation → backbone → head (ACL's ``Baseline`` network).

Losses are not computed here (they live in ``metareid.losses``); this module only produces the
tensors they need.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

IMAGENET_PIXEL_MEAN = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD = (58.395, 57.12, 57.375)


class ReIDBaseline(nn.Module):
    """Backbone + embedding head on images in the 0–255 range.

    Args:
        backbone: returns ``(feature_map, routing_weights, stage_features)`` like :class:`DR50`.
        head: maps the feature map to the eval feature, or a dict of training outputs.
        pixel_mean, pixel_std: per-channel statistics on the 0–255 scale.

    ``forward(images [N, 3, H, W], 0–255 float)``: the input is not modified (the reference
    normalises in place, which corrupts flip-test reuse). Training mode returns the head's dict
    plus ``routing_weights`` ``[N, 4·K]``; eval mode returns the head's eval output (the BNNeck
    feature ``[N, C]``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        pixel_mean: Sequence[float] = IMAGENET_PIXEL_MEAN,
        pixel_std: Sequence[float] = IMAGENET_PIXEL_STD,
    ) -> None:
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"pixel_mean ({len(pixel_mean)} values) and pixel_std ({len(pixel_std)} values) "
                "must have one entry per image channel"
            )
        if any(std <= 0 for std in pixel_std):
            raise ValueError(f"pixel_std entries must be positive, got {list(pixel_std)}")
        self.backbone = backbone
        self.heads = head
        # Non-persistent so state-dict keys stay those of ACL checkpoints (backbone.*, heads.*).
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False
        )

    def normalize(self, images: Tensor) -> Tensor:
        """``(images − mean) / std`` on a new tensor; ``[N, C, H, W] -> [N, C, H, W]``."""
        if images.dim() != 4 or images.shape[1] != self.pixel_mean.shape[1]:
            raise ValueError(
                f"ReIDBaseline expects images [N, {self.pixel_mean.shape[1]}, H, W] in 0-255, "
                f"got {tuple(images.shape)}"
            )
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        feature_map, routing_weights, _ = self.backbone(self.normalize(images))
        head_output = self.heads(feature_map)
        if not self.training:
            return head_output
        return {**head_output, "routing_weights": routing_weights}
