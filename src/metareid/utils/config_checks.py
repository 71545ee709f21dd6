"""Start-up checks of config values that must agree with one another.

Each setting has one source in ``conf/`` and the keys that depend on it interpolate it
(``model.scheduler.max_epochs: ${trainer.max_epochs}``, ``model.scheduler.base_lr:
${model.optimizer.lr}``, ``model.net.class_num: ${data.num_classes}``...). Typing the dependent
key on the command line replaces the interpolation and would silently change the experiment;
these checks turn such a disagreement into one error that names both keys and the fix, before
any data is read or any weight is built.

Values that only the data can tell (``data.num_classes`` against the partition, P×K against the
number of identities) are checked by the data modules when they index the data.
"""

from __future__ import annotations

import logging
import math

from omegaconf import DictConfig, OmegaConf

from metareid.utils.errors import ConfigValueError

log = logging.getLogger(__name__)

_ABSENT = object()
# DR50 builds every width from a stem of round(64 · width_mult) channels; its last stage outputs
# 8 × stem planes × 4 (bottleneck expansion) = 32 × stem channels (models/dr50.py DR50).
DR50_BACKBONE_TARGETS = ("metareid.models.dr50_pretrained.build_dr50", "metareid.models.dr50.DR50")
DR50_OUT_CHANNELS_PER_STEM_CHANNEL = 32


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=_ABSENT)


def dr50_out_channels(width_mult: float) -> int:
    """Channels of DR50's output feature map for ``width_mult`` (2048 at 1.0)."""
    return round(64 * width_mult) * DR50_OUT_CHANNELS_PER_STEM_CHANNEL


def check_schedule_length(cfg: DictConfig) -> None:
    """An epoch-based schedule (``model.scheduler.max_epochs``) must span the training.

    Raises when it is shorter than ``trainer.max_epochs`` (the LR would sit at its floor for the
    remaining epochs) or when training is not epoch-bounded. A longer schedule is allowed with a
    warning: that is a run stopped early on purpose, to be resumed with a larger
    ``trainer.max_epochs``.
    """
    schedule_epochs = _get(cfg, "model.scheduler.max_epochs")
    if schedule_epochs is _ABSENT or schedule_epochs is None:
        return
    trainer_epochs = _get(cfg, "trainer.max_epochs")
    if trainer_epochs is _ABSENT or trainer_epochs is None or trainer_epochs <= 0:
        raise ConfigValueError(
            f"model.scheduler.max_epochs={schedule_epochs} needs an epoch-bounded run, but "
            f"trainer.max_epochs={trainer_epochs}: set trainer.max_epochs (the schedule follows "
            "it) and leave model.scheduler.max_epochs unset."
        )
    if schedule_epochs < trainer_epochs:
        raise ConfigValueError(
            f"model.scheduler.max_epochs={schedule_epochs} is shorter than "
            f"trainer.max_epochs={trainer_epochs}: the learning rate would stay at its floor for "
            f"the last {trainer_epochs - schedule_epochs} epochs. Set the length once with "
            f"trainer.max_epochs={schedule_epochs} (model.scheduler.max_epochs follows it)."
        )
    if schedule_epochs > trainer_epochs:
        log.warning(
            "trainer.max_epochs=%d stops before the end of model.scheduler.max_epochs=%d: the "
            "learning rate does not reach its floor (resume with trainer.max_epochs=%d to finish).",
            trainer_epochs,
            schedule_epochs,
            schedule_epochs,
        )
    warmup_iters = _get(cfg, "model.scheduler.warmup_iters")
    warmup_epochs = _get(cfg, "model.scheduler.warmup_epochs")
    if warmup_iters in (_ABSENT, None) and warmup_epochs not in (_ABSENT, None):
        if warmup_epochs >= schedule_epochs:
            raise ConfigValueError(
                f"model.scheduler.warmup_epochs={warmup_epochs} leaves no cosine epochs in a "
                f"{schedule_epochs}-epoch schedule (model.scheduler.max_epochs, which follows "
                "trainer.max_epochs): lower model.scheduler.warmup_epochs or raise "
                "trainer.max_epochs."
            )


