"""OU-MVLP and GREW: rearrangement into the CASIA-B pkl layout and OpenGait's partitions."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from raw_releases import silhouette

from metareid.data.gait.casiab import GREW_TYPES, OUMVLP_TYPES
from metareid.data.gait.casiab import OUMVLP_VIEWS as LAYOUT_VIEWS
from metareid.data.gait.datamodule import GaitDataModule
from metareid.evaluation.casiab import OUMVLPIdentification
from metareid.evaluation.grew import GREWIdentification
from metareid.prepare.casiab import align_silhouette
from metareid.prepare.oumvlp_grew import (
    OUMVLP_VIEWS,
    check_grew,
    check_oumvlp,
    grew_partition,
    oumvlp_partition,
    prepare_grew,
    prepare_oumvlp,
)

QUIET = {"show_progress": False}


def test_oumvlp_partition_reproduces_opengait_split():
    split = oumvlp_partition()
    assert (len(split["TRAIN_SET"]), len(split["TEST_SET"])) == (5153, 5154)
    assert split["TRAIN_SET"][:2] == ["00001", "00003"] and split["TRAIN_SET"][-1] == "10305"
    assert split["TEST_SET"][:2] == ["00002", "00004"] and split["TEST_SET"][-2:] == [
        "10306",
        "10307",
    ]
    assert not set(split["TRAIN_SET"]) & set(split["TEST_SET"])
    assert len(OUMVLP_VIEWS) == 14 and OUMVLP_VIEWS[7] == "180"


def test_grew_partition_reproduces_opengait_split():
    split = grew_partition()
    assert (len(split["TRAIN_SET"]), len(split["TEST_SET"])) == (20000, 6001)
    assert split["TRAIN_SET"][0] == "00001train" and split["TRAIN_SET"][-1] == "20000train"
    assert split["TEST_SET"][-2:] == ["06000", "probe"]


def test_oumvlp_is_rearranged_to_subject_sequence_view(oumvlp_raw, tmp_path):
    out = tmp_path / "oumvlp"
    partition = {"TRAIN_SET": ["00001"], "TEST_SET": ["00002"]}
    report = prepare_oumvlp(oumvlp_raw, out, partition=partition, **QUIET)
    assert report.counts["sequences written"] == 8  # 2 subjects × 2 views × 2 sequences
    assert (report.counts["train_sequences"], report.counts["test_sequences"]) == (4, 4)
    with open(out / "00002" / "01" / "015" / "015.pkl", "rb") as stream:
        array = pickle.load(stream)
    assert array.shape == (2, 64, 64)
    np.testing.assert_array_equal(array[1], align_silhouette(silhouette(shift=2)))
    assert json.loads((out / "partition.json").read_text()) == partition
    assert check_oumvlp(out, expect="manifest", **QUIET).ok  # partition read from the tree


def test_grew_keeps_frames_and_uses_opengait_folder_names(grew_raw, tmp_path):
    out = tmp_path / "grew"
    partition = {"TRAIN_SET": ["00001train", "00002train"], "TEST_SET": ["00001", "probe"]}
    report = prepare_grew(grew_raw, out, partition=partition, **QUIET)
    assert report.counts["sequences written"] == 6
    assert report.counts["non-silhouette files ignored"] == 6  # one *gei.png per sequence
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.pkl"))
    assert written == [
        "00001/01/79XJefi8/79XJefi8.pkl",
        "00001/02/t16VLaQf/t16VLaQf.pkl",
        "00001train/00/4XPn5Z28/4XPn5Z28.pkl",
        "00002train/00/5TXe8svE/5TXe8svE.pkl",
        "probe/03/eT1EXpgZ/eT1EXpgZ.pkl",
        "probe/03/etaGVnWf/etaGVnWf.pkl",
    ]
    with open(out / "00001" / "02" / "t16VLaQf" / "t16VLaQf.pkl", "rb") as stream:
        array = pickle.load(stream)
    first = np.asarray(Image.open(grew_raw / "test/gallery/00001/t16VLaQf/00001_sil.png"))
    np.testing.assert_array_equal(array[0], first)  # stored as released, no alignment
    assert (report.counts["test_ids"], report.counts["test_sequences"]) == (2, 4)
    assert check_grew(out, expect="manifest", **QUIET).ok


# --------------------------------------------------------------------------- prepare → check → load
@pytest.mark.parametrize("packed", [False, True], ids=["pkl", "packed"])
def test_prepared_oumvlp_is_checked_and_loaded_for_training_and_evaluation(
    oumvlp_raw, tmp_path, packed
):
    out = tmp_path / "oumvlp"
    partition = {"TRAIN_SET": ["00001"], "TEST_SET": ["00002"]}
    prepare_oumvlp(oumvlp_raw, out, partition=partition, **QUIET, packed=packed)
    assert check_oumvlp(out, expect="manifest", **QUIET).ok
    datamodule = GaitDataModule(
        str(out), layout="oumvlp", num_classes=1, p=1, k=4, frames_num_fixed=3, num_workers=0
    )
    datamodule.setup("fit")  # partition.json of the prepared tree, every pkl unpickled
    assert datamodule.train_set.format == ("packed" if packed else "pkl")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["sils"].shape == (4, 3, 64, 44) and batch["labels"].tolist() == [0, 0, 0, 0]
    test_batch = next(iter(datamodule.test_dataloader()))
    assert test_batch["subjects"].tolist() == [2, 2, 2, 2]
    walks = [OUMVLP_TYPES[t] for t in test_batch["type_index"].tolist()]
    views = [LAYOUT_VIEWS[v] for v in test_batch["view_index"].tolist()]
    assert list(zip(walks, views, strict=True)) == [
        ("00", "000"),
        ("00", "015"),
        ("01", "000"),
        ("01", "015"),
    ]
    metric = OUMVLPIdentification()
    metric.update(
        torch.randn(4, 2, 3),
        test_batch["subjects"],
        test_batch["type_index"],
        test_batch["view_index"],
    )
    # One test subject: every probe finds it in every single-view gallery.
    assert metric.compute()["acc"].tolist() == [[[100.0, 100.0], [100.0, 100.0]]]


@pytest.mark.parametrize("packed", [False, True], ids=["pkl", "packed"])
def test_prepared_grew_is_checked_and_loaded_for_training_and_evaluation(
    grew_raw, tmp_path, packed
):
    out = tmp_path / "grew"
    partition = {"TRAIN_SET": ["00001train", "00002train"], "TEST_SET": ["00001", "probe"]}
    prepare_grew(grew_raw, out, partition=partition, **QUIET, packed=packed)
    assert check_grew(out, expect="manifest", **QUIET).ok
    datamodule = GaitDataModule(
        str(out), layout="grew", num_classes=2, p=2, k=2, frames_num_fixed=2, num_workers=0
    )
    datamodule.setup("fit")
    assert datamodule.train_set.format == ("packed" if packed else "pkl")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["sils"].shape == (4, 2, 64, 44)  # 64-wide released frames, cut like CASIA-B
    assert sorted(batch["labels"].tolist()) == [0, 0, 1, 1]
    test_batch = next(iter(datamodule.test_dataloader()))
    types = [GREW_TYPES[t] for t in test_batch["type_index"].tolist()]
    assert types == ["01", "02", "03", "03"]
    # Subjects index the sorted partition ids: 00001, 00001train, 00002train, probe.
    assert test_batch["subjects"].tolist() == [0, 0, 3, 3]
    metric = GREWIdentification(ranks=(1,))
    metric.update(
        torch.randn(4, 2, 3),
        test_batch["subjects"],
        test_batch["type_index"],
        test_batch["view_index"],
    )
    result = metric.compute()
    assert result["Rank-1"] == 100.0 and result["sizes"] == {"probes": 1, "gallery": 1}
