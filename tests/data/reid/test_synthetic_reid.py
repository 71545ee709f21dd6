import json

import numpy as np
import pytest
from PIL import Image

from metareid.data.reid.dataset import MARKET_FILENAME_PATTERN
from metareid.data.reid.market1501 import SyntheticReID
from metareid.data.reid.synthetic import MANIFEST_NAME, generate_synthetic_reid, main

DOMAINS = ("synA", "synB", "synC", "synD")


@pytest.fixture(scope="module")
def four_domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_reid")
    roots = generate_synthetic_reid(
        root,
        domains=DOMAINS,
        ids_per_domain=24,
        cameras=3,
        images_per_id_per_camera=2,
        size=(64, 32),
        seed=0,
    )
    return root, roots


def small_tree(root, **overrides):
    options = dict(
        domains=("synA", "synX"),
        ids_per_domain=6,
        cameras=3,
        images_per_id_per_camera=2,
        size=(32, 16),
        distractors_per_domain=2,
        junk_per_domain=1,
    )
    options.update(overrides)
    return generate_synthetic_reid(root, **options)


def test_layout_counts_and_names(tmp_path):
    roots = small_tree(tmp_path)
    assert roots == {"synA": tmp_path / "synA", "synX": tmp_path / "synX"}
    for domain, domain_root in roots.items():
        files = {
            folder: sorted(p.name for p in (domain_root / folder).iterdir())
            for folder in ("bounding_box_train", "query", "bounding_box_test")
        }
        # train: 3 ids x 3 cams x 2; query: 3 test ids x 1 per camera;
        # gallery: the other 9 test images + 2 distractors + 1 junk
        assert [len(names) for names in files.values()] == [18, 9, 9 + 2 + 1]
        for names in files.values():
            assert all(MARKET_FILENAME_PATTERN.match(name) for name in names)
        assert sum(name.startswith("-1_c") for name in files["bounding_box_test"]) == 1
        manifest = json.loads((domain_root / MANIFEST_NAME).read_text())
        assert manifest["counts"] == {"bounding_box_train": 18, "query": 9, "bounding_box_test": 12}

        dataset = SyntheticReID(domain_root)
        assert dataset.name == domain
        train_ids = {r.pid for r in dataset.train}
        test_ids = {r.pid for r in dataset.query}
        assert train_ids == {1, 2, 3} and test_ids == {4, 5, 6}
        assert {r.pid for r in dataset.gallery} == {0, 4, 5, 6}
        assert len(dataset.gallery) == 11  # junk dropped
        assert {r.camid for r in dataset.train} == {0, 1, 2}
        with Image.open(dataset.train[0].path) as image:
            assert image.size == (16, 32) and image.mode == "RGB"


def test_single_image_per_camera_keeps_a_cross_camera_gallery(tmp_path):
    dataset = SyntheticReID(small_tree(tmp_path, images_per_id_per_camera=1)["synA"])
    assert {r.camid for r in dataset.query} == {0}
    assert {(r.pid, r.camid) for r in dataset.gallery if r.pid} == {
        (pid, cam) for pid in (4, 5, 6) for cam in (1, 2)
    }


def test_seeded_and_reused(tmp_path):
    first = small_tree(tmp_path / "a", seed=1)["synA"]
    again = small_tree(tmp_path / "b", seed=1)["synA"]
    other = small_tree(tmp_path / "c", seed=2)["synA"]
    name = "0001_c1s1_000000_01.jpg"
    image_bytes = (first / "bounding_box_train" / name).read_bytes()
    assert image_bytes == (again / "bounding_box_train" / name).read_bytes()
    assert image_bytes != (other / "bounding_box_train" / name).read_bytes()

    marker = first / "bounding_box_train" / name
    marker.write_bytes(b"untouched")
    small_tree(tmp_path / "a", seed=1)  # same arguments: reused, nothing rewritten
    assert marker.read_bytes() == b"untouched"

    with pytest.raises(FileExistsError, match="overwrite=True"):
        small_tree(tmp_path / "a", seed=1, ids_per_domain=4)
    small_tree(tmp_path / "a", seed=1, ids_per_domain=4, overwrite=True)
    assert len(list((first / "bounding_box_train").iterdir())) == 2 * 3 * 2


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="cameras must be between 2 and 9"):
        generate_synthetic_reid(tmp_path, cameras=10)
    with pytest.raises(ValueError, match="leaves 0 training and 1 test identities"):
        generate_synthetic_reid(tmp_path, ids_per_domain=1)


