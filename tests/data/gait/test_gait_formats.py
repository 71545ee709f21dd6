"""The pkl tree and the packed store: same sampling semantics, same batches, resumable draws."""

import json
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metareid.data.gait.casiab import GaitDataset, TreeLayoutError, pack_gait_tree
from metareid.data.gait.datamodule import GaitDataModule
from metareid.data.gait.frame_sampling import FrameSampler
from metareid.data.gait.packed import (
    FRAMES_FILE,
    INDEX_FILE,
    packed_dir,
    read_packed_index,
    write_packed_store,
)

FORMATS = ("pkl", "packed")
TYPES = ("nm-01", "bg-01", "cl-01")
VIEWS = ("000", "090")


def numbered(length: int, first: int = 1) -> np.ndarray:
    """Frame t holds the value ``first + t`` in every column except a ramp over the columns,
    so both the frame number and the 64 → 44 cut can be read back."""
    frames = np.empty((length, 64, 64), dtype=np.uint8)
    frames[:] = (first + np.arange(length, dtype=np.uint8))[:, None, None]
    frames[:, 0, :] = np.arange(64, dtype=np.uint8) * 2
    return frames


def frame_numbers(sils: torch.Tensor) -> np.ndarray:
    """[n, s] frame numbers (0 = padding) from the row-1 value of each frame."""
    return np.rint(sils[..., 1, 0].numpy() * 255).astype(int) - 1


def write_tree(root: Path, lengths: dict[str, list[int]]) -> Path:
    """Subjects -> sequence lengths (in TYPES x VIEWS order); 001/002 train, the rest test."""
    for subject, subject_lengths in lengths.items():
        slots = [(t, v) for t in TYPES for v in VIEWS]
        for (type_name, view), length in zip(slots, subject_lengths, strict=False):
            folder = root / subject / type_name / view
            folder.mkdir(parents=True)
            with open(folder / f"{view}.pkl", "wb") as handle:
                pickle.dump(numbered(length), handle)
    subjects = sorted(lengths)
    (root / "partition.json").write_text(
        json.dumps({"TRAIN_SET": subjects[:2], "TEST_SET": subjects[2:]})
    )
    return root


@pytest.fixture
def tree(tmp_path):
    root = write_tree(
        tmp_path / "tree",
        {
            "001": [7, 100, 12, 40, 3, 1],
            "002": [50, 9, 33, 2, 61, 18],
            "003": [5, 8, 13],
        },
    )
    pack_gait_tree(root, "casiab", root / "partition.json")
    return root


def dataset(root: Path, data_format: str, split: str = "train") -> GaitDataset:
    return GaitDataset(root, split=split, format=data_format)


# ---------------------------------------------------------------- sampling on both formats
@pytest.mark.parametrize("data_format", FORMATS)
def test_fixed_ordered_wraps_short_and_clips_long_sequences(tree, data_format):
    data = dataset(tree, data_format)
    sampler = FrameSampler("fixed_ordered", frames_num_fixed=30)
    lengths = [len(data.load(i)) for i in range(len(data))]
    short, long = lengths.index(7), lengths.index(100)
    starts = {short: set(), long: set()}
    for number in range(150):
        batch = data.read_batch([short, long], sampler, sampler.batch_rng(number))
        assert batch["sils"].shape == (2, 30, 64, 44) and "seq_lens" not in batch
        picked = frame_numbers(batch["sils"])
        assert np.all(np.diff(picked[0]) % 7 == 1)  # consecutive, wrapping 6 -> 0
        assert picked[1].tolist() == list(range(picked[1, 0], picked[1, 0] + 30))
        starts[short].add(int(picked[0, 0]))
        starts[long].add(int(picked[1, 0]))
    # Length 7 repeated ceil(30/7) = 5 times: starts 0..5; length 100: starts 0..70.
    assert starts[short] == {0, 1, 2, 3, 4, 5}
    assert max(starts[long]) <= 70 and len(starts[long]) > 40


@pytest.mark.parametrize("data_format", FORMATS)
def test_skip_keeps_a_sorted_subset_of_the_window(tree, data_format):
    data = dataset(tree, data_format)
    long = [len(data.load(i)) for i in range(len(data))].index(100)
    sampler = FrameSampler("fixed_ordered", frames_num_fixed=30, frames_skip_num=10)
    spans = set()
    for number in range(60):
        picked = frame_numbers(data.read_batch([long], sampler, sampler.batch_rng(number))["sils"])
        assert np.all(np.diff(picked[0]) > 0) and picked[0, -1] - picked[0, 0] <= 39
        spans.add(int(picked[0, -1] - picked[0, 0]))
    assert max(spans) > 29


