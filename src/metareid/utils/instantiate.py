"""Building Lightning objects from the composed Hydra config."""

from __future__ import annotations

import logging

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar

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


def _with_data_dependent_sizes(model_cfg: DictConfig, datamodule) -> DictConfig:
    """Fill ``net.head.num_classes: null`` with the data's per-source identity counts.

    The reference does the same ("auto_scale_hyperparams"): the classifier widths of a
    multi-source ReID head are only known once the source datasets are indexed.
    """
    head = OmegaConf.select(model_cfg, "net.head")
    if head is None or "num_classes" not in head or head.num_classes is not None:
        return model_cfg
    datamodule.prepare_data()
    model_cfg = model_cfg.copy()
    with open_dict(model_cfg):
        model_cfg.net.head.num_classes = list(datamodule.num_classes_per_domain)
    log.info("Classifier widths from the data: %s", list(model_cfg.net.head.num_classes))
    return model_cfg


def build_run(cfg: DictConfig, with_callbacks: bool = True):
    """``(datamodule, model, trainer)`` from a composed config; seeds everything first."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, seed=cfg.seed)
    model_cfg = _with_data_dependent_sizes(cfg.model, datamodule)
    model: pl.LightningModule = hydra.utils.instantiate(model_cfg)
    callbacks = instantiate_group(cfg.get("callbacks")) if with_callbacks else []
    if not OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True):
        # Lightning refuses a progress-bar callback next to enable_progress_bar=false.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    hparams = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    return datamodule, model, trainer
