"""ReID releases: prepare → check → loader for Market-1501, DukeMTMC, MSMT17, CUHK03, CUHK-SYSU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from raw_releases import (
    CUHK03_PAIRS,
    CUHKSYSU_PERSONS,
    cuhk03_image,
    scene_pixels,
    write_cuhksysu_raw,
)

from metareid.data.reid.market1501 import Market1501
from metareid.data.reid.release_formats import CUHK03, CUHKSYSU, MSMT17, DukeMTMC
from metareid.prepare import main
from metareid.prepare.cuhk03 import check_cuhk03, prepare_cuhk03
from metareid.prepare.cuhksysu import check_cuhksysu, crop_name, prepare_cuhksysu
from metareid.prepare.market1501 import (
    check_dukemtmc,
    check_market1501,
    prepare_dukemtmc,
    prepare_market1501,
)
from metareid.prepare.msmt17 import check_msmt17, prepare_msmt17

QUIET = {"show_progress": False}


def summary(records) -> list[tuple[str, int, int]]:
    return sorted((r.path.name, r.pid, r.camid) for r in records)


# --------------------------------------------------------------------------- Market / Duke
def test_market1501_prepare_check_load(market_raw, tmp_path):
    out = tmp_path / "market1501"
    report = prepare_market1501(market_raw.parent, out, **QUIET)  # parent: inner folder found
    assert report.counts["images written"] == 9
    assert report.counts["non-image files ignored"] == 3  # one Thumbs.db per split
    assert report.dropped == {"junk boxes (pid -1) in gallery": 1}
    expected = {
        "train_images": 3,
        "train_ids": 2,
        "query_images": 2,
        "query_ids": 2,
        "gallery_images": 3,
        "gallery_ids": 3,  # 10, 11 and the distractor id 0
    }
    assert {k: report.counts[k] for k in expected} == expected
    assert (out / "query" / "0011_c6s1_000101_00.jpg").is_symlink()

    assert check_market1501(out, expect="manifest", **QUIET).ok
    assert not check_market1501(out, expect="release", **QUIET).ok

    dataset = Market1501(out)
    assert summary(dataset.query) == [
        ("0010_c1s1_001051_00.jpg", 10, 0),
        ("0011_c6s1_000101_00.jpg", 11, 5),
    ]
    assert sorted(r.pid for r in dataset.gallery) == [0, 10, 11]
    assert len(dataset.train) == 3


def test_market1501_distractors_and_copy_mode(market_raw, tmp_path):
    out = tmp_path / "market500k"
    report = prepare_market1501(market_raw, out, with_distractors=True, link="copy", **QUIET)
    assert (report.counts["distractors_images"], report.counts["distractors_ids"]) == (1, 1)
    copied = out / "images" / "0000_c3s2_000001_01.jpg"
    assert copied.is_file() and not copied.is_symlink()
    for path in sorted(market_raw.rglob("*.jpg")):
        path.unlink()  # copies do not depend on the raw release
    assert check_market1501(out, expect="manifest", with_distractors=True, **QUIET).ok
    assert len(Market1501(out).train) == 3


def test_dukemtmc_prepare_check_load(duke_raw, tmp_path):
    out = tmp_path / "duke"
    report = prepare_dukemtmc(duke_raw, out, link="hardlink", **QUIET)
    assert (report.counts["train_images"], report.counts["train_ids"]) == (2, 1)
    assert (report.counts["gallery_images"], report.counts["gallery_ids"]) == (2, 2)
    assert check_dukemtmc(out, expect="manifest", **QUIET).ok
    dataset = DukeMTMC(out)
    assert summary(dataset.train) == [
        ("0001_c2_f0046182.jpg", 1, 1),
        ("0001_c8_f0046200.jpg", 1, 7),
    ]
    assert dataset.name == "dukemtmc" and len(dataset.query) == 1


# --------------------------------------------------------------------------- MSMT17
def test_msmt17_v1_and_v2_become_the_v1_layout(msmt17_raw, tmp_path):
    out = tmp_path / "msmt17"
    report = prepare_msmt17(msmt17_raw, out, **QUIET)
    assert report.counts["images written"] == 6
    assert (report.counts["train_images"], report.counts["train_ids"]) == (2, 2)
    assert (report.counts["val_images"], report.counts["query_images"]) == (1, 1)
    assert (report.counts["gallery_images"], report.counts["gallery_ids"]) == (2, 2)
    assert (out / "train" / "0000" / "0000_000_01_0303morning_0015_0.jpg").is_file()
    assert (out / "list_query.txt").read_text() == "0000/0000_000_03_0113morning_0001_0.jpg 0\n"

    assert check_msmt17(out, expect="manifest", **QUIET).ok
    dataset = MSMT17(out)
    assert summary(dataset.train) == [
        ("0000_000_01_0303morning_0015_0.jpg", 0, 0),
        ("0001_003_15_0303noon_0002_1.jpg", 1, 14),  # camera = third field - 1
    ]
    assert [r.camid for r in dataset.gallery] == [3, 4]
    assert len(MSMT17(out, include_val=True).train) == 3


# --------------------------------------------------------------------------- CUHK03
def test_cuhk03_extracts_images_and_new_protocol_splits(cuhk03_raw, tmp_path):
    out = tmp_path / "cuhk03"
    report = prepare_cuhk03(cuhk03_raw, out, **QUIET)
    images_per_box = CUHK03_PAIRS * (10 + 8)  # person 2 of each pair misses two shots
    for boxes in ("labeled", "detected"):
        assert report.counts[f"{boxes} images written"] == images_per_box
        assert report.dropped[f"{boxes} empty cells in cuhk-03.mat"] == 2 * CUHK03_PAIRS
        assert report.counts[f"{boxes}_train_images"] == 18
        assert report.counts[f"{boxes}_train_ids"] == 2
        assert report.counts[f"{boxes}_query_images"] == 4
        assert report.counts[f"{boxes}_gallery_images"] == 14

    # Pixels are stored H×W×3 after undoing HDF5's transposition.
    stored = np.asarray(Image.open(out / "images_detected" / "2_002_2_09.png"))
    np.testing.assert_array_equal(stored, cuhk03_image("detected", pair=1, person=1, shot=8))
    split = json.loads((out / "splits_new_labeled.json").read_text())
    assert ["images_labeled/2_001_1_01.png", 201, 0] in split["query"]
    assert ["images_labeled/2_001_2_06.png", 201, 1] in split["query"]

    assert check_cuhk03(out, expect="manifest", **QUIET).ok
    labeled = CUHK03(out, boxes="labeled")
    detected = CUHK03(out, boxes="detected")
    assert (len(labeled.train), len(labeled.query), len(labeled.gallery)) == (18, 4, 14)
    assert {r.pid for r in labeled.train} == {101, 102}
    assert detected.train[0].path.parent.name == "images_detected"

    again = prepare_cuhk03(cuhk03_raw, out, boxes=["labeled"], **QUIET)
    assert again.counts["labeled images already prepared (resumed)"] == images_per_box
    assert again.counts["labeled images written"] == 0


# --------------------------------------------------------------------------- CUHK-SYSU
def test_cuhksysu_crops_every_annotated_box(cuhksysu_raw, tmp_path):
    out = tmp_path / "cuhksysu"
    report = prepare_cuhksysu(cuhksysu_raw, out, **QUIET)
    assert report.counts["crops written"] == 3
    assert (report.counts["train_images"], report.counts["train_ids"]) == (3, 2)
    names = sorted(p.name for p in (out / "cropped_images").iterdir())
    assert names == ["00001_s1_0.jpg", "00001_s2_1.jpg", "00017_s1_0.jpg"]

    crop = np.asarray(Image.open(out / "cropped_images" / crop_name(1, "s2.jpg", 1)), dtype=float)
    assert crop.shape == (9, 6, 3)  # box [x=10, y=0, w=6, h=9]
    scene = np.asarray(Image.open(cuhksysu_raw / "Image" / "SSM" / "s2.jpg"), dtype=float)
    assert np.abs(crop - scene[0:9, 10:16]).mean() < 4  # only JPEG re-encoding differs
    assert np.abs(scene - scene_pixels(1)).mean() < 4

    assert check_cuhksysu(out, expect="manifest", **QUIET).ok
    dataset = CUHKSYSU(out)
    assert summary(dataset.train)[2] == ("00017_s1_0.jpg", 17, 0)
    assert dataset.query == [] and dataset.gallery == []
    assert len({r.pid for r in dataset.train}) == len(CUHKSYSU_PERSONS)


def test_cuhksysu_existing_cropped_folder_is_linked(cuhksysu_raw, tmp_path):
    cropped = tmp_path / "first"
    prepare_cuhksysu(cuhksysu_raw, cropped, **QUIET)
    out = tmp_path / "second"
    report = prepare_cuhksysu(cropped, out, **QUIET)  # raw now holds cropped_images/
    assert report.counts["images written"] == 3
    assert all(p.is_symlink() for p in (out / "cropped_images").iterdir())
    assert report.comparisons[0].source == "fast-reid cropped copy"


def test_cuhksysu_resume_keeps_existing_crops(tmp_path):
    raw = write_cuhksysu_raw(tmp_path)
    out = tmp_path / "out"
    prepare_cuhksysu(raw, out, **QUIET)
    again = prepare_cuhksysu(raw, out, **QUIET)
    assert again.counts["crops already prepared (resumed)"] == 3
    assert "crops written" not in again.counts


def test_command_line_for_a_reid_dataset(cuhk03_raw, tmp_path, capsys):
    out = tmp_path / "cuhk03"
    common = ["--workers", "1", "--no-progress"]
    assert (
        main(["cuhk03", "--raw", str(cuhk03_raw), "--out", str(out), "--boxes", "labeled", *common])
        == 0
    )
    assert (out / "splits_new_labeled.json").is_file()
    assert not (out / "splits_new_detected.json").exists()
    assert main(["cuhk03", "--check", str(out), "--expect", "manifest", *common]) == 0
    with pytest.raises(SystemExit):  # a gait option on a ReID dataset is refused, not ignored
        main(["cuhk03", "--raw", str(cuhk03_raw), "--out", str(out), "--partition", "p.json"])
    assert "--partition does not apply to cuhk03" in capsys.readouterr().err


# --------------------------------------------------------------------------- released protocol
def test_prepared_releases_feed_the_released_dr50_mix_datamodule(
    cuhksysu_raw, market_raw, msmt17_raw, cuhk03_raw, tmp_path
):
    """prepare -> the `experiment=dr50_mix` DataModule (CS + M + MS -> C3) yields batches."""
    import hydra

    from hydra_helpers import compose_config

    prepare_cuhksysu(cuhksysu_raw, tmp_path / "cuhk_sysu", **QUIET)
    prepare_market1501(market_raw.parent, tmp_path / "market1501", **QUIET)
    prepare_msmt17(msmt17_raw, tmp_path / "msmt17", **QUIET)
    prepare_cuhk03(cuhk03_raw, tmp_path / "cuhk03", **QUIET)
    cfg = compose_config(
        "train",
        [
            "experiment=dr50_mix",
            f"paths.data_dir={tmp_path}",
            "data.image_size=[32,16]",
            "data.batch_size=4",
            "data.domain_batch_size=4",
            "data.num_workers=0",
        ],
        tmp_path / "run",
    )
    datamodule = hydra.utils.instantiate(cfg.data, seed=0)
    datamodule.setup("fit")
    assert datamodule.source_names == ["cuhksysu", "market1501", "msmt17"]
    assert datamodule.target_names == ["cuhk03"]
    assert next(iter(datamodule.train_dataloader()))["image"].shape == (4, 3, 32, 16)
    for domain, loader in enumerate(datamodule.domain_dataloaders()):
        assert set(next(iter(loader))["domain_id"].tolist()) == {domain}
    test_batch = next(iter(datamodule.test_dataloader()[0]))
    assert test_batch["is_query"].any()
