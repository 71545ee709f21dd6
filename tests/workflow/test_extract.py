"""Feature extraction from a gait pkl tree and from a folder of ReID images."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import extract
from metareid.checkpoints import CheckpointError, lightning_checkpoint, load_network_weights
from metareid.data.reid.multisource import load_resized_image
from metareid.export import embedder_for
from metareid.models import DR50, MetaEmbeddingHead, MetaGait, ReIDBaseline

# (subject, type, view, frames); the 2-frame clip exercises the short-clip tiling.
SEQUENCES = [("001", "nm-01", "000", 9), ("001", "bg-01", "090", 2), ("002", "cl-02", "180", 5)]


def tiny_metagait(seed: int = 0) -> MetaGait:
    torch.manual_seed(seed)
    net = MetaGait(channels=(4, 8, 8), bin_num=4, class_num=3)
    net.Bn.running_mean.normal_()
    return net.eval()


def write_pkl_tree(root: Path) -> dict[str, np.ndarray]:
    """Pretreated-looking sequences ``uint8 [T, 64, 64]``; returns them by relative path."""
    rng = np.random.default_rng(0)
    arrays = {}
    for subject, condition, view, frames in SEQUENCES:
        folder = root / subject / condition / view
        folder.mkdir(parents=True)
        array = rng.integers(0, 256, size=(frames, 64, 64), dtype=np.uint8)
        with open(folder / f"{subject}-{condition}-{view}.pkl", "wb") as handle:
            pickle.dump(array, handle)
        arrays[f"{subject}/{condition}/{view}/{subject}-{condition}-{view}.pkl"] = array
    return arrays


def embed_alone(net: MetaGait, array: np.ndarray) -> torch.Tensor:
    """The reference: one sequence per forward, cut to 64x44 and scaled as in training."""
    sils = torch.from_numpy(array[:, :, 10:54].astype(np.float32) / 255.0)
    with torch.no_grad():
        return net(sils[None])["embeddings"][0]


def test_gait_tree_features_equal_one_sequence_at_a_time(tmp_path):
    arrays = write_pkl_tree(tmp_path / "tree")
    (tmp_path / "tree/002/nm-01/000").mkdir(parents=True)
    (tmp_path / "tree/002/nm-01/000/broken.pkl").write_bytes(b"not a pickle")
    net = tiny_metagait()
    dataset = extract.SilhouetteTreeSet(tmp_path / "tree", strict=False)

    result = extract.extract_features(embedder_for(net), dataset, batch_size=2)

    names = [dataset.files[i].relative_to(dataset.root).as_posix() for i in result.indices]
    assert names == sorted(arrays)  # file order, the broken file left out
    assert [dataset.files[i].name for i, _ in result.failures] == ["broken.pkl"]
    assert result.features.shape == (3, 4, 8)
    for row, name in enumerate(names):
        torch.testing.assert_close(
            result.features[row], embed_alone(net, arrays[name]), rtol=0, atol=1e-5
        )


def test_strict_extraction_names_the_unreadable_file(tmp_path):
    write_pkl_tree(tmp_path)
    (tmp_path / "001/nm-01/000/extra.pkl").write_bytes(b"")
    dataset = extract.SilhouetteTreeSet(tmp_path)
    with pytest.raises(ValueError, match=r"extra\.pkl.*strict=false"):
        extract.extract_features(embedder_for(tiny_metagait()), dataset, batch_size=4)


def test_max_frames_keeps_the_leading_frames(tmp_path):
    arrays = write_pkl_tree(tmp_path)
    dataset = extract.SilhouetteTreeSet(tmp_path, max_frames=4)
    lengths = [len(dataset[i]["sils"]) for i in range(len(dataset))]
    assert lengths == [
        min(len(arrays[f.relative_to(tmp_path).as_posix()]), 4) for f in dataset.files
    ]
    assert dataset[0]["sils"].shape[1:] == (64, 44)


def test_collate_pads_clips_and_separates_failures():
    items = [
        {"index": 0, "sils": torch.ones(3, 64, 44)},
        {"index": 1, "error": "bad file"},
        {"index": 2, "sils": torch.full((5, 64, 44), 2.0)},
    ]
    batch = extract.collate_items(items)
    sils, seq_lens = batch["inputs"]
    assert batch["index"].tolist() == [0, 2] and batch["failures"] == [(1, "bad file")]
    assert seq_lens.tolist() == [3, 5] and sils.shape == (2, 5, 64, 44)
    assert sils[0, 3:].abs().sum() == 0 and sils[1].min() == 2.0


def test_reid_folder_features_and_pt_output(tmp_path):
    rng = np.random.default_rng(0)
    for name, size in [("cam1/0001_c1s1_000151_01.jpg", (40, 20)), ("0002_c2.png", (70, 30))]:
        path = tmp_path / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
    (tmp_path / "images/notes.txt").write_text("not an image")
    torch.manual_seed(0)
    net = ReIDBaseline(DR50(width_mult=0.125), MetaEmbeddingHead(256, [3])).eval()
    dataset = extract.ImageFolderSet(tmp_path / "images", image_size=(64, 32))

    result = extract.extract_features(embedder_for(net), dataset, batch_size=4)
    paths = [dataset.files[i].relative_to(dataset.root).as_posix() for i in result.indices]
    out = extract.save_features(tmp_path / "f.pt", result.features, {"paths": paths}, [])

    saved = torch.load(out, weights_only=True)
    assert saved["paths"] == ["0002_c2.png", "cam1/0001_c1s1_000151_01.jpg"]
    assert saved["features"].shape == (2, 256) and saved["skipped"] == []
    for row, name in enumerate(saved["paths"]):
        image = load_resized_image(tmp_path / "images" / name, (64, 32))[None].float()
        with torch.no_grad():
            torch.testing.assert_close(saved["features"][row], net(image)[0], rtol=0, atol=1e-5)


def test_extract_entry_point_writes_npz_with_sequence_columns(tmp_path, make_config):
    arrays = write_pkl_tree(tmp_path / "tree")
    net = tiny_metagait(seed=5)
    checkpoint = tmp_path / "tiny.ckpt"
    torch.save(lightning_checkpoint(net.state_dict()), checkpoint)
    cfg = make_config(
        "extract",
        [
            "model.net.channels=[4,8,8]",
            "model.net.bin_num=4",
            "data.synthetic.train_subjects=3",
            f"ckpt_path={checkpoint}",
            f"input={tmp_path / 'tree'}",
            "num_workers=0",
            "device=cpu",
        ],
    )
    path = extract.extract(cfg)
    assert path == tmp_path / "run" / "features.npz"  # the default output in the run directory

    with np.load(path, allow_pickle=False) as saved:
        assert saved["paths"].tolist() == sorted(arrays)
        assert saved["subjects"].tolist() == ["001", "001", "002"]
        assert saved["types"].tolist() == ["bg-01", "nm-01", "cl-02"]
        assert saved["views"].tolist() == ["090", "000", "180"]
        assert saved["skipped"].tolist() == []
        features = torch.from_numpy(saved["features"])
    for row, name in enumerate(sorted(arrays)):
        torch.testing.assert_close(features[row], embed_alone(net, arrays[name]), rtol=0, atol=1e-5)


def test_loading_weights_points_foreign_checkpoints_to_convert(tmp_path):
    net = tiny_metagait()
    foreign = tmp_path / "GaitGL-80000.pt"
    torch.save({"model": net.state_dict(), "iteration": 80000}, foreign)
    with pytest.raises(CheckpointError, match="src/convert.py"):
        load_network_weights(net, foreign)
    other = tmp_path / "other.ckpt"
    torch.save(lightning_checkpoint(MetaGait(channels=(4, 8, 8), bin_num=2).state_dict()), other)
    with pytest.raises(CheckpointError, match=r"Head0\.fc_bin: \[2, 8, 8\] vs \[4, 8, 8\]"):
        load_network_weights(net, other)


def test_inputs_and_outputs_are_validated(tmp_path):
    with pytest.raises(FileNotFoundError, match="no silhouette pkl files"):
        extract.SilhouetteTreeSet(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        extract.ImageFolderSet(tmp_path / "absent", image_size=(64, 32))
    with pytest.raises(ValueError, match=r"\.npz"):
        extract.save_features(tmp_path / "f.csv", torch.zeros(1, 2), {"paths": ["a"]}, [])


@pytest.mark.parametrize("experiment", ["metagait_casiab", "dr50_mix"])
def test_extract_config_composes_with_the_released_experiments(make_config, experiment):
    cfg = make_config("extract", [f"experiment={experiment}", "ckpt_path=a", "input=b"])
    assert cfg.model.net._target_.rsplit(".", 1)[-1] in ("MetaGait", "ReIDBaseline")
    assert (cfg.ckpt_path, cfg.input, cfg.strict, cfg.batch_size) == ("a", "b", True, None)
