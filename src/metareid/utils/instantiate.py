"""Building Lightning objects from the composed Hydra config."""

from __future__ import annotations

import logging

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (named entries)."""
    if not cfg:
        return []
    objects = []
    for name, entry in cfg.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            log.info("Instantiating %s <%s>", name, entry._target_)
            objects.append(hydra.utils.instantiate(entry))
    return objects


def build_run(cfg: DictConfig, with_callbacks: bool = True):
    """``(datamodule, model, trainer)`` from a composed config; seeds everything first."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, seed=cfg.seed)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_group(cfg.get("callbacks")) if with_callbacks else []
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    return datamodule, model, trainer
