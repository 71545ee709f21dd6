"""Composing the project's Hydra configs the way the entry points do (shared by tests)."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
os.environ.setdefault("PROJECT_ROOT", str(REPO))

# A gait run small enough for seconds on 2 CPU cores: conf/debug/data/tiny_casiab_synthetic.yaml (6
# subjects, 3 train, 3 views, short clips, 4 steps). No progress bar in test logs.
TINY_GAIT = ["debug=tiny", "trainer.enable_progress_bar=false"]

# Checkpoint every 2 steps, no progress bars (train.yaml only; eval.yaml has no callbacks).
TINY_CALLBACKS = [
    "callbacks=none",
    "+callbacks.model_checkpoint._target_=pytorch_lightning.callbacks.ModelCheckpoint",
    "+callbacks.model_checkpoint.dirpath=${paths.output_dir}/checkpoints",
    "+callbacks.model_checkpoint.every_n_train_steps=2",
    "+callbacks.model_checkpoint.save_top_k=-1",
    "+callbacks.model_checkpoint.save_last=true",
]


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and a fixed output dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir / "logs")
    return cfg


# A DR50 run small enough for seconds: conf/debug/data/tiny_reid_synthetic.yaml (8 ids per synthetic
# domain, 1/8 width, batches of 8, 2 epochs). The schedule is pinned to those 2 epochs so that a
# test stopping after one (trainer.max_epochs=1) keeps the LR curve of the full tiny run.
TINY_REID = [
    "experiment=demo_dr50",
    "debug=tiny",
    "model.scheduler.max_epochs=2",
    "trainer.enable_progress_bar=false",
]
