"""DR50 / ACL end to end on tiny synthetic domains: meta step scope, resume of both optimisers."""

import csv
from pathlib import Path

import pytest
import torch

from hydra_helpers import TINY_CALLBACKS, TINY_REID, compose_config
from metareid.tasks.reid import ReIDModule
from metareid.utils.instantiate import build_run
from train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
# Quarter-size crops for the loop tests, which check counts and bits, not learning.
SMALL_IMAGES = ["data.image_size=[32,16]", "data.synthetic.size=[32,16]"]


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
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",  # one iteration: its meta step
            "+trainer.limit_val_batches=0",
        ],
    )
    datamodule, model, trainer = build_run(cfg)
    assert isinstance(model, ReIDModule)
    model._basic_step = lambda batch, counted: {}  # isolate the meta step
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


def record_calls(model, name: str, before=None) -> list:
    """Wrap ``model.<name>``; each call appends ``before(*args)`` (or None) to the returned list."""
    calls = []
    original = getattr(model, name)

    def wrapper(*args, **kwargs):
        calls.append(before(*args, **kwargs) if before else None)
        return original(*args, **kwargs)

    setattr(model, name, wrapper)
    return calls


def test_a_run_does_epochs_times_iters_per_epoch_acl_iterations(make_config, reid_overrides):
    """The release: iteration 0 runs 10 basic steps, then one per iteration; 3 epochs of 4."""
    cfg = make_config(
        "train",
        [
            *reid_overrides,
            "callbacks=none",
            "logger=[]",
            *SMALL_IMAGES,
            "data.batch_size=12",  # 48 source images -> 4 iterations per epoch
            "model.initial_basic_steps=10",
            "trainer.max_epochs=3",
            "model.scheduler.max_epochs=3",
            "+trainer.limit_val_batches=0",
        ],
    )
    datamodule, model, trainer = build_run(cfg)
    basic_labels = record_calls(
        model, "_basic_step", lambda batch, counted: batch["label"].tolist()
    )
    meta_calls = record_calls(model, "_meta_step")
    at_epoch_end, per_step = [], []
    model.on_train_epoch_end = lambda: at_epoch_end.append(
        (model.iterations_done, trainer.global_step, model.lr_schedulers()[1].last_epoch)
    )
    model.on_train_batch_end = lambda *_: per_step.append(
        (set(model.loss_terms), list(model.batch_descriptions))
    )
    trainer.fit(model, datamodule=datamodule)

    assert datamodule.iters_per_epoch == 4
    assert model.iterations_done == trainer.global_step == 12
    assert len(meta_calls) == model.meta_steps_done == 4  # iterations 0, 3, 6, 9
    # epoch boundaries (cosine LR step, evaluation, checkpoint) after iterations 4, 8, 12
    assert at_epoch_end == [(4, 4, 4), (8, 8, 8), (12, 12, 12)]
    # merged batches 0..20 of the one stream, in order: 10 in iteration 0, then one per iteration
    stream = [b["label"].tolist() for b in datamodule.merged_dataloader(0, 21)]
    assert basic_labels == stream

    # the non-finite interface: every term of the step, the fast weights, the images used
    terms, paths = per_step[0]
    assert {"basic/loss_cls", "mtrain/loss_triplet_add", "mtest/loss_triplet_mtest"} <= terms
    assert "meta/fast_weights" in terms and "meta/fast_weights" not in per_step[1][0]
    assert len(paths) == 10 * 12 + 2 * 4 + 4  # 10 merged, 2 meta-train and 1 meta-test batches
    assert len(per_step[1][1]) == 12 and all(Path(p).is_file() for p in paths)


