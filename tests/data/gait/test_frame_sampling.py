import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from metareid.data.gait.frame_sampling import (
    FrameSampler,
    cut_silhouettes,
    frames_to_tensor,
    wrapped_window,
)


def numbered_sequence(length: int, width: int = 64) -> np.ndarray:
    """Frame t holds the value t everywhere (so sampled frames can be read back)."""
    return np.broadcast_to(
        np.arange(length, dtype=np.uint8)[:, None, None], (length, 64, width)
    ).copy()


def item(length: int, label: int = 0, index: int = 0) -> dict:
    return {
        "sils": numbered_sequence(length),
        "label": label,
        "subject": 100 + label,
        "type_index": 3,
        "view_index": 7,
        "index": index,
    }


def frames_of(batch_sils: torch.Tensor) -> np.ndarray:
    """Back from the [0, 1] float frames of ``numbered_sequence`` to frame numbers."""
    return np.rint(batch_sils[..., 0, 0].numpy() * 255).astype(int)


def test_wrapped_window_of_a_short_sequence():
    assert wrapped_window(7, 30, 3)[:9].tolist() == [3, 4, 5, 6, 0, 1, 2, 3, 4]
    assert wrapped_window(7, 30, 3).tolist() == [(3 + i) % 7 for i in range(30)]


def test_fixed_ordered_short_sequence_wraps_around():
    sampler = FrameSampler("fixed_ordered", frames_num_fixed=30, seed=1)
    starts = set()
    for _ in range(200):
        picked = sampler.sample_indices(7)
        assert len(picked) == 30
        assert np.all(np.diff(picked) % 7 == 1)  # consecutive frames, wrapping 6 -> 0
        # The sequence is repeated ceil(30/7) = 5 times (35 frames): starts 0..5.
        starts.add(int(picked[0]))
    assert starts == {0, 1, 2, 3, 4, 5}


def test_fixed_ordered_long_sequence_is_a_contiguous_clip():
    sampler = FrameSampler("fixed_ordered", frames_num_fixed=30, seed=2)
    starts = set()
    for _ in range(300):
        picked = sampler.sample_indices(100)
        assert picked.tolist() == list(range(picked[0], picked[0] + 30))
        starts.add(int(picked[0]))
    assert min(starts) >= 0 and max(starts) <= 70 and len(starts) > 40


def test_fixed_ordered_with_skip_keeps_a_sorted_subset_of_a_40_window():
    sampler = FrameSampler("fixed_ordered", frames_num_fixed=30, frames_skip_num=10, seed=3)
    spans = set()
    for _ in range(100):
        picked = sampler.sample_indices(100)
        assert len(picked) == 30 and np.all(np.diff(picked) > 0)
        assert picked[-1] - picked[0] <= 39
        spans.add(int(picked[-1] - picked[0]))
    assert max(spans) > 29  # not always contiguous: frames inside the window are skipped


def test_fixed_unordered_replaces_only_when_too_short():
    sampler = FrameSampler("fixed_unordered", frames_num_fixed=30, seed=4)
    long = sampler.sample_indices(50)
    assert len(long) == 30 and len(set(long.tolist())) == 30
    assert not np.all(np.diff(long) > 0)  # drawing order, not temporal order
    short = sampler.sample_indices(10)
    assert len(short) == 30 and set(short.tolist()) <= set(range(10))


def test_unfixed_draws_the_length_per_sequence():
    sampler = FrameSampler("unfixed_ordered", frames_num_min=5, frames_num_max=9, seed=5)
    lengths = {len(sampler.sample_indices(40)) for _ in range(100)}
    assert lengths == {5, 6, 7, 8, 9}


def test_all_ordered_takes_every_frame_up_to_the_limit():
    assert FrameSampler("all_ordered").sample_indices(12).tolist() == list(range(12))
    limited = FrameSampler("all_ordered", frames_all_limit=5)
    assert limited.sample_indices(12).tolist() == [0, 1, 2, 3, 4]
    assert limited.sample_indices(3).tolist() == [0, 1, 2]


