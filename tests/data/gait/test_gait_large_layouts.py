"""OU-MVLP and GREW pkl trees: GaitDataset layouts, the DataModule, and GaitGL-large end to end."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from metareid.data.gait.casiab import (
    GREW_TYPES,
    OUMVLP_TYPES,
    OUMVLP_VIEWS,
    GaitDataset,
    TreeLayoutError,
    get_layout,
    load_partition,
)
from metareid.data.gait.datamodule import GaitDataModule
from metareid.evaluation.casiab import OUMVLPIdentification
from metareid.evaluation.grew import GREWIdentification
from metareid.models import GaitGL
from metareid.utils.instantiate import build_run


def write_sequence(root: Path, subject: str, type_name: str, view: str, array) -> Path:
    folder = root / subject / type_name / view
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{view}.pkl"
    with open(path, "wb") as handle:
        pickle.dump(array, handle)
    return path


def frames(length: int, value: int, width: int = 64) -> np.ndarray:
    return np.full((length, 64, width), value, dtype=np.uint8)


def write_partition(root: Path, train, test) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "partition.json").write_text(json.dumps({"TRAIN_SET": train, "TEST_SET": test}))


OUMVLP_TRAIN, OUMVLP_TEST = ["00001", "00003"], ["00002", "00004"]
TINY_OUMVLP_VIEWS = ("000", "015", "180")


@pytest.fixture
def oumvlp_tree(tmp_path) -> Path:
    """4 subjects × 2 walks × 3 views; sequence n (in writing order) has 3 + n % 4 frames of
    value n; 00004 lacks walk 01 at 180."""
    root = tmp_path / "oumvlp"
    write_partition(root, OUMVLP_TRAIN, OUMVLP_TEST)
    number = 0
    for subject in sorted(OUMVLP_TRAIN + OUMVLP_TEST):
        for walk in OUMVLP_TYPES:
            for view in TINY_OUMVLP_VIEWS:
                number += 1
                if (subject, walk, view) != ("00004", "01", "180"):
                    write_sequence(root, subject, walk, view, frames(3 + number % 4, number))
    return root


GREW_SEQUENCES = {
    ("00001train", "00"): ["4XPn5Z28", "Kq2mZ0aa"],
    ("00002train", "00"): ["5TXe8svE", "b7Yt1QwE"],
    ("00001", "01"): ["79XJefi8"],
    ("00001", "02"): ["t16VLaQf"],
    ("00002", "01"): ["Zz81nPqa"],
    ("00002", "02"): ["aa0Qw3Le"],
    ("probe", "03"): ["eT1EXpgZ", "etaGVnWf"],
}


@pytest.fixture
def grew_tree(tmp_path) -> Path:
    """GREW's layout with 64×44 frames (the released silhouette size)."""
    root = tmp_path / "grew"
    write_partition(root, ["00001train", "00002train"], ["00001", "00002", "probe"])
    for number, ((subject, type_name), names) in enumerate(GREW_SEQUENCES.items()):
        for name in names:
            write_sequence(root, subject, type_name, name, frames(4, number, width=44))
    return root


# --------------------------------------------------------------------------- OU-MVLP
def test_oumvlp_layout_constants():
    from metareid.prepare.oumvlp_grew import OUMVLP_VIEWS as PREPARED_VIEWS

    assert OUMVLP_VIEWS == PREPARED_VIEWS and len(OUMVLP_VIEWS) == 14
    assert OUMVLPIdentification().views == OUMVLP_VIEWS
    assert OUMVLPIdentification().types == OUMVLP_TYPES == ("00", "01")
    assert GREWIdentification().types == GREW_TYPES