def test_checkpoint_names_limits_and_logged_steps_count_iterations(make_config, reid_overrides):
    cfg = make_config(
        "train",
        [
            *reid_overrides,
            "callbacks=[model_checkpoint,lr_monitor]",
            "callbacks.model_checkpoint.every_n_train_steps=2",
            "logger=csv",
            *SMALL_IMAGES,
            "model.meta_optimizer.lr=0.01",  # tells the two learning-rate columns apart
            "model.meta_interval=1",  # two optimizer steps in every iteration
            "trainer.max_steps=5",
            "+trainer.limit_val_batches=0",
        ],
    )
    datamodule, model, trainer = build_run(cfg)
    trainer.fit(model, datamodule=datamodule)
    assert model.iterations_done == model.meta_steps_done == trainer.global_step == 5
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    names = sorted(path.name for path in checkpoints.glob("step_*.ckpt"))
    assert names == ["step_000002.ckpt", "step_000004.ckpt"]
    metrics = Path(cfg.paths.output_dir) / "csv" / "metrics.csv"
    with metrics.open() as file:
        rows = list(csv.DictReader(file))
    steps = [int(row["step"]) for row in rows if row["train/loss"]]
    assert steps == [0, 1, 2, 3, 4]  # one row per ACL iteration
    assert sorted(name for name in rows[0] if name.startswith("lr")) == ["lr-main", "lr-meta"]
    # Both follow one schedule, so each row's ratio is that of the two base learning rates.
    main, meta = (optimizer.param_groups[0]["initial_lr"] for optimizer in trainer.optimizers)
    logged = [row for row in rows if row["lr-meta"]]
    assert logged and main != meta
    for row in logged:
        assert float(row["lr-meta"]) / float(row["lr-main"]) == pytest.approx(meta / main)


@pytest.mark.parametrize("release_zero_grad", [True, False])
def test_release_zero_grad_decays_classifiers_a_step_does_not_reach(
    make_config, reid_overrides, release_zero_grad
):
    """torch 1.6 zeroed gradients, so SGD still applied weight decay (and momentum) to them."""
    cfg = make_config(
        "train",
        [
            *reid_overrides,
            "callbacks=none",
            "logger=[]",
            f"model.release_zero_grad={release_zero_grad}",
            "model.initial_basic_steps=1",
            "model.meta_interval=1",
            "model.augment=null",
            *SMALL_IMAGES,
            "data.batch_size=16",
            "trainer.max_steps=2",
            "+trainer.limit_val_batches=0",
        ],
    )
    datamodule, model, trainer = build_run(cfg)
    head = model.net.heads

    def drop_domain_2_from_the_second_batch(batch, dataloader_idx):
        if model.iterations_done == 1:
            keep = batch["domain_id"] != 2
            batch = {
                key: value[keep]
                if torch.is_tensor(value)
                else [v for v, k in zip(value, keep, strict=True) if k]
                for key, value in batch.items()
            }
        return batch

    def snapshot(iteration):
        """Classifier weights and SGD state just before a meta step (after its basic step)."""
        main = model.optimizers()[0].optimizer
        classifiers = [c.weight for c in head.classifiers]
        return {
            "weights": [w.detach().clone() for w in classifiers],
            "buffer": main.state[classifiers[2]]["momentum_buffer"].clone(),
            "lr": main.param_groups[0]["lr"],
            "meta_lr": model.optimizers()[1].param_groups[0]["lr"],
            "wd": main.param_groups[0]["weight_decay"],
        }

    first_domains = []
    model.on_after_batch_transfer = drop_domain_2_from_the_second_batch
    before_meta = record_calls(model, "_meta_step", snapshot)
    after_meta = []
    model.on_train_batch_end = lambda *_: after_meta.append(
        [c.weight.detach().clone() for c in head.classifiers]
    )
    record_calls(
        model,
        "_basic_step",
        lambda batch, counted: first_domains.append(set(batch["domain_id"].tolist())),
    )
    trainer.fit(model, datamodule=datamodule)
    assert first_domains == [{0, 1, 2}, {0, 1}]

    # meta step of iteration 0: no meta loss reaches the classifiers
    first = before_meta[0]
    for weight, after in zip(first["weights"], after_meta[0], strict=True):
        if release_zero_grad:
            expected = weight - first["meta_lr"] * first["wd"] * weight
            torch.testing.assert_close(after, expected, rtol=1e-6, atol=1e-9)
        else:
            assert torch.equal(after, weight)
    # basic step of iteration 1 on a batch without domain 2: its classifier's SGD step
    second = before_meta[1]
    start = after_meta[0][2]
    if release_zero_grad:
        momentum = 0.9 * first["buffer"] + second["wd"] * start
        torch.testing.assert_close(second["weights"][2], start - second["lr"] * momentum)
        assert not torch.equal(second["weights"][2], start)
    else:
        assert torch.equal(second["weights"][2], start)


