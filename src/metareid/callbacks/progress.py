"""A rich progress bar that reads like the run: step / max_steps, the loss and the learning rate.

Lightning's bar is built for epoch-driven training. The gait recipes are step-driven over an
infinite P×K sampler (``max_epochs=-1``), where it prints ``Epoch 0/-2`` and a bar without a total,
and after a resume it counts from the resumed epoch's batch index instead of the global step. This
bar shows, for a step-driven run, ``Step <done>/<max_steps>`` with the total fixed at ``max_steps``
(so a resumed run starts where it stopped), and for an epoch-driven run (DR50)
``Epoch <n>/<max_epochs>`` counted from 1. Its metric column holds ``loss`` (``train/loss``) and
``lr`` (the first parameter group of the first optimizer) instead of the logger's version number.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

LOSS_KEY = "train/loss"


def is_step_driven(trainer: pl.Trainer) -> bool:
    """True when ``max_steps`` ends the run (the gait recipes), not ``max_epochs``."""
    step_limit = trainer.max_steps is not None and trainer.max_steps > 0
    return step_limit and trainer.max_epochs in (-1, None)


def completed_steps(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """Training steps done so far; a module may count its own (``completed_iterations``)."""
    own = getattr(pl_module, "completed_iterations", None)
    return int(own) if own is not None else int(trainer.global_step)


class RunProgressBar(RichProgressBar):
    """``RichProgressBar`` with a step-based description and total, and loss / LR as metrics."""

    @property
    def total_train_batches(self) -> int | float:
        if is_step_driven(self.trainer):
            return self.trainer.max_steps
        return super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if is_step_driven(self.trainer):
            description = "Step"
        else:
            description = f"Epoch {current_epoch + 1}"
            if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
                description += f"/{self.trainer.max_epochs}"
        return f"{description:{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if is_step_driven(trainer):
            self._update(self.train_progress_bar_id, completed_steps(trainer, pl_module))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not is_step_driven(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, completed_steps(trainer, pl_module))
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        loss = trainer.callback_metrics.get(LOSS_KEY)
        if loss is not None:
            metrics["loss"] = f"{float(loss):.4g}"
        if trainer.optimizers:
            metrics["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}"
        return metrics
