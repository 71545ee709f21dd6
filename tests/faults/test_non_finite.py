"""Non-finite losses and weights stop a run before a checkpoint of that state is written."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from fault_helpers import EVERY_STEP_CALLBACKS, run_train
from torch import nn

from hydra_helpers import CONF, TINY_REID
from metareid.callbacks.non_finite import NonFiniteGuard, NonFiniteTrainingError
from metareid.evaluation.casiab import CasiaBIdentification
from metareid.evaluation.guards import NonFiniteFeaturesError
from metareid.evaluation.reid import ReIDRetrieval
from train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_diverging_gait_run_stops_at_step_2_and_keeps_the_finite_checkpoint(
    tiny_gait_cli, tmp_path
):
    """The issue's run: lr=1e12 makes the step-2 loss NaN; before, it trained on, evaluated the
    NaN network (33.33 everywhere) and overwrote last.ckpt with NaN weights."""
    out = tmp_path / "run"
    result = run_train([*tiny_gait_cli, f"paths.output_dir={out}", "model.optimizer.lr=1e12"])
    assert result.returncode == 1, result.stdout[-3000:]
    assert "error: Non-finite values at training step 2" in result.stdout
    for expected in ("ce=nan", "total=nan", "learning rate", "16-mixed", "max_non_finite_steps"):
        assert expected in result.stdout, expected
    assert "Traceback" not in result.stdout  # the message, not a Hydra traceback
    # The batch is named by its sequences (subject/type/view folders of the data root).
    assert "a bad input batch: 00" in result.stdout
    checkpoints = out / "checkpoints"
    written = sorted(p.name for p in checkpoints.glob("*.ckpt"))
    assert written == ["epoch=0-step=1.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert f"the last finite checkpoint is {checkpoints / 'last.ckpt'}" in result.stdout


def test_diverging_dr50_run_stops_naming_the_acl_terms_and_images(make_config, tmp_path_factory):
    cfg = make_config(
        "train",
        [
            *TINY_REID,
            f"data.synthetic.root={tmp_path_factory.mktemp('synthetic_reid')}",
            "model.optimizer.lr=1e12",
            "model.initial_basic_steps=2",
            "logger=[]",
            "report=false",
            *EVERY_STEP_CALLBACKS,
        ],
    )
    with pytest.raises(NonFiniteTrainingError, match=r"training step [12] .*basic/") as caught:
        train(cfg)
    assert ".jpg" in str(caught.value)  # the images of the faulty step
    for path in (Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values()), path


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_recipe_runs_the_guard(make_config, experiment):
    callbacks = make_config("train", [f"experiment={experiment}"]).callbacks
    assert callbacks.non_finite._target_ == "metareid.callbacks.non_finite.NonFiniteGuard"
    assert callbacks.non_finite.max_non_finite_steps == 0


class _Regression(pl.LightningModule):
    """One linear layer; the loss of the training steps in ``nan_steps`` (1-based) is NaN."""

    def __init__(self, nan_steps: set[int]) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.nan_steps = nan_steps
        self.loss_terms: dict[str, torch.Tensor] = {}
        self.batch_descriptions: list[str] = []

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.layer(inputs), targets)
        if self.trainer.global_step + 1 in self.nan_steps:
            loss = loss * float("nan")
        self.loss_terms = {"mse": loss.detach()}
        self.batch_descriptions = [f"row {int(i)}" for i in inputs[:, 0]]
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        inputs = torch.arange(24.0).reshape(8, 3)
        data = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True) / 10)
        return torch.utils.data.DataLoader(data, batch_size=2)


def _fit(module: pl.LightningModule, *callbacks: pl.Callback, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=list(callbacks),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    return trainer


def test_a_nan_loss_stops_at_its_step_naming_the_term_and_batch():
    module = _Regression(nan_steps={2})
    with pytest.raises(NonFiniteTrainingError, match=r"training step 2 .*mse=nan") as caught:
        _fit(module, NonFiniteGuard(), steps=4)
    assert "row 6, row 9" in str(caught.value)  # the second batch
    # Its NaN gradients were dropped before the optimizer step: the weights stayed finite.
    assert all(torch.isfinite(p).all() for p in module.parameters())


class _WeightRecorder(pl.Callback):
    def __init__(self) -> None:
        self.after_step: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step.append([p.detach().clone() for p in pl_module.parameters()])


def test_tolerated_nan_steps_are_skipped_and_counted():
    guard, recorder = NonFiniteGuard(max_non_finite_steps=1), _WeightRecorder()
    module = _Regression(nan_steps={2})
    trainer = _fit(module, guard, recorder, steps=4)
    assert trainer.global_step == 4 and guard.tolerated_steps == 1
    first, faulty, third, _ = recorder.after_step
    # The faulty step changed no weight (momentum included); the next one trained again.
    assert all(torch.equal(a, b) for a, b in zip(first, faulty, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(faulty, third, strict=True))
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # A second faulty step exceeds the tolerance.
    with pytest.raises(NonFiniteTrainingError, match=r"(?s)training step 3.*1 earlier faulty"):
        _fit(_Regression(nan_steps={1, 3}), NonFiniteGuard(max_non_finite_steps=1), steps=4)


class _Scaler:
    def __init__(self, scales: list[float]) -> None:
        self.scales = iter(scales)

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return next(self.scales)


def _amp_trainer(scales: list[float]) -> SimpleNamespace:
    progress = SimpleNamespace(total=SimpleNamespace(ready=0))
    return SimpleNamespace(
        precision_plugin=SimpleNamespace(scaler=_Scaler(scales)),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        optimizers=[],
        checkpoint_callbacks=[],
    )


def test_amp_skips_are_normal_until_too_many_in_a_row():
    guard = NonFiniteGuard(max_consecutive_amp_skips=3)
    # Halvings (skipped steps) with a growth in between: never 4 skips in a row.
    scales = [2.0**16, 2.0**15, 2.0**14, 2.0**13, 2.0**14, 2.0**13, 2.0**12, 2.0**11]
    trainer = _amp_trainer(scales)
    for _ in scales:
        guard._check_grad_scaler(trainer, None)
    assert guard.consecutive_amp_skips == 3
    trainer = _amp_trainer([2.0**-k for k in range(6)])
    guard = NonFiniteGuard(max_consecutive_amp_skips=3)
    with pytest.raises(NonFiniteTrainingError, match="skipped 4 optimizer steps in a row"):
        for _ in range(6):
            guard._check_grad_scaler(trainer, None)


def test_guard_settings_are_validated():
    with pytest.raises(ValueError, match="callbacks.non_finite.max_non_finite_steps"):
        NonFiniteGuard(max_non_finite_steps=-1)
    with pytest.raises(ValueError, match="max_consecutive_amp_skips"):
        NonFiniteGuard(max_consecutive_amp_skips=2.5)


def test_evaluation_refuses_non_finite_features():
    gait = CasiaBIdentification()
    embeddings = torch.randn(4, 2, 3)
    embeddings[1, 0, 0] = float("nan")
    gait.update(embeddings, torch.tensor([1, 1, 2, 2]), torch.tensor([0, 4, 0, 4]),
                torch.tensor([0, 1, 0, 1]))
    with pytest.raises(NonFiniteFeaturesError, match="1 of 4 evaluation samples"):
        gait.compute()
    reid = ReIDRetrieval()
    features = torch.randn(4, 8)
    features[2] = float("inf")
    reid.update(features, torch.tensor([1, 1, 2, 2]), torch.tensor([0, 1, 0, 1]),
                torch.tensor([True, False, True, False]))
    with pytest.raises(NonFiniteFeaturesError, match="ReIDRetrieval: 1 of 4"):
        reid.compute()


def test_checkpoint_path_named_when_one_exists(tmp_path: Path):
    callback = SimpleNamespace(last_model_path=str(tmp_path / "last.ckpt"), best_model_path="")
    hint = NonFiniteGuard._checkpoint_hint(SimpleNamespace(checkpoint_callbacks=[callback]))
    assert f"ckpt_path={tmp_path / 'last.ckpt'}" in hint