def test_oumvlp_tree_is_read_with_its_types_views_and_ids(oumvlp_tree):
    train = GaitDataset(oumvlp_tree, split="train", layout="oumvlp")
    assert train.partition_file == oumvlp_tree / "partition.json"
    assert train.label_set == OUMVLP_TRAIN and len(train) == 12
    test = GaitDataset(oumvlp_tree, split="test", layout="oumvlp", expected_views=OUMVLP_VIEWS)
    assert len(test) == 11 and test.label_set == OUMVLP_TEST
    # 2 subjects × 2 walks × (14 - 3) absent views, plus 00004/01/180.
    assert len(test.missing_sequences) == 2 * 2 * 11 + 1
    assert ("00004", "01", "180") in test.missing_sequences
    last = test[len(test) - 1]  # 00004 / 01 / 015: the 23rd sequence written
    assert (last["subject"], last["label"]) == (4, 1)
    assert (last["type_index"], last["view_index"]) == (1, OUMVLP_VIEWS.index("015"))
    assert last["sils"].shape == (3 + 23 % 4, 64, 64) and int(last["sils"][0, 0, 0]) == 23
    views = {test[i]["view_index"] for i in range(len(test))}
    assert views == {0, 1, 7}  # 000, 015, 180


def test_casiab_layout_rejects_an_oumvlp_tree(oumvlp_tree):
    with pytest.raises(TreeLayoutError, match="'00' is not a CASIA-B condition") as error:
        GaitDataset(oumvlp_tree, split="train", layout="casiab")
    assert "'casiab'" in str(error.value)


def test_oumvlp_frames_must_be_64_wide(oumvlp_tree):
    path = write_sequence(oumvlp_tree, "00001", "00", "000", frames(3, 1, width=44))
    with pytest.raises(ValueError, match=r"expected shape \[T, 64, 64\], got \[3, 64, 44\]") as e:
        GaitDataset(oumvlp_tree, split="train", layout="oumvlp")
    assert str(path) in str(e.value)


def test_oumvlp_view_directory_outside_the_14_views(oumvlp_tree):
    write_sequence(oumvlp_tree, "00003", "01", "105", frames(3, 1))
    with pytest.raises(TreeLayoutError, match="expected a view directory of OU-MVLP named one of"):
        GaitDataset(oumvlp_tree, split="train", layout="oumvlp")


def test_oumvlp_without_partition_file_says_how_to_get_one(oumvlp_tree):
    (oumvlp_tree / "partition.json").unlink()
    with pytest.raises(FileNotFoundError, match="src/prepare.py oumvlp"):
        GaitDataset(oumvlp_tree, split="train", layout="oumvlp")
    with pytest.raises(FileNotFoundError, match="data.partition_file"):
        GaitDataModule(str(oumvlp_tree), layout="oumvlp").setup("fit")


def test_root_one_level_too_low_is_diagnosed_for_oumvlp(oumvlp_tree):
    partition = oumvlp_tree / "partition.json"
    with pytest.raises(TreeLayoutError, match="one level too low"):
        GaitDataset(oumvlp_tree / "00001", partition, layout="oumvlp")


# --------------------------------------------------------------------------- GREW
def test_grew_partition_ids_are_checked_per_layout(grew_tree):
    partition = load_partition(grew_tree / "partition.json", "grew")
    assert partition.test == ("00001", "00002", "probe")
    with pytest.raises(ValueError, match="bad entries: \\['00001train', '00002train'\\]") as error:
        load_partition(grew_tree / "partition.json", "oumvlp")
    assert str(grew_tree / "partition.json") in str(error.value)
    with pytest.raises(ValueError, match="Unknown gait layout 'casia'"):
        get_layout("casia")


def test_grew_tree_subjects_are_positions_in_the_sorted_ids(grew_tree):
    test = GaitDataset(grew_tree, split="test", layout="grew")
    assert test.subject_ids == ("00001", "00001train", "00002", "00002train", "probe")
    assert len(test) == 6 and test.label_set == ["00001", "00002", "probe"]
    # The view level holds sequence ids: view_index indexes this split's sorted names.
    names = ["79XJefi8", "t16VLaQf", "Zz81nPqa", "aa0Qw3Le", "eT1EXpgZ", "etaGVnWf"]
    assert test.views == tuple(sorted(names))
    items = [test[i] for i in range(len(test))]
    annotations = [
        (item["subject"], GREW_TYPES[item["type_index"]], test.views[item["view_index"]])
        for item in items
    ]
    assert annotations == [
        (0, "01", "79XJefi8"),
        (0, "02", "t16VLaQf"),
        (2, "01", "Zz81nPqa"),
        (2, "02", "aa0Qw3Le"),
        (4, "03", "eT1EXpgZ"),
        (4, "03", "etaGVnWf"),
    ]
    assert items[0]["sils"].shape == (4, 64, 44) and int(items[0]["sils"].max()) == 2
    assert test.missing_sequences == []
    train = GaitDataset(grew_tree, split="train", layout="grew")
    assert train.labels == [0, 0, 1, 1] and [train[i]["subject"] for i in (0, 2)] == [1, 3]