def band_colour_descriptor(path) -> np.ndarray:
    """Mean colour of six horizontal bands of the central crop, after standardising each channel
    over the crop (which cancels most of a camera's colour cast and exposure)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)[6:-2, 10:-10]
    pixels = (pixels - pixels.mean((0, 1))) / (pixels.std((0, 1)) + 1e-6)
    return np.concatenate([band.mean((0, 1)) for band in np.array_split(pixels, 6, axis=0)])


def test_identity_is_recognisable_across_cameras(four_domains):
    """Nearest neighbour on a hand-made colour descriptor, no training, Market protocol (same-camera
    matches excluded): far above chance in every domain, including one never trained on."""
    root, _ = four_domains
    for domain in DOMAINS:
        dataset = SyntheticReID(root, domain=domain)
        query = np.stack([band_colour_descriptor(r.path) for r in dataset.query])
        gallery = np.stack([band_colour_descriptor(r.path) for r in dataset.gallery])
        query_pid = np.array([r.pid for r in dataset.query])
        gallery_pid = np.array([r.pid for r in dataset.gallery])
        same_view = (query_pid[:, None] == gallery_pid[None]) & (
            np.array([r.camid for r in dataset.query])[:, None]
            == np.array([r.camid for r in dataset.gallery])[None]
        )
        distance = ((query[:, None] - gallery[None]) ** 2).sum(-1)
        distance[same_view] = np.inf
        rank1 = np.mean(gallery_pid[distance.argmin(1)] == query_pid)
        chance = 1 / len(set(query_pid))
        assert rank1 > 5 * chance, (domain, rank1)


def test_domains_differ_in_style(four_domains):
    """Image colour statistics identify the domain almost perfectly (nearest centroid)."""
    root, _ = four_domains
    features, labels = [], []
    for label, domain in enumerate(DOMAINS):
        for record in SyntheticReID(root, domain=domain).train:
            with Image.open(record.path) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
            features.append(np.concatenate([pixels.mean(0), pixels.std(0)]))
            labels.append(label)
    features, labels = np.array(features), np.array(labels)
    fit = np.arange(len(labels)) % 2 == 0
    centroids = np.stack([features[fit & (labels == d)].mean(0) for d in range(len(DOMAINS))])
    predicted = ((features[~fit, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.mean(predicted == labels[~fit]) > 0.9


def test_command_line(tmp_path, capsys):
    roots = main(
        ["--out", str(tmp_path), "--domains", "synC", "--ids-per-domain", "4", "--cameras", "2"]
        + ["--images-per-id-per-camera", "1", "--height", "32", "--width", "16"]
    )
    assert list(roots) == ["synC"]
    printed = capsys.readouterr().out
    assert "synC" in printed and "bounding_box_train 4" in printed and "query 2" in printed


def test_cache_by_settings_keeps_each_setting_in_its_own_folder(tmp_path, monkeypatch):
    import metareid.data.reid.synthetic as synthetic

    tiny = dict(domains=("synA",), ids_per_domain=4, cameras=2, images_per_id_per_camera=1)
    first = small_tree(tmp_path, cache_by_settings=True, **tiny)["synA"]
    other = small_tree(tmp_path, cache_by_settings=True, **tiny, seed=1)["synA"]
    assert first.parent != other.parent and first.parent.parent == other.parent.parent == tmp_path
    files = sorted(p.name for p in first.rglob("*.jpg"))
    stamp = max(p.stat().st_mtime_ns for p in first.rglob("*.jpg"))
    cache = json.loads((tmp_path / synthetic.CACHE_MANIFEST).read_text())
    assert {s["seed"] for s in cache["folders"].values()} == {0, 1}
    # The first setting again: reused as is, nothing rendered.
    monkeypatch.setattr(synthetic, "_write_domain", lambda *a, **k: pytest.fail("regenerated"))
    again = small_tree(tmp_path, cache_by_settings=True, **tiny)["synA"]
    assert again == first and sorted(p.name for p in first.rglob("*.jpg")) == files
    assert max(p.stat().st_mtime_ns for p in first.rglob("*.jpg")) == stamp
    options = {**tiny, "distractors_per_domain": 2, "junk_per_domain": 1, "size": (32, 16)}
    assert synthetic.synthetic_reid_folder(tmp_path, **options) == first.parent


def test_cache_root_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "Market-1501").mkdir()
    with pytest.raises(FileExistsError, match="holds no synthetic_reid_cache.json"):
        small_tree(tmp_path, cache_by_settings=True)
    assert [p.name for p in tmp_path.iterdir()] == ["Market-1501"]


def test_datamodule_entries_point_at_the_settings_folder(tmp_path):
    from metareid.data.reid.synthetic import cached_domain_entries, synthetic_reid_folder

    synthetic = {"root": str(tmp_path), "ids_per_domain": 6, "seed": 3}
    entries = [
        {"name": "synthetic", "root": str(tmp_path), "domain": "synA"},
        {"name": "synthetic", "root": str(tmp_path / "synD")},
        {"root": "/x"},
    ]
    redirected = cached_domain_entries(synthetic, entries)
    folder = synthetic_reid_folder(tmp_path, ids_per_domain=6, seed=3)
    assert redirected == [
        {**entries[0], "root": str(folder)},
        {**entries[1], "root": str(folder / "synD")},
        {"root": "/x"},
    ]
