"""Bad ReID images: found at start-up (strict error or counted skip), cached, replaced at run time.

Every case runs on a copy of a tiny synthetic tree (4 domains, 8 training images each) and checks
that the image files on disk are left as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from hydra_helpers import TINY_REID, compose_config
from metareid.data.reid import image_check
from metareid.data.reid.datamodule import ReIDDataModule
from metareid.data.reid.image_check import (
    CACHE_NAME,
    UndecodableImagesError,
    check_image,
    find_undecodable_images,
)
from metareid.data.reid.multisource import load_resized_image
from metareid.data.reid.synthetic import generate_synthetic_reid
from metareid.utils import errors
from metareid.utils.errors import exit_on_user_error

SIZE = (16, 8)


@pytest.fixture(scope="module")
def pristine_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reid_images")
    generate_synthetic_reid(
        root,
        ids_per_domain=4,
        cameras=2,
        images_per_id_per_camera=2,
        size=SIZE,
        distractors_per_domain=2,
        junk_per_domain=1,
        progress=False,
    )
    return root


@pytest.fixture
def tree(pristine_tree, tmp_path) -> Path:
    """A private copy the test may break."""
    return Path(shutil.copytree(pristine_tree, tmp_path / "data"))


def make_datamodule(root: Path, **overrides) -> ReIDDataModule:
    options = dict(
        sources=[
            {"name": "synthetic", "root": str(root), "domain": d} for d in ("synA", "synB", "synC")
        ],
        targets=[{"name": "synthetic", "root": str(root), "domain": "synD"}],
        image_size=SIZE,
        batch_size=4,
        num_instances=2,
        domain_batch_size=2,
        num_workers=0,
        test_batch_size=8,
    )
    options.update(overrides)
    return ReIDDataModule(**options)


def images(root: Path, domain: str, folder: str) -> list[Path]:
    """Image files of one split folder, junk (pid -1) excluded: the ones the datasets index."""
    return sorted(p for p in (root / domain / folder).iterdir() if not p.name.startswith("-1"))


def break_image(path: Path, kind: str) -> None:
    data = path.read_bytes()
    path.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"no jpeg"}[kind]
    )


def image_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != CACHE_NAME
    }


@pytest.fixture
def open_calls(monkeypatch) -> list[str]:
    """Paths passed to ``PIL.Image.open`` (the checker and the loader both open through it)."""
    calls: list[str] = []
    original = Image.open

    def counting_open(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return calls


def write_image(path: Path, pixels: np.ndarray, **save_options) -> Path:
    Image.fromarray(pixels).save(path, **save_options)
    return path


# ------------------------------------------------------------------------- the per-file check
def test_broken_files_are_rejected_and_odd_but_valid_ones_load_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)
    good_jpeg = write_image(tmp_path / "good.jpg", rgb, quality=95)
    zero_byte = tmp_path / "zero.jpg"
    zero_byte.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good_jpeg.read_bytes()[: good_jpeg.stat().st_size // 2])
    undecodable = tmp_path / "undecodable.jpg"
    undecodable.write_bytes(b"\xff\xd8 this is not a JPEG body")
    assert check_image(good_jpeg) is None
    assert check_image(zero_byte) == "empty file (0 bytes)"
    assert "truncated" in check_image(truncated)
    assert "cannot identify image file" in check_image(undecodable)
    for broken in (zero_byte, truncated, undecodable):
        with pytest.raises(OSError, match=f"{broken.name}: cannot decode"):
            load_resized_image(broken, (8, 4))

    gray = np.full((10, 6), 77, dtype=np.uint8)
    rgba = np.dstack([np.full((10, 6), c, dtype=np.uint8) for c in (10, 20, 30, 128)])
    valid = {
        "gray.png": write_image(tmp_path / "gray.png", gray),
        "gray.jpg": write_image(tmp_path / "gray.jpg", gray, quality=100),
        "rgba.png": write_image(tmp_path / "rgba.png", rgba),
        "one_pixel.png": write_image(
            tmp_path / "one_pixel.png", np.array([[[200, 100, 50]]], dtype=np.uint8)
        ),
    }
    assert {name: check_image(path) for name, path in valid.items()} == dict.fromkeys(valid)
    loaded = {name: load_resized_image(path, (8, 4)) for name, path in valid.items()}
    assert all(t.shape == (3, 8, 4) and t.dtype == torch.uint8 for t in loaded.values())
    assert (loaded["gray.png"] == 77).all()  # grey replicated into R, G and B
    assert (loaded["gray.jpg"] - 77).abs().max() <= 1
    assert torch.equal(loaded["rgba.png"], torch.tensor([10, 20, 30]).view(3, 1, 1).expand(3, 8, 4))
    # a constant image stays constant when enlarged
    assert torch.equal(
        loaded["one_pixel.png"], torch.tensor([200, 100, 50]).view(3, 1, 1).expand(3, 8, 4)
    )


def test_thread_pool_reports_bad_files_in_input_order(tmp_path):
    pixel = np.zeros((1, 1, 3), dtype=np.uint8)
    paths = [write_image(tmp_path / f"{i:03d}.jpg", pixel) for i in range(70)]
    break_image(paths[5], "garbage")
    break_image(paths[64], "empty")
    bad = find_undecodable_images(paths, tmp_path, workers=2)
    assert [image.path for image in bad] == [paths[5], paths[64]]
    assert bad[1].reason == "empty file (0 bytes)"


# --------------------------------------------------------------------------- strict start-up
def test_strict_setup_names_the_bad_files_before_any_batch(tree):
    bad_train = images(tree, "synB", "bounding_box_train")[3]
    break_image(bad_train, "truncated")
    before = image_digests(tree)
    with pytest.raises(UndecodableImagesError) as error:
        make_datamodule(tree).setup("fit")
    assert image_digests(tree) == before
    message = str(error.value)
    assert "1 image(s) of source synB (train) cannot be decoded" in message
    assert f"{bad_train}: OSError" in message and "truncated" in message.lower()
    assert "data.strict=false" in message

    # targets are checked when evaluation is set up, before any evaluation batch
    queries = images(tree, "synD", "query")
    gallery = images(tree, "synD", "bounding_box_test")
    break_image(queries[0], "empty")
    for path in gallery[:6]:
        break_image(path, "garbage")
    before = image_digests(tree)
    with pytest.raises(UndecodableImagesError) as error:
        make_datamodule(tree).setup("validate")
    message = str(error.value)
    assert "7 image(s) of target synD (query/gallery) cannot be decoded" in message
    assert f"{queries[0]}: empty file (0 bytes)" in message
    named = [line for line in message.splitlines() if line.startswith("  /")]
    assert len(named) == 5 and "... and 2 more" in message
    assert image_digests(tree) == before


def test_entry_points_report_the_error_without_a_traceback(tree, caplog, monkeypatch):
    bad = images(tree, "synD", "query")[0]
    break_image(bad, "empty")
    # a single run, whatever Hydra state earlier tests left behind
    monkeypatch.setattr(errors, "_in_multirun", lambda: False)

    @exit_on_user_error
    def main():
        make_datamodule(tree).setup("validate")

    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert any(
        r.getMessage().startswith("error: 1 image(s) of target synD") and str(bad) in r.getMessage()
        for r in caplog.records
    )


def test_the_recipes_check_images_strictly_by_default(tmp_path):
    cfg = compose_config("train", [*TINY_REID, f"paths.data_dir={tmp_path}"], tmp_path / "run")
    assert cfg.data.check_images is True and cfg.data.strict is True
    datamodule = instantiate(cfg.data)
    assert datamodule.check_images and datamodule.strict


def test_check_images_false_skips_the_start_up_check(tree, open_calls):
    bad_train = images(tree, "synA", "bounding_box_train")[0]
    break_image(bad_train, "garbage")
    datamodule = make_datamodule(tree, check_images=False)
    datamodule.setup("fit")
    assert open_calls == []
    position = [item.path for item in datamodule.train_set.items].index(bad_train)
    with pytest.raises(OSError, match=rf"{bad_train.name}: cannot decode.*data\.strict=false"):
        datamodule.train_set[position]


# -------------------------------------------------------------------------- lenient start-up
def test_lenient_setup_drops_and_counts_bad_images_and_keeps_odd_valid_ones(tree, caplog):
    train_a = images(tree, "synA", "bounding_box_train")
    bad = {
        "train": train_a[1],
        "query": images(tree, "synD", "query")[1],
        "gallery": images(tree, "synD", "bounding_box_test")[2],
    }
    break_image(bad["train"], "garbage")
    break_image(bad["query"], "truncated")
    break_image(bad["gallery"], "empty")
    # valid though unusual: they must be kept and come out as RGB of the model size
    folder = tree / "synA" / "bounding_box_train"
    gray = write_image(folder / "0001_c1s1_000090_01.jpg", np.full((40, 20), 90, dtype=np.uint8))
    rgba = write_image(folder / "0001_c2s1_000091_01.png", np.zeros((40, 20, 4), dtype=np.uint8))
    one_pixel = write_image(folder / "0002_c1s1_000092_01.png", np.ones((1, 1, 3), np.uint8))
    before = image_digests(tree)

    datamodule = make_datamodule(tree, strict=False)
    with caplog.at_level(logging.INFO):
        datamodule.setup("fit")
    train_paths = [item.path for item in datamodule.train_set.items]
    assert bad["train"] not in train_paths
    assert len(train_paths) == 3 * 8 + 3 - 1
    test_set = datamodule.test_sets["synD"]
    test_paths = [item.path for item in test_set.items]
    assert bad["query"] not in test_paths and bad["gallery"] not in test_paths
    assert test_set.num_query == len(images(tree, "synD", "query")) - 1
    assert sorted(image.path for image in datamodule.undecodable_images) == sorted(bad.values())
    summaries = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(("source", "target"))
    ]
    assert any(
        s.startswith("source synA") and "(1 undecodable images skipped)" in s for s in summaries
    )
    assert any(s.startswith("source synB") and "undecodable" not in s for s in summaries)
    assert any(
        s.startswith("target synD") and "(2 undecodable images skipped)" in s for s in summaries
    )
    for path in (gray, rgba, one_pixel):
        item = datamodule.train_set[train_paths.index(path)]
        assert item["image"].shape == (3, *SIZE) and item["image"].dtype == torch.uint8
    assert datamodule.train_set[train_paths.index(gray)]["image"].eq(90).all()
    assert image_digests(tree) == before


# ------------------------------------------------------------------------------------ cache
def test_second_start_reads_the_cache_and_rechecks_only_changed_files(tree, open_calls):
    make_datamodule(tree).setup("fit")
    checked = len(open_calls)
    assert checked == 3 * 8 + len(images(tree, "synD", "query")) + len(
        images(tree, "synD", "bounding_box_test")
    )
    cache = json.loads((tree / "synA" / CACHE_NAME).read_text())
    assert len(cache["entries"]) == 8 and not list(tree.rglob("*.tmp"))

    open_calls.clear()
    make_datamodule(tree).setup("fit")
    assert open_calls == []

    # a file changed since the check (size and mtime differ) is checked again, alone
    changed = images(tree, "synC", "bounding_box_train")[2]
    break_image(changed, "truncated")
    with pytest.raises(UndecodableImagesError, match=changed.name):
        make_datamodule(tree).setup("fit")
    assert open_calls == [str(changed)]


def test_unreadable_or_unwritable_cache_only_costs_a_new_check(tree, open_calls, monkeypatch):
    (tree / "synA" / CACHE_NAME).write_text("{not json")
    # a directory where the cache file goes: the dataset root cannot take the cache
    (tree / "synB" / CACHE_NAME).mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tree.parent / "user_cache"))
    datamodule = make_datamodule(tree, targets=[{"name": "synthetic", "root": str(tree / "synA")}])
    datamodule.setup("fit")
    assert sum("/synA/" in call for call in open_calls) == 8 + len(
        images(tree, "synA", "query") + images(tree, "synA", "bounding_box_test")
    )
    assert json.loads((tree / "synA" / CACHE_NAME).read_text())["version"] == 1
    fallback = image_check.cache_locations(tree / "synB")[1]
    assert fallback.is_relative_to(tree.parent / "user_cache") and fallback.is_file()

    open_calls.clear()
    make_datamodule(tree).setup("fit")
    assert not [call for call in open_calls if "/synA/" in call or "/synB/" in call]


# ------------------------------------------------------------------------ run-time failures
def test_image_broken_after_the_check_is_replaced_and_counted_when_lenient(tree, caplog):
    datamodule = make_datamodule(tree, strict=False)
    datamodule.setup("fit")
    train_position = 5
    broken_train = datamodule.train_set.items[train_position].path
    test_set = datamodule.test_sets["synD"]
    broken_query = test_set.items[0].path
    break_image(broken_train, "garbage")
    break_image(broken_query, "truncated")
    before = image_digests(tree)

    with caplog.at_level(logging.WARNING):
        item = datamodule.train_set[train_position]
        batches = list(datamodule.val_dataloader()[0])
    assert torch.equal(item["image"], torch.zeros(3, *SIZE, dtype=torch.uint8))
    assert item["path"] == str(broken_train)
    assert datamodule.train_set.replaced_images == [str(broken_train)]
    assert test_set.replaced_images == [str(broken_query)]
    assert sum(len(batch["pid"]) for batch in batches) == len(test_set)
    assert batches[0]["image"][0].eq(0).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(broken_train) in w and "black image" in w for w in warnings)
    assert any(str(broken_query) in w and "1 image(s) replaced" in w for w in warnings)
    assert image_digests(tree) == before

    strict = make_datamodule(tree, check_images=False)
    strict.setup("validate")
    with pytest.raises(OSError, match=f"{broken_query.name}: cannot decode"):
        list(strict.val_dataloader()[0])