def assert_same_training_state(resumed: dict, uninterrupted: dict) -> None:
    """Weights, both optimizers, both schedulers and the loop counters, bit for bit."""
    assert resumed["acl_loop"] == uninterrupted["acl_loop"]
    assert resumed["global_step"] == uninterrupted["global_step"]
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for mine, theirs in zip(
        resumed["optimizer_states"], uninterrupted["optimizer_states"], strict=True
    ):
        assert mine["param_groups"] == theirs["param_groups"]
        assert mine["state"].keys() == theirs["state"].keys()
        for index, state in theirs["state"].items():
            for name, value in state.items():
                assert torch.equal(mine["state"][index][name], value), (index, name)
    assert resumed["lr_schedulers"] == uninterrupted["lr_schedulers"]


def test_resume_mid_epoch_after_a_meta_step_and_at_epoch_end_is_exact(
    make_config, reid_overrides, tmp_path
):
    """Checkpoints after 2 iterations (mid-epoch), 3 (end of epoch 0) and 4 (mid-epoch, just
    after the meta step of iteration 3), with augmentation on: each resumed run ends in the
    state of the uninterrupted one."""
    overrides = [
        *reid_overrides,  # 2 epochs, 2 basic steps in iteration 0, a meta step every 3
        *TINY_CALLBACKS,
        "data.batch_size=16",  # 3 iterations per epoch
        *SMALL_IMAGES,
        "+trainer.limit_val_batches=0",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "logger=[]",
    ]
    datamodule, model, trainer = build_run(make_config("train", overrides))
    assert model.augment is not None and model.meta_interval == 3
    trainer.fit(model, datamodule=datamodule)
    assert model.iterations_done == 6 and model.meta_steps_done == 2
    checkpoints = Path(trainer.checkpoint_callback.dirpath)
    uninterrupted = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert uninterrupted["acl_loop"]["iterations_done"] == 6

    for iterations in (2, 3, 4):
        (start,) = checkpoints.glob(f"*step={iterations}.ckpt")
        run_dir = tmp_path / f"resumed_from_{iterations}"
        resumed_cfg = compose_config("train", overrides, run_dir)
        datamodule, model, trainer = build_run(resumed_cfg)
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(start))
        resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert_same_training_state(resumed, uninterrupted)


def test_loss_terms_flag_non_finite_fast_weights(make_config, reid_overrides):
    """An inner step that overflows shows in ``meta/fast_weights``; the terms computed before it
    (basic, meta-train) are finite, so only that entry names the cause."""
    cfg = make_config(
        "train",
        [
            *reid_overrides,
            "callbacks=none",
            "logger=[]",
            *SMALL_IMAGES,
            "model.initial_basic_steps=1",
            "model.meta_interval=1",
            "model.inner_lr_scale=1e300",  # θ' = θ - lr·1e300·g overflows float32
            "trainer.max_steps=1",
            "+trainer.limit_val_batches=0",
        ],
    )
    datamodule, model, trainer = build_run(cfg)
    trainer.fit(model, datamodule=datamodule)
    terms = model.loss_terms
    assert all(v.ndim == 0 and not v.requires_grad for v in terms.values())
    assert all(torch.isfinite(v) for k, v in terms.items() if k.startswith(("basic/", "mtrain/")))
    assert not torch.isfinite(terms["meta/fast_weights"])


def test_checkpoints_without_loop_counters_derive_them_from_lightning_progress():
    """Checkpoints written before the counters: one Lightning step per basic step."""
    from types import SimpleNamespace

    loops = {"fit_loop": {"epoch_loop.batch_progress": {"total": {"processed": 15}}}}
    module = SimpleNamespace(initial_basic_steps=10, meta_interval=3)
    state = ReIDModule._legacy_loop_state(module, {"loops": loops})
    # 9 warm-start steps, then iterations 0..5 with meta steps at 0 and 3
    assert state == {"iterations_done": 6, "meta_steps_done": 2, "merged_batches_drawn": 15}
    assert ReIDModule._legacy_loop_state(module, {})["iterations_done"] == 0  # a converted file
