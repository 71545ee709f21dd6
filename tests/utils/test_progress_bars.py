"""Long work outside the training loop drives a progress bar: generators, packing, extraction."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import extract
from metareid.data.gait.casiab import pack_gait_tree
from metareid.data.gait.synthetic import generate_synthetic_casiab
from metareid.data.reid.synthetic import generate_synthetic_reid
from metareid.utils import progress as progress_module
from metareid.utils.progress import track


@pytest.fixture
def bars(monkeypatch):
    """Every progress bar opened, as ``{"shown", "tasks": {description: [total, completed]}}``."""
    opened: list[dict] = []

    class RecordingProgress(progress_module.Progress):
        def __init__(self, *columns, disable=False, **options):
            super().__init__(*columns, disable=disable, **options)
            self.record = {"shown": not disable, "tasks": {}}
            opened.append(self.record)

        def add_task(self, description, *args, total=100.0, **options):
            task = super().add_task(description, *args, total=total, **options)
            self.record["tasks"][task] = [description, total, 0]
            return task

        def advance(self, task_id, advance=1):
            super().advance(task_id, advance)
            self.record["tasks"][task_id][2] += advance

    monkeypatch.setattr(progress_module, "Progress", RecordingProgress)
    return opened


def shown_tasks(bars):
    """``(total, completed)`` of every task of the bars that draw."""
    return [tuple(task[1:]) for bar in bars if bar["shown"] for task in bar["tasks"].values()]


def test_track_prints_the_finished_bar_once_off_a_terminal(capsys):
    assert list(track(range(3), 3, "Counting things")) == [0, 1, 2]
    drawn = capsys.readouterr().err
    assert "Counting things" in drawn and "3/3" in drawn
    assert list(track(range(3), 3, "Counting things", show=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def tiny_casiab(root, **options):
    return generate_synthetic_casiab(
        root,
        num_subjects=3,
        train_subjects=1,
        views=["090"],
        types=["nm-01"],
        frames=(2, 3),
        **options,
    )


def test_synthetic_casiab_advances_once_per_sequence(tmp_path, bars):
    tiny_casiab(tmp_path / "tree", packed=True)
    # One bar over the 3 sequences; the packing of the same stream draws no second one.
    assert shown_tasks(bars) == [(3, 3)]
    bars.clear()
    tiny_casiab(tmp_path / "quiet", progress=False)
    assert shown_tasks(bars) == []


def test_packing_a_tree_advances_once_per_sequence(tmp_path, bars):
    partition = tiny_casiab(tmp_path / "tree", progress=False)
    bars.clear()
    pack_gait_tree(tmp_path / "tree", "casiab", partition)
    assert shown_tasks(bars) == [(3, 3)]
    assert "Packing" in next(iter(bars[0]["tasks"].values()))[0]


def test_synthetic_reid_advances_once_per_image_and_not_when_cached(tmp_path, bars):
    options = dict(
        domains=("synA", "synB"),
        ids_per_domain=2,
        cameras=2,
        images_per_id_per_camera=1,
        size=(16, 8),
        distractors_per_domain=1,
        junk_per_domain=1,
    )
    generate_synthetic_reid(tmp_path, **options)
    images = sum(1 for path in tmp_path.rglob("*.jpg"))
    assert images == 2 * (2 * 2 * 1 + 1 + 1)
    assert shown_tasks(bars) == [(images, images)]
    bars.clear()
    generate_synthetic_reid(tmp_path, **options)  # every domain reused: nothing to show
    assert bars == []
    generate_synthetic_reid(tmp_path / "quiet", progress=False, **options)
    assert shown_tasks(bars) == []


class TinyImages(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, index):
        return {"index": index, "image": torch.full((3, 4, 2), index, dtype=torch.uint8)}


class MeanColour(nn.Module):
    def forward(self, images):
        return images.mean(dim=(2, 3))


def test_extract_features_advances_once_per_batch(bars):
    result = extract.extract_features(MeanColour(), TinyImages(), batch_size=2)
    assert result.features.shape == (5, 3)
    assert shown_tasks(bars) == [(3, 3)]
    bars.clear()
    extract.extract_features(MeanColour(), TinyImages(), batch_size=2, progress=False)
    assert shown_tasks(bars) == []
