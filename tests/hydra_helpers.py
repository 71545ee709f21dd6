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

# A gait run small enough for seconds on 2 CPU cores: 6 subjects (3 train), 3 views, short clips.
TINY_GAIT = [
    "data.synthetic.num_subjects=6",
    "data.synthetic.train_subjects=3",
    "++data.synthetic.views=[000,090,180]",
    "++data.synthetic.frames=[8,14]",
    "data.p=3",
    "data.k=2",
    "data.frames_num_fixed=6",
    "data.num_workers=0",
    "data.test_batch_size=8",
    "model.net.channels=[4,8,8]",
    "++model.net.bin_num=4",
    "trainer.accelerator=cpu",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]

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


# A DR50 run small enough for seconds: 8 ids per synthetic domain, 1/8 width, batches of 8.
TINY_REID = [
    "experiment=demo_dr50",
    "data.synthetic.ids_per_domain=8",
    "data.synthetic.cameras=2",
    "data.synthetic.images_per_id_per_camera=2",
    "++data.synthetic.distractors_per_domain=2",
    "++data.synthetic.junk_per_domain=1",
    "data.batch_size=8",
    "data.domain_batch_size=4",
    "data.test_batch_size=64",
    "model.net.backbone.width_mult=0.125",
    "model.net.head.in_channels=256",
    "model.scheduler.max_epochs=2",
    "model.scheduler.warmup_epochs=1",
    "trainer.enable_progress_bar=false",
]
