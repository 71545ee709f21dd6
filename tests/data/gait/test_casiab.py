import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from metareid.data.gait.casiab import (
    TYPES,
    VIEWS,
    CasiaBDataset,
    TreeLayoutError,
    load_partition,
    read_silhouettes,
)


def write_sequence(root: Path, subject: str, type_name: str, view: str, array) -> Path:
    folder = root / subject / type_name / view
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{view}.pkl"
    with open(path, "wb") as handle:
        pickle.dump(array, handle)
    return path


def frames(length: int, value: int = 255) -> np.ndarray:
    return np.full((length, 64, 64), value, dtype=np.uint8)


def write_partition(path: Path, train, test) -> Path:
    path.write_text(json.dumps({"TRAIN_SET": list(train), "TEST_SET": list(test)}))
    return path


TINY_TYPES = ("nm-01", "bg-01")
TINY_VIEWS = ("000", "090")


@pytest.fixture
def tree(tmp_path):
    """Subjects 001, 002 (train) and 003 (test), 2 types x 2 views, lengths 3..14."""
    root = tmp_path / "casiab"
    length = 3
    for subject in ("001", "002", "003"):
        for type_name in TINY_TYPES:
            for view in TINY_VIEWS:
                write_sequence(root, subject, type_name, view, frames(length, value=length))
                length += 1
    partition = write_partition(tmp_path / "partition.json", ["001", "002"], ["003"])
    return root, partition


def make(tree, **kwargs):
    root, partition = tree
    options = dict(expected_types=TINY_TYPES, expected_views=TINY_VIEWS)
    options.update(kwargs)
    return CasiaBDataset(root, partition, **options)


def test_bundled_partitions():
    with_005 = load_partition("CASIA-B_include_005.json")
    assert with_005.train == tuple(f"{i:03d}" for i in range(1, 75))
    assert with_005.test == tuple(f"{i:03d}" for i in range(75, 125))
    without = load_partition("CASIA-B.json")
    assert len(without.train) == 73 and "005" not in without.train
    assert set(without.train) | {"005"} == set(with_005.train)
    assert without.test == with_005.test


def test_constants():
    assert len(TYPES) == 10 and TYPES[6:] == ("bg-01", "bg-02", "cl-01", "cl-02")
    assert VIEWS == ("000", "018", "036", "054", "072", "090", "108", "126", "144", "162", "180")


def test_reads_train_split_fields_and_items(tree):
    dataset = make(tree, split="train")
    assert len(dataset) == 8
    assert dataset.label_set == ["001", "002"]
    assert dataset.labels == [0, 0, 0, 0, 1, 1, 1, 1]
    assert dataset.indices_by_label == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    assert [(r.subject, r.type, r.view) for r in dataset.samples[:3]] == [
        ("001", "bg-01", "000"),
        ("001", "bg-01", "090"),
        ("001", "nm-01", "000"),
    ]
    item = dataset[5]  # 002 / bg-01 / 090, the 8th file written -> 10 frames of value 10
    assert item["sils"].dtype == np.uint8 and item["sils"].shape == (10, 64, 64)
    assert int(item["sils"][0, 0, 0]) == 10
    assert (item["label"], item["subject"], item["index"]) == (1, 2, 5)
    assert item["type_index"] == TYPES.index("bg-01") == 6
    assert item["view_index"] == VIEWS.index("090") == 5
    assert dataset.missing_ids == [] and dataset.missing_sequences == []


def test_test_split_labels_start_at_zero(tree):
    dataset = make(tree, split="test")
    assert dataset.label_set == ["003"] and set(dataset.labels) == {0}
    assert dataset[0]["subject"] == 3


def test_missing_ids_and_empty_view_dirs_are_reported(tree, caplog):
    root, _ = tree
    partition = write_partition(root.parent / "more.json", ["001", "002", "050"], ["003"])
    for view_file in (root / "002" / "nm-01" / "090").iterdir():
        view_file.unlink()  # leaves an empty view directory
    with caplog.at_level(logging.WARNING):
        dataset = CasiaBDataset(
            root, partition, expected_types=TINY_TYPES, expected_views=TINY_VIEWS
        )
    assert dataset.missing_ids == ["050"]
    assert dataset.missing_sequences == [("002", "nm-01", "090")]
    assert len(dataset) == 7
    assert "050" in caplog.text and "1 sequences missing" in caplog.text


