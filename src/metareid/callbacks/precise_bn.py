"""PreciseBN: recompute BatchNorm running statistics before every evaluation.

Running averages with momentum lag behind the weights; averaging the batch statistics of N fresh
training batches with the final weights gives the population statistics the weights actually
produce (Wu & Johnson, "Rethinking BatchNorm", 2021; fast-reid's PreciseBN hook). Setting
``momentum=None`` makes PyTorch keep the exact cumulative average, also under DDP.
"""

from __future__ import annotations

import logging
from itertools import islice

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch import nn

log = logging.getLogger(__name__)


class PreciseBN(pl.Callback):
    """Before each validation/test run, re-estimate BN statistics over ``num_batches`` batches.

    The LightningModule decides how a training batch is fed: ``precise_bn_forward(batch)`` when it
    defines one (the ReID module feeds the merged-source images with BN in ``general`` mode),
    otherwise ``pl_module(batch)``. Batches come from a fresh iterator of the train dataloader.

    Args:
        num_batches: training batches to average over (fast-reid default 200).
        on_test: also before ``trainer.test`` (only meaningful while fitting data is available).
    """

    def __init__(self, num_batches: int = 200, on_test: bool = False) -> None:
        if num_batches < 1:
            raise ValueError(f"PreciseBN.num_batches must be >= 1, got {num_batches}")
        self.num_batches = num_batches
        self.on_test = on_test

    @staticmethod
    def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
        return [
            m
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]

    def recompute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        """Reset and re-estimate; returns the number of batches used."""
        norms = self.batch_norms(pl_module)
        datamodule = trainer.datamodule
        if not norms or datamodule is None:
            return 0
        momenta = [norm.momentum for norm in norms]
        was_training = pl_module.training
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # exact cumulative average of the batch statistics
        pl_module.train()
        used = 0
        forward = getattr(pl_module, "precise_bn_forward", pl_module)
        try:
            with torch.no_grad():
                loader = datamodule.train_dataloader()
                for batch in islice(iter(loader), self.num_batches):
                    if isinstance(loader, CombinedLoader):
                        batch = batch[0]  # it yields (batch, batch_idx, dataloader_idx)
                    batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                    forward(batch)
                    used += 1
        finally:
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
            pl_module.train(was_training)
        if used < self.num_batches:
            log.warning("PreciseBN used %d of %d batches", used, self.num_batches)
        return used

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.recompute(trainer, pl_module)
        pl_module.eval()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            self.recompute(trainer, pl_module)
            pl_module.eval()
