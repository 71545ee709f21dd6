"""GaitGL (Lin et al., ICCV 2021) as configured in OpenGait, in both backbone variants.

``variant="casiab"`` (channels ``[32, 64, 128]``, 3,096,673 parameters at 74 classes)::

    conv3d -> LTA -> GLConvA0 -> MaxPool0 -> GLConvA1 -> GLConvB2
           -> TP -> HPP -> Head0 -> Bn -> Head1

``variant="large"`` (OU-MVLP / GREW, channels ``[32, 64, 128, 256]``): two 3x3x3 convolutions
before LTA and every GLConv stage a pair of GLConvs with halving 1 (the last one ``fm_sign``).
``head="bnneck"`` swaps ``Bn``/``Head1`` for OpenGait's ``SeparateBNNecks`` (GREW recipe); the
returned ``embeddings`` are then the pre-BN features, as OpenGait uses them for triplet and
retrieval.

Attribute names follow OpenGait so released checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from metareid.models.gait_layers import (
    BasicConv3d,
    GeMHPP,
    GLConv,
    SeparateBNNecks,
    SeparateFCs,
    TemporalMaxPool,
    mask_frames,
    tile_short_sequences,
)

VARIANTS = ("casiab", "large")
HEADS = ("bn", "bnneck")
DEFAULT_CHANNELS = {"casiab": (32, 64, 128), "large": (32, 64, 128, 256)}


def reset_parameters_like_opengait(module: nn.Module) -> None:
    """OpenGait's initialisation: Xavier-uniform conv/linear weights with zero biases, BatchNorm
    weights ~ N(1, 0.02) and zero biases. Other parameters (``SeparateFCs.fc_bin``, GeM ``p``)
    keep their construction-time values."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine:
            nn.init.normal_(layer.weight, mean=1.0, std=0.02)
            nn.init.zeros_(layer.bias)


def _validate_inputs(sils: torch.Tensor, seq_lens: torch.Tensor | None) -> None:
    if sils.dim() != 4:
        raise ValueError(
            f"sils must be [n, s, h, w] silhouettes, got shape {tuple(sils.shape)}; "
            "squeeze a channel axis or add a batch axis"
        )
    if not sils.is_floating_point():
        raise ValueError(
            f"sils must be a float tensor in [0, 1], got {sils.dtype}; divide uint8 frames by 255"
        )
    if seq_lens is None:
        return
    if seq_lens.shape != (sils.shape[0],):
        raise ValueError(
            f"seq_lens must have shape [n] = [{sils.shape[0]}], got {tuple(seq_lens.shape)}"
        )
    if seq_lens.dtype.is_floating_point or seq_lens.dtype == torch.bool:
        raise ValueError(f"seq_lens must be an integer tensor, got {seq_lens.dtype}")
    if bool((seq_lens < 1).any()) or bool((seq_lens > sils.shape[1]).any()):
        raise ValueError(
            f"seq_lens must lie in [1, s={sils.shape[1]}] (the padded time length of sils), "
            f"got {seq_lens.tolist()}"
        )