def test_grew_empty_sequence_directory_is_reported(grew_tree):
    (grew_tree / "00002" / "02" / "emptyseq").mkdir()
    test = GaitDataset(grew_tree, split="test", layout="grew")
    assert test.missing_sequences == [("00002", "02", "emptyseq")] and len(test) == 6


# --------------------------------------------------------------------------- DataModule
def test_datamodule_yields_oumvlp_batches(oumvlp_tree):
    datamodule = GaitDataModule(
        str(oumvlp_tree),
        layout="oumvlp",
        num_classes=2,
        p=2,
        k=3,
        frames_num_fixed=5,
        test_batch_size=11,
        num_workers=0,
        validate=False,
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["sils"].shape == (6, 5, 64, 44)  # 64-wide frames are cut to 44 columns
    assert sorted(batch["labels"].tolist()) == [0, 0, 0, 1, 1, 1]
    test_batch = next(iter(datamodule.test_dataloader()))
    assert test_batch["sils"].shape[0] == 11
    assert set(test_batch["subjects"].tolist()) == {2, 4}
    assert set(test_batch["type_index"].tolist()) == {0, 1}
    assert set(test_batch["view_index"].tolist()) == {0, 1, 7}


def test_datamodule_yields_grew_batches_and_checks_classes(grew_tree):
    datamodule = GaitDataModule(
        str(grew_tree), layout="grew", num_classes=2, p=2, k=2, frames_num_fixed=3, num_workers=0
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["sils"].shape == (4, 3, 64, 44)  # 44-wide frames are kept whole
    test_batch = next(iter(datamodule.test_dataloader()))
    assert test_batch["subjects"].tolist() == [0, 0, 2, 2]
    assert test_batch["type_index"].tolist() == [1, 2, 1, 2]

    wrong = GaitDataModule(str(grew_tree), layout="grew", num_classes=20000, p=2)
    with pytest.raises(ValueError, match="Set data.num_classes=2 "):
        wrong.setup("fit")
    with pytest.raises(ValueError, match="generates a CASIA-B tree"):
        GaitDataModule(str(grew_tree), layout="grew", synthetic={"num_subjects": 4})


# --------------------------------------------------------------------------- end to end
def walker_frames(subject: int, view: int, length: int, seed: int) -> np.ndarray:
    """Silhouette-like clips: a block whose width depends on the subject, drifting with time."""
    rng = np.random.default_rng(seed)
    clip = np.zeros((length, 64, 64), dtype=np.uint8)
    for t in range(length):
        left = 20 + (t + view) % 6
        clip[t, 10:60, left : left + 8 + 3 * subject] = 255
    clip[rng.random(clip.shape) < 0.02] = 255
    return clip


@pytest.fixture
def oumvlp_e2e_tree(tmp_path) -> Path:
    root = tmp_path / "oumvlp_e2e"
    train, test = ["00001", "00003", "00005"], ["00002", "00004", "00006"]
    write_partition(root, train, test)
    for subject in train + test:
        for walk in OUMVLP_TYPES:
            for view_position, view in enumerate(TINY_OUMVLP_VIEWS):
                seed = int(subject) * 100 + int(walk) * 10 + view_position
                clip = walker_frames(int(subject) % 3, view_position, 6 + seed % 3, seed)
                write_sequence(root, subject, walk, view, clip)
    return root


TINY_LARGE = [
    "data.num_classes=3",
    "data.p=3",
    "data.k=2",
    "data.frames_num_fixed=6",
    "data.num_workers=0",
    "data.test_batch_size=9",
    "model.net.channels=[4,8,8,8]",
    "++model.net.bin_num=4",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.sync_batchnorm=false",
    "trainer.benchmark=false",
    "trainer.max_steps=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks=none",
    "logger=csv",
]


def test_gaitgl_large_fits_and_tests_on_an_oumvlp_tree(make_config, oumvlp_e2e_tree, capsys):
    cfg = make_config(
        "train", ["experiment=gaitgl_oumvlp", f"data.root={oumvlp_e2e_tree}", *TINY_LARGE]
    )
    datamodule, model, trainer = build_run(cfg)
    assert isinstance(model.net, GaitGL) and model.net.variant == "large"
    assert model.net.Head1.fc_bin.shape == (4, 8, 3)  # parts × width × classes
    assert isinstance(model.test_metric, OUMVLPIdentification)
    assert model.cross_entropy.label_smoothing
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2
    trainer.test(model, datamodule=datamodule)
    result = model.last_results
    assert result["views"] == list(TINY_OUMVLP_VIEWS) and result["conditions"] == ["NM"]
    assert result["acc"].shape == (1, 3, 3)
    # 3 probes per cell: every accuracy is a multiple of 100 / 3.
    cells = result["acc"].flatten().tolist()
    assert all(any(abs(c - round(100 * n / 3, 2)) < 1e-9 for n in range(4)) for c in cells)
    metrics = trainer.callback_metrics
    assert float(metrics["test/NM"]) == pytest.approx(result["NM"])
    assert float(metrics["test/Mean"]) == pytest.approx(result["NM"])
    assert not math.isnan(float(metrics["test/NM_include"]))
    assert "===Rank-1 (Exclude identical-view cases)===" in capsys.readouterr().out


def test_gaitgl_grew_experiment_builds_bnneck_and_grew_evaluator(make_config, grew_tree):
    cfg = make_config(
        "train",
        [
            "experiment=gaitgl_grew",
            f"data.root={grew_tree}",
            *TINY_LARGE,
            "data.num_classes=2",
            "data.p=2",
            "trainer.max_steps=1",
        ],
    )
    assert cfg.model.optimizer.weight_decay == 0.0 and cfg.model.label_smoothing
    datamodule, model, trainer = build_run(cfg)
    assert model.net.head == "bnneck" and isinstance(model.test_metric, GREWIdentification)
    assert model.test_metric.ranks == (1, 5, 10, 20)
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule)
    result = model.last_results
    assert result["sizes"] == {"probes": 2, "gallery": 2}
    # Two gallery subjects: every probe is found by rank 2, so rank-5..20 are 100.
    assert result["Rank-5"] == result["Rank-10"] == result["Rank-20"] == 100.0
    assert result["Rank-1"] in (0.0, 50.0, 100.0)
    assert float(trainer.callback_metrics["test/Rank-1"]) == result["Rank-1"]
    assert not any("sizes" in key for key in trainer.callback_metrics)


def test_large_recipes_hold_the_released_numbers(make_config):
    oumvlp = make_config("train", ["experiment=gaitgl_oumvlp"])
    assert list(oumvlp.model.net.channels) == [32, 64, 128, 256]
    assert oumvlp.model.net.variant == "large" and oumvlp.model.net.class_num == 5153
    assert (oumvlp.data.p, oumvlp.data.k, oumvlp.data.layout) == (32, 8, "oumvlp")
    assert oumvlp.model.optimizer.lr == 1e-4 and oumvlp.model.optimizer.weight_decay == 0
    assert list(oumvlp.model.scheduler.milestones) == [150000, 200000]
    assert oumvlp.model.scheduler.warmup_iters == 0 and oumvlp.trainer.max_steps == 210000
    assert oumvlp.model.evaluator._target_.endswith("OUMVLPIdentification")
    grew = make_config("train", ["experiment=gaitgl_grew"])
    assert grew.model.net.head == "bnneck" and grew.model.net.class_num == 20000
    assert (grew.data.p, grew.data.k, grew.data.layout) == (32, 4, "grew")
    assert grew.trainer.max_steps == 250000
    assert list(grew.model.scheduler.milestones) == [150000, 200000]
    assert grew.model.evaluator._target_.endswith("GREWIdentification")
