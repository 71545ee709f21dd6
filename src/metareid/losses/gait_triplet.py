"""Batch-all part-wise triplet loss of OpenGait / MetaGait (metagait spec §5.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metareid.evaluation.distances import per_part_euclidean_distance
from metareid.utils.precision import fp32

__all__ = ["BatchAllTripletLoss"]


class BatchAllTripletLoss(nn.Module):
    """Every (anchor, positive, negative) triplet of the batch, for each horizontal part.

    For each part, with ``D`` the Euclidean distance matrix of the batch, every triplet with
    ``label(pos) == label(anchor)`` -- the anchor itself included as a positive at distance 0,
    as in OpenGait -- and ``label(neg) != label(anchor)`` contributes
    ``relu(D[a, pos] - D[a, neg] + margin)``. The part loss is the sum of these terms divided by
    the number of non-zero terms (0 when there are none), and the returned loss is the mean over
    parts.

    Memory grows as ``parts * n^3`` (64 parts x 64 samples: 16.8 M floats, about 67 MB).

    Args:
        margin: triplet margin.
    """

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    @fp32
    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            embeddings: ``[n, p, c]`` part features (any float dtype; computed in float32 with
                autocast disabled, so a mixed-precision run gets the fp32 loss).
            labels: ``[n]`` integer identity labels.

        Returns:
            ``(loss, info)``: the scalar loss and detached scalars averaged over parts --
            ``loss``, ``hard_loss`` (largest triplet term; logged only, no hard mining),
            ``loss_num`` (number of non-zero terms) and ``mean_dist`` (mean pairwise distance).
        """
        if embeddings.dim() != 3:
            raise ValueError(
                f"BatchAllTripletLoss expects embeddings [n, parts, channels], got "
                f"{tuple(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"BatchAllTripletLoss expects labels [n] = [{embeddings.shape[0]}], got "
                f"{tuple(labels.shape)}"
            )
        embeddings = embeddings.float()
        distances = per_part_euclidean_distance(embeddings, embeddings)  # [p, n, n]

        same_identity = labels[:, None] == labels[None, :]  # [anchor, other]
        # [anchor, positive, negative]: which index triples form a valid triplet.
        valid_triplets = same_identity[:, :, None] & ~same_identity[:, None, :]
        if not bool(valid_triplets.any()):
            # A batch with a single identity has no negative; keep the graph so every rank of a
            # DDP job still runs backward through the embeddings.
            zero = embeddings.sum() * 0.0
            info = {
                "loss": zero.detach(),
                "hard_loss": zero.detach(),
                "loss_num": zero.detach(),
                "mean_dist": distances.mean().detach(),
            }
            return zero, info

        margins = distances[:, :, :, None] - distances[:, :, None, :] + self.margin
        triplet_terms = F.relu(margins[:, valid_triplets])  # [p, num_triplets]

        num_nonzero = (triplet_terms > 0).sum(-1).float()  # [p]
        part_losses = triplet_terms.sum(-1) / (num_nonzero + 1e-9)
        part_losses = torch.where(num_nonzero > 0, part_losses, torch.zeros_like(part_losses))
        loss = part_losses.mean()

        info = {
            "loss": loss.detach(),
            "hard_loss": triplet_terms.detach().max(-1).values.mean(),
            "loss_num": num_nonzero.mean(),
            "mean_dist": distances.detach().mean(),
        }
        return loss, info
