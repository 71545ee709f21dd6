"""Writers of tiny raw releases in the real layouts (the fixtures in conftest.py call them).

Nothing is downloaded: a few identities with a few frames/images each, in the exact folder
structure and file naming of every official release.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

FRAME_SHAPE = (48, 64)  # height, width of fabricated silhouettes (the release uses 240×320)
CASIAB_PARTITION = {"TRAIN_SET": ["001", "002"], "TEST_SET": ["003"]}
CASIAB_TYPES = ("nm-01", "nm-02")
CASIAB_VIEWS = ("000", "018")
FRAMES_PER_SEQUENCE = 3
# This sequence only has near-empty frames, so pretreatment must drop it.
EMPTY_SEQUENCE = ("003", "nm-02", "018")


def silhouette(shift: int = 0, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """A standing 'person': a 30-row × 10-column white block, ``shift`` columns right of 24."""
    frame = np.zeros(shape, dtype=np.uint8)
    frame[8:38, 24 + shift : 34 + shift] = 255
    return frame


def near_empty(shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """39 white pixels: sum 9,945 ≤ 10,000, dropped by the pretreatment."""
    frame = np.zeros(shape, dtype=np.uint8)
    frame.flat[:39] = 255
    return frame


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def save_jpeg(path: Path, seed: int, size: tuple[int, int] = (16, 8)) -> None:
    """A small RGB crop (``size`` = width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_casiab_raw(parent: Path) -> Path:
    """3 subjects × 2 types × 2 views × 3 frames; ``EMPTY_SEQUENCE`` has only near-empty frames."""
    raw = parent / "CASIA-B"
    for subject in ("001", "002", "003"):
        for condition in CASIAB_TYPES:
            for view in CASIAB_VIEWS:
                folder = raw / subject / condition / view
                for frame in range(1, FRAMES_PER_SEQUENCE + 1):
                    if (subject, condition, view) == EMPTY_SEQUENCE:
                        pixels = near_empty()
                    else:
                        pixels = silhouette(shift=frame)
                    save_png(folder / f"{subject}-{condition}-{view}-{frame:03d}.png", pixels)
    return raw


def write_casiab_partition_file(parent: Path) -> Path:
    path = parent / "partition.json"
    path.write_text(json.dumps(CASIAB_PARTITION))
    return path


def write_oumvlp_raw(parent: Path) -> Path:
    """Subjects 00001 (train) and 00002 (test), views 000/015, sequences 00/01, 2 frames."""
    raw = parent / "OUMVLP-raw"
    for view in ("000", "015"):
        for seq in ("00", "01"):
            for subject in ("00001", "00002"):
                for frame in (1, 2):
                    path = raw / f"Silhouette_{view}-{seq}" / subject / f"{frame:04d}.png"
                    save_png(path, silhouette(shift=frame))
    return raw


def write_grew_raw(parent: Path) -> Path:
    """GREW: 2 training subjects, 1 gallery subject with 2 sequences, 2 probe sequences."""
    raw = parent / "GREW"
    rng = np.random.default_rng(0)

    def sequence(folder: Path) -> None:
        for frame in (1, 2):
            save_png(folder / f"{frame:05d}_sil.png", rng.integers(0, 2, (64, 64), np.uint8) * 255)
        save_png(folder / "x_gei.png", np.full((64, 64), 128, np.uint8))

    for subject, seq in (("00001", "4XPn5Z28"), ("00002", "5TXe8svE")):
        sequence(raw / "train" / subject / seq)
    for seq in ("79XJefi8", "t16VLaQf"):
        sequence(raw / "test" / "gallery" / "00001" / seq)
    for seq in ("etaGVnWf", "eT1EXpgZ"):
        sequence(raw / "test" / "probe" / seq)
    return raw


# --------------------------------------------------------------------------- ReID releases
MARKET_FILES = {
    # split folder → file names (pid, camera, ...); -1 is junk, 0000 a distractor
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000301_01.jpg",
        "0007_c3s1_000101_01.jpg",
    ],
    "query": ["0010_c1s1_001051_00.jpg", "0011_c6s1_000101_00.jpg"],
    "bounding_box_test": [
        "0010_c2s1_001101_01.jpg",
        "0011_c5s1_000151_02.jpg",
        "0000_c1s1_000001_01.jpg",
        "-1_c1s1_000002_01.jpg",
    ],
}


