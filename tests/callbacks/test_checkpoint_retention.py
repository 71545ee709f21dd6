"""Default checkpointing keeps last.ckpt and the newest three, not one file per evaluation."""

from pathlib import Path

from hydra_helpers import TINY_GAIT
from train import train


def test_default_callbacks_keep_last_and_the_newest_three(make_config, synthetic_gait_root):
    overrides = [o for o in TINY_GAIT if not o.startswith("trainer.")]
    cfg = make_config(
        "train",
        [
            *overrides,
            f"data.root={synthetic_gait_root}",
            "trainer.max_steps=5",
            "trainer.val_check_interval=5",
            "trainer.enable_progress_bar=false",
            "callbacks.model_checkpoint.every_n_train_steps=1",
            "test=false",
        ],
    )
    train(cfg)
    names = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step_000003.ckpt", "step_000004.ckpt", "step_000005.ckpt"]