class GaitGL(nn.Module):
    """GaitGL network.

    Args:
        channels: backbone widths; 3 values for ``casiab``, 4 for ``large`` (default per variant).
        class_num: number of training identities (width of the classifier).
        bin_num: horizontal strips of the GeM pyramid (int or list); parts = their sum.
        variant: ``"casiab"`` or ``"large"``.
        head: ``"bn"`` (BatchNorm1d + SeparateFCs) or ``"bnneck"`` (SeparateBNNecks).
        gem_p, gem_eps: initial GeM exponent and clamp.

    ``forward(sils [n, s, h, w], seq_lens [n] | None)`` returns a dict of ``[n, p, c]`` tensors:
    ``embeddings`` (for triplet loss and retrieval), ``logits`` ``[n, p, class_num]`` and
    ``features`` (pre-BN ``Head0`` output). With ``seq_lens`` the clips are zero-padded along
    time and every sequence gets the output it would get alone.
    """

    def __init__(
        self,
        channels: Sequence[int] | None = None,
        class_num: int = 74,
        bin_num: int | Sequence[int] = 64,
        variant: str = "casiab",
        head: str = "bn",
        gem_p: float = 6.5,
        gem_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"GaitGL variant must be one of {list(VARIANTS)}, got {variant!r}")
        if head not in HEADS:
            raise ValueError(f"GaitGL head must be one of {list(HEADS)}, got {head!r}")
        channels = tuple(DEFAULT_CHANNELS[variant] if channels is None else channels)
        if len(channels) != len(DEFAULT_CHANNELS[variant]):
            raise ValueError(
                f"GaitGL variant {variant!r} needs {len(DEFAULT_CHANNELS[variant])} channel "
                f"widths (e.g. {list(DEFAULT_CHANNELS[variant])}), got {list(channels)}"
            )
        self.channels = channels
        self.variant = variant
        self.head = head
        if variant == "casiab":
            self._build_casiab_backbone(channels)
        else:
            self._build_large_backbone(channels)
        width = channels[-1]
        self.TP: nn.Module = TemporalMaxPool()
        self.HPP = GeMHPP(bin_num, p=gem_p, eps=gem_eps)
        parts = self.HPP.parts
        self.Head0 = SeparateFCs(parts, width, width)
        if head == "bn":
            self.Bn = nn.BatchNorm1d(width)
            self.Head1 = SeparateFCs(parts, width, class_num)
        else:
            self.BNNecks = SeparateBNNecks(parts, width, class_num)
        reset_parameters_like_opengait(self)

    def _build_casiab_backbone(self, channels: Sequence[int]) -> None:
        c0, c1, c2 = channels
        self.conv3d = nn.Sequential(BasicConv3d(1, c0), nn.LeakyReLU(inplace=True))
        self.LTA = nn.Sequential(
            BasicConv3d(c0, c0, kernel_size=(3, 1, 1), stride=(3, 1, 1), padding=0),
            nn.LeakyReLU(inplace=True),
        )
        self.GLConvA0 = GLConv(c0, c1, halving=3, fm_sign=False)
        self.MaxPool0 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.GLConvA1 = GLConv(c1, c2, halving=3, fm_sign=False)
        self.GLConvB2 = GLConv(c2, c2, halving=3, fm_sign=True)

    def _build_large_backbone(self, channels: Sequence[int]) -> None:
        c0, c1, c2, c3 = channels
        self.conv3d = nn.Sequential(
            BasicConv3d(1, c0),
            nn.LeakyReLU(inplace=True),
            BasicConv3d(c0, c0),
            nn.LeakyReLU(inplace=True),
        )
        self.LTA = nn.Sequential(
            BasicConv3d(c0, c0, kernel_size=(3, 1, 1), stride=(3, 1, 1), padding=0),
            nn.LeakyReLU(inplace=True),
        )
        self.GLConvA0 = nn.Sequential(GLConv(c0, c1, halving=1), GLConv(c1, c1, halving=1))
        self.MaxPool0 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.GLConvA1 = nn.Sequential(GLConv(c1, c2, halving=1), GLConv(c2, c2, halving=1))
        self.GLConvB2 = nn.Sequential(
            GLConv(c2, c3, halving=1), GLConv(c3, c3, halving=1, fm_sign=True)
        )

    @staticmethod
    def _run_temporal_stage(
        stage: nn.Module, features: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run a stage; with ``lengths``, re-zero padded frames after every temporal layer."""
        if lengths is None:
            return stage(features), None
        layers = stage if isinstance(stage, nn.Sequential) else [stage]
        for layer in layers:
            features = layer(features)
            if isinstance(layer, (BasicConv3d, GLConv)):
                lengths = layer.output_lengths(lengths)
                features = mask_frames(features, lengths)
        return features, lengths

    def calibrate(self, features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Hook between ``GLConvB2`` and temporal pooling (identity in GaitGL)."""
        return features

    def backbone(
        self, sils: torch.Tensor, seq_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``sils [n, s, h, w] -> (feature maps [n, c, t', h, w'], valid lengths [n] | None)``."""
        sils, lengths = tile_short_sequences(sils, seq_lens)
        if lengths is not None and bool((lengths == sils.shape[1]).all()):
            lengths = None  # nothing padded: take the unmasked path
        features = rearrange(sils, "n s h w -> n 1 s h w")
        features, lengths = self._run_temporal_stage(self.conv3d, features, lengths)
        features, lengths = self._run_temporal_stage(self.LTA, features, lengths)
        features, lengths = self._run_temporal_stage(self.GLConvA0, features, lengths)
        features = self.MaxPool0(features)
        features, lengths = self._run_temporal_stage(self.GLConvA1, features, lengths)
        features, lengths = self._run_temporal_stage(self.GLConvB2, features, lengths)
        return features, lengths

    def forward(
        self, sils: torch.Tensor, seq_lens: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """See the class docstring; ``sils`` is float ``[n, s, h, w]`` in ``[0, 1]``."""
        _validate_inputs(sils, seq_lens)
        features, lengths = self.backbone(sils, seq_lens)
        features = self.calibrate(features, lengths)
        pooled = self.TP(features, lengths)  # [n, c, h, w]
        parts = self.HPP(pooled)  # [n, c, p]
        gait = self.Head0(parts)  # [n, c, p]
        if self.head == "bn":
            embeddings = self.Bn(gait)
            logits = self.Head1(embeddings)
            outputs = {"embeddings": embeddings, "logits": logits, "features": gait}
        else:
            bnneck_features, logits = self.BNNecks(gait)
            outputs = {
                "embeddings": gait,
                "logits": logits,
                "features": gait,
                "bnneck_features": bnneck_features,
            }
        return {key: rearrange(value, "n c p -> n p c") for key, value in outputs.items()}
