"""Every config group option and experiment composes, and the recipes hold the released numbers."""

import re
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from hydra_helpers import CONF, REPO
from metareid.utils.config_checks import check_config
from metareid.utils.errors import ConfigValueError

# Every folder under conf/ is a config group that `src/train.py --help` lists (hydra/ aside).
GROUP_OPTIONS = {
    str(folder.relative_to(CONF)): sorted(p.stem for p in folder.glob("*.yaml"))
    for folder in sorted(CONF.rglob("*"))
    if folder.is_dir() and folder.relative_to(CONF).parts[0] != "hydra"
}
# Options that only make sense with another choice (ReID data needs a ReID model: its head widths
# come from the data; the per-dataset part of debug=tiny needs its dataset).
COMPANIONS = {
    ("debug/data", "tiny_reid_synthetic"): ["experiment=demo_dr50"],
    ("hparams_search", "dr50_optuna"): ["experiment=demo_dr50"],
}


def companions_of(group: str, option: str) -> list[str]:
    if group == "data" and option.startswith("reid"):
        return ["model=dr50_demo"]
    return COMPANIONS.get((group, option), [])


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts]
)
def test_every_group_option_composes(make_config, group, option):
    cfg = make_config("train", [f"{group}={option}", *companions_of(group, option)])
    # Resolving catches dangling interpolations (e.g. ${data.num_classes}).
    OmegaConf.to_container(cfg.model, resolve=True)
    OmegaConf.to_container(cfg.data, resolve=True)
    OmegaConf.to_container(cfg.trainer, resolve=True)
    assert cfg.model._target_.startswith("metareid.tasks.")
    check_config(cfg)  # and the values that must agree do


