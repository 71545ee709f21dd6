"""Evaluate a checkpoint: ``python src/eval.py model=metagait data=casiab ckpt_path=...``.

Besides logging the metrics, the result tables (markdown + JSON) and figures (gait: rank-1 heatmap
of every probe/gallery view pair; ReID: CMC curves) are written to ``<run dir>/report``; pass
``+report=false`` to skip them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from metareid.reporting import REPORT_DIRNAME, write_report
from metareid.utils.instantiate import build_run

log = logging.getLogger(__name__)
# Relative paths in conf/paths resolve against the repository, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


def run_metadata(cfg: DictConfig) -> dict[str, Any]:
    """What a report says about the run that produced it."""
    return {
        "task_name": cfg.get("task_name"),
        "ckpt_path": cfg.get("ckpt_path"),
        "network": OmegaConf.select(cfg, "model.net._target_"),
        "data": OmegaConf.select(cfg, "data._target_"),
    }


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the test protocol of ``cfg.data`` on the weights in ``cfg.ckpt_path``; write the report
    into ``cfg.paths.output_dir/report`` (rank 0) unless ``cfg.report`` is false."""
    datamodule, model, trainer = build_run(cfg, with_callbacks=False)
    trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("Metrics: %s", metrics)
    if cfg.get("report", True) and trainer.is_global_zero:
        write_report(
            getattr(model, "last_results", None),
            Path(cfg.paths.output_dir) / REPORT_DIRNAME,
            metadata=run_metadata(cfg),
        )
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
