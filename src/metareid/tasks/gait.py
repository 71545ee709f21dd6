"""LightningModule for gait recognition (GaitGL / MetaGait) on CASIA-B-style data.

The module is thin: the network is a plain ``nn.Module`` built by Hydra and handed in; this file
only wires the released OpenGait training step (triplet + CE, one optimizer step, per-step LR
schedule) and the CASIA-B evaluation into Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric

from metareid.evaluation.casiab import CasiaBIdentification
from metareid.losses.gait_triplet import BatchAllTripletLoss
from metareid.losses.part_cross_entropy import PartCrossEntropyLoss
from metareid.utils.distributed import gather_with_grad


class GaitModule(pl.LightningModule):
    """Train and evaluate a gait network whose forward returns ``embeddings`` and ``logits``.

    Args:
        net: network with ``forward(sils [n,s,h,w], seq_lens=None) -> {"embeddings" [n,p,c],
            "logits" [n,p,classes]}``.
        optimizer: partial optimizer factory, called with the parameters.
        scheduler: LR factor schedule (``t -> factor``) for a per-step ``LambdaLR``; ``None``
            keeps the LR constant.
        triplet_margin / triplet_weight: batch-all triplet on the post-BN embeddings, computed over
            the batch gathered from all ranks.
        ce_scale / ce_weight / label_smoothing: per-part cross-entropy on the local batch.
        eval_metric: ``"euc"`` (reference) or ``"cos"`` distance for the CASIA-B protocol.
        evaluator: factory of the evaluation ``Metric`` (another dataset's protocol); it is
            updated with ``(embeddings, subjects, type_index, view_index)`` and its ``compute()``
            returns a dict whose float entries are logged as ``test/<key>``; a ``format_table``
            method, when present, prints the table. ``None`` = CASIA-B with ``eval_metric``.
        print_table: print the CASIA-B table after every evaluation (rank 0).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[[int], float] | None = None,
        triplet_margin: float = 0.2,
        triplet_weight: float = 1.0,
        ce_scale: float = 1.0,
        ce_weight: float = 1.0,
        label_smoothing: bool = False,
        eval_metric: str = "euc",
        evaluator: Callable[[], Metric] | None = None,
        print_table: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["net", "optimizer", "scheduler", "evaluator"], logger=False
        )
        self.net = net
        self.optimizer_factory = optimizer
        self.schedule = scheduler
        self.triplet = BatchAllTripletLoss(margin=triplet_margin)
        self.cross_entropy = PartCrossEntropyLoss(scale=ce_scale, label_smoothing=label_smoothing)
        self.triplet_weight = triplet_weight
        self.ce_weight = ce_weight
        self.print_table = print_table
        make_metric = evaluator or (lambda: CasiaBIdentification(metric=eval_metric))
        self.val_metric = make_metric()
        self.test_metric = make_metric()
        self.last_results: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        # A CASIA-B evaluator reading OU-MVLP's "00"/"01" would silently treat them as nm-01/02.
        layout = getattr(getattr(self.trainer, "datamodule", None), "layout", None)
        evaluator_types = getattr(self.val_metric, "types", None)
        if layout is not None and evaluator_types is not None:
            if tuple(evaluator_types) != tuple(layout.types):
                raise ValueError(
                    f"model.evaluator ({type(self.val_metric).__name__}, types "
                    f"{tuple(evaluator_types)}) does not match data.layout={layout.name!r} "
                    f"(types {tuple(layout.types)}); pick the evaluator of that dataset."
                )

    def forward(self, sils: torch.Tensor, seq_lens: torch.Tensor | None = None) -> dict:
        return self.net(sils, seq_lens=seq_lens)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.net(batch["sils"], seq_lens=batch.get("seq_lens"))
        # Losses in fp32 whatever the autocast precision of the forward (fp16 logits overflow).
        embeddings = outputs["embeddings"].float()
        logits = outputs["logits"].float()
        labels = batch["labels"]

        global_embeddings = gather_with_grad(embeddings)
        global_labels = gather_with_grad(labels)
        triplet_loss, triplet_info = self.triplet(global_embeddings, global_labels)
        ce_loss, ce_info = self.cross_entropy(logits, labels)
        loss = self.triplet_weight * triplet_loss + self.ce_weight * ce_loss

        scalars = {f"train/triplet_{k}": v for k, v in triplet_info.items()}
        scalars.update({f"train/softmax_{k}": v for k, v in ce_info.items()})
        scalars["train/loss"] = loss.detach()
        self.log_dict(scalars, on_step=True, on_epoch=False, batch_size=labels.shape[0])
        return loss

    def precise_bn_forward(self, batch: dict) -> None:
        """Training-mode forward used by the PreciseBN callback to re-estimate BN statistics."""
        self.net(batch["sils"], seq_lens=batch.get("seq_lens"))

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.schedule is None:
            return {"optimizer": optimizer}
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ---------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: dict, metric: Metric) -> None:
        outputs = self.net(batch["sils"], seq_lens=batch.get("seq_lens"))
        metric.update(
            outputs["embeddings"].float(),
            batch["subjects"],
            batch["type_index"],
            batch["view_index"],
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, self.val_metric)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_metric)

    def _finish_evaluation(self, metric: Metric) -> None:
        result = metric.compute()
        metric.reset()
        scalars = {
            f"test/{key}": float(value)
            for key, value in result.items()
            if isinstance(value, float | int) and not isinstance(value, bool)
        }
        self.log_dict(scalars)
        self.last_results = result
        format_table = getattr(metric, "format_table", None)
        if self.print_table and format_table is not None and self.trainer.is_global_zero:
            step = f" (step {self.global_step})" if self.trainer.state.fn == "fit" else ""
            print(f"\n{type(metric).__name__}{step}\n{format_table(result)}", flush=True)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation(self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation(self.test_metric)
