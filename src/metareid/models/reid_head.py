"""ACL's MetaEmbeddingHead: GeM pooling, BNNeck, one classifier per source domain, class centres."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from metareid.models.meta_ops import MetaBNNorm, MetaLinear, MetaParam

NECK_FEATURE_CHOICES = ("after", "before")


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling with a fixed exponent: ``(mean(clamp(x, eps)^p))^(1/p)``.

    Shapes: ``[N, C, H, W] -> [N, C, 1, 1]``.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p}")
        self.p = p
        self.eps = eps

    def forward(self, inputs: Tensor) -> Tensor:
        powered = inputs.clamp(min=self.eps).pow(self.p)
        return powered.mean(dim=(2, 3), keepdim=True).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, eps={self.eps}"


class MetaEmbeddingHead(nn.Module):
    """GeM → BNNeck (frozen bias) → per-domain bias-free classifiers and class centres.

    Args:
        in_channels: C, channels of the backbone feature map.
        num_classes: identities per source domain, in domain-id order (any number D ≥ 1 of
            domains). Labels are domain-contiguous: domain d owns ``[Σ_{e<d} n_e, Σ_{e≤d} n_e)``.
        gem_p: GeM exponent (fixed, not learned).
        neck_feat: ``"after"`` → ``features`` is the L2-normalised BNNeck output (ACL);
            ``"before"`` → the pooled feature before the BNNeck (fast-reid's other option).

    Parameter names follow ACL checkpoints: ``bottleneck.0``, ``weight1..weightD`` (each a
    bias-free linear, so the key is ``weight{d}.weight`` of shape ``[n_d, C]``),
    ``center.centers`` ``[Σ n_d, C]``. Classifier weights and centres start at N(0, 0.01²).

    ``forward(features [N, C, H, W])``: in eval mode returns the BNNeck feature ``[N, C]``
    (un-normalised). In training mode returns a dict with ``logits`` (list of D ``[N, n_d]``),
    ``center_distmat`` ``[N, Σ n_d]`` (squared distances of the BNNeck feature to the centres),
    ``neck_feat`` ``[N, C]`` (un-normalised) and ``features`` ``[N, C]``.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        num_classes: Sequence[int] = (),
        gem_p: float = 3.0,
        neck_feat: str = "after",
    ) -> None:
        super().__init__()
        num_classes = [int(count) for count in num_classes]
        if not num_classes or any(count < 1 for count in num_classes):
            raise ValueError(
                "MetaEmbeddingHead needs num_classes with one positive identity count per source "
                f"domain (e.g. [751, 1041, 11934]), got {num_classes}"
            )
        if neck_feat not in NECK_FEATURE_CHOICES:
            raise ValueError(
                f"MetaEmbeddingHead neck_feat must be one of {NECK_FEATURE_CHOICES}, "
                f"got {neck_feat!r}"
            )
        self.num_classes = tuple(num_classes)
        self.neck_feat = neck_feat
        self.pool_layer = GeneralizedMeanPooling(p=gem_p)
        self.bottleneck = nn.Sequential(MetaBNNorm(in_channels, bias_freeze=True))
        for domain, count in enumerate(num_classes, start=1):
            classifier = MetaLinear(in_channels, count)
            nn.init.normal_(classifier.weight, std=0.01)
            self.add_module(f"weight{domain}", classifier)
        self.center = MetaParam(in_channels, sum(num_classes), init_std=0.01)

    @property
    def num_domains(self) -> int:
        return len(self.num_classes)

    @property
    def classifiers(self) -> list[MetaLinear]:
        return [getattr(self, f"weight{domain}") for domain in range(1, self.num_domains + 1)]

    def forward(self, features: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        if features.dim() != 4:
            raise ValueError(
                f"MetaEmbeddingHead expects a feature map [N, C, H, W], got {tuple(features.shape)}"
            )
        pooled = self.pool_layer(features)
        neck = self.bottleneck(pooled).flatten(1)
        if not self.training:
            return neck
        if self.neck_feat == "after":
            embedding = F.normalize(neck, p=2, dim=1)
        else:
            embedding = pooled.flatten(1)
        return {
            "logits": [classifier(neck) for classifier in self.classifiers],
            "center_distmat": self.center(neck),
            "neck_feat": neck,
            "features": embedding,
        }
