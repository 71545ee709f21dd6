"""PreciseBN recomputes exact population statistics; LayerFreeze holds named layers for N steps."""

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from metareid.callbacks import LayerFreeze, PreciseBN


class _Batches(pl.LightningDataModule):
    def __init__(self, batches: list[torch.Tensor]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.batches[:1], batch_size=None)


class _TinyNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        return self(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


def test_precise_bn_equals_the_average_of_batch_statistics():
    torch.manual_seed(0)
    batches = [torch.randn(8, 3) * (i + 1) + i for i in range(5)]
    module = _TinyNet()
    datamodule = _Batches(batches)
    trainer = _trainer([PreciseBN(num_batches=4)], max_steps=1, limit_val_batches=1)
    trainer.fit(module, datamodule=datamodule)
    trainer.validate(module, datamodule=datamodule)

    # By hand: the running mean must be the plain mean of the per-batch means of the first 4
    # batches, computed with the final weights (momentum would weight the last batch most).
    linear, norm = module.body
    with torch.no_grad():
        hidden = [linear(b) for b in batches[:4]]
    expected_mean = torch.stack([h.mean(0) for h in hidden]).mean(0)
    expected_var = torch.stack([h.var(0, unbiased=True) for h in hidden]).mean(0)
    torch.testing.assert_close(norm.running_mean, expected_mean)
    torch.testing.assert_close(norm.running_var, expected_var)
    assert norm.momentum == 0.1  # restored


def test_layer_freeze_holds_named_layers_then_releases_them():
    torch.manual_seed(0)
    batches = [torch.randn(8, 3) for _ in range(6)]
    module = _TinyNet()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            snapshots.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    freeze = LayerFreeze(layers=["body"], freeze_iters=2)
    _trainer([freeze, Snapshot()], max_steps=4, limit_val_batches=0).fit(
        module, datamodule=_Batches(batches)
    )
    for step in (0, 1):  # frozen: weights and BN statistics untouched, head trains
        for key in ("body.0.weight", "body.1.weight", "body.1.running_mean"):
            assert torch.equal(snapshots[step][key], initial[key]), (step, key)
        assert not torch.equal(snapshots[step]["head.weight"], initial["head.weight"])
    assert not torch.equal(snapshots[3]["body.0.weight"], snapshots[1]["body.0.weight"])
    assert module.body.training


def test_layer_freeze_rejects_unknown_layers():
    import pytest

    with pytest.raises(ValueError, match="matches no module"):
        _trainer([LayerFreeze(layers=["backbone"], freeze_iters=1)], max_steps=1).fit(
            _TinyNet(), datamodule=_Batches([torch.randn(4, 3)])
        )
