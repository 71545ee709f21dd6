import json
import pickle

import numpy as np
import pytest

from metareid.data.gait.casiab import CasiaBDataset
from metareid.data.gait.datamodule import GaitDataModule
from metareid.data.gait.packed import has_packed_store
from metareid.data.gait.synthetic import (
    CACHE_MANIFEST,
    MARKER_FILE,
    SEGMENTS,
    capsule_row_intervals,
    ensure_synthetic_casiab,
    generate_synthetic_casiab,
    main,
    render_silhouettes,
    synthetic_casiab_folder,
)

SUBJECTS = 8
TYPES = ("nm-01", "nm-02", "bg-01", "cl-01")
VIEWS = ("072", "090", "108")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_casiab")
    partition = generate_synthetic_casiab(
        root,
        num_subjects=SUBJECTS,
        train_subjects=5,
        views=[72, 90, 108],  # ints as Hydra passes them
        types=TYPES,
        frames=(12, 34),
        seed=0,
    )
    return root, partition


def load(root, subject, type_name, view):
    with open(root / f"{subject:03d}" / type_name / view / f"{view}.pkl", "rb") as handle:
        return pickle.load(handle)


def all_sequences(root):
    return {
        (s, t, v): load(root, s, t, v) for s in range(1, SUBJECTS + 1) for t in TYPES for v in VIEWS
    }


def test_layout_and_partition(generated):
    root, partition = generated
    assert partition == root / "partition.json"
    content = json.loads(partition.read_text())
    assert content == {
        "TRAIN_SET": ["001", "002", "003", "004", "005"],
        "TEST_SET": ["006", "007", "008"],
    }
    pkls = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.pkl"))
    assert len(pkls) == SUBJECTS * len(TYPES) * len(VIEWS)
    assert "003/bg-01/090/090.pkl" in pkls
    assert json.loads((root / MARKER_FILE).read_text())["views"] == list(VIEWS)


def test_silhouettes_look_pretreated(generated):
    root, _ = generated
    sequences = all_sequences(root)
    lengths = [len(a) for a in sequences.values()]
    assert min(lengths) >= 12 and max(lengths) <= 34 and len(set(lengths)) > 10
    assert sum(n < 30 for n in lengths) > 10
    for array in list(sequences.values())[::7]:
        assert array.dtype == np.uint8 and array.shape[1:] == (64, 64)
        assert set(np.unique(array).tolist()) == {0, 255}
        rows = array.any(axis=2)
        # Height-normalised: every frame spans the full 64 rows.
        assert rows[:, 0].all() and rows[:, -1].all()
        # Centred: the column-mass median sits at column 32 (±1 for mass cut at the border).
        mass = (array > 0).sum(axis=1).cumsum(axis=1)
        median = np.argmax(mass > mass[:, -1:] / 2, axis=1)
        assert np.all(np.abs(median - 32) <= 1)


def test_dataset_reads_the_generated_tree(generated):
    root, partition = generated
    train = CasiaBDataset(
        root, partition, split="train", expected_types=TYPES, expected_views=VIEWS
    )
    test = CasiaBDataset(root, partition, split="test", expected_types=TYPES, expected_views=VIEWS)
    assert len(train) == 5 * len(TYPES) * len(VIEWS) and len(test) == 3 * len(TYPES) * len(VIEWS)
    assert train.missing_ids == [] and train.missing_sequences == [] and train.skipped == []
    item = test[0]
    assert item["subject"] == 6 and item["sils"].shape[1:] == (64, 64)


def test_identity_is_recoverable_across_views(generated):
    """Nearest neighbour on gait energy images (mean frames), probe and gallery at different
    views 18-36 degrees apart, must beat chance (1/8) by a wide margin."""
    root, _ = generated
    energy = {
        key: a.astype(np.float32).mean(0).ravel() / 255 for key, a in all_sequences(root).items()
    }
    subjects = np.arange(1, SUBJECTS + 1)

    def accuracy(probe_type):
        hits = []
        for probe_view in VIEWS:
            for gallery_view in VIEWS:
                if gallery_view == probe_view:
                    continue
                gallery = np.stack([energy[(s, "nm-01", gallery_view)] for s in subjects])
                for s in subjects:
                    distance = ((gallery - energy[(s, probe_type, probe_view)]) ** 2).sum(1)
                    hits.append(subjects[distance.argmin()] == s)
        return np.mean(hits)

    assert accuracy("nm-02") >= 0.7
    assert accuracy("bg-01") >= 0.5
    assert accuracy("cl-01") >= 0.4


