"""One source per setting: derived keys follow it; a typed-in disagreement stops the start-up."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytest

from hydra_helpers import TINY_REID
from metareid.models.dr50 import DR50
from metareid.utils.config_checks import check_config, dr50_out_channels
from metareid.utils.errors import ConfigValueError
from metareid.utils.instantiate import build_run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def schedule_of(cfg, iters_per_epoch: int = 5):
    return hydra.utils.instantiate(cfg.model.scheduler)(iters_per_epoch=iters_per_epoch)


def test_dr50_demo_schedule_length_and_lr_follow_one_key_each(make_config):
    cfg = make_config("train", ["experiment=demo_dr50", "trainer.max_epochs=5"])
    schedule = schedule_of(cfg)
    assert schedule.max_epochs == cfg.trainer.max_epochs == 5
    check_config(cfg)

    overrides = ["model.optimizer.lr=0.01", "model.optimizer.weight_decay=1e-4"]
    cfg = make_config("train", ["experiment=demo_dr50", *overrides])
    assert schedule_of(cfg).base_lr == 0.01
    # BASE_LR and WEIGHT_DECAY are shared by both optimizers
    assert (cfg.model.meta_optimizer.lr, cfg.model.meta_optimizer.weight_decay) == (0.01, 1e-4)
    check_config(cfg)


def test_schedule_shorter_than_training_is_refused_naming_both_keys(make_config):
    # The case: the scheduler key alone left the demo training 30 epochs.
    cfg = make_config("train", ["experiment=demo_dr50", "model.scheduler.max_epochs=2"])
    with pytest.raises(ConfigValueError, match=r"model\.scheduler\.max_epochs=2 .*trainer\.max_"):
        build_run(cfg)  # before any data or weights are built


def test_a_run_stopped_before_the_end_of_its_schedule_is_allowed_with_a_warning(
    make_config, caplog
):
    cfg = make_config(
        "train", ["experiment=demo_dr50", "model.scheduler.max_epochs=30", "trainer.max_epochs=10"]
    )
    with caplog.at_level(logging.WARNING, logger="metareid.utils.config_checks"):
        check_config(cfg)
    assert "trainer.max_epochs=10 stops before the end of model.scheduler.max_epochs=30" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epochs=-1", "trainer.max_steps=100"], r"trainer\.max_epochs=-1"),
        (["model.scheduler.base_lr=0.02"], r"base_lr=0\.02 differs from model\.optimizer\.lr="),
        (["trainer.max_epochs=3"], r"warmup_epochs=3 leaves no cosine epochs"),
        (["model.net.head.in_channels=2048"], r"in_channels=2048 .*width_mult=0\.25.* 512"),
        (["model.augment.image_size=[128,64]"], r"image_size=\[128, 64\] differs from data"),
    ],
)
def test_disagreeing_reid_keys_are_refused(make_config, overrides, message):
    cfg = make_config("train", ["experiment=demo_dr50", *overrides])
    with pytest.raises(ConfigValueError, match=message):
        check_config(cfg)


def test_gait_classifier_width_follows_the_data(make_config):
    assert make_config("train", ["data.num_classes=5"]).model.net.class_num == 5
    cfg = make_config("train", ["model.net.class_num=10"])
    with pytest.raises(ConfigValueError, match=r"class_num=10 differs from data\.num_classes=24"):
        check_config(cfg)


@pytest.mark.parametrize("width_mult", [0.0625, 0.125, 0.25, 0.5])
def test_dr50_output_width_formula_matches_the_network(width_mult):
    assert dr50_out_channels(width_mult) == DR50(width_mult=width_mult).out_channels
    assert dr50_out_channels(1.0) == 2048


def test_every_recipe_passes_the_checks(make_config):
    experiments = sorted(p.stem for p in (Path(__file__).parents[2] / "conf/experiment").iterdir())
    for experiment in experiments:
        check_config(make_config("train", [f"experiment={experiment}"]))
    check_config(make_config("train", []))


def test_tiny_dr50_run_is_built_to_train_and_schedule_the_same_epochs(make_config, tmp_path):
    """trainer.max_epochs=2 alone: the Trainer stops after 2 epochs, as the cosine ends."""
    cfg = make_config(
        "train",
        [
            *(o for o in TINY_REID if not o.startswith("model.scheduler.max_epochs")),
            f"data.synthetic.root={tmp_path / 'synthetic_reid'}",
            "model.net.head.num_classes=[8,8,8]",  # known: no need to index the data
            "trainer.max_epochs=2",
            "callbacks=none",
            "logger=[]",
        ],
    )
    _, model, trainer = build_run(cfg)
    assert trainer.max_epochs == 2
    iters_per_epoch = 12
    schedule = model.schedule_factory(iters_per_epoch=iters_per_epoch)
    eta_min, base_lr = cfg.model.scheduler.eta_min, cfg.model.optimizer.lr
    last_step = 2 * iters_per_epoch - 1
    assert schedule(last_step) * base_lr == pytest.approx(eta_min, rel=1e-9)
    assert schedule(last_step - iters_per_epoch) * base_lr > 10 * eta_min  # still warming up
