from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metareid.data.reid.dataset import ReIDImage
from metareid.data.reid.market1501 import Market1501, SyntheticReID
from metareid.data.reid.registry import DATASET_FACTORIES, load_reid_dataset

TRAIN_FILES = [
    "0002_c1s1_000451_03.jpg",
    "0002_c3s1_000551_01.jpg",
    "0007_c2s3_070952_01.jpg",
    "-1_c1s1_000100_01.jpg",  # junk
]
QUERY_FILES = ["0001_c1s1_001051_00.jpg", "0003_c6s2_000001_00.jpg", "-1_c2s1_000001_00.jpg"]
GALLERY_FILES = [
    "0001_c2s1_000301_01.jpg",
    "0003_c1s1_000201_02.jpg",
    "0000_c4s2_000101_01.jpg",  # distractor, kept
    "-1_c5s3_000001_04.jpg",  # junk, dropped
]


def write_image(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 4, 3), value, dtype=np.uint8)).save(path)


def write_market_tree(root: Path) -> Path:
    for folder, names in [
        ("bounding_box_train", TRAIN_FILES),
        ("query", QUERY_FILES),
        ("bounding_box_test", GALLERY_FILES),
    ]:
        for name in names:
            write_image(root / folder / name)
    return root


def test_market_parses_ids_cameras_and_drops_junk(tmp_path):
    root = write_market_tree(tmp_path / "market")
    dataset = Market1501(root)
    assert [(r.pid, r.camid) for r in dataset.train] == [(2, 0), (2, 2), (7, 1)]
    assert [(r.pid, r.camid) for r in dataset.query] == [(1, 0), (3, 5)]
    # sorted by name: 0000 distractor first, junk -1 gone
    assert [(r.pid, r.camid) for r in dataset.gallery] == [(0, 3), (1, 1), (3, 0)]
    assert all(r.domain == "market1501" for r in dataset.train + dataset.query + dataset.gallery)
    assert dataset.train[0] == ReIDImage(
        root / "bounding_box_train" / "0002_c1s1_000451_03.jpg", 2, 0, "market1501"
    )
    assert dataset.num_train_pids == 2
    assert dataset.num_train_cams == 3
    assert dataset.summary() == (
        "market1501: train 3 images / 2 ids, query 2 images / 2 ids, gallery 3 images / 3 ids"
    )


def test_market_accepts_parent_folder_and_ignores_non_images(tmp_path):
    write_market_tree(tmp_path / Market1501.inner_folder)
    (tmp_path / Market1501.inner_folder / "bounding_box_train" / "Thumbs.db").write_text("x")
    dataset = load_reid_dataset("Market-1501", tmp_path)
    assert isinstance(dataset, Market1501)
    assert dataset.root == tmp_path / Market1501.inner_folder
    assert len(dataset.train) == 3


def test_missing_subfolder_is_named(tmp_path):
    root = write_market_tree(tmp_path / "market")
    for path in (root / "query").iterdir():
        path.unlink()
    (root / "query").rmdir()
    with pytest.raises(FileNotFoundError, match=r"missing subfolder\(s\) query in .*market"):
        Market1501(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Market1501(tmp_path / "nowhere")


def test_bad_file_name_raises_or_is_counted(tmp_path):
    root = write_market_tree(tmp_path / "market")
    write_image(root / "bounding_box_test" / "person_12.jpg")
    write_image(root / "query" / "0004_c0s1_000001_00.jpg")  # camera 0 does not exist
    # query is read before the gallery, so its bad camera digit is reported first
    with pytest.raises(ValueError, match="0004_c0s1_000001_00.jpg.*data.strict=false"):
        Market1501(root)
    dataset = Market1501(root, strict=False)
    assert dataset.num_skipped == 2
    assert len(dataset.gallery) == 3 and len(dataset.query) == 2
    assert "(2 unparsable files skipped)" in dataset.summary()


def test_split_without_usable_images_is_an_error(tmp_path):
    root = write_market_tree(tmp_path / "market")
    for path in (root / "bounding_box_train").iterdir():
        path.unlink()
    write_image(root / "bounding_box_train" / "-1_c1s1_000001_01.jpg")
    with pytest.raises(ValueError, match="bounding_box_train: no usable images"):
        Market1501(root)


def test_synthetic_reader_uses_domain_folder_name(tmp_path):
    write_market_tree(tmp_path / "synB")
    by_domain = load_reid_dataset("synthetic", tmp_path, domain="synB")
    by_folder = SyntheticReID(tmp_path / "synB")
    assert isinstance(by_domain, SyntheticReID)
    assert by_domain.name == by_folder.name == "synB"
    assert {r.domain for r in by_domain.train} == {"synB"}
    renamed = load_reid_dataset("synthetic", tmp_path / "synB", name="target")
    assert renamed.name == "target"


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(
        ValueError,
        match="Unknown ReID dataset .viper.*cuhk03, cuhksysu, dukemtmc, market1501, msmt17, synth",
    ):
        load_reid_dataset("viper", tmp_path)
    assert {"market1501", "synthetic"} <= set(DATASET_FACTORIES)