@pytest.mark.parametrize("data_format", FORMATS)
def test_unordered_replaces_only_when_too_short(tree, data_format):
    data = dataset(tree, data_format)
    lengths = [len(data.load(i)) for i in range(len(data))]
    long, short = lengths.index(50), lengths.index(9)
    sampler = FrameSampler("fixed_unordered", frames_num_fixed=30)
    picked = frame_numbers(data.read_batch([long, short], sampler, sampler.batch_rng(0))["sils"])
    assert len(set(picked[0].tolist())) == 30 and not np.all(np.diff(picked[0]) > 0)
    assert set(picked[1].tolist()) <= set(range(9))


@pytest.mark.parametrize("data_format", FORMATS)
def test_unfixed_lengths_and_padding(tree, data_format):
    data = dataset(tree, data_format)
    sampler = FrameSampler("unfixed_ordered", frames_num_min=4, frames_num_max=9)
    seen = set()
    for number in range(40):
        batch = data.read_batch([0, 1, 2], sampler, sampler.batch_rng(number))
        counts = batch["seq_lens"].tolist()
        seen.update(counts)
        assert batch["sils"].shape[1] == max(counts)
        for row, count in enumerate(counts):
            assert batch["sils"][row, count:].abs().sum() == 0
    assert seen == {4, 5, 6, 7, 8, 9}


@pytest.mark.parametrize("data_format", FORMATS)
def test_all_ordered_whole_sequences_zero_padded_and_limited(tree, data_format):
    data = dataset(tree, data_format, split="test")
    batch = data.read_batch([0, 1, 2], FrameSampler("all_ordered"))
    # Tree order: bg-01/000 (13 frames), nm-01/000 (5), nm-01/090 (8).
    assert batch["seq_lens"].tolist() == [13, 5, 8]
    assert batch["sils"].shape == (3, 13, 64, 44)
    assert frame_numbers(batch["sils"])[2, :8].tolist() == list(range(8))
    assert batch["sils"][1, 5:].abs().sum() == 0
    limited = data.read_batch([0], FrameSampler("all_ordered", frames_all_limit=4))
    assert limited["seq_lens"].tolist() == [4]
    assert batch["indices"].tolist() == [0, 1, 2] and batch["labels"].tolist() == [0, 0, 0]
    assert batch["subjects"].tolist() == [3, 3, 3]
    # type/view indices refer to the layout's names (nm-01 = 0, bg-01 = 6; 000 = 0, 090 = 5).
    assert batch["type_index"].tolist() == [6, 0, 0] and batch["view_index"].tolist() == [0, 0, 5]


@pytest.mark.parametrize("data_format", FORMATS)
def test_cut_keeps_columns_10_to_53_scaled(tree, data_format):
    data = dataset(tree, data_format)
    batch = data.read_batch([0], FrameSampler("fixed_ordered", frames_num_fixed=3))
    expected = torch.arange(10, 54, dtype=torch.float32) * 2 / 255
    assert batch["sils"].dtype == torch.float32
    assert torch.equal(batch["sils"][0, 1, 0], expected)


@pytest.mark.parametrize(
    "sample_type", ["fixed_ordered", "fixed_unordered", "unfixed_unordered", "all_ordered"]
)
def test_both_formats_give_identical_batches(tree, sample_type):
    pkl, packed = dataset(tree, "pkl"), dataset(tree, "packed")
    assert [r.name for r in pkl.samples] == [r.name for r in packed.samples]
    sampler = FrameSampler(sample_type, frames_num_fixed=20, frames_num_min=3, frames_num_max=9)
    indices = [5, 0, 11, 3, 3]
    first = pkl.read_batch(indices, sampler, sampler.batch_rng(4))
    second = packed.read_batch(indices, sampler, sampler.batch_rng(4))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ---------------------------------------------------------------- the store itself
def test_store_holds_cut_frames_and_their_index(tree):
    index = read_packed_index(packed_dir(tree))
    assert index.frame_shape == (64, 44) and index.source_width == 64
    assert index.subjects[:2] == ["001", "001"] and index.types[:2] == ["bg-01", "bg-01"]
    assert index.total_frames == 7 + 100 + 12 + 40 + 3 + 1 + 50 + 9 + 33 + 2 + 61 + 18 + 5 + 8 + 13
    size = (packed_dir(tree) / FRAMES_FILE).stat().st_size
    assert size == index.total_frames * 64 * 44


def test_truncated_frames_file_is_a_clear_error(tree):
    frames = packed_dir(tree) / FRAMES_FILE
    frames.write_bytes(frames.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"frames.uint8: expected .* bytes .*--pack"):
        dataset(tree, "packed")


