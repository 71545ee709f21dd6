"""The run progress bar: step / max_steps on step-driven runs (also after a resume), loss and LR."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar
from torch import nn
from torch.utils.data import DataLoader

from hydra_helpers import TINY_GAIT
from metareid.callbacks.progress import RunProgressBar
from metareid.utils.instantiate import build_run


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        loss = self.linear(batch).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _RecordingBar(RunProgressBar):
    """Remembers every value the training bar was set to."""

    def __init__(self) -> None:
        super().__init__()
        self.train_values: list[int] = []

    def _update(self, progress_bar_id, current, visible=True, hard=False):
        if progress_bar_id is not None and progress_bar_id == self.train_progress_bar_id:
            self.train_values.append(int(current))
        super()._update(progress_bar_id, current, visible, hard)


def _fit(max_steps: int, ckpt_path=None, max_epochs: int = -1, default_root_dir=None):
    bar = _RecordingBar()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar],
        default_root_dir=default_root_dir,
    )
    batches = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(50)]
    trainer.fit(_Regression(), DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
    return trainer, bar


def _train_task(bar: RunProgressBar):
    return bar.progress.tasks[bar.train_progress_bar_id]


def test_step_driven_run_counts_steps_towards_max_steps_and_shows_loss_and_lr(tmp_path):
    trainer, bar = _fit(max_steps=5, default_root_dir=tmp_path)
    task = _train_task(bar)
    assert task.total == 5 and task.completed == 5
    assert task.description.strip().endswith("Step")
    assert bar.train_values[-1] == 5
    metrics = bar.get_metrics(trainer, trainer.lightning_module)
    assert set(metrics) >= {"loss", "lr"} and "v_num" not in metrics
    assert float(metrics["lr"]) == 0.05


def test_resumed_run_continues_from_its_step_not_from_zero(tmp_path):
    trainer, _ = _fit(max_steps=3, default_root_dir=tmp_path)
    ckpt = tmp_path / "step3.ckpt"
    trainer.save_checkpoint(ckpt)
    _, bar = _fit(max_steps=5, ckpt_path=ckpt, default_root_dir=tmp_path)
    assert bar.train_values[0] == 3  # set at the (resumed) epoch start
    assert bar.train_values[-1] == 5
    assert _train_task(bar).total == 5


def test_epoch_driven_description_counts_epochs_from_one(tmp_path):
    _, bar = _fit(max_steps=-1, max_epochs=2, default_root_dir=tmp_path)
    assert _train_task(bar).description.strip() == "Epoch 2/2"


def test_disabled_progress_bar_drops_the_default_bar_callback(make_config, synthetic_gait_root):
    # The default callbacks include the rich bar; Lightning refuses it with the bar disabled.
    overrides = [o for o in TINY_GAIT if not o.startswith("trainer.enable_progress_bar")]
    overrides += [f"data.root={synthetic_gait_root}", "trainer.enable_progress_bar=false"]
    cfg = make_config("train", overrides)
    assert "rich_progress_bar" in cfg.callbacks
    _, _, trainer = build_run(cfg)
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
