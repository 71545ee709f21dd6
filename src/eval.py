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

from metareid.checkpoints import CheckpointError, check_fits_module
from metareid.reporting import REPORT_DIRNAME, write_report
from metareid.utils.errors import exit_on_user_error
from metareid.utils.instantiate import build_run
from metareid.utils.run_dirs import apply_run_dir, explain_misfit

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
    into ``cfg.paths.output_dir/report`` (rank 0) unless ``cfg.report`` is false.

    With ``cfg.run_dir`` set, the run's model/data/seed and checkpoint are used (see
    :func:`metareid.utils.run_dirs.apply_run_dir`)."""
    cfg = apply_run_dir(cfg)
    if not cfg.get("ckpt_path"):
        raise ValueError(
            "Nothing to evaluate: give run_dir=<training run folder> (uses its config and "
            "checkpoints/last.ckpt) or ckpt_path=<checkpoint> with the model/data overrides."
        )
    datamodule, model, trainer = build_run(cfg, with_callbacks=False)
    # One short error for a file of another model or an unconverted one (Lightning lists keys).
    try:
        check_fits_module(cfg.ckpt_path, model, trust_pickle=bool(cfg.get("trust_pickle", False)))
    except CheckpointError as error:
        if "does not fit" not in str(error):
            raise
        raise CheckpointError(str(error) + explain_misfit(cfg.ckpt_path, cfg)) from None
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
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
