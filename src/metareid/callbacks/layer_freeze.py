"""LayerFreeze: keep named sub-modules fixed for the first iterations of training.

fast-reid's hook (``MODEL.FREEZE_LAYERS`` + ``SOLVER.FREEZE_ITERS``): a freshly initialised head or
a new block trains alone while the pretrained body is held, then everything trains. Frozen
modules are put in eval mode (their BN statistics stay put) and their gradients are dropped
before every optimizer step. Gradients are dropped rather than ``requires_grad`` toggled because
toggling breaks DDP's reducer (and Lightning's ``BaseFinetuning`` toggles).
"""

from __future__ import annotations

import pytorch_lightning as pl
from torch import nn


class LayerFreeze(pl.Callback):
    """Freeze modules whose qualified name starts with one of ``layers`` for ``freeze_iters`` steps.

    Args:
        layers: module name prefixes relative to the LightningModule (e.g. ``["net.backbone"]``).
        freeze_iters: number of training batches during which they stay frozen.
    """

    def __init__(self, layers: list[str], freeze_iters: int) -> None:
        if not layers:
            raise ValueError("LayerFreeze.layers is empty: name at least one module prefix")
        self.layers = list(layers)
        self.freeze_iters = freeze_iters

    def _modules(self, pl_module: pl.LightningModule) -> list[nn.Module]:
        modules = [
            module
            for name, module in pl_module.named_modules()
            if any(name == p or name.startswith(p + ".") for p in self.layers)
        ]
        if not modules:
            names = [name for name, _ in pl_module.named_children()]
            raise ValueError(
                f"LayerFreeze.layers={self.layers} matches no module; top-level modules are {names}"
            )
        return modules

    @staticmethod
    def _iteration(trainer: pl.Trainer) -> int:
        # Batches, not optimizer steps: with two optimisers global_step counts both.
        return trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def frozen(self, trainer: pl.Trainer) -> bool:
        return self._iteration(trainer) < self.freeze_iters

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._modules(pl_module)  # fail at start-up on a typo, not silently never freeze

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        frozen = self.frozen(trainer)
        for module in self._modules(pl_module):
            module.train(not frozen)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.frozen(trainer):
            return
        for module in self._modules(pl_module):
            for param in module.parameters():
                param.grad = None
