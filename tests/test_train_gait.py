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
    assert "test/Mean" in trainer.callback_metrics  # evaluation ran after PreciseBN


def test_evaluator_must_match_the_data_layout(make_config, gait_overrides):
    cfg = make_config(
        "train",
        [
            *gait_overrides,
            "callbacks=none",
            "+model.evaluator._target_=metareid.evaluation.casiab.OUMVLPIdentification",
            "+model.evaluator._partial_=true",
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
