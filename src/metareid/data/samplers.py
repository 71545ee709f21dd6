"""Batch samplers shared by the gait and re-id pipelines.

``IdentityBatchSampler`` is the P×K training sampler: infinite, and every batch is a pure function
of ``(seed, batch number)``. All ranks therefore draw the same global batch without any broadcast,
and a resumed run continues the exact stream by starting at the number of batches already
consumed (``start_batch=trainer.global_step``).

Lightning: the sampler has no ``__len__``, so a ``DataLoader`` built on it has no length and
Lightning treats the epoch as infinite; drive training with ``max_steps``, validate with
``val_check_interval=<steps>`` and ``check_val_every_n_epoch=None``, and pass
``use_distributed_sampler=False`` (the sampler shards by rank itself).

``InferenceBatchSampler`` splits ``range(num_samples)`` into contiguous rank shards that together
hold every index exactly once (no padding, hence nothing counted twice) and batches each shard in
order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class _EpochRecorder:
    """What Lightning reaches as ``batch_sampler.sampler`` to call ``set_epoch`` on."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class IdentityBatchSampler:
    """Infinite P×K batches: P identities, K sequences each.

    Global batch ``b`` (identical on every rank): P labels drawn uniformly without replacement;
    K indices of each drawn without replacement (with replacement when the label has fewer than
    K); the P·K indices optionally shuffled. Rank ``r`` yields ``global[r::world_size]``, i.e.
    ``P·K / world_size`` indices per step.

    Args:
        labels: label of every dataset index (any ints; need not be contiguous).
        p: identities per global batch.
        k: samples per identity.
        seed: base seed; batch ``b`` uses the stream ``(seed, b)``.
        rank, world_size: this process's shard.
        shuffle_batch: shuffle the P·K indices before sharding (mixes identities across ranks;
            without it each rank sees ``k / world_size``-sized slices of every identity when
            ``world_size`` divides ``k``).
        drop_short: leave out labels with fewer than K samples instead of oversampling them.
        start_batch: number of the first batch to yield (resume point).
        batches_per_epoch: ``None`` (default) = one endless epoch. An int makes each ``iter()``
            yield that many batches and gives the sampler a ``__len__``, so Lightning counts
            epochs (the epoch-based ACL schedule); numbering continues across epochs.

    Yields:
        lists of ``p·k / world_size`` dataset indices.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_batch: bool = True,
        drop_short: bool = False,
        start_batch: int = 0,
        batches_per_epoch: int | None = None,
    ) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be >= 1, got p={p}, k={k}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
        if (p * k) % world_size:
            raise ValueError(
                f"the global batch p·k = {p}·{k} = {p * k} is not divisible by world_size="
                f"{world_size}; choose p and k so every rank gets the same number of samples"
            )
        by_label: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_label.setdefault(int(label), []).append(index)
        if drop_short:
            by_label = {label: idx for label, idx in by_label.items() if len(idx) >= k}
        if len(by_label) < p:
            kept = " with at least k samples" if drop_short else ""
            raise ValueError(
                f"p={p} identities per batch but only {len(by_label)} identities{kept} in the "
                "dataset; lower p or use a larger training set"
            )
        self.label_values = sorted(by_label)
        self.pools = [np.asarray(by_label[label]) for label in self.label_values]
        self.p, self.k = p, k
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_batch = shuffle_batch
        self.next_batch = start_batch
        self.batches_per_epoch = batches_per_epoch
        self.sampler = _EpochRecorder()

    @property
    def batch_size(self) -> int:
        """Indices per rank and step."""
        return self.p * self.k // self.world_size

    def global_batch(self, batch_number: int) -> np.ndarray:
        """The ``p·k`` indices of global batch ``batch_number`` (same on every rank)."""
        rng = np.random.default_rng([self.seed, batch_number])
        chosen = rng.choice(len(self.pools), size=self.p, replace=False)
        parts = [
            rng.choice(self.pools[c], size=self.k, replace=len(self.pools[c]) < self.k)
            for c in chosen
        ]
        indices = np.concatenate(parts)
        if self.shuffle_batch:
            indices = rng.permutation(indices)
        return indices

    def __iter__(self) -> Iterator[list[int]]:
        remaining = self.batches_per_epoch
        while remaining is None or remaining > 0:
            batch = self.global_batch(self.next_batch)[self.rank :: self.world_size]
            self.next_batch += 1
            if remaining is not None:
                remaining -= 1
            yield batch.tolist()

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            # Lightning reads a TypeError here as "infinite" (drive training by max_steps).
            raise TypeError("IdentityBatchSampler is infinite unless batches_per_epoch is set")
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Accepted for API compatibility; batches depend only on (seed, batch number)."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        """The next batch number to yield. With ``DataLoader`` workers the sampler runs ahead of
        the consumed batches by the prefetch depth, so prefer restarting from the trainer's
        step count (``start_batch``/``load_state_dict({"next_batch": global_step})``)."""
        return {"next_batch": self.next_batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "seed" in state and state["seed"] != self.seed:
            raise ValueError(
                f"sampler state was saved with seed={state['seed']} but this sampler has "
                f"seed={self.seed}; the resumed stream would differ"
            )
        self.next_batch = int(state["next_batch"])


def shard_range(num_samples: int, rank: int, world_size: int) -> range:
    """Contiguous slice of ``range(num_samples)`` for ``rank``; shard sizes differ by at most 1
    and the shards, taken in rank order, are exactly ``range(num_samples)``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class InferenceBatchSampler:
    """Sequential batches of up to ``batch_size`` whole samples from this rank's shard.

    Every index appears exactly once across all ranks (no padding duplicates), so metrics that
    accumulate per-sample states and synchronise at ``compute()`` (torchmetrics) see the dataset
    once. Ranks may differ by one batch; do not run per-step collectives in the evaluation step.
    Each batch carries its dataset indices (``indices`` from the collate) if order matters.

    Args:
        num_samples: dataset length.
        batch_size: samples per batch on this rank (the last batch may be smaller).
        rank, world_size: this process's shard (see ``shard_range``).
    """

    def __init__(
        self, num_samples: int, batch_size: int = 1, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.indices = shard_range(num_samples, rank, world_size)
        self.batch_size = batch_size
        self.sampler = _EpochRecorder()

    def __iter__(self) -> Iterator[list[int]]:
        for offset in range(0, len(self.indices), self.batch_size):
            yield list(self.indices[offset : offset + self.batch_size])

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)