def test_expected_sequences_default_to_what_the_split_contains(tree):
    root, partition = tree
    (root / "002" / "cl-01" / "180").mkdir(parents=True)  # an empty view directory
    dataset = CasiaBDataset(root, partition)
    # Conditions seen: nm-01, bg-01, cl-01; views seen: 000, 090, 180.
    absent = [
        ("nm-01", "180"),
        ("bg-01", "180"),
        ("cl-01", "000"),
        ("cl-01", "090"),
        ("cl-01", "180"),
    ]
    assert dataset.missing_sequences == [(s, t, v) for s in ("001", "002") for t, v in absent]
    full = CasiaBDataset(root, partition, expected_types=TYPES, expected_views=VIEWS)
    assert len(full.missing_sequences) == 2 * (10 * 11 - 4)


def corrupt(path: Path) -> None:
    path.write_bytes(b"\x80\x04not a pickle at all")


def empty(path: Path) -> None:
    path.write_bytes(b"")


def wrong_shape(path: Path) -> None:
    path.write_bytes(pickle.dumps(np.zeros((5, 64, 44), dtype=np.uint8)))


def wrong_dtype(path: Path) -> None:
    path.write_bytes(pickle.dumps(np.zeros((5, 64, 64), dtype=np.float32)))


def no_frames(path: Path) -> None:
    path.write_bytes(pickle.dumps(np.zeros((0, 64, 64), dtype=np.uint8)))


def not_an_array(path: Path) -> None:
    path.write_bytes(pickle.dumps([1, 2, 3]))


BREAKERS = {
    corrupt: "cannot unpickle",
    empty: "empty or truncated",
    wrong_shape: "expected shape [T, 64, 64], got [5, 64, 44]",
    wrong_dtype: "expected dtype uint8, got float32",
    no_frames: "no frames",
    not_an_array: "expected a pickled numpy array",
}


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__)
def test_bad_pkl_raises_naming_the_file(tree, breaker):
    root, _ = tree
    path = root / "002" / "nm-01" / "000" / "000.pkl"
    breaker(path)
    with pytest.raises(ValueError) as error:
        make(tree)
    assert str(path) in str(error.value)
    assert BREAKERS[breaker] in str(error.value)
    assert "data.strict=false" in str(error.value)


def test_non_strict_skips_and_counts_bad_files(tree):
    root, _ = tree
    broken = []
    for breaker, (subject, type_name, view) in zip(
        (corrupt, empty, wrong_shape, wrong_dtype),
        [
            ("001", "nm-01", "000"),
            ("001", "bg-01", "090"),
            ("002", "nm-01", "090"),
            ("002", "bg-01", "000"),
        ],
        strict=True,
    ):
        path = root / subject / type_name / view / f"{view}.pkl"
        breaker(path)
        broken.append(path)
    dataset = make(tree, strict=False)
    assert sorted(p for p, _ in dataset.skipped) == sorted(broken)
    assert len(dataset) == 4
    assert dataset.labels == [0, 0, 1, 1]
    assert dataset.indices_by_label == {0: [0, 1], 1: [2, 3]}
    # Every remaining sample loads: nothing can fail mid-epoch.
    assert all(dataset[i]["sils"].shape[1:] == (64, 64) for i in range(len(dataset)))


def test_without_validation_a_bad_file_fails_when_loaded(tree):
    root, _ = tree
    path = root / "001" / "bg-01" / "000" / "000.pkl"
    empty(path)
    dataset = make(tree, validate=False)
    assert len(dataset) == 8
    with pytest.raises(ValueError, match="empty or truncated"):
        dataset[0]


def test_cache_keeps_arrays_in_memory(tree):
    root, _ = tree
    dataset = make(tree, cache=True)
    first = dataset[3]["sils"]
    for pkl in root.rglob("*.pkl"):
        pkl.unlink()
    assert dataset[3]["sils"] is first


def test_root_one_level_too_high(tree):
    root, partition = tree
    with pytest.raises(TreeLayoutError, match="one level too high") as error:
        CasiaBDataset(root.parent, partition)
    assert f"Set root to {root}" in str(error.value)


