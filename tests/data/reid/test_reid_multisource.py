from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from metareid.data.reid.dataset import ReIDImage
from metareid.data.reid.multisource import (
    MultiSourceTrainSet,
    ReIDTestSet,
    load_resized_image,
)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def constant_image(tmp_path: Path, name: str, value: int, size=(12, 6)) -> Path:
    return write_png(tmp_path / name, np.full((*size, 3), value))


@pytest.fixture
def three_domains(tmp_path):
    def records(domain, pid_cams):
        return [
            ReIDImage(constant_image(tmp_path, f"{domain}_{i}.png", 10 * i), pid, cam, domain)
            for i, (pid, cam) in enumerate(pid_cams)
        ]

    # pids are ordered as strings, as fast-reid sorts "<name>_<pid>" keys: "1" < "10" < "2"
    domain_a = records("A", [(2, 0), (10, 2), (1, 0), (2, 2)])
    domain_b = records("B", [(5, 1), (3, 1)])
    domain_c = records("C", [(7, 0), (7, 5)])
    return domain_a, domain_b, domain_c


def test_labels_are_domain_contiguous(three_domains):
    merged = MultiSourceTrainSet(three_domains, ["A", "B", "C"], image_size=(8, 4))
    assert merged.num_classes_per_domain == [3, 2, 1]
    assert merged.num_classes == 6
    assert merged.label_offsets == [0, 3, 5]
    # A: 1->0, 10->1, 2->2 ; B: 3->3, 5->4 ; C: 7->5
    assert merged.labels == [2, 1, 0, 2, 4, 3, 5, 5]
    # cameras relabelled the same way: A {0, 2} -> 0, 1 ; B {1} -> 2 ; C {0, 5} -> 3, 4
    assert merged.camids == [0, 1, 0, 1, 2, 2, 3, 4]
    assert merged.domain_ids == [0, 0, 0, 0, 1, 1, 2, 2]
    assert merged.num_cameras_per_domain == [2, 1, 2]


def test_domain_views_share_global_labels(three_domains):
    merged = MultiSourceTrainSet(three_domains, ["A", "B", "C"], image_size=(8, 4))
    views = merged.domain_views()
    assert [view.name for view in views] == ["A", "B", "C"]
    assert [len(view) for view in views] == [4, 2, 2]
    assert views[1].indices == [4, 5]
    assert views[1].labels == [4, 3]
    assert views[2].labels == [5, 5]
    item = views[1][1]
    assert item["label"].item() == 3 and item["domain_id"].item() == 1 and item["camid"].item() == 2
    with pytest.raises(ValueError, match="domain_id 3 out of range"):
        merged.domain_view(3)


def test_items_are_resized_uint8_with_metadata(three_domains):
    merged = MultiSourceTrainSet(three_domains, ["A", "B", "C"], image_size=(8, 4))
    item = merged[1]
    assert item["image"].shape == (3, 8, 4) and item["image"].dtype == torch.uint8
    # constant images stay constant through bicubic resizing
    assert torch.all(item["image"] == 10)
    assert (item["label"].item(), item["camid"].item(), item["domain_id"].item()) == (1, 1, 0)
    batch = next(iter(DataLoader(merged, batch_size=3)))
    assert batch["image"].shape == (3, 3, 8, 4)
    assert batch["label"].tolist() == [2, 1, 0]
    # batches name their images, so a failing training step can report them
    assert batch["path"] == [str(record.path) for record in three_domains[0][:3]]


def test_bad_construction_arguments(three_domains):
    with pytest.raises(ValueError, match="3 datasets but 2 names"):
        MultiSourceTrainSet(three_domains, ["A", "B"])
    with pytest.raises(ValueError, match="'B' \\(domain id 1\\) has no images"):
        MultiSourceTrainSet([three_domains[0], []], ["A", "B"])
    with pytest.raises(ValueError, match="image_size"):
        MultiSourceTrainSet(three_domains, ["A", "B", "C"], image_size=(8,))


def test_resize_keeps_range_and_antialiases(tmp_path):
    stripes = np.zeros((15, 15, 3))
    stripes[:, ::2] = 255
    path = write_png(tmp_path / "stripes.png", stripes)
    same = load_resized_image(path, (15, 15))
    assert torch.equal(same, torch.from_numpy(stripes.astype(np.uint8)).permute(2, 0, 1))
    # bicubic overshoots on a hard edge (to about -28 and 283 here); clamping keeps the dark
    # side dark and the bright side bright instead of wrapping around in the uint8 cast
    step = np.zeros((8, 8, 3))
    step[:, 4:] = 255
    enlarged = load_resized_image(write_png(tmp_path / "step.png", step), (8, 32))
    assert enlarged.dtype == torch.uint8 and enlarged.shape == (3, 8, 32)
    assert enlarged[:, :, :14].max() == 0
    assert enlarged[:, :, 18:].min() == 255
    # shrinking by 3 samples every third column; without antialiasing that gives pure 0/255
    # columns, with it every output pixel averages several stripes into a mid-grey
    shrunk = load_resized_image(path, (5, 5)).float()
    assert shrunk.min() > 100 and shrunk.max() < 155


def test_unreadable_image_names_the_file(tmp_path):
    broken = tmp_path / "0001_c1s1_000001_01.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="0001_c1s1_000001_01.jpg: cannot decode"):
        load_resized_image(broken, (8, 4))


def test_test_set_puts_query_first(three_domains):
    query = three_domains[1]
    gallery = three_domains[0]
    test_set = ReIDTestSet(query, gallery, image_size=(6, 4))
    assert len(test_set) == 6 and test_set.num_query == 2
    items = [test_set[i] for i in range(len(test_set))]
    assert [bool(item["is_query"]) for item in items] == [True, True, False, False, False, False]
    # dataset ids, not relabelled
    assert [int(item["pid"]) for item in items] == [5, 3, 2, 10, 1, 2]
    assert [int(item["camid"]) for item in items] == [1, 1, 0, 2, 0, 2]
    assert items[0]["image"].shape == (3, 6, 4)
    with pytest.raises(ValueError, match="non-empty query and gallery"):
        ReIDTestSet([], gallery)
