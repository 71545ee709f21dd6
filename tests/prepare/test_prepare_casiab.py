"""CASIA-B pretreatment: frame alignment numbers, prepare → check → loader, resume, workers, CLI."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from raw_releases import (
    CASIAB_PARTITION,
    EMPTY_SEQUENCE,
    FRAMES_PER_SEQUENCE,
    near_empty,
    save_png,
    silhouette,
)

from metareid.prepare import main
from metareid.prepare.casiab import (
    align_silhouette,
    check_casiab,
    prepare_casiab,
    resize_bicubic,
)
from metareid.prepare.report import MANIFEST_NAME

SEQUENCES = 3 * 2 * 2  # subjects × types × views in the fabricated tree


def load_pkl(path: Path) -> np.ndarray:
    with open(path, "rb") as stream:
        return pickle.load(stream)


def test_bicubic_resize_matches_torch_bicubic():
    image = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    for height, width in ((64, 91), (20, 11)):
        reference = F.interpolate(
            torch.from_numpy(image).double()[None, None],
            size=(height, width),
            mode="bicubic",
            align_corners=False,
        )[0, 0]
        expected = reference.round().clamp(0, 255).to(torch.uint8).numpy()
        np.testing.assert_array_equal(resize_bicubic(image, height, width), expected)


@pytest.mark.parametrize("first_column", [5, 27, 40, 85])
def test_alignment_centres_the_column_mass_median(first_column):
    # 64 foreground rows in a 100-column frame: the resize is the identity, so the result is
    # computable by hand. Columns c..c+9 hold the mass; the median column is c+5 (the first
    # column where the cumulative mass exceeds half); the 64-wide window starts 32 left of it.
    # Near a border (c = 5, 27, 85) the window leaves the frame and 32 zero columns are padded
    # on both sides first; the silhouette must land in output columns 27..36 every time.
    frame = np.zeros((70, 100), dtype=np.uint8)
    frame[3:67, first_column : first_column + 10] = 255
    aligned = align_silhouette(frame)
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[:, 27:37] = 255
    np.testing.assert_array_equal(aligned, expected)


def test_alignment_rescales_a_short_silhouette_to_height_64():
    frame = np.zeros((40, 60), dtype=np.uint8)
    frame[4:20, 10:18] = 255  # 16 rows → scaled ×4, width int(64 · 60/16) = 240 before the crop
    aligned = align_silhouette(frame)
    assert aligned.shape == (64, 64) and aligned.dtype == np.uint8
    assert aligned[:, 0].sum() == 0 and aligned[:, -1].sum() == 0
    columns = np.flatnonzero(aligned.sum(axis=0))
    # 8 columns ×4 = 32 wide, centred: the mass median sits at output column 32.
    assert columns[0] >= 14 and columns[-1] <= 49
    mass = aligned.sum(axis=0, dtype=np.int64).cumsum()
    assert int(np.flatnonzero(mass > mass[-1] / 2)[0]) == 32


def test_prepare_writes_aligned_pkls_partition_and_report(casiab_raw, tmp_path):
    out = tmp_path / "pkl"
    report = prepare_casiab(casiab_raw, out, partition=CASIAB_PARTITION, show_progress=False)

    assert report.counts["sequences written"] == SEQUENCES - 1
    assert report.counts["frames read"] == SEQUENCES * FRAMES_PER_SEQUENCE
    assert report.counts["frames kept"] == (SEQUENCES - 1) * FRAMES_PER_SEQUENCE
    assert report.dropped == {"near-empty frames (pixel sum <= 10,000)": FRAMES_PER_SEQUENCE}
    assert report.dropped_sequences == ["/".join(EMPTY_SEQUENCE)]
    assert (report.counts["train_sequences"], report.counts["test_sequences"]) == (8, 3)
    assert (report.counts["train_ids"], report.counts["test_ids"]) == (2, 1)
    assert report.problems == []

    array = load_pkl(out / "001" / "nm-01" / "018" / "018.pkl")
    assert array.dtype == np.uint8 and array.shape == (FRAMES_PER_SEQUENCE, 64, 64)
    for index in range(FRAMES_PER_SEQUENCE):  # frames in file-name order
        np.testing.assert_array_equal(array[index], align_silhouette(silhouette(shift=index + 1)))
    assert not (out / "003" / "nm-02" / "018").exists()
    assert json.loads((out / "partition.json").read_text()) == CASIAB_PARTITION
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["counts"] == {
        "train_ids": 2,
        "train_sequences": 8,
        "test_ids": 1,
        "test_sequences": 3,
    }
    assert not (out / ".partial").exists()


def test_check_then_loader_read_the_prepared_tree(casiab_raw, tmp_path):
    out = tmp_path / "pkl"
    prepare_casiab(casiab_raw, out, partition=CASIAB_PARTITION, show_progress=False)

    against_manifest = check_casiab(out, expect="manifest", show_progress=False)
    assert against_manifest.ok
    assert against_manifest.counts["pkl files read"] == SEQUENCES - 1
    against_release = check_casiab(out, expect="release", show_progress=False)
    assert not against_release.ok
    assert {(c.name, c.found, c.expected) for c in against_release.mismatches} == {
        ("train_ids", 2, 74),
        ("test_ids", 1, 50),
        ("test_sequences", 3, 5485),
    }

    from metareid.data.gait.casiab import CasiaBDataset

    train = CasiaBDataset(out, partition_file=out / "partition.json", split="train")
    test = CasiaBDataset(out, partition_file=out / "partition.json", split="test")
    assert (len(train), len(test)) == (8, 3)
    assert list(train.label_set) == ["001", "002"]


def test_prepare_resumes_and_only_redoes_missing_sequences(casiab_raw, tmp_path):
    out = tmp_path / "pkl"
    prepare_casiab(casiab_raw, out, partition=CASIAB_PARTITION, show_progress=False)
    kept = out / "002" / "nm-02" / "000" / "000.pkl"
    stamp = kept.stat().st_mtime_ns
    (out / "001" / "nm-01" / "000" / "000.pkl").unlink()  # as if interrupted before this one

    again = prepare_casiab(casiab_raw, out, partition=CASIAB_PARTITION, show_progress=False)
    assert again.counts["sequences written"] == 1
    assert again.counts["sequences already prepared (resumed)"] == SEQUENCES - 2
    assert kept.stat().st_mtime_ns == stamp
    assert again.counts["test_sequences"] == 3  # the totals still describe the whole tree


def test_two_workers_give_the_same_tree(casiab_raw, tmp_path):
    serial = prepare_casiab(
        casiab_raw, tmp_path / "a", partition=CASIAB_PARTITION, show_progress=False
    )
    parallel = prepare_casiab(
        casiab_raw, tmp_path / "b", partition=CASIAB_PARTITION, workers=2, show_progress=False
    )
    assert parallel.counts == serial.counts
    for path in sorted((tmp_path / "a").rglob("*.pkl")):
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        np.testing.assert_array_equal(load_pkl(path), load_pkl(twin))


def test_near_empty_threshold_is_a_pixel_sum_of_10000(tmp_path):
    raw = tmp_path / "raw"
    below = near_empty()  # 39 white pixels = 9,945
    above = below.copy()
    above.flat[39] = 255  # 40 pixels = 10,200
    save_png(raw / "001" / "nm-01" / "000" / "001-nm-01-000-001.png", below)
    save_png(raw / "001" / "nm-01" / "000" / "001-nm-01-000-002.png", above)
    partition = {"TRAIN_SET": ["001"], "TEST_SET": []}
    report = prepare_casiab(raw, tmp_path / "out", partition=partition, show_progress=False)
    assert report.counts["frames kept"] == 1
    assert sum(report.dropped.values()) == 1
    assert any("only 1 valid frames" in warning for warning in report.warnings)


def test_command_line_prepare_and_check_exit_codes(casiab_raw, casiab_partition_file, tmp_path):
    out = tmp_path / "pkl"
    common = ["--workers", "1", "--no-progress"]
    prepare = ["casiab", "--raw", str(casiab_raw), "--out", str(out)]
    assert main([*prepare, "--partition", str(casiab_partition_file), *common]) == 0
    assert main(["casiab", "--check", str(out), "--expect", "manifest", *common]) == 0
    # The fabricated tree is not the full release: a release check fails ...
    assert main(["casiab", "--check", str(out), *common]) == 1
    # ... unless problems are only to be listed.
    assert main(["casiab", "--check", str(out), "--strict", "false", *common]) == 0
    with pytest.raises(SystemExit):
        main(["casiab", "--raw", str(casiab_raw), "--out", str(out), "--link", "copy"])


def test_prepared_tree_feeds_model_metagait_data_casiab(casiab_raw, tmp_path, caplog):
    """prepare -> `python src/train.py model=metagait data=casiab data.root=...` data path."""
    import hydra

    from hydra_helpers import compose_config

    out = tmp_path / "pkl"
    prepare_casiab(casiab_raw, out, partition=CASIAB_PARTITION, show_progress=False)
    cfg = compose_config(
        "train",
        [
            "model=metagait",
            "data=casiab",
            f"data.root={out}",
            "data.num_classes=2",
            "data.p=2",
            "data.k=2",
            "data.num_workers=0",
        ],
        tmp_path / "run",
    )
    # data=casiab takes the tree's partition.json (written by prepare) without an override.
    assert cfg.data.partition_file is None
    datamodule = hydra.utils.instantiate(cfg.data, seed=0)
    with caplog.at_level(logging.INFO, logger="metareid.data.gait.datamodule"):
        datamodule.setup("fit")
    assert f"partition {out / 'partition.json'} (the tree's own partition.json)" in caplog.text
    assert datamodule.train_set.partition_file == out / "partition.json"
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["sils"].shape == (4, 30, 64, 44)  # 3-frame clips wrap around to 30
    test_batch = next(iter(datamodule.test_dataloader()))
    assert test_batch["seq_lens"].tolist() == [3] * len(test_batch["seq_lens"])


def test_packed_store_from_prepare_pack_and_check(casiab_raw, casiab_partition_file, tmp_path):
    from metareid.data.gait.casiab import CasiaBDataset
    from metareid.data.gait.packed import packed_dir, read_packed_index

    out = tmp_path / "pkl"
    common = ["--workers", "1", "--no-progress"]
    prepare = ["casiab", "--raw", str(casiab_raw), "--out", str(out)]
    assert main([*prepare, "--partition", str(casiab_partition_file), "--packed", *common]) == 0
    index = read_packed_index(packed_dir(out))
    assert len(index.lengths) == SEQUENCES - 1 and index.frame_shape == (64, 44)
    packed = CasiaBDataset(out, partition_file=out / "partition.json", split="train", format="auto")
    assert packed.format == "packed" and len(packed) == 8
    pkl_frames = CasiaBDataset(out, partition_file=out / "partition.json", format="pkl").load(0)
    assert np.array_equal(packed.load(0), pkl_frames[:, :, 10:54])
    # The store is not mistaken for a subject folder, and it is checked against the partition.
    assert main(["casiab", "--check", str(out), "--expect", "manifest", *common]) == 0
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"TRAIN_SET": ["001", "002"], "TEST_SET": ["003", "009"]}))
    report = check_casiab(out, partition=stale, expect="none", show_progress=False)
    assert any("not in the packed store" in p.message for p in report.problems)
    # A tree changed after packing: the store's counts no longer match.
    (out / "002" / "nm-02" / "000" / "000.pkl").unlink()
    changed = check_casiab(out, expect="none", show_progress=False)
    assert {(c.name, c.found, c.expected) for c in changed.mismatches} == {
        ("packed train_sequences", 8, 7)
    }
    # --pack rebuilds the store of an existing tree.
    (packed_dir(out) / "frames.uint8").write_bytes(b"")
    assert main(["casiab", "--pack", str(out), *common]) == 0
    assert len(read_packed_index(packed_dir(out)).lengths) == SEQUENCES - 2
    assert not check_casiab(out, expect="none", show_progress=False).mismatches


def test_check_refuses_a_malicious_pkl_without_running_it(casiab_raw, tmp_path):
    out = tmp_path / "pkl"
    prepare_casiab(casiab_raw, out, partition=CASIAB_PARTITION, show_progress=False)
    marker = tmp_path / "pwned"
    target = out / "001" / "nm-01" / "000" / "000.pkl"
    target.write_bytes(pickle.dumps(RunsAShellCommand(f"touch {marker}")))
    report = check_casiab(out, expect="none", show_progress=False)
    assert [p.path for p in report.problems] == [str(target)]
    assert "posix.system" in report.problems[0].message
    assert not marker.exists()


class RunsAShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))
