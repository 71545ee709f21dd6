"""Building Lightning objects from the composed Hydra config."""

from __future__ import annotations

import inspect
import logging
import types
import typing
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar

from metareid.checkpoint_io import AtomicSafeCheckpointIO
from metareid.utils.config_checks import check_config
from metareid.utils.errors import ConfigValueError
from metareid.utils.quiet import silence_library_noise

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


_SIMPLE_TYPES = (bool, int, float, str)


def _accepted_types(annotation: Any) -> tuple[type, ...] | None:
    """The simple types an annotation admits (``None`` included), or ``None`` when it admits
    anything else too (containers, tensors, callables...): then nothing is checked."""
    if annotation in _SIMPLE_TYPES:
        return (annotation,)
    if annotation is type(None):
        return (type(None),)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        accepted: tuple[type, ...] = ()
        for member in typing.get_args(annotation):
            member_types = _accepted_types(member)
            if member_types is None:
                return None
            accepted += member_types
        return accepted
    return None


def _matches(value: Any, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to a config
        return bool in accepted
    if isinstance(value, int) and float in accepted:
        return True
    return isinstance(value, accepted)


def check_config_types(cfg: DictConfig, key: str = "") -> None:
    """Check every plain value of each ``_target_`` entry of ``cfg`` (recursively) against the
    target's type hints; raises :class:`ConfigValueError` naming the key (``data.p=2.5`` for an
    ``int``, ``trainer.max_steps=abc``) before anything is built."""
    if not isinstance(cfg, DictConfig):
        return
    hints: dict[str, Any] = {}
    target = cfg.get("_target_") if "_target_" in cfg else None
    if isinstance(target, str):
        try:
            obj = hydra.utils.get_object(target)
            function = obj.__init__ if inspect.isclass(obj) else obj
            hints = typing.get_type_hints(function)
        except Exception:  # unresolvable hints or target: the instantiation reports those
            hints = {}
    for name in cfg:
        path = f"{key}.{name}" if key else str(name)
        if path == "hydra" or OmegaConf.is_missing(cfg, name):
            continue
        try:
            value = cfg[name]
        except Exception:  # an interpolation that fails resolves (and fails) later, clearly
            continue
        if isinstance(value, DictConfig):
            check_config_types(value, path)
            continue
        accepted = _accepted_types(hints[name]) if name in hints else None
        if accepted is not None and not _matches(value, accepted):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in accepted)
            raise ConfigValueError(
                f"{path}={value!r} ({type(value).__name__}) must be {wanted} "
                f"(argument {name!r} of {target}); fix the override or config file."
            )


def build_run(cfg: DictConfig, with_callbacks: bool = True):
    """``(datamodule, model, trainer)`` from a composed config; seeds everything first."""
    silence_library_noise()
    check_config_types(cfg)
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, seed=cfg.seed)
    model_cfg = _with_data_dependent_sizes(cfg.model, datamodule)
    model: pl.LightningModule = hydra.utils.instantiate(model_cfg)
    callbacks = instantiate_group(cfg.get("callbacks")) if with_callbacks else []
    if not OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True):
        # Lightning refuses a progress-bar callback next to enable_progress_bar=false.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_group(cfg.get("logger"))
    # Every checkpoint write is atomic and every read weights_only, unless trust_pickle=true.
    checkpoint_io = AtomicSafeCheckpointIO(trust_pickle=bool(cfg.get("trust_pickle", False)))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[checkpoint_io]
    )
    hparams = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    return datamodule, model, trainer
