"""MetaGait (Dou et al., ECCV 2022): GaitGL plus meta-calibrated attention after ``GLConvB2``.

The released code adds exactly two modules to GaitGL (CASIA-B): ``eca`` (``LocalAttention``) and
``se`` (``SELayer``), both reading the ``GLConvB2`` output ``x`` and summed,
``x <- eca(x) + se(x)``; temporal pooling stays a plain max. At reference defaults the network has
3,132,000 parameters. The paper-only components (extra attention branches, Meta-SE, Meta Temporal
Pooling) are reconstructions behind flags, all off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metareid.models.gaitgl import GaitGL, reset_parameters_like_opengait
from metareid.models.meta_attention import (
    ATTENTION_COMBINES,
    MIX_NORMS,
    LocalAttention,
    MetaTemporalPooling,
    SELayer,
)

TEMPORAL_POOLS = ("max", "mtp")
ATTENTION_BRANCHES = ("channel", "temporal", "spatial")


def _parse_branches(mta_branches: str) -> set[str]:
    branches = {name.strip() for name in mta_branches.split("+") if name.strip()}
    if "channel" not in branches or not branches <= set(ATTENTION_BRANCHES):
        raise ValueError(
            "mta_branches must be 'channel' optionally joined with 'temporal' and/or 'spatial' "
            f"by '+' (e.g. 'channel+temporal+spatial'), got {mta_branches!r}"
        )
    return branches


class MetaGait(GaitGL):
    """MetaGait network; same inputs and outputs as :class:`GaitGL`.

    Args (in addition to :class:`GaitGL`'s):
        mta_branches: ``"channel"`` (released code) or with ``"+temporal"`` / ``"+spatial"``.
        attention_combine: how enabled branches combine, ``"product"`` or ``"mean"``.
        meta_se: generate the SE matrices with MHNs instead of static weights.
        temporal_pool: ``"max"`` (released code) or ``"mtp"`` (Meta Temporal Pooling).
        mix_norm: ``"none"`` (released code) or ``"softmax"`` for the attention mixing weights.
        se_reduction: SE bottleneck reduction (1 in the released code).

    The attention width is ``channels[-1]`` (the reference hard-codes 128).
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
        mta_branches: str = "channel",
        attention_combine: str = "product",
        meta_se: bool = False,
        temporal_pool: str = "max",
        mix_norm: str = "none",
        se_reduction: int = 1,
    ) -> None:
        super().__init__(
            channels=channels,
            class_num=class_num,
            bin_num=bin_num,
            variant=variant,
            head=head,
            gem_p=gem_p,
            gem_eps=gem_eps,
        )
        branches = _parse_branches(mta_branches)
        if attention_combine not in ATTENTION_COMBINES:
            raise ValueError(
                f"attention_combine must be one of {list(ATTENTION_COMBINES)}, "
                f"got {attention_combine!r}"
            )
        if mix_norm not in MIX_NORMS:
            raise ValueError(f"mix_norm must be one of {list(MIX_NORMS)}, got {mix_norm!r}")
        if temporal_pool not in TEMPORAL_POOLS:
            raise ValueError(
                f"temporal_pool must be one of {list(TEMPORAL_POOLS)}, got {temporal_pool!r}"
            )
        width = self.channels[-1]
        self.eca = LocalAttention(
            width,
            temporal_branch="temporal" in branches,
            spatial_branch="spatial" in branches,
            combine=attention_combine,
            mix_norm=mix_norm,
        )
        self.se = SELayer(width, reduction=se_reduction, meta=meta_se)
        reset_parameters_like_opengait(self.eca)
        reset_parameters_like_opengait(self.se)
        if temporal_pool == "mtp":
            self.TP = MetaTemporalPooling(width)
            reset_parameters_like_opengait(self.TP)

    def calibrate(self, features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """``[n, c, t, h, w] -> [n, c, t, h, w]``: ``eca(x) + se(x)``, both read the same ``x``."""
        return self.eca(features, lengths) + self.se(features, lengths)
