"""Train a model: ``python src/train.py model=metagait data=casiab`` (no arguments: CPU demo)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from metareid.callbacks.wandb_media import finish_wandb_runs
from metareid.reporting import REPORT_DIRNAME, write_report
from metareid.utils.instantiate import build_run

log = logging.getLogger(__name__)
# Relative paths in conf/paths resolve against the repository, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (optionally resuming from ``cfg.ckpt_path``), then test; returns the logged metrics."""
    datamodule, model, trainer = build_run(cfg)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", True):
        # The weights at the end of training, as the released recipe reports (no best-on-test pick).
        ckpt = None if cfg.get("train", True) else cfg.get("ckpt_path")
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
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # Sweepers (optuna, wandb) optimise the value named by `optimized_metric`.
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}. "
            "Set optimized_metric to one of them (ReID: test/mAP or test/rank1)."
        )
    return metrics[name]


if __name__ == "__main__":
    main()
