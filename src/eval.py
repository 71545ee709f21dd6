"""Evaluate a checkpoint: ``python src/eval.py model=metagait data=casiab ckpt_path=...``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from metareid.utils.instantiate import build_run

log = logging.getLogger(__name__)
# Relative paths in conf/paths resolve against the repository, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the test protocol of ``cfg.data`` on the weights in ``cfg.ckpt_path``."""
    datamodule, model, trainer = build_run(cfg, with_callbacks=False)
    trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("Metrics: %s", metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
