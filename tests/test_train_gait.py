"""End to end on the synthetic CASIA-B: train a few steps, checkpoint, resume, evaluate."""

from pathlib import Path

import pytest
import torch

from eval import evaluate
from hydra_helpers import TINY_CALLBACKS, TINY_GAIT
from train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def gait_overrides(synthetic_gait_root: Path) -> list[str]:
    return [*TINY_GAIT, f"data.root={synthetic_gait_root}"]


def test_train_checkpoint_resume_and_evaluate(make_config, gait_overrides, tmp_path):
    cfg = make_config("train", [*gait_overrides, *TINY_CALLBACKS])
    metrics = train(cfg)
    for key in ("test/NM", "test/BG", "test/CL", "test/Mean", "train/loss"):
        assert key in metrics, key
    assert 0.0 <= metrics["test/NM"] <= 100.0
    out = Path(cfg.paths.output_dir)
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and len(checkpoints) >= 3  # steps 2 and 4 + last
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert any(k.startswith("net.eca.") for k in ckpt["state_dict"])

    resumed_cfg = make_config(
        "train",
        [
            *gait_overrides,
            *TINY_CALLBACKS,
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            "trainer.max_steps=6",
        ],
    )
    resumed = train(resumed_cfg)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6
    # The warm-up schedule continued from step 4, not from 0.
    lr = last["lr_schedulers"][0]["_last_lr"][0]
    assert lr == pytest.approx(3.5e-4 * 1.0e-3 / 3.5e-4 * (0.01 + 0.99 * 6 / 30))
    assert "test/Mean" in resumed

    last_ckpt = out / "checkpoints" / "last.ckpt"
    eval_cfg = make_config("eval", [*gait_overrides, f"ckpt_path={last_ckpt}"])
    evaluated = evaluate(eval_cfg)
    assert evaluated["test/Mean"] == pytest.approx(resumed["test/Mean"], abs=1e-6)