def test_root_one_level_too_low(tree):
    root, partition = tree
    with pytest.raises(TreeLayoutError, match="one level too low") as error:
        CasiaBDataset(root / "001", partition)
    assert f"Set root to {root}" in str(error.value)


def test_root_at_a_condition_or_view_directory(tree):
    root, partition = tree
    with pytest.raises(TreeLayoutError, match="two levels too low"):
        CasiaBDataset(root / "001" / "nm-01", partition)
    with pytest.raises(TreeLayoutError, match="three levels too low"):
        CasiaBDataset(root / "001" / "nm-01" / "000", partition)


def test_missing_condition_level(tmp_path):
    root = tmp_path / "flat"
    folder = root / "001" / "090"
    folder.mkdir(parents=True)
    (folder / "090.pkl").write_bytes(pickle.dumps(frames(3)))
    partition = write_partition(tmp_path / "p.json", ["001"], ["002"])
    with pytest.raises(TreeLayoutError, match="condition level is missing"):
        CasiaBDataset(root, partition)


def test_tree_one_level_too_deep(tree):
    root, _ = tree
    (root / "001" / "nm-01" / "000" / "frames").mkdir()
    with pytest.raises(TreeLayoutError, match="one level too deep"):
        make(tree)


def test_raw_png_tree_asks_for_pretreatment(tmp_path):
    folder = tmp_path / "raw" / "001" / "nm-01" / "000"
    folder.mkdir(parents=True)
    (folder / "001-nm-01-000-001.png").write_bytes(b"")
    partition = write_partition(tmp_path / "p.json", ["001"], ["002"])
    with pytest.raises(TreeLayoutError, match="pretreatment"):
        CasiaBDataset(tmp_path / "raw", partition)


def test_no_partition_id_on_disk(tree):
    root, _ = tree
    partition = write_partition(root.parent / "other.json", ["100", "101"], ["102"])
    with pytest.raises(TreeLayoutError, match="None of the 2 subject ids"):
        CasiaBDataset(root, partition)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"TRAIN_SET": ["001"]}, "no key 'TEST_SET'"),
        ({"TRAIN_SET": [1, 2], "TEST_SET": []}, "bad entries: \\[1, 2\\]"),
        ({"TRAIN_SET": ["001"], "TEST_SET": ["001"]}, "in both TRAIN_SET and TEST_SET"),
    ],
)
def test_partition_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as error:
        load_partition(path)
    assert str(path) in str(error.value)


def test_missing_partition_file_lists_bundled_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="CASIA-B_include_005.json"):
        load_partition(tmp_path / "nope.json")


def test_read_silhouettes_round_trip(tmp_path):
    path = write_sequence(tmp_path, "001", "nm-01", "000", frames(4, value=7))
    array = read_silhouettes(path)
    assert (
        array.shape == (4, 64, 64) and array.dtype == np.uint8 and int(array.sum()) == 7 * 4 * 4096
    )


def test_root_at_a_condition_directory_whose_views_look_like_ids(tmp_path):
    root = tmp_path / "casiab"
    for view in ("018", "036"):
        write_sequence(root, "001", "nm-01", view, frames(3))
    partition = write_partition(tmp_path / "p.json", ["018", "036"], ["054"])
    with pytest.raises(TreeLayoutError, match="two levels too low") as error:
        CasiaBDataset(root / "001" / "nm-01", partition)
    assert f"set root to {root}" in str(error.value)


class RunsAShellCommand:
    """Unpickling this calls ``os.system(command)`` (what a crafted dataset file can do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_malicious_pkl_is_refused_without_running_it(tree, tmp_path):
    root, _ = tree
    marker = tmp_path / "pwned"
    path = root / "002" / "nm-01" / "000" / "000.pkl"
    path.write_bytes(pickle.dumps(RunsAShellCommand(f"touch {marker}")))
    for load in (lambda: read_silhouettes(path), lambda: make(tree)):
        with pytest.raises(ValueError) as error:
            load()
        message = str(error.value)
        assert str(path) in message
        assert "posix.system" in message and "refused to unpickle" in message
    assert not marker.exists()


def test_arrays_of_every_pickle_protocol_still_load(tmp_path):
    array = np.arange(3 * 64 * 64, dtype=np.uint8).reshape(3, 64, 64)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(array, protocol=protocol))
        assert np.array_equal(read_silhouettes(path), array)