def write_market_raw(parent: Path) -> Path:
    raw = parent / "Market-1501-v15.09.15"
    seed = 0
    for folder, names in MARKET_FILES.items():
        for name in names:
            save_jpeg(raw / folder / name, seed)
            seed += 1
        (raw / folder / "Thumbs.db").write_bytes(b"\x00thumbnail cache")
    save_jpeg(raw / "images" / "0000_c3s2_000001_01.jpg", 99)
    return raw


DUKE_FILES = {
    "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0046200.jpg"],
    "query": ["0005_c1_f0000001.jpg"],
    "bounding_box_test": ["0005_c7_f0000002.jpg", "0006_c3_f0000003.jpg"],
}


def write_duke_raw(parent: Path) -> Path:
    raw = parent / "DukeMTMC-reID"
    for seed, (folder, name) in enumerate(
        (folder, name) for folder, names in DUKE_FILES.items() for name in names
    ):
        save_jpeg(raw / folder / name, seed)
    return raw


MSMT17_LISTS = {
    "list_train.txt": [
        "0000/0000_000_01_0303morning_0015_0.jpg 0",
        "0001/0001_003_15_0303noon_0002_1.jpg 1",
    ],
    "list_val.txt": ["0001/0001_004_02_0303noon_0003_0.jpg 1"],
    "list_query.txt": ["0000/0000_000_03_0113morning_0001_0.jpg 0"],
    "list_gallery.txt": [
        "0000/0000_001_04_0113morning_0002_0.jpg 0",
        "0001/0001_000_05_0113noon_0003_0.jpg 1",
    ],
}


def write_msmt17(raw: Path, train_folder: str, test_folder: str) -> Path:
    seed = 0
    for list_name, lines in MSMT17_LISTS.items():
        folder = train_folder if list_name in ("list_train.txt", "list_val.txt") else test_folder
        for line in lines:
            save_jpeg(raw / folder / line.split()[0], seed)
            seed += 1
        (raw / list_name).write_text("\n".join(lines) + "\n")
    return raw


# CUHK03: 2 camera pairs × 2 persons × 10 shots; person 2 of each pair misses shots 5 and 10.
CUHK03_PAIRS, CUHK03_PERSONS = 2, 2
CUHK03_MISSING = {(person, shot) for person in (1,) for shot in (4, 9)}


def cuhk03_image(boxes: str, pair: int, person: int, shot: int) -> np.ndarray:
    """Distinct H×W×3 pixels per crop, so tests can check which crop landed where."""
    value = (40 * pair + 10 * person + shot + (100 if boxes == "detected" else 0)) % 256
    image = np.full((12, 6, 3), value, dtype=np.uint8)
    image[0, 0] = (1, 2, 3)  # an asymmetric pixel catches transposition mistakes
    return image


def write_cuhk03_mat(path: Path, box_types=("labeled", "detected")) -> None:
    """MATLAB v7.3 layout: cells are datasets of object references, arrays stored transposed."""
    with h5py.File(path, "w") as mat:
        store = mat.create_group("#refs#")
        counter = iter(range(10**6))

        def ref(data: np.ndarray, dtype=None) -> h5py.Reference:
            return store.create_dataset(f"r{next(counter)}", data=data, dtype=dtype).ref

        for boxes in box_types:
            pairs = []
            for pair in range(CUHK03_PAIRS):
                cell = np.empty((10, CUHK03_PERSONS), dtype=h5py.ref_dtype)
                for person in range(CUHK03_PERSONS):
                    for shot in range(10):
                        if (person, shot) in CUHK03_MISSING:
                            data = np.zeros(2, dtype=np.uint64)  # MATLAB's empty-cell marker
                        else:
                            data = cuhk03_image(boxes, pair, person, shot).T
                        cell[shot, person] = ref(data)
                pairs.append(ref(cell, dtype=h5py.ref_dtype))
            mat.create_dataset(boxes, data=np.array([pairs], dtype=h5py.ref_dtype))