def test_ddp_two_cpu_processes_train_and_evaluate(make_config, gait_overrides):
    """gloo DDP: the rank-sharded sampler, SyncBN, gathered triplet and metric sync all run."""
    cfg = make_config(
        "train",
        [
            *gait_overrides,
            "callbacks=none",
            "logger=[]",  # CSVLogger's header rewrite breaks across ddp_spawn fit/test (Lightning)
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp_spawn",  # `ddp` would re-launch pytest itself
            "trainer.sync_batchnorm=false",  # SyncBatchNorm is CUDA-only
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "data.p=2",  # global batch 2×2, one identity pair per rank after sharding
        ],
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/Mean"] <= 100.0


def test_deterministic_runs_repeat_exactly(make_config, gait_overrides):
    overrides = [
        *gait_overrides,
        "callbacks=none",
        "trainer.deterministic=true",
        "trainer.max_steps=2",
    ]
    first = train(make_config("train", overrides))
    second = train(make_config("train", overrides))
    assert first["train/loss"] == second["train/loss"]
    assert first["test/Mean"] == second["test/Mean"]


def test_precise_bn_and_layer_freeze_callbacks_run_in_a_gait_fit(make_config, gait_overrides):
    cfg = make_config(
        "train",
        [
            *gait_overrides,
            "callbacks=[precise_bn,layer_freeze]",
            "callbacks.precise_bn.num_batches=2",
            "callbacks.layer_freeze.layers=[net.conv3d]",
            "callbacks.layer_freeze.freeze_iters=2",
            "trainer.max_steps=2",
            "test=false",
        ],
    )
    from metareid.utils.instantiate import build_run

    datamodule, model, trainer = build_run(cfg)
    before = model.net.conv3d[0].conv3d.weight.detach().clone()
    trainer.fit(model, datamodule=datamodule)
    assert torch.equal(model.net.conv3d[0].conv3d.weight, before)  # frozen for both steps
    assert "val/Mean" in trainer.callback_metrics  # evaluation ran after PreciseBN


def test_evaluator_must_match_the_data_layout(make_config, gait_overrides):
    cfg = make_config(
        "train",
        [
            *gait_overrides,
            "callbacks=none",
            "model.evaluator._target_=metareid.evaluation.casiab.OUMVLPIdentification",
        ],
    )
    from metareid.utils.instantiate import build_run

    datamodule, model, trainer = build_run(cfg)
    with pytest.raises(ValueError, match="does not match data.layout='casiab'"):
        trainer.fit(model, datamodule=datamodule)


def test_mixed_precision_training_keeps_losses_finite(make_config, gait_overrides):
    """bf16-mixed on CPU (what `16-mixed` becomes there): autocast forward, fp32 losses."""
    cfg = make_config(
        "train",
        [*gait_overrides, "callbacks=none", "trainer.precision=bf16-mixed", "trainer.max_steps=2"],
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0.0 <= metrics["test/Mean"] <= 100.0


class _TinyGaitNet(torch.nn.Module):
    """``sils [n, s, 4, 4] -> embeddings [n, 2, 3], logits [n, 2, 2]``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(16, 6)
        self.classify = torch.nn.Linear(3, 2)

    def forward(self, sils, seq_lens=None):
        embeddings = self.embed(sils.amax(1).flatten(1)).view(-1, 2, 3)
        return {"embeddings": embeddings, "logits": self.classify(embeddings)}


class _FactorIsStep:
    def __call__(self, step: int) -> float:
        return float(step + 1)


@pytest.mark.parametrize(
    ("counting", "schedule_steps_seen", "steps_after_resume"),
    [
        # The release: neither the inf skip (step 1) nor a scale growth (steps 3, 5) counts;
        # resumed to 5 iterations, step 7 grows the scale again, so 2 more steps.
        ("release", [0, 1, 1, 2, 2, 3, 3], 9),
        # Only the skipped step does not count.
        ("taken", [0, 1, 1, 2, 3], 6),
        # Lightning: the schedule advances on every optimizer step, the skipped one included.
        ("every", [0, 1, 2, 3], 5),
    ],
)
def test_amp_steps_that_the_scaler_rescales_do_not_advance_the_schedule(
    counting, schedule_steps_seen, steps_after_resume, tmp_path
):
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.precision import MixedPrecision

    from metareid.tasks.gait import GaitModule

    base_lr = 1e-3
    lr_factors: list[float] = []

    class InfOnSecondStep(GaitModule):
        def training_step(self, batch, batch_idx):
            lr_factors.append(self.optimizers().param_groups[0]["lr"] / base_lr)
            loss = super().training_step(batch, batch_idx)
            return loss * float("inf") if self.global_step == 1 else loss

    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    batches = [
        {
            "sils": torch.rand(4, 3, 4, 4, generator=generator),
            "labels": labels,
            "subjects": labels,
            "type_index": torch.zeros(4, dtype=torch.long),
            "view_index": torch.zeros(4, dtype=torch.long),
        }
        for _ in range(10)
    ]

    def fit(max_steps: int, ckpt_path=None):
        module = InfOnSecondStep(
            _TinyGaitNet(),
            optimizer=lambda params: torch.optim.Adam(params, lr=base_lr),
            scheduler=_FactorIsStep(),
            print_table=False,
            amp_step_counting=counting,
        )
        # A small initial scale: no overflow but the injected one; growth after 2 good steps.
        scaler = torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=2)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_steps=max_steps,
            plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        loader = torch.utils.data.DataLoader(batches, batch_size=None)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
        return module, trainer

    module, trainer = fit(max_steps=4)
    assert [round(f) - 1 for f in lr_factors] == schedule_steps_seen
    # The run does max_steps counted iterations, whatever the number of uncounted steps.
    assert module.iterations == 4 and trainer.callback_metrics["train/iteration"] == 4
    assert trainer.global_step == len(schedule_steps_seen)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4

    # Resumed, the uncounted steps still extend max_steps (and the scaler keeps its state).
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    module, trainer = fit(max_steps=5, ckpt_path=tmp_path / "last.ckpt")
    assert module.iterations == 5 and trainer.global_step == steps_after_resume
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 5


def test_amp_step_counting_rejects_an_unknown_mode():
    from metareid.tasks.gait import GaitModule

    with pytest.raises(ValueError, match="model.amp_step_counting='lightning'"):
        GaitModule(_TinyGaitNet(), optimizer=torch.optim.Adam, amp_step_counting="lightning")


@pytest.mark.parametrize(("max_steps", "evaluations"), [(4, 2), (5, 3)])
def test_final_test_reuses_an_evaluation_of_the_final_weights(
    make_config, gait_overrides, monkeypatch, max_steps, evaluations
):
    """In-training evaluations log val/*, the final one test/*; with max_steps a multiple of the
    evaluation interval the last validation already ran on the final weights: not run again."""
    import csv

    from metareid.evaluation.casiab import CasiaBIdentification

    calls = []
    original = CasiaBIdentification.compute

    def counting_compute(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(CasiaBIdentification, "compute", counting_compute)
    cfg = make_config("train", [*gait_overrides, f"trainer.max_steps={max_steps}"])
    metrics = train(cfg)
    assert len(calls) == evaluations  # validations at steps 2, 4 (+ the test at step 5)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    val_means = [float(r["val/Mean"]) for r in rows if r.get("val/Mean")]
    test_means = [float(r["test/Mean"]) for r in rows if r.get("test/Mean")]
    assert len(val_means) == 2 and len(test_means) == 1
    assert metrics["test/Mean"] == test_means[0]
    if max_steps == 4:
        assert test_means[0] == val_means[-1]
