"""DR50 / ACL end to end on tiny synthetic domains: meta step scope, resume of both optimisers."""

from pathlib import Path

import pytest
import torch

from hydra_helpers import TINY_CALLBACKS, TINY_REID
from metareid.tasks.reid import ReIDModule
from metareid.utils.instantiate import build_run
from train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def synthetic_reid_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic_reid")


@pytest.fixture
def reid_overrides(synthetic_reid_root: Path) -> list[str]:
    return [
        *TINY_REID,
        f"data.synthetic.root={synthetic_reid_root}",
        "model.initial_basic_steps=2",
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
    ]


def test_train_resume_restores_both_optimizers_and_evaluates(make_config, reid_overrides):
    cfg = make_config("train", [*reid_overrides, *TINY_CALLBACKS, "trainer.max_epochs=1"])
    metrics = train(cfg)
    for key in (
        "basic/loss_cls",
        "basic/loss_triplet",
        "mtrain/loss_triplet_add",
        "mtest/loss_triplet_mtest",
    ):
        assert key in metrics, key
    assert {"test/synD/rank1", "test/synD/mAP", "test/synD/mINP"} <= set(metrics)

    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert len(saved["optimizer_states"]) == 2 and len(saved["lr_schedulers"]) == 2
    main_state, meta_state = saved["optimizer_states"]
    assert main_state["param_groups"][0]["momentum"] == 0.9
    assert meta_state["param_groups"][0]["momentum"] == 0.0
    # SGD with momentum keeps buffers; the released checkpoints lost the meta optimiser entirely.
    assert any("momentum_buffer" in s for s in main_state["state"].values())
    meta_lr = saved["lr_schedulers"][1]["_last_lr"][0]

    resumed_cfg = make_config("train", [*reid_overrides, *TINY_CALLBACKS, f"ckpt_path={last}"])
    datamodule, model, trainer = build_run(resumed_cfg)
    restored = {}

    start_training = model.on_train_start

    def capture(*_):
        start_training()
        optimizers = model.optimizers()
        restored["meta_lr"] = optimizers[1].param_groups[0]["lr"]
        restored["schedulers"] = [s.last_epoch for s in model.lr_schedulers()]

    model.on_train_start = capture
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(last))
    assert restored["meta_lr"] == pytest.approx(meta_lr)
    assert (
        restored["schedulers"][0]
        == restored["schedulers"][1]
        == saved["lr_schedulers"][1]["last_epoch"]
    )


@pytest.mark.parametrize("scope", ["router", "all"])
def test_meta_step_updates_only_its_scope(make_config, reid_overrides, scope):
    cfg = make_config(
        "train",
        [
            *reid_overrides,
            "callbacks=none",
            "logger=[]",
            f"model.meta_update_scope={scope}",
            "model.initial_basic_steps=1",
            "model.meta_interval=1",
            "model.augment=null",
            "trainer.max_steps=2",  # one meta step: global_step counts both optimisers
            "+trainer.limit_val_batches=0",
        ],
    )
    datamodule, model, trainer = build_run(cfg)
    assert isinstance(model, ReIDModule)
    model._basic_step = lambda batch: {}  # isolate the meta step
    before = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    trainer.fit(model, datamodule=datamodule)
    after = model.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    routers = {k for k in changed if ".router" in k}
    assert routers, "the routers must be meta-updated"
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed), "BN hold mode"
    if scope == "router":
        assert changed == routers
        assert not any("fc_classifier" in k for k in changed)
    else:
        assert any(k.startswith("backbone.layer1") for k in changed)
        assert any(k.startswith("heads.") for k in changed)


def test_ddp_two_cpu_processes_with_precise_bn(make_config, reid_overrides):
    """gloo DDP with the meta step: gathered losses, all-reduced inner gradients, PreciseBN."""
    cfg = make_config(
        "train",
        [
            *reid_overrides,
            "callbacks=[precise_bn]",
            "callbacks.precise_bn.num_batches=2",
            "logger=[]",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.sync_batchnorm=false",
            # fc_classifier and the map BNs are kept for checkpoints but get no gradient.
            "trainer.strategy=ddp_spawn_find_unused_parameters_true",
            "trainer.max_epochs=1",
            "model.meta_interval=1",
        ],
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/synD/mAP"] <= 100.0