def test_other_version_and_layout_are_refused(tree):
    index_path = packed_dir(tree) / INDEX_FILE
    content = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**content, "version": 99}))
    with pytest.raises(ValueError, match=r"index.json: packed-store version 99"):
        dataset(tree, "packed")
    index_path.write_text(json.dumps({**content, "layout": "oumvlp"}))
    with pytest.raises(ValueError, match="packed from a 'oumvlp' tree"):
        dataset(tree, "packed")


def test_partition_ids_absent_from_the_store(tree, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"TRAIN_SET": ["050", "051"], "TEST_SET": ["052"]}))
    with pytest.raises(TreeLayoutError, match="is in the packed store"):
        GaitDataset(tree, other, split="train", format="packed")


def test_format_packed_without_a_store_says_how_to_build_it(tmp_path):
    root = write_tree(tmp_path / "bare", {"001": [3], "002": [4], "003": [5]})
    with pytest.raises(FileNotFoundError, match=r"--pack"):
        dataset(root, "packed")
    assert dataset(root, "auto").format == "pkl"


def test_auto_prefers_the_store(tree):
    assert dataset(tree, "auto").format == "packed"


def test_store_needs_one_frame_size(tmp_path):
    sequences = [
        ("001", "nm-01", "000", np.zeros((3, 64, 64), np.uint8)),
        ("001", "nm-01", "018", np.zeros((3, 64, 88), np.uint8)),
    ]
    with pytest.raises(ValueError, match="needs one frame size"):
        write_packed_store(tmp_path, sequences, layout="casiab", source="test")
    assert not packed_dir(tmp_path).exists()  # nothing half-written is left as a store


# ---------------------------------------------------------------- the DataModule
def module(root: Path, data_format: str, workers: int, start: int = 0, **kwargs):
    datamodule = GaitDataModule(
        str(root),
        p=2,
        k=3,
        frames_num_fixed=6,
        num_workers=workers,
        format=data_format,
        seed=3,
        **kwargs,
    )
    datamodule.trainer = SimpleNamespace(global_step=start, global_rank=0, world_size=1)
    datamodule.setup("fit")
    return datamodule


def batches(datamodule: GaitDataModule, count: int) -> list[dict]:
    iterator = iter(datamodule.train_dataloader())
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("data_format", FORMATS)
def test_resumed_loader_continues_the_uninterrupted_batches(tree, data_format):
    uninterrupted = batches(module(tree, data_format, workers=0), 6)
    resumed = batches(module(tree, data_format, workers=2, start=3), 3)
    for expected, actual in zip(uninterrupted[3:], resumed, strict=True):
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key
    # Not a trivially constant stream: the frames differ from batch to batch.
    assert not torch.equal(uninterrupted[3]["sils"], uninterrupted[4]["sils"])


def test_both_formats_feed_identical_training_batches(tree):
    pkl = batches(module(tree, "pkl", workers=0), 3)
    packed = batches(module(tree, "packed", workers=0), 3)
    for first, second in zip(pkl, packed, strict=True):
        for key in first:
            assert torch.equal(first[key], second[key]), key


def test_startup_log_names_partition_format_and_suspicious_sequences(tree, caplog):
    blank = tree / "003" / "cl-01" / "000"
    blank.mkdir(parents=True)
    with open(blank / "000.pkl", "wb") as handle:
        pickle.dump(np.zeros((4, 64, 64), np.uint8), handle)
    pack_gait_tree(tree, "casiab", tree / "partition.json")
    for data_format in FORMATS:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="metareid.data.gait.datamodule"):
            module(tree, data_format, workers=0).setup("test")
        text = caplog.text
        assert f"({data_format} format), partition {tree / 'partition.json'}" in text
        assert "the tree's own partition.json" in text
        # Train: one 1-frame sequence (001/cl-01/090); test: the all-blank one.
        assert "train: 12 sequences" in text and "1-frame sequences: 1 (e.g. 001/cl-01/090)" in text
        assert "all-blank sequences: 1 (e.g. 003/cl-01/000)" in text


def test_bundled_partition_is_named_when_the_tree_has_none(tree, caplog):
    (tree / "partition.json").unlink()
    with caplog.at_level(logging.INFO, logger="metareid.data.gait.datamodule"):
        with pytest.raises(TreeLayoutError):
            module(tree, "pkl", workers=0)  # the bundled 74/50 split does not fit this tree
    assert "CASIA-B_include_005.json (the bundled CASIA-B default" in caplog.text