def test_fixed_batch_layout_and_silhouette_cut():
    sils = np.tile((np.arange(64, dtype=np.uint8) * 2)[None, None, :], (12, 64, 1))
    items = [dict(item(12, label=1, index=4), sils=sils), item(40, label=0, index=9)]
    batch = FrameSampler("fixed_ordered", frames_num_fixed=10, seed=0)(items)
    assert set(batch) == {"sils", "labels", "subjects", "type_index", "view_index", "indices"}
    assert batch["sils"].dtype == torch.float32 and batch["sils"].shape == (2, 10, 64, 44)
    # Columns 10..53 survive the cut and are divided by 255.
    expected = torch.arange(10, 54, dtype=torch.float32) * 2 / 255
    assert torch.allclose(batch["sils"][0, 3, 17], expected)
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert batch["subjects"].tolist() == [101, 100]
    assert batch["type_index"].tolist() == [3, 3] and batch["view_index"].tolist() == [7, 7]
    assert batch["indices"].tolist() == [4, 9]


def test_all_ordered_batch_is_zero_padded_with_lengths():
    items = [item(5), item(8), item(3)]
    batch = FrameSampler("all_ordered")(items)
    assert batch["sils"].shape == (3, 8, 64, 44)
    assert batch["seq_lens"].tolist() == [5, 8, 3] and batch["seq_lens"].dtype == torch.long
    numbers = frames_of(batch["sils"])
    assert numbers[1].tolist() == list(range(8))
    assert numbers[0, :5].tolist() == list(range(5))
    assert batch["sils"][0, 5:].abs().sum() == 0 and batch["sils"][2, 3:].abs().sum() == 0


def test_unfixed_batch_carries_lengths():
    sampler = FrameSampler("unfixed_unordered", frames_num_min=4, frames_num_max=9, seed=0)
    batch = sampler([item(30) for _ in range(6)])
    lengths = batch["seq_lens"]
    assert batch["sils"].shape[1] == int(lengths.max())
    assert all(4 <= n <= 9 for n in lengths.tolist())


def test_cut_scales_with_width():
    assert cut_silhouettes(np.zeros((2, 64, 64), np.uint8)).shape == (2, 64, 44)
    wide = cut_silhouettes(np.full((1, 128, 128), 255, np.uint8))
    assert wide.shape == (1, 128, 88) and wide.dtype == np.float32 and wide.max() == 1.0


def test_same_seed_same_frames_and_workers_differ():
    first, second = FrameSampler(seed=7), FrameSampler(seed=7)
    draws = [first.sample_indices(100)[0] for _ in range(20)]
    assert draws == [second.sample_indices(100)[0] for _ in range(20)]
    other_worker = FrameSampler(seed=7)
    other_worker.worker_init_fn(1)
    assert draws != [other_worker.sample_indices(100)[0] for _ in range(20)]
    first.reseed(0)
    assert draws == [first.sample_indices(100)[0] for _ in range(20)]


class SameSequence(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return item(200, index=index)


@pytest.mark.parametrize("with_init_fn", [True, False])
def test_dataloader_workers_get_distinct_streams(with_init_fn):
    collate = FrameSampler("fixed_ordered", frames_num_fixed=5, seed=11)
    loader = DataLoader(
        SameSequence(),
        batch_size=2,
        num_workers=2,
        collate_fn=collate,
        worker_init_fn=collate.worker_init_fn if with_init_fn else None,
        multiprocessing_context="fork",
    )
    starts = [frames_of(batch["sils"])[:, 0].tolist() for batch in loader]
    # Worker 0 collates batch 0 and worker 1 batch 1; identical streams would repeat the starts.
    assert starts[0] != starts[1]
    reference = FrameSampler("fixed_ordered", frames_num_fixed=5, seed=11)
    reference.reseed(1)
    assert starts[1] == [int(reference.sample_indices(200)[0]) for _ in range(2)]


def test_rejects_unknown_sample_type():
    with pytest.raises(ValueError, match="sample_type must be one of"):
        FrameSampler("fixed")


class ReportsSharing(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        return frames_to_tensor(np.zeros((1, 2, 64, 64), np.uint8), cut=True).is_shared()


def test_worker_batches_are_built_in_shared_memory():
    # Inside a worker the tensor is allocated in shared memory (no copy to move it there) ...
    loader = DataLoader(ReportsSharing(), batch_size=None, num_workers=1)
    assert list(loader) == [True]
    # ... and in the main process it stays ordinary memory.
    assert not frames_to_tensor(np.zeros((1, 2, 64, 64), np.uint8), cut=True).is_shared()