def cuhk03_names() -> list[str]:
    names = []
    for pair in range(CUHK03_PAIRS):
        for person in range(CUHK03_PERSONS):
            for shot in range(10):
                if (person, shot) not in CUHK03_MISSING:
                    view = 1 if shot < 5 else 2
                    names.append(f"{pair + 1}_{person + 1:03d}_{view}_{shot + 1:02d}.png")
    return names


def write_cuhk03_config(path: Path, drop_field: str | None = None) -> None:
    """New-protocol config: persons of pair 1 train, persons of pair 2 test (query = shots 1, 6)."""
    names = cuhk03_names()
    labels = [int(n[0]) * 100 + int(n[2:5]) for n in names]  # unique id per (pair, person)
    cameras = [int(n[6]) for n in names]
    train = [i + 1 for i, n in enumerate(names) if n.startswith("1_")]
    query = [i + 1 for i, n in enumerate(names) if n.startswith("2_") and n[8:10] in ("01", "06")]
    gallery = [i + 1 for i, n in enumerate(names) if n.startswith("2_") and i + 1 not in query]
    content = {
        "filelist": np.array(names, dtype=object).reshape(-1, 1),
        "labels": np.array(labels, dtype=float).reshape(-1, 1),
        "camId": np.array(cameras, dtype=float).reshape(-1, 1),
        "train_idx": np.array(train, dtype=float).reshape(-1, 1),
        "query_idx": np.array(query, dtype=float).reshape(-1, 1),
        "gallery_idx": np.array(gallery, dtype=float).reshape(-1, 1),
    }
    if drop_field is not None:
        del content[drop_field]
    scipy.io.savemat(str(path), content)


def write_cuhk03_raw(parent: Path) -> Path:
    raw = parent / "cuhk03_release"
    raw.mkdir()
    write_cuhk03_mat(raw / "cuhk-03.mat")
    for boxes in ("labeled", "detected"):
        write_cuhk03_config(raw / f"cuhk03_new_protocol_config_{boxes}.mat")
    return raw


# CUHK-SYSU: person → [(scene, [x, y, w, h])]
CUHKSYSU_PERSONS = {
    "p00001": [("s1.jpg", [2, 3, 5, 8]), ("s2.jpg", [10, 0, 6, 9])],
    "p00017": [("s1.jpg", [12, 4, 4, 7])],
}
SCENE_SIZE = (24, 16)  # width, height


def scene_pixels(seed: int) -> np.ndarray:
    """A smooth RGB gradient (JPEG keeps it within a few grey levels), distinct per seed."""
    rows, columns = np.mgrid[0 : SCENE_SIZE[1], 0 : SCENE_SIZE[0]]
    channels = [rows * 9 + columns * 3, columns * 8, rows * 5 + 60 * seed]
    return np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)


def write_person_mat(path: Path, persons=CUHKSYSU_PERSONS, drop_scene_field: str | None = None):
    scene_fields = [f for f in ("imname", "idlocate", "ishard") if f != drop_scene_field]
    records = np.zeros((1, len(persons)), dtype=[(f, "O") for f in ("idname", "nAppear", "scene")])
    for index, (idname, appearances) in enumerate(persons.items()):
        scenes = np.zeros((1, len(appearances)), dtype=[(f, "O") for f in scene_fields])
        for number, (name, box) in enumerate(appearances):
            values = {"imname": name, "idlocate": np.array([box], float), "ishard": 0.0}
            scenes[0, number] = tuple(values[f] for f in scene_fields)
        records[0, index] = (idname, float(len(appearances)), scenes)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"Person": records})


def write_cuhksysu_raw(parent: Path) -> Path:
    """Person-search layout: ``annotation/Person.mat`` + ``Image/SSM/{s1,s2}.jpg``."""
    raw = parent / "cuhk_sysu"
    for seed, scene in enumerate(("s1.jpg", "s2.jpg")):
        path = raw / "Image" / "SSM" / scene
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene_pixels(seed)).save(path, format="JPEG", quality=95)
    write_person_mat(raw / "annotation" / "Person.mat")
    return raw