def test_sequences_depend_only_on_seed_subject_type_and_view(generated, tmp_path):
    root, _ = generated
    smaller = generate_synthetic_casiab(
        tmp_path / "small",
        num_subjects=3,
        train_subjects=1,
        views=["090"],
        types=["bg-01"],
        frames=(12, 34),
        seed=0,
    ).parent
    assert np.array_equal(load(smaller, 3, "bg-01", "090"), load(root, 3, "bg-01", "090"))
    other_seed = generate_synthetic_casiab(
        tmp_path / "other",
        num_subjects=3,
        train_subjects=1,
        views=["090"],
        types=["bg-01"],
        frames=(12, 34),
        seed=1,
    ).parent
    assert not np.array_equal(load(other_seed, 3, "bg-01", "090"), load(root, 3, "bg-01", "090"))


def test_conditions_change_the_silhouette(generated):
    root, _ = generated
    area = {t: np.mean([load(root, s, t, "090").mean() for s in range(1, 9)]) for t in TYPES}
    # Coats and bags add area; two normal walks of the same people have about the same.
    assert area["cl-01"] > 1.1 * area["nm-01"]
    assert area["bg-01"] > 1.03 * area["nm-01"]
    assert abs(area["nm-02"] - area["nm-01"]) < 0.03 * area["nm-01"]


def test_render_capsules_by_hand():
    """An upright capsule (torso, z 0.2..0.8, radius 0.2: height 1 -> 64 px per unit) plus a
    horizontal one pointing forward (y 0..0.3 at z 0.5, radius 0.05)."""
    starts = np.zeros((3, len(SEGMENTS), 3))
    ends = np.zeros((3, len(SEGMENTS), 3))
    radii = np.zeros((3, len(SEGMENTS)))
    torso, foot = SEGMENTS.index("torso_centre"), SEGMENTS.index("foot_left")
    starts[:, torso], ends[:, torso], radii[:, torso] = (0, 0, 0.2), (0, 0, 0.8), 0.2
    starts[:, foot], ends[:, foot], radii[:, foot] = (0, 0, 0.5), (0, 0.3, 0.5), 0.05
    frames = render_silhouettes(starts, ends, radii, np.deg2rad([0.0, 90.0, 180.0]))
    assert frames.shape == (3, 64, 64) and frames.dtype == np.uint8
    # Row 32 (z = 0.49): front and back see the torso's 0.4 units = 25.6 px; the side view sees
    # -0.2..0.35 units = 35.2 px, so 26 and 35 pixel centres.
    assert (frames[:, 32] > 0).sum(axis=1).tolist() == [26, 35, 26]
    # The forward capsule points the same way, so front and back views are identical.
    assert np.array_equal(frames[0], frames[2])
    # Top row (z = 1 - 0.5/64) crosses the cap of radius 0.2 over ±0.0553 units = ±3.54 px.
    assert (frames[:, 0] > 0).sum(axis=1).tolist() == [8, 8, 8]
    # Symmetric front view: the 26 columns sit around the centre column 32.
    assert np.nonzero(frames[0, 32])[0].tolist() == list(range(19, 45))


def test_refuses_foreign_directories_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_casiab(foreign, num_subjects=2, train_subjects=1)
    assert (foreign / "data.txt").read_text() == "keep me"

    own = tmp_path / "own"
    options = dict(views=["000"], types=["nm-01"], frames=(3, 4))
    generate_synthetic_casiab(own, num_subjects=3, train_subjects=1, **options)
    generate_synthetic_casiab(own, num_subjects=2, train_subjects=1, **options)
    assert sorted(p.name for p in own.iterdir() if p.is_dir()) == ["001", "002"]


def test_rejects_unknown_views_and_types(tmp_path):
    with pytest.raises(ValueError, match="'045' is not a CASIA-B view"):
        generate_synthetic_casiab(tmp_path / "a", views=["045"])
    with pytest.raises(ValueError, match="CASIA-B conditions"):
        generate_synthetic_casiab(tmp_path / "b", types=["nm-07"])
    with pytest.raises(ValueError, match="train_subjects"):
        generate_synthetic_casiab(tmp_path / "c", num_subjects=4, train_subjects=4)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    partition = main(
        [
            "--out",
            str(out),
            "--num-subjects",
            "2",
            "--train-subjects",
            "1",
            "--views",
            "090",
            "--types",
            "nm-01",
            "cl-02",
            "--frames",
            "5",
            "6",
            "--seed",
            "3",
        ]
    )
    assert partition.is_file() and "wrote 4 sequences" in capsys.readouterr().out
    assert len(load(out, 2, "cl-02", "090")) in (5, 6)


