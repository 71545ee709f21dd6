from collections import Counter
from itertools import islice

import numpy as np
import pytest
from lightning_fabric.utilities.data import _set_sampler_epoch, has_len
from torch.utils.data import DataLoader

from metareid.data.samplers import IdentityBatchSampler, InferenceBatchSampler, shard_range

# 10 identities with 6 samples each, labelled 10, 20, ..., 100 (not contiguous on purpose).
LABELS = [10 * (1 + i // 6) for i in range(60)]


def take(sampler, count):
    return list(islice(iter(sampler), count))


def test_pk_structure():
    sampler = IdentityBatchSampler(LABELS, p=4, k=3, seed=0)
    for batch in take(sampler, 50):
        assert len(batch) == 12 and len(set(batch)) == 12  # K without replacement
        per_label = Counter(LABELS[i] for i in batch)
        assert len(per_label) == 4 and set(per_label.values()) == {3}


def test_identities_drawn_uniformly():
    sampler = IdentityBatchSampler(LABELS, p=4, k=2, seed=1)
    counts = Counter(LABELS[i] for batch in take(sampler, 2000) for i in batch)
    assert len(counts) == 10
    expected = 2000 * 4 * 2 / 10
    assert all(abs(c - expected) < 0.1 * expected for c in counts.values())


def test_short_identity_is_oversampled_or_dropped():
    labels = [0] * 5 + [1] * 5 + [2] * 2
    oversampled = IdentityBatchSampler(labels, p=3, k=4, seed=0)
    for batch in take(oversampled, 10):
        per_label = Counter(labels[i] for i in batch)
        assert per_label == {0: 4, 1: 4, 2: 4}
        assert set(i for i in batch if labels[i] == 2) <= {10, 11}
    dropped = IdentityBatchSampler(labels, p=2, k=4, seed=0, drop_short=True)
    assert all(labels[i] != 2 for batch in take(dropped, 20) for i in batch)


def test_without_shuffle_identities_are_grouped():
    sampler = IdentityBatchSampler(LABELS, p=3, k=4, seed=0, shuffle_batch=False)
    batch = take(sampler, 1)[0]
    groups = [{LABELS[i] for i in batch[g : g + 4]} for g in range(0, 12, 4)]
    assert all(len(g) == 1 for g in groups)


def test_ranks_share_the_global_batch_and_split_it():
    world = 4
    samplers = [
        IdentityBatchSampler(LABELS, p=4, k=4, seed=5, rank=r, world_size=world)
        for r in range(world)
    ]
    streams = [take(s, 6) for s in samplers]
    for step in range(6):
        global_batch = samplers[0].global_batch(step)
        assert all(np.array_equal(s.global_batch(step), global_batch) for s in samplers)
        shards = [streams[r][step] for r in range(world)]
        assert all(len(shard) == 4 for shard in shards)
        assert sorted(sum(shards, [])) == sorted(global_batch.tolist())
        for r in range(world):
            assert shards[r] == global_batch[r::world].tolist()


def test_stream_is_a_function_of_seed_and_batch_number():
    a = take(IdentityBatchSampler(LABELS, p=4, k=3, seed=9), 5)
    assert a == take(IdentityBatchSampler(LABELS, p=4, k=3, seed=9), 5)
    assert a != take(IdentityBatchSampler(LABELS, p=4, k=3, seed=10), 5)
    resumed = IdentityBatchSampler(LABELS, p=4, k=3, seed=9, start_batch=3)
    assert take(resumed, 2) == a[3:5]


def test_state_dict_resume():
    sampler = IdentityBatchSampler(LABELS, p=4, k=3, seed=2)
    stream = take(sampler, 7)
    fresh = IdentityBatchSampler(LABELS, p=4, k=3, seed=2)
    fresh.load_state_dict({"next_batch": 4, "seed": 2})
    assert take(fresh, 3) == stream[4:7]
    assert sampler.state_dict() == {"next_batch": 7, "seed": 2}
    with pytest.raises(ValueError, match="seed=3"):
        IdentityBatchSampler(LABELS, p=4, k=3, seed=2).load_state_dict({"next_batch": 0, "seed": 3})


def test_invalid_configurations_are_explained():
    with pytest.raises(ValueError, match="not divisible by world_size=5"):
        IdentityBatchSampler(LABELS, p=4, k=3, world_size=5)
    with pytest.raises(ValueError, match="p=11 identities per batch but only 10"):
        IdentityBatchSampler(LABELS, p=11, k=2)
    with pytest.raises(ValueError, match="rank"):
        IdentityBatchSampler(LABELS, p=4, k=2, rank=2, world_size=2)


def test_lightning_sees_an_infinite_loader_and_sets_the_epoch():
    sampler = IdentityBatchSampler(LABELS, p=2, k=2, seed=0)
    loader = DataLoader(list(range(60)), batch_sampler=sampler)
    assert not has_len(loader)
    _set_sampler_epoch(loader, 3)
    assert sampler.sampler.epoch == 3
    batches = list(islice(iter(loader), 3))
    assert [b.tolist() for b in batches] == [sampler.global_batch(i).tolist() for i in range(3)]


def test_shard_range_covers_every_index_once():
    assert [list(shard_range(10, r, 3)) for r in range(3)] == [
        [0, 1, 2, 3],
        [4, 5, 6],
        [7, 8, 9],
    ]
    assert [len(shard_range(2, r, 3)) for r in range(3)] == [1, 1, 0]


@pytest.mark.parametrize(
    ("num", "batch", "world"), [(10, 2, 3), (5485, 4, 8), (3, 4, 1), (2, 1, 3)]
)
def test_inference_batches_cover_the_dataset_exactly_once(num, batch, world):
    seen = []
    for rank in range(world):
        sampler = InferenceBatchSampler(num, batch_size=batch, rank=rank, world_size=world)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(1 <= len(b) <= batch for b in batches)
        seen.extend(i for b in batches for i in b)
    assert seen == list(range(num))  # rank order restores dataset order


def test_batches_per_epoch_gives_length_and_continues_numbering_across_epochs():
    labels = [i // 3 for i in range(30)]
    endless = IdentityBatchSampler(labels, p=2, k=2, seed=5)
    stream = iter(endless)
    expected = [next(stream) for _ in range(6)]

    epochs = IdentityBatchSampler(labels, p=2, k=2, seed=5, batches_per_epoch=3)
    assert len(epochs) == 3
    first, second = list(epochs), list(epochs)
    assert first + second == expected
    with pytest.raises(TypeError):
        len(endless)
