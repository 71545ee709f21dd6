"""Losses of DR50 / ACL (Adaptive Cross-Domain Learning, ECCV'22) for person re-identification.

Every function works on a whole batch and computes in fp32 with autocast disabled, because the
hard-example mining, the clamps (1e-12) and the label smoothing are numerically fragile in half
precision. Semantics follow the released ACL code (fast-reid / MetaBIN lineage), quirks included;
see ``dr50.md`` §3.3.

Notation used in the docstrings: ``N`` batch size, ``d`` feature size, ``D`` number of source
domains, ``n_d`` number of identities of domain ``d``, ``C = sum(n_d)`` global identity count.
Labels are global and domain-contiguous: domain 0 owns ``[0, n_0)``, domain 1 owns
``[n_0, n_0 + n_1)`` and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from metareid.utils.precision import fp32

CentroidKind = Literal["scalar", "vector"]

__all__ = [
    "ACLLosses",
    "batch_hard_triplet",
    "center_loss",
    "cross_domain_triplet",
    "domain_cross_entropy",
    "domain_sct_loss",
    "inter_cluster_loss",
    "intra_cluster_loss",
    "pairwise_euclidean",
]


def _check_batch(name: str, tensor: Tensor, batch_size: int, ndim: int) -> None:
    if tensor.ndim != ndim or tensor.shape[0] != batch_size:
        raise ValueError(
            f"{name}: expected a {ndim}-D tensor with {batch_size} rows (one per sample), "
            f"got shape {tuple(tensor.shape)}"
        )


@fp32
def pairwise_euclidean(features: Tensor) -> Tensor:
    """Euclidean distance matrix used by all triplet losses (fast-reid's ``euclidean_dist``).

    Kept apart from ``metareid.evaluation.distances`` on purpose: the triplet numbers depend on
    the clamp below, which makes every self-distance exactly ``1e-6``.

    Args:
        features: ``[N, d]``.

    Returns:
        ``[N, N]`` with ``sqrt(clamp(||a||^2 + ||b||^2 - 2 a.b, min=1e-12))``; the clamp keeps the
        gradient of the square root finite on the diagonal, so self-distances are ``1e-6``.
    """
    features = features.float()
    squared_norms = features.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * features @ features.T
    return squared.clamp(min=1e-12).sqrt()


def _hard_mined_triplet(distances: Tensor, is_pos: Tensor, is_neg: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet on a precomputed ``[N, N]`` distance matrix.

    An anchor without any negative gets ``d_an = +inf`` and therefore contributes 0 (fast-reid
    uses ``+1e9`` to the same effect); it still counts in the mean.
    """
    hardest_positive = distances.masked_fill(~is_pos, 0.0).amax(dim=1)
    hardest_negative = distances.masked_fill(~is_neg, float("inf")).amin(dim=1)
    gap = hardest_positive - hardest_negative
    if margin > 0:
        return F.relu(gap + margin).mean()
    # Soft margin: fast-reid's soft_margin_loss(d_an - d_ap, 1) == mean softplus(d_ap - d_an);
    # softplus is the overflow-free form, so fast-reid's "inf -> hinge 0.3" fallback never fires.
    return F.softplus(gap).mean()


@fp32
def domain_cross_entropy(
    logits: Sequence[Tensor],
    labels: Tensor,
    domain_ids: Tensor,
    class_offsets: Sequence[int] | Tensor | None = None,
    epsilon: float = 0.1,
) -> Tensor:
    """Label-smoothed identity loss with one classifier per source domain.

    For every domain present in the batch, that domain's classifier is applied to that domain's
    samples with labels shifted to local indices ``label - class_offsets[d]``. The smoothed target
    is ``1 - epsilon`` on the true class and ``epsilon / (n_d - 1)`` elsewhere; the per-sample loss
    is summed over classes and averaged over the samples whose loss is non-zero (fast-reid). The
    result is the mean over present domains. The CE weight (0.5 in the released config) is applied
    by the caller.

    Args:
        logits: ``D`` tensors ``[N, n_d]`` (all samples through every classifier).
        labels: ``[N]`` global identity labels.
        domain_ids: ``[N]`` domain index of every sample, in ``[0, D)``.
        class_offsets: first global label of every domain, length ``D`` and starting at 0
            (e.g. ``[0, n_0, n_0 + n_1]``); ``None`` derives it from the logit widths.
        epsilon: label-smoothing factor.

    Returns:
        Scalar loss.
    """
    if len(logits) == 0:
        raise ValueError("logits: expected one [N, n_d] tensor per source domain, got none")
    batch_size = labels.shape[0]
    _check_batch("labels", labels, batch_size, 1)
    _check_batch("domain_ids", domain_ids, batch_size, 1)
    widths = [int(domain_logits.shape[-1]) for domain_logits in logits]
    for d, domain_logits in enumerate(logits):
        _check_batch(f"logits[{d}]", domain_logits, batch_size, 2)
        if widths[d] < 2:
            raise ValueError(
                f"logits[{d}]: label smoothing spreads epsilon over n_d - 1 classes, so every "
                f"domain needs at least 2 identities; domain {d} has {widths[d]}"
            )
    expected_offsets = [sum(widths[:d]) for d in range(len(widths))]
    if class_offsets is None:
        offsets = expected_offsets
    else:
        offsets = [int(o) for o in class_offsets]
        if offsets != expected_offsets:
            raise ValueError(
                f"class_offsets={offsets} does not match the classifier widths {widths}: it must "
                f"list the first global label of each domain, i.e. {expected_offsets} "
                "(or pass None to derive it from the logits)"
            )

    domain_losses = []
    for d in torch.unique(domain_ids).tolist():
        if not 0 <= d < len(logits):
            raise ValueError(
                f"domain_ids contains {d}, but only {len(logits)} domain classifiers were given"
            )
        in_domain = domain_ids == d
        local_labels = labels[in_domain].long() - offsets[d]
        if local_labels.min() < 0 or local_labels.max() >= widths[d]:
            raise ValueError(
                f"labels of domain {d} must lie in [{offsets[d]}, {offsets[d] + widths[d]}) "
                "(domain-contiguous global labels); check the label relabelling of the data module"
            )
        log_probs = F.log_softmax(logits[d][in_domain].float(), dim=1)
        smoothed_target = torch.full_like(log_probs, epsilon / (widths[d] - 1))
        smoothed_target.scatter_(1, local_labels[:, None], 1.0 - epsilon)
        per_sample = -(smoothed_target * log_probs).sum(dim=1)
        nonzero_count = (per_sample.detach() != 0).sum().clamp(min=1)
        domain_losses.append(per_sample.sum() / nonzero_count)
    return torch.stack(domain_losses).mean()


@fp32
def batch_hard_triplet(features: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss (Hermans et al.) with Euclidean distance.

    Hardest positive = farthest sample of the same identity (the anchor itself included);
    hardest negative = closest sample of another identity. ``margin > 0`` gives
    ``mean(relu(d_ap - d_an + margin))``; ``margin == 0`` gives the soft margin
    ``mean(softplus(d_ap - d_an))``.

    Args:
        features: ``[N, d]`` (ACL feeds the L2-normalised BNNeck feature).
        labels: ``[N]`` identity labels.
        margin: hinge margin, or 0 for the soft margin.

    Returns:
        Scalar loss.
    """
    _check_batch("labels", labels, features.shape[0], 1)
    same_identity = labels[:, None] == labels[None, :]
    return _hard_mined_triplet(pairwise_euclidean(features), same_identity, ~same_identity, margin)


@fp32
def cross_domain_triplet(
    features: Tensor, labels: Tensor, domain_ids: Tensor, margin: float = 0.0
) -> Tensor:
    """MetaBIN's ``TripletLoss_add`` (the meta-train ``loss_triplet_add`` term).

    Positives are the anchor itself and every sample of *another* domain (whatever its identity);
    negatives are samples of the *same* domain with a different identity. Hard mining as in
    :func:`batch_hard_triplet`; the released setting uses ``margin = 0`` (soft margin), which
    pulls the farthest cross-domain sample closer than the nearest same-domain impostor.

    Args:
        features: ``[N, d]``.
        labels: ``[N]`` identity labels.
        domain_ids: ``[N]`` domain labels.
        margin: hinge margin, or 0 for the soft margin.

    Returns:
        Scalar loss.
    """
    batch_size = features.shape[0]
    _check_batch("labels", labels, batch_size, 1)
    _check_batch("domain_ids", domain_ids, batch_size, 1)
    same_domain = domain_ids[:, None] == domain_ids[None, :]
    same_identity = labels[:, None] == labels[None, :]
    is_self = torch.eye(batch_size, dtype=torch.bool, device=features.device)
    is_pos = is_self | ~same_domain
    is_neg = same_domain & ~same_identity
    return _hard_mined_triplet(pairwise_euclidean(features), is_pos, is_neg, margin)


@fp32
def domain_sct_loss(features: Tensor, domain_ids: Tensor) -> Tensor:
    """MetaBIN's SCT ("shuffle/cluster") loss in its ``cosine_sim`` form (``loss_stc``).

    Features are re-normalised (``x / (||x|| + 1e-12)``); for each domain the mean cosine
    similarity between its features and the domain's mean feature is taken, then averaged over
    domains. Minimising it spreads each domain's features away from its centroid.

    Args:
        features: ``[N, d]``.
        domain_ids: ``[N]``.

    Returns:
        Scalar loss in ``[-1, 1]``.
    """
    _check_batch("domain_ids", domain_ids, features.shape[0], 1)
    features = features.float()
    features = features / (features.norm(dim=1, keepdim=True) + 1e-12)
    per_domain = []
    for d in torch.unique(domain_ids):
        domain_features = features[domain_ids == d]
        centroid = domain_features.mean(dim=0)
        # The reference divides by the plain norms; the clamp only guards a zero centroid.
        norms = domain_features.norm(dim=1) * centroid.norm()
        cosine = (domain_features @ centroid) / norms.clamp(min=1e-12)
        per_domain.append(cosine.mean())
    return torch.stack(per_domain).mean()


@fp32
def center_loss(center_distmat: Tensor, labels: Tensor) -> Tensor:
    """Center loss from the head's squared distances to every class center.

    ``sum(clamp(distmat * onehot(labels), 1e-12, 1e12)) / N`` exactly as released: the clamp is
    applied *after* masking, so each of the ``N * (C - 1)`` masked-out entries adds ``1e-12``.

    Args:
        center_distmat: ``[N, C]`` squared Euclidean distances ``||f_i - c_j||^2`` computed on the
            un-normalised BNNeck feature.
        labels: ``[N]`` global labels.

    Returns:
        Scalar loss.
    """
    batch_size, num_classes = center_distmat.shape
    _check_batch("labels", labels, batch_size, 1)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) to index center_distmat columns, got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    own_class = F.one_hot(labels.long(), num_classes).float()
    masked = center_distmat.float() * own_class
    return masked.clamp(min=1e-12, max=1e12).sum() / batch_size


def _domain_centroids(
    routing_weights: Tensor, domain_ids: Tensor, centroid: CentroidKind
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """L2-normalise routing weights per sample and compute one centroid per present domain.

    Returns the normalised weights ``[N, K]``, the per-domain masks and the centroids (0-d
    tensors for ``"scalar"``, ``[K]`` for ``"vector"``), in increasing domain order.
    """
    if centroid not in ("scalar", "vector"):
        raise ValueError(f"centroid must be 'scalar' or 'vector', got {centroid!r}")
    _check_batch("domain_ids", domain_ids, routing_weights.shape[0], 1)
    normalised = F.normalize(routing_weights.float(), p=2, dim=1)
    masks, centroids = [], []
    for d in torch.unique(domain_ids):
        in_domain = domain_ids == d
        domain_weights = normalised[in_domain]
        # The released code calls .mean() without a dim: one scalar over all entries.
        centroids.append(domain_weights.mean() if centroid == "scalar" else domain_weights.mean(0))
        masks.append(in_domain)
    return normalised, masks, centroids


@fp32
def intra_cluster_loss(
    routing_weights: Tensor,
    domain_ids: Tensor,
    margin: float = 0.1,
    centroid: CentroidKind = "scalar",
) -> Tensor:
    """Domain-aware intra-cluster loss (ACL ``intraCluster``): pull router weights to their domain.

    ``w`` is L2-normalised per sample. For each present domain with centroid ``m_d`` the loss is
    ``mean_i relu(||w_i - m_d|| - margin)^2``; the result is the mean over present domains.
    With ``centroid="scalar"`` (released behaviour) ``m_d`` is the mean of *all* entries of the
    domain's weight matrix, broadcast to every dimension; ``"vector"`` uses the per-dimension mean.

    Args:
        routing_weights: ``[N, S*K]`` concatenated router outputs (``[N, 16]`` for DR50).
        domain_ids: ``[N]``.
        margin: radius inside which a sample is not penalised.
        centroid: ``"scalar"`` or ``"vector"``.

    Returns:
        Scalar loss.
    """
    normalised, masks, centroids = _domain_centroids(routing_weights, domain_ids, centroid)
    per_domain = [
        F.relu((normalised[mask] - m).norm(dim=1) - margin).pow(2).mean()
        for mask, m in zip(masks, centroids, strict=True)
    ]
    return torch.stack(per_domain).mean()


@fp32
def inter_cluster_loss(
    routing_weights: Tensor,
    domain_ids: Tensor,
    margin: float = 0.3,
    centroid: CentroidKind = "scalar",
) -> Tensor:
    """Domain-aware inter-cluster loss (ACL ``interCluster``): push domain centroids apart.

    Centroids as in :func:`intra_cluster_loss`; for every pair of present domains
    ``relu(margin - ||m_a - m_b||)^2`` (``|m_a - m_b|`` for scalar centroids), averaged over
    pairs. With fewer than two domains there is no pair and the released code returns the
    *constant* ``mean(domain_ids)`` (no gradient; it only shifts the logged value) — reproduced.

    Args:
        routing_weights: ``[N, S*K]``.
        domain_ids: ``[N]``.
        margin: minimal centroid separation.
        centroid: ``"scalar"`` or ``"vector"``.

    Returns:
        Scalar loss.
    """
    _, _, centroids = _domain_centroids(routing_weights, domain_ids, centroid)
    if len(centroids) < 2:
        return domain_ids.float().mean()
    pair_losses = [
        F.relu(margin - (centroids[a] - centroids[b]).norm()).pow(2)
        for a in range(len(centroids))
        for b in range(a + 1, len(centroids))
    ]
    return torch.stack(pair_losses).mean()


@dataclass
class ACLLosses:
    """Loss recipe of the three DR50/ACL training steps with the released weights.

    Each method takes the head + backbone ``outputs`` dict
    (``logits``: list of ``D`` tensors ``[N, n_d]``; ``center_distmat``: ``[N, C]``;
    ``neck_feat``: ``[N, c]`` un-normalised; ``features``: ``[N, c]`` L2-normalised;
    ``routing_weights``: ``[N, S*K]``), global ``labels`` ``[N]`` and ``domain_ids`` ``[N]``, and
    returns the *weighted* loss terms by name; the training step sums them. Only the keys an
    ``outputs`` dict needs for a given step are read.

    ``class_offsets`` (first global label of each domain) is derived from the classifier widths
    when left ``None``. ``cluster_centroid="scalar"`` reproduces the released cluster losses.
    """

    ce_scale: float = 0.5
    ce_epsilon: float = 0.1
    triplet_scale: float = 1.0
    triplet_margin: float = 0.3
    center_scale_basic: float = 5e-4
    center_scale_meta_test: float = 1e-3
    intra_scale: float = 1.0
    intra_margin: float = 0.1
    inter_scale: float = 1.0
    inter_margin: float = 0.3
    cluster_centroid: CentroidKind = "scalar"
    triplet_add_scale: float = 1.0
    triplet_add_margin: float = 0.0
    triplet_mtrain_scale: float = 1.0
    sct_scale: float = 1.0
    triplet_mtest_scale: float = 1.0
    class_offsets: tuple[int, ...] | None = None

    def _cluster_terms(self, outputs: dict, domain_ids: Tensor) -> dict[str, Tensor]:
        routing_weights = _require(outputs, "routing_weights")
        return {
            "loss_domain_intra": self.intra_scale
            * intra_cluster_loss(
                routing_weights, domain_ids, self.intra_margin, self.cluster_centroid
            ),
            "loss_domain_inter": self.inter_scale
            * inter_cluster_loss(
                routing_weights, domain_ids, self.inter_margin, self.cluster_centroid
            ),
        }

    def basic(self, outputs: dict, labels: Tensor, domain_ids: Tensor) -> dict[str, Tensor]:
        """Basic step on the merged multi-domain batch (real weights).

        Returns keys ``loss_cls``, ``loss_triplet``, ``loss_domain_intra``, ``loss_domain_inter``,
        ``loss_center``.
        """
        losses = {
            "loss_cls": self.ce_scale
            * domain_cross_entropy(
                _require(outputs, "logits"),
                labels,
                domain_ids,
                self.class_offsets,
                self.ce_epsilon,
            ),
            "loss_triplet": self.triplet_scale
            * batch_hard_triplet(_require(outputs, "features"), labels, self.triplet_margin),
        }
        losses.update(self._cluster_terms(outputs, domain_ids))
        losses["loss_center"] = self.center_scale_basic * center_loss(
            _require(outputs, "center_distmat"), labels
        )
        return losses

    def meta_train(self, outputs: dict, labels: Tensor, domain_ids: Tensor) -> dict[str, Tensor]:
        """Meta-train step on the two non-held-out domains (no CE, no center loss).

        Returns keys ``loss_triplet_add``, ``loss_triplet_mtrain``, ``loss_stc``,
        ``loss_domain_intra``, ``loss_domain_inter``.
        """
        features = _require(outputs, "features")
        losses = {
            "loss_triplet_add": self.triplet_add_scale
            * cross_domain_triplet(features, labels, domain_ids, self.triplet_add_margin),
            "loss_triplet_mtrain": self.triplet_mtrain_scale
            * batch_hard_triplet(features, labels, self.triplet_margin),
            "loss_stc": self.sct_scale * domain_sct_loss(features, domain_ids),
        }
        losses.update(self._cluster_terms(outputs, domain_ids))
        return losses

    def meta_test(self, outputs: dict, labels: Tensor, domain_ids: Tensor) -> dict[str, Tensor]:
        """Meta-test step on the held-out source domain (fast weights).

        Returns keys ``loss_triplet_mtest``, ``loss_domain_intra``, ``loss_domain_inter`` (a
        constant when one domain is present) and ``loss_center``.
        """
        losses = {
            "loss_triplet_mtest": self.triplet_mtest_scale
            * batch_hard_triplet(_require(outputs, "features"), labels, self.triplet_margin),
        }
        losses.update(self._cluster_terms(outputs, domain_ids))
        losses["loss_center"] = self.center_scale_meta_test * center_loss(
            _require(outputs, "center_distmat"), labels
        )
        return losses


def _require(outputs: dict, key: str):
    if key not in outputs:
        raise KeyError(
            f"ACLLosses needs outputs[{key!r}] from the DR50 head/backbone; got keys "
            f"{sorted(outputs)}"
        )
    return outputs[key]