def test_capsule_row_intervals_match_brute_force_distances():
    rng = np.random.default_rng(0)
    count = 40
    au, az, bu, bz = rng.uniform(0, 20, size=(4, count))
    radius = rng.uniform(0.5, 4, size=count)
    bu[:5], bz[:5] = au[:5], az[:5]  # degenerate: a disc
    bz[5:10] = az[5:10]  # horizontal
    bu[10:15] = au[10:15]  # vertical
    shape = (count, 1, 1)
    rows = np.linspace(-5, 25, 61)
    left, right = capsule_row_intervals(
        *(np.float32(v).reshape(shape) for v in (au, az, bu, bz, radius)),
        rows.astype(np.float32).reshape(1, -1, 1),
    )
    grid = np.linspace(-10, 30, 4001)
    # Distance from every (grid u, row) point to every segment.
    point_u, point_z = grid[None, None, :], rows[None, :, None]
    du, dz = (bu - au)[:, None, None], (bz - az)[:, None, None]
    t = ((point_u - au[:, None, None]) * du + (point_z - az[:, None, None]) * dz) / np.maximum(
        du**2 + dz**2, 1e-12
    )
    t = np.clip(t, 0, 1)
    distance = np.hypot(point_u - au[:, None, None] - t * du, point_z - az[:, None, None] - t * dz)
    inside = distance <= radius[:, None, None]
    for capsule in range(count):
        for row in range(len(rows)):
            covered = grid[inside[capsule, row]]
            lo, hi = left[capsule, row, 0], right[capsule, row, 0]
            if covered.size == 0:
                assert not lo <= hi or hi - lo < 0.02
            else:
                assert abs(lo - covered.min()) < 0.02 and abs(hi - covered.max()) < 0.02


TINY = dict(num_subjects=3, train_subjects=2, views=["000"], types=["nm-01"], frames=(3, 4))


def test_cache_keeps_one_folder_per_setting_and_reuses_it(tmp_path, monkeypatch):
    import metareid.data.gait.synthetic as synthetic

    cache = tmp_path / "cache"
    first = ensure_synthetic_casiab(cache, **TINY)
    other = ensure_synthetic_casiab(cache, **{**TINY, "seed": 1})
    assert first != other and first.parent == other.parent == cache
    assert has_packed_store(first) and (other / "partition.json").is_file()
    manifest = json.loads((cache / CACHE_MANIFEST).read_text())
    assert manifest["datasets"][first.name]["seed"] == 0
    assert manifest["datasets"][other.name]["seed"] == 1
    # Going back to the first setting reuses its folder: nothing is generated again.
    stamp = (first / "001" / "nm-01" / "000" / "000.pkl").stat().st_mtime_ns

    def must_not_generate(*args, **kwargs):
        raise AssertionError("regenerated a cached setting")

    monkeypatch.setattr(synthetic, "generate_synthetic_casiab", must_not_generate)
    assert ensure_synthetic_casiab(cache, **TINY) == first
    assert (first / "001" / "nm-01" / "000" / "000.pkl").stat().st_mtime_ns == stamp
    # Defaults spelled out are the same setting.
    assert synthetic_casiab_folder(cache, **TINY, seed=0) == first


def test_mistyped_root_with_foreign_data_is_refused_untouched(tmp_path):
    real = tmp_path / "CASIA-B-pkl"
    (real / "001").mkdir(parents=True)
    (real / "partition.json").write_text("{}")
    before = sorted(p.relative_to(real) for p in real.rglob("*"))
    with pytest.raises(FileExistsError, match="holds no synthetic_casiab_cache.json"):
        ensure_synthetic_casiab(real, **TINY)
    assert sorted(p.relative_to(real) for p in real.rglob("*")) == before
    with pytest.raises(ValueError, match="unknown generator setting"):
        ensure_synthetic_casiab(tmp_path / "new", num_subject=3)


def test_datamodule_reads_the_settings_folder(tmp_path):
    datamodule = GaitDataModule(str(tmp_path / "cache"), synthetic=TINY, p=2, k=2, num_workers=0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.root == synthetic_casiab_folder(tmp_path / "cache", **TINY)
    assert datamodule.train_set.format == "packed" and len(datamodule.train_set) == 2