def check_scheduler_lr(cfg: DictConfig) -> None:
    """``model.scheduler.base_lr`` must be the optimizer's LR: the schedule's floor is absolute."""
    base_lr = _get(cfg, "model.scheduler.base_lr")
    optimizer_lr = _get(cfg, "model.optimizer.lr")
    if base_lr in (_ABSENT, None) or optimizer_lr in (_ABSENT, None):
        return
    if not math.isclose(base_lr, optimizer_lr, rel_tol=1e-9):
        raise ConfigValueError(
            f"model.scheduler.base_lr={base_lr} differs from model.optimizer.lr={optimizer_lr}: "
            "the schedule scales the optimizer's LR, so its absolute floor (eta_min) would be "
            f"wrong. Set the LR once with model.optimizer.lr={base_lr} "
            "(model.scheduler.base_lr follows it)."
        )


def check_classifier_width(cfg: DictConfig) -> None:
    """A gait classifier (``model.net.class_num``) has one class per training identity."""
    class_num = _get(cfg, "model.net.class_num")
    num_classes = _get(cfg, "data.num_classes")
    if class_num in (_ABSENT, None) or num_classes in (_ABSENT, None):
        return
    if class_num != num_classes:
        raise ConfigValueError(
            f"model.net.class_num={class_num} differs from data.num_classes={num_classes}: the "
            f"classifier width follows the data. Set data.num_classes={class_num} instead "
            "(the data module checks it against the partition)."
        )


def check_reid_head_width(cfg: DictConfig) -> None:
    """The ReID head's ``in_channels`` must be the DR50 backbone's output width."""
    target = _get(cfg, "model.net.backbone._target_")
    in_channels = _get(cfg, "model.net.head.in_channels")
    if target not in DR50_BACKBONE_TARGETS or in_channels in (_ABSENT, None):
        return
    width_mult = _get(cfg, "model.net.backbone.width_mult")
    width_mult = 1.0 if width_mult in (_ABSENT, None) else width_mult
    expected = dr50_out_channels(width_mult)
    if in_channels != expected:
        raise ConfigValueError(
            f"model.net.head.in_channels={in_channels} does not match "
            f"model.net.backbone.width_mult={width_mult}, whose feature map has {expected} "
            f"channels: set model.net.head.in_channels={expected}."
        )


def check_augment_size(cfg: DictConfig) -> None:
    """ReID training crops (``model.augment.image_size``) must be the test size (``data``)."""
    augment_size = _get(cfg, "model.augment.image_size")
    data_size = _get(cfg, "data.image_size")
    if augment_size in (_ABSENT, None) or data_size in (_ABSENT, None):
        return
    if list(augment_size) != list(data_size):
        raise ConfigValueError(
            f"model.augment.image_size={list(augment_size)} differs from "
            f"data.image_size={list(data_size)}: the model would train and test at different "
            "sizes. Set data.image_size only (model.augment.image_size follows it)."
        )


def check_retrieval(cfg: DictConfig) -> None:
    """``model.retrieval=faiss`` ranks top-k lists: no re-ranking, and CMC up to its ``k``."""
    retrieval = _get(cfg, "model.retrieval")
    if retrieval in (_ABSENT, None, "dense"):
        return
    if retrieval != "faiss":
        raise ConfigValueError(f"model.retrieval must be dense or faiss, got {retrieval!r}")
    if _get(cfg, "model.rerank") is True:
        raise ConfigValueError(
            "model.rerank=true needs the whole distance matrix, which model.retrieval=faiss "
            "avoids: set model.rerank=false or model.retrieval=dense."
        )
    topk = _get(cfg, "model.retrieval_topk")
    if topk in (_ABSENT, None) or topk < 50:
        raise ConfigValueError(
            f"model.retrieval_topk={topk} must be at least 50, the length of the CMC curve "
            "(ranks 1-50) that the evaluation reports."
        )


def check_debug_sizes(cfg: DictConfig) -> None:
    """``debug=tiny`` shrinks the synthetic datasets only; on real data it would not be tiny."""
    tiny_data = _get(cfg, "debug.tiny_data")
    if tiny_data is _ABSENT or tiny_data is not None:
        return
    raise ConfigValueError(
        "debug=tiny has sizes for the synthetic data only (data=casiab_synthetic or "
        "data=reid_synthetic, conf/debug/data/tiny_<data>.yaml); on a real dataset use debug=fdr "
        "(one batch of each loop)."
    )


CHECKS = (
    check_schedule_length,
    check_scheduler_lr,
    check_classifier_width,
    check_reid_head_width,
    check_augment_size,
    check_retrieval,
    check_debug_sizes,
)


def check_config(cfg: DictConfig) -> None:
    """Run every check on a composed train/eval config; raises ``ConfigValueError``."""
    for check in CHECKS:
        check(cfg)