def test_help_lists_only_the_selectable_groups():
    """`--help` lists the groups above, all composable; the wandb sweep files are not one."""
    completed = subprocess.run(
        [sys.executable, "src/train.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    groups_section = completed.stdout.split("== Configuration groups ==")[1]
    groups_section = groups_section.split("== Config ==")[0]
    listed = dict(re.findall(r"^([\w/]+): (.+)$", groups_section, flags=re.MULTILINE))
    assert set(listed) == set(GROUP_OPTIONS)
    assert {"debug", "debug/data"} <= set(listed) and "sweep" not in listed
    for group, options in listed.items():
        assert options.split(", ") == GROUP_OPTIONS[group], group
    assert sorted(p.name for p in (REPO / "sweeps").glob("*.yaml")) == [
        "dr50.yaml",
        "metagait.yaml",
    ]


def test_debug_tiny_shrinks_a_gait_and_a_reid_run(make_config):
    gait = make_config("train", ["debug=tiny"])
    assert (gait.data.synthetic.num_subjects, gait.data.p, gait.data.k) == (6, 3, 2)
    assert list(gait.model.net.channels) == [4, 8, 8] and gait.trainer.max_steps == 4
    assert gait.trainer.accelerator == "cpu" and gait.debug.tiny_data == "casiab_synthetic"
    check_config(gait)

    reid = make_config("train", ["experiment=demo_dr50", "debug=tiny"])
    assert reid.data.synthetic.ids_per_domain == 8 and reid.data.batch_size == 8
    assert reid.model.net.backbone.width_mult == 0.125 and reid.model.net.head.in_channels == 256
    assert reid.trainer.max_epochs == reid.model.scheduler.max_epochs == 2
    assert "ids_per_domain" not in gait.data.synthetic and "num_subjects" not in reid.data.synthetic
    check_config(reid)


def test_debug_tiny_on_a_real_dataset_is_refused(make_config):
    cfg = make_config("train", ["experiment=metagait_casiab", "debug=tiny"])
    with pytest.raises(ConfigValueError, match="debug=tiny has sizes for the synthetic data only"):
        check_config(cfg)


def test_debug_fdr_runs_one_batch_on_any_recipe(make_config):
    cfg = make_config("train", ["experiment=dr50_mix", "debug=fdr"])
    assert cfg.trainer.fast_dev_run is True and cfg.trainer.max_epochs == 60  # recipe untouched
    check_config(cfg)


def test_eval_config_composes(make_config):
    cfg = make_config("eval", ["ckpt_path=x.ckpt", "experiment=metagait_casiab"])
    assert cfg.ckpt_path == "x.ckpt" and cfg.data.num_classes == 74


def test_default_run_is_the_cpu_metagait_demo(make_config):
    cfg = make_config("train", [])
    assert cfg.model.net._target_ == "metareid.models.MetaGait"
    assert cfg.data.synthetic is not None and cfg.trainer.max_steps <= 1000


def test_metagait_recipe_matches_the_release(make_config):
    cfg = make_config("train", ["experiment=metagait_casiab"])
    assert cfg.model.net.channels == [32, 64, 128] and cfg.model.net.class_num == 74
    assert cfg.model.optimizer.lr == 3.5e-4 and cfg.model.optimizer.weight_decay == 5e-4
    assert cfg.model.scheduler.warmup_iters == 10000
    assert cfg.model.scheduler.warmup_factor == 0.01
    assert list(cfg.model.scheduler.milestones) == [80000, 100000]
    assert cfg.trainer.max_steps == 120000 and cfg.trainer.val_check_interval == 1000
    assert cfg.trainer.precision == "16-mixed" and cfg.trainer.sync_batchnorm
    assert (cfg.data.p, cfg.data.k, cfg.data.frames_num_fixed) == (8, 8, 30)
    assert cfg.data.sample_type == "fixed_ordered"
    assert cfg.model.triplet_margin == 0.2 and cfg.model.ce_scale == 1.0
    assert not cfg.model.label_smoothing
    assert cfg.callbacks.model_checkpoint.every_n_train_steps == 1000


def test_gaitgl_recipe_matches_opengait(make_config):
    cfg = make_config("train", ["experiment=gaitgl_casiab"])
    assert cfg.model.net._target_ == "metareid.models.GaitGL"
    assert cfg.model.optimizer.lr == 1e-4 and list(cfg.model.scheduler.milestones) == [70000]
    assert cfg.model.scheduler.warmup_iters == 0 and cfg.trainer.max_steps == 80000


def test_dr50_recipe_matches_the_release(make_config):
    cfg = make_config("train", ["experiment=dr50_mix"])
    assert [s.name for s in cfg.data.sources] == ["cuhksysu", "market1501", "msmt17"]
    assert [t.name for t in cfg.data.targets] == ["cuhk03"]
    assert (cfg.data.batch_size, cfg.data.num_instances, cfg.data.domain_batch_size) == (64, 2, 32)
    assert list(cfg.data.image_size) == [256, 128]
    model = cfg.model
    assert model.optimizer.lr == 0.04 and model.optimizer.momentum == 0.9
    assert model.meta_optimizer.momentum == 0.0 and model.meta_optimizer.weight_decay == 5e-4
    assert (model.scheduler.max_epochs, model.scheduler.warmup_epochs) == (60, 10)
    assert model.scheduler.eta_min == 4e-5 and model.scheduler.warmup_factor == 0.01
    assert model.losses.ce_scale == 0.5 and model.losses.triplet_margin == 0.3
    assert (model.meta_interval, model.initial_basic_steps) == (3, 10)
    assert model.meta_update_scope == "all" and model.net.backbone.last_stride == 1
    assert cfg.trainer.max_epochs == 60 and cfg.trainer.check_val_every_n_epoch == 5


def test_model_dr50_defaults_to_the_synthetic_reid_data(make_config):
    cfg = make_config("train", ["model=dr50"])
    assert cfg.data._target_.endswith("ReIDDataModule") and cfg.data.synthetic is not None


def test_every_target_is_importable(make_config):
    for experiment in GROUP_OPTIONS["experiment"]:
        cfg = make_config("train", [f"experiment={experiment}"])
        for node in (cfg.model, cfg.model.net, cfg.data, cfg.trainer):
            hydra.utils.get_class(node._target_) if node._target_[0].isupper() else None
            module, _, name = node._target_.rpartition(".")
            assert hasattr(__import__(module, fromlist=[name]), name), node._target_


def test_sweep_and_paths_resolve_relative_to_repo(make_config):
    cfg = make_config("train", [])
    assert Path(cfg.paths.root_dir).resolve() == CONF.parent


@pytest.mark.parametrize("model", ["metagait", "gaitgl", "dr50", "gaitgl_large"])
def test_optimized_metric_is_one_the_model_logs(make_config, model):
    companion = ["data=oumvlp"] if model == "gaitgl_large" else []
    cfg = make_config("train", [f"model={model}", *companion])
    logged = {"dr50": {"test/mAP", "test/rank1"}}.get(model, {"test/Mean", "test/NM"})
    assert cfg.optimized_metric in logged
