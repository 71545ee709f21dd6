"""Per-part softmax cross-entropy of OpenGait / MetaGait (metagait spec §5.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from metareid.utils.precision import fp32

__all__ = ["PartCrossEntropyLoss"]


class PartCrossEntropyLoss(nn.Module):
    """Cross-entropy applied to every part's logits, averaged over samples and then parts.

    With label smoothing the per-sample loss is
    ``(1 - eps) * NLL + eps * mean_over_classes(-log p)``.

    Args:
        scale: multiplies the logits before the softmax.
        label_smoothing: enable the smoothed loss above.
        eps: smoothing weight (only used when ``label_smoothing`` is true).
    """

    def __init__(self, scale: float = 1.0, label_smoothing: bool = False, eps: float = 0.1):
        super().__init__()
        self.scale = scale
        self.label_smoothing = label_smoothing
        self.eps = eps

    @fp32
    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            logits: ``[n, p, num_classes]`` (any float dtype; computed in float32 with autocast
                disabled).
            labels: ``[n]`` class indices in ``[0, num_classes)``.

        Returns:
            ``(loss, info)`` with detached scalars ``loss`` and ``accuracy`` (fraction of
            ``(sample, part)`` pairs whose arg-max logit is the label).
        """
        if logits.dim() != 3:
            raise ValueError(
                f"PartCrossEntropyLoss expects logits [n, parts, classes], got "
                f"{tuple(logits.shape)}"
            )
        num_samples, num_parts, num_classes = logits.shape
        if labels.shape != (num_samples,):
            raise ValueError(
                f"PartCrossEntropyLoss expects labels [n] = [{num_samples}], got "
                f"{tuple(labels.shape)}"
            )
        if num_samples and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}) (the classifier width); got range "
                f"[{int(labels.min())}, {int(labels.max())}] -- check the model's class_num "
                "against the number of training identities"
            )

        log_probs = F.log_softmax(self.scale * logits.float(), dim=-1)  # [n, p, C]
        part_labels = repeat(labels, "n -> n p 1", p=num_parts)
        nll = -log_probs.gather(-1, part_labels).squeeze(-1)  # [n, p]
        if self.label_smoothing:
            per_sample = (1.0 - self.eps) * nll + self.eps * (-log_probs.mean(-1))
        else:
            per_sample = nll
        # Every part sees the same samples, so the mean over parts of per-part sample means is
        # the mean over all (sample, part) pairs.
        loss = per_sample.mean()

        accuracy = (log_probs.detach().argmax(-1) == labels[:, None]).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy}
