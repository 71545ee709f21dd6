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

from metareid.data.gait.frame_sampling import silhouettes_to_float
from metareid.evaluation.casiab import CasiaBIdentification
from metareid.losses.gait_triplet import BatchAllTripletLoss
from metareid.losses.part_cross_entropy import PartCrossEntropyLoss
from metareid.models.compile import training_forward
from metareid.utils.distributed import gather_with_grad
from metareid.utils.publish import evaluation_stage, publish_table

# model.amp_step_counting: which optimizer steps are iterations (advance the LR schedule and
# count towards max_steps) under a grad scaler.
AMP_STEP_COUNTING = {
    # OpenGait 51bb8b7 (spec metagait.md §7.4): a step whose scaler.update() changed the scale is
    # not counted -- an inf/NaN skip (scale halved) and also a periodic growth (scale doubled,
    # though the optimizer did step).
    "release": "steps that left the grad scaler's scale unchanged",
    # Steps the optimizer actually took: only inf/NaN skips are not counted.
    "taken": "steps the grad scaler did not skip",
    # Lightning: every call of optimizer.step counts, skipped or not.
    "every": "every optimizer step",
}


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
        compile: run the training forward through ``torch.compile`` (evaluation stays eager;
            see ``metareid.models.compile``). Off by default: turn on where measured faster.
        channels_last: store the 3-D convolution weights as ``channels_last_3d``.
        amp_step_counting: which optimizer steps count as iterations when a grad scaler runs
            (``precision=16-mixed``); see ``AMP_STEP_COUNTING``. An uncounted step does not
            advance the LR schedule, and ``trainer.max_steps`` is extended by one for it, so the
            run still does ``max_steps`` counted iterations. Without a scaler every step counts.
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
        compile: bool = False,
        channels_last: bool = False,
        amp_step_counting: str = "release",
    ) -> None:
        super().__init__()
        if amp_step_counting not in AMP_STEP_COUNTING:
            raise ValueError(
                f"model.amp_step_counting={amp_step_counting!r} is not one of "
                f"{sorted(AMP_STEP_COUNTING)}; 'release' reproduces OpenGait."
            )
        self.save_hyperparameters(
            ignore=["net", "optimizer", "scheduler", "evaluator"], logger=False
        )
        self.net = net
        # A bound method, not a sub-module: the weights stay registered once, under `net`.
        self._training_forward = training_forward(net, compile=compile, channels_last=channels_last)
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
        # Of the latest training step: detached loss terms and the batch's sequences.
        self.loss_terms: dict[str, torch.Tensor] = {}
        self.batch_descriptions: list[str] = []
        self.amp_step_counting = amp_step_counting
        # Optimizer steps not counted as iterations (checkpointed: the LR schedule and the
        # extended max_steps of a resumed run depend on it).
        self.uncounted_steps = 0
        self._last_step_counted = True
        self._configured_max_steps: int | None = None

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
        outputs = self._training_forward(
            silhouettes_to_float(batch["sils"]), seq_lens=batch.get("seq_lens")
        )
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
        # Read by the NonFiniteGuard callback (metareid.callbacks.non_finite) after the step.
        self.loss_terms = {
            "triplet": triplet_loss.detach(),
            "ce": ce_loss.detach(),
            "total": loss.detach(),
        }
        self.batch_descriptions = self._describe_batch(batch)
        return loss

    def _describe_batch(self, batch: dict) -> list[str]:
        """The batch's sequences as folders relative to the data root (``075/nm-01/090``) when
        the batch carries dataset ``indices``, else as ``subject/type/view`` indices."""
        train_set = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
        samples = getattr(train_set, "samples", None)
        if samples is not None and "indices" in batch:
            records = [samples[int(i)] for i in batch["indices"]]
            return [f"{r.subject}/{r.type}/{r.view}" for r in records]
        columns = zip(batch["subjects"], batch["type_index"], batch["view_index"], strict=True)
        return [f"subject {int(s)} type #{int(t)} view #{int(v)}" for s, t, v in columns]

    def precise_bn_forward(self, batch: dict) -> None:
        """Training-mode forward used by the PreciseBN callback to re-estimate BN statistics."""
        self.net(silhouettes_to_float(batch["sils"]), seq_lens=batch.get("seq_lens"))

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        scaler = self._grad_scaler()
        scale_before = scaler.get_scale() if scaler is not None else None
        optimizer.step(closure=optimizer_closure)
        if scaler is None:
            self._last_step_counted = True
            return
        scale_after = scaler.get_scale()
        if self.amp_step_counting == "release":
            self._last_step_counted = scale_after == scale_before
        elif self.amp_step_counting == "taken":
            # A skip multiplies the scale by backoff_factor < 1; growth by growth_factor > 1.
            self._last_step_counted = scale_after >= scale_before
        else:
            self._last_step_counted = True
        if not self._last_step_counted:
            self.uncounted_steps += 1
        self._extend_max_steps()

    def _extend_max_steps(self) -> None:
        # max_steps counts optimizer steps (trainer.global_step); the release stops after
        # total_iter *counted* iterations, so every uncounted step lengthens the run by one.
        if self._configured_max_steps is None or self._configured_max_steps < 0:
            return
        epoch_loop = self.trainer.fit_loop.epoch_loop
        epoch_loop.max_steps = self._configured_max_steps + self.uncounted_steps

    def on_fit_start(self) -> None:
        self._configured_max_steps = self.trainer.max_steps
        self._extend_max_steps()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("train/iteration", float(self.iterations), on_step=True, on_epoch=False)

    @property
    def iterations(self) -> int:
        """Counted iterations so far: optimizer steps minus the uncounted AMP steps."""
        return self.global_step - self.uncounted_steps

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # The schedule follows counted iterations (LambdaLR's last_epoch == self.iterations).
        if self._last_step_counted:
            super().lr_scheduler_step(scheduler, metric)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["uncounted_amp_steps"] = self.uncounted_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.uncounted_steps = int(checkpoint.get("uncounted_amp_steps", 0))

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
        outputs = self.net(silhouettes_to_float(batch["sils"]), seq_lens=batch.get("seq_lens"))
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
        stage = evaluation_stage(self.trainer)
        scalars = {
            f"{stage}/{key}": float(value)
            for key, value in result.items()
            if isinstance(value, float | int) and not isinstance(value, bool)
        }
        # Every rank computed the same synced values: sync_dist averages equal numbers.
        self.log_dict(scalars, sync_dist=True)
        self.last_results = result
        self.evaluated_weights_step = self.trainer.global_step
        format_table = getattr(metric, "format_table", None)
        if self.print_table and format_table is not None and self.trainer.is_global_zero:
            step = f" (step {self.global_step})" if self.trainer.state.fn == "fit" else ""
            publish_table(f"\n{type(metric).__name__}{step}\n{format_table(result)}")

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation(self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation(self.test_metric)
