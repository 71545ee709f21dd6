"""Train a model: ``python src/train.py model=metagait data=casiab`` (no arguments: CPU demo)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from metareid.callbacks.wandb_media import WandbMedia, finish_wandb_runs
from metareid.reporting import REPORT_DIRNAME, write_report
from metareid.utils.errors import ConfigValueError, exit_on_user_error
from metareid.utils.instantiate import build_run
from metareid.utils.run_dirs import run_folder_of

log = logging.getLogger(__name__)
# Relative paths in conf/paths resolve against the repository, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


def resume_path(cfg: DictConfig, trainer) -> str | None:
    """``cfg.ckpt_path``, where ``last`` must find a ``last*.ckpt`` of this run's checkpoint
    folders unless ``allow_fresh_start`` (Lightning would silently train from scratch)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path != "last":
        return ckpt_path
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath]
    if any(path.is_file() for folder in folders for path in folder.glob("last*.ckpt")):
        return ckpt_path
    if cfg.get("allow_fresh_start", False):
        log.info("ckpt_path=last: no last checkpoint in %s; starting from scratch", folders)
        return None
    raise ConfigValueError(
        f"ckpt_path=last: no last*.ckpt in this run's checkpoint folder(s) "
        f"{[str(f) for f in folders]}, and a new run folder starts empty. Resume with "
        "ckpt_path=<earlier run>/checkpoints/last.ckpt, or add allow_fresh_start=true to "
        "start from scratch when there is no last checkpoint."
    )


def validated_final_weights(model, trainer) -> bool:
    """Whether the last in-training evaluation ran on the weights training ended with (the run's
    length is a multiple of the evaluation interval), so the final test would repeat it."""
    return (
        trainer.state.fn == "fit"
        and not trainer.interrupted
        and getattr(model, "evaluated_weights_step", None) == trainer.global_step
    )


def reuse_validation_as_test(metrics: dict[str, float], trainer, model) -> dict[str, float]:
    """Report the final evaluation under ``test/*`` (what sweeps optimise) without running the
    protocol again; the loggers get the same rows a ``trainer.test`` would have written."""
    test_metrics = {
        "test/" + key[len("val/") :]: value
        for key, value in metrics.items()
        if key.startswith("val/")
    }
    log.info(
        "The last evaluation ran on the final weights (step %d): reported as the test "
        "results, not run again",
        trainer.global_step,
    )
    for logger in trainer.loggers:
        logger.log_metrics(test_metrics, step=trainer.global_step)
        logger.save()
    for callback in trainer.callbacks:
        if isinstance(callback, WandbMedia):
            callback.log_validation_as_test(trainer, model)
    return test_metrics


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (optionally resuming from ``cfg.ckpt_path``), then test; returns the logged metrics."""
    datamodule, model, trainer = build_run(cfg)
    if trainer.is_global_zero:
        resumed = " (resumed in place)" if run_folder_of(cfg.get("ckpt_path")) else ""
        log.info("Run folder: %s%s", cfg.paths.output_dir, resumed)
    if cfg.get("train", True):
        ckpt_path = resume_path(cfg, trainer)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", True):
        # The weights at the end of training, as the released recipe reports (no best-on-test pick).
        ckpt = None if cfg.get("train", True) else cfg.get("ckpt_path")
        if ckpt is None and validated_final_weights(model, trainer):
            metrics.update(reuse_validation_as_test(metrics, trainer, model))
        else:
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if cfg.get("report", True) and trainer.is_global_zero:
            write_report(
                getattr(model, "last_results", None),
                Path(cfg.paths.output_dir) / REPORT_DIRNAME,
                metadata={"task_name": cfg.get("task_name"), "weights": ckpt or "end of training"},
            )
    log.info("Final metrics: %s", metrics)
    finish_wandb_runs()  # flush this run now, not at interpreter exit (sweeps run many)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # Sweepers (optuna, wandb) optimise the value named by `optimized_metric`.
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics and not cfg.get("test", True):
        # Nothing to optimise when the run does not evaluate; training itself succeeded.
        log.info("optimized_metric=%s not computed (test=false)", name)
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}. "
            "Set optimized_metric to one of them (ReID: test/mAP or test/rank1)."
        )
    return metrics[name]


if __name__ == "__main__":
    main()
