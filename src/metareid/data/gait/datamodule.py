"""LightningDataModule for gait pkl trees: CASIA-B (real or embedded synthetic), OU-MVLP, GREW.

Training: an infinite identity-balanced P×K batch sampler (identical on every rank, sharded by
rank) and fixed-length frame sampling. Evaluation: whole sequences, several per batch, zero-padded
with their lengths so the network can mask the padding.

Each batch is read and collated as a whole inside the loader worker (``GaitBatches``): from the
packed store with one fancy index, or one pkl per sequence from the tree. Training batches are
numbered, and the frames of batch ``b`` are drawn from ``(seed, rank, b)`` only, so a resumed run
yields exactly the batches of the uninterrupted one, with any number of workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from metareid.data.gait.casiab import (
    FORMATS,
    GaitDataset,
    find_partition_file,
    get_layout,
    resolve_format,
)
from metareid.data.gait.frame_sampling import BatchRequest, FrameSampler
from metareid.data.gait.packed import GaitBatches, passthrough_collate
from metareid.data.samplers import IdentityBatchSampler, InferenceBatchSampler

log = logging.getLogger(__name__)


class NumberedBatches:
    """Batch sampler yielding :class:`BatchRequest` (global batch number + indices).

    Wraps an :class:`IdentityBatchSampler`; the number is the sampler's batch counter, which
    starts at ``start_batch`` (the resume point) and continues across epochs.
    """

    def __init__(self, batches: IdentityBatchSampler) -> None:
        self.batches = batches
        # Lightning calls ``batch_sampler.sampler.set_epoch``.
        self.sampler = batches.sampler

    @property
    def batch_size(self) -> int:
        return self.batches.batch_size

    def __iter__(self) -> Iterator[BatchRequest]:
        number = self.batches.next_batch
        for indices in self.batches:
            yield BatchRequest(number, tuple(indices))
            number += 1

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)


class GaitDataModule(pl.LightningDataModule):
    """Gait data in the pkl layout ``root/<id>/<type>/<view>/*.pkl``.

    Args:
        root: pkl tree ``root/<id>/<type>/<view>/*.pkl`` (and its packed store ``root/packed``);
            with ``synthetic``, the cache folder the generated datasets go under.
        partition_file: partition JSON; a bare name is looked up in the bundled partitions
            (``CASIA-B_include_005.json``, ``CASIA-B.json``); ``None`` uses ``root/partition.json``
            when present (``src/prepare.py`` writes it), else the 74-id CASIA-B split (CASIA-B
            only; OU-MVLP and GREW have no bundled partition). The one used is logged.
        layout: ``"casiab"``, ``"oumvlp"`` or ``"grew"`` (see ``metareid.data.gait.casiab``):
            type and view levels hold. The batches' ``type_index``/``view_index`` index that
            layout's type/view names, so the evaluator must be the matching protocol.
        num_classes: number of training identities the model's classifier was built for; checked
            against the partition so a mismatch fails at start-up, not as a CUDA assert mid-run.
        p, k: identities per batch and sequences per identity (global batch = p·k over all ranks).
        sample_type, frames_num_fixed, frames_skip_num, frames_num_min, frames_num_max: training
            frame sampling (see ``FrameSampler``).
        frames_all_limit: optional cap on frames per evaluated sequence.
        test_batch_size: sequences per evaluation batch on each rank.
        num_workers: loader processes (each reads and collates whole batches).
        format: ``auto`` (the packed store ``root/packed`` when present, else the pkl tree),
            ``packed`` or ``pkl``.
        pin_memory: pin batches for faster host→GPU copies; ``None``: when CUDA is available.
        persistent_workers: keep loader workers alive between epochs/evaluations.
        prefetch_factor: batches each worker prepares ahead (``num_workers > 0`` only).
        uint8_batches: hand silhouettes over as uint8 0-255 (a quarter of the bytes from the
            workers and to the GPU); the LightningModule scales them on its device to the same
            float32 values (``GaitModule`` does). Off: float32 in [0, 1] from the loader.
        strict: raise on an unusable pkl; ``False`` skips (and counts) such sequences.
        cache: keep loaded sequences in memory.
        validate: load every pkl at set-up so none can fail mid-run; ``False`` only walks the
            tree (much faster on OU-MVLP/GREW, whose ``src/prepare.py --check`` does the deep
            check once instead).
        synthetic: generator arguments of ``generate_synthetic_casiab``; when given, the dataset is
            generated on first use into ``root/casiab-<hash of the arguments>`` (see
            ``ensure_synthetic_casiab``): each setting keeps its own cached folder, and a ``root``
            holding anything but the generator's output is refused.
        seed: drives the batch sampler and the frame draws (a function of seed, rank, batch).
    """

    def __init__(
        self,
        root: str,
        partition_file: str | None = None,
        layout: str = "casiab",
        num_classes: int | None = None,
        p: int = 8,
        k: int = 8,
        batch_shuffle: bool = True,
        sample_type: str = "fixed_ordered",
        frames_num_fixed: int = 30,
        frames_skip_num: int = 0,
        frames_num_min: int = 25,
        frames_num_max: int = 50,
        frames_all_limit: int | None = None,
        test_batch_size: int = 4,
        num_workers: int = 1,
        format: str = "auto",
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        uint8_batches: bool = False,
        strict: bool = True,
        cache: bool = False,
        validate: bool = True,
        synthetic: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.partition_file = partition_file
        self.layout = get_layout(layout)
        if synthetic and self.layout.name != "casiab":
            raise ValueError(
                f"data.synthetic generates a CASIA-B tree, but data.layout={layout!r}; use "
                "layout=casiab or drop data.synthetic"
            )
        if format not in FORMATS:
            raise ValueError(f"data.format must be one of {FORMATS}, got {format!r}")
        if prefetch_factor < 1:
            raise ValueError(f"data.prefetch_factor must be >= 1, got {prefetch_factor}")
        self.format = format
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.uint8_batches = uint8_batches
        self.num_classes = num_classes
        self.p, self.k, self.batch_shuffle = p, k, batch_shuffle
        self.train_frames = dict(
            sample_type=sample_type,
            frames_num_fixed=frames_num_fixed,
            frames_skip_num=frames_skip_num,
            frames_num_min=frames_num_min,
            frames_num_max=frames_num_max,
        )
        self.frames_all_limit = frames_all_limit
        self.test_batch_size = test_batch_size
        self.num_workers = num_workers
        self.strict, self.cache, self.validate = strict, cache, validate
        self.synthetic = dict(synthetic) if synthetic else None
        self.cache_root = self.root
        if self.synthetic is not None:
            from metareid.data.gait.synthetic import synthetic_casiab_folder

            self.root = synthetic_casiab_folder(self.cache_root, **self.synthetic)
        self.seed = seed
        self.train_set: GaitDataset | None = None
        self.test_set: GaitDataset | None = None

    # ----------------------------------------------------------------- set-up
    def prepare_data(self) -> None:
        if self.synthetic is None:
            return
        from metareid.data.gait.synthetic import ensure_synthetic_casiab

        if not self.root.is_dir():
            log.info("Generating the synthetic CASIA-B into %s", self.root)
        ensure_synthetic_casiab(self.cache_root, packed=self.format != "pkl", **self.synthetic)

    def resolve_partition(self) -> Path:
        try:
            return find_partition_file(self.root, self.partition_file, self.layout)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"data.partition_file: {error}") from None

    def setup(self, stage: str | None = None) -> None:
        if not self.root.is_dir():
            synthetic = ", or use data=casiab_synthetic" if self.layout.name == "casiab" else ""
            problem = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise FileNotFoundError(
                f"data.root={str(self.root)!r} {problem}. Prepare {self.layout.title} with "
                f"`python src/prepare.py {self.layout.name} --raw <silhouettes> --out <dir>` and "
                f"set data.root{synthetic}."
            )
        partition = self.resolve_partition()
        data_format = resolve_format(self.root, self.format)
        origin = (
            "data.partition_file"
            if self.partition_file is not None
            else "the tree's own partition.json"
            if partition.parent == self.root
            else f"the bundled {self.layout.title} default (the tree has no partition.json)"
        )
        log.info(
            "Gait data: %s (%s format), partition %s (%s)",
            self.root,
            data_format,
            partition,
            origin,
        )
        kwargs = dict(
            partition_file=partition,
            layout=self.layout,
            strict=self.strict,
            cache=self.cache,
            validate=self.validate,
            format=data_format,
        )
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = GaitDataset(self.root, split="train", **kwargs)
            n_ids = len(self.train_set.label_set)
            if self.num_classes is not None and n_ids != self.num_classes:
                raise ValueError(
                    f"{partition} lists {n_ids} training identities present under {self.root}, but "
                    f"data.num_classes={self.num_classes} (the classifier width). Set "
                    f"data.num_classes={n_ids} or fix the tree/partition."
                )
            if n_ids < self.p:
                raise ValueError(
                    f"data.p={self.p} identities per batch but only {n_ids} training identities."
                )
            log.info("Gait data %s", self.train_set.summary())
        if self.test_set is None:
            self.test_set = GaitDataset(self.root, split="test", **kwargs)
            log.info("Gait data %s", self.test_set.summary())

    # ----------------------------------------------------------------- loaders
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        # Start where a resumed run stopped: batch b is a pure function of (seed, b).
        start = self.trainer.global_step if self.trainer is not None else 0
        sampler = IdentityBatchSampler(
            self.train_set.labels,
            p=self.p,
            k=self.k,
            seed=self.seed,
            rank=rank,
            world_size=world,
            shuffle_batch=self.batch_shuffle,
            start_batch=start,
        )
        # Frames of batch b: drawn from (seed, rank, b), independent of `start` and workers.
        frames = FrameSampler(**self.train_frames, seed=self.seed, uint8_batches=self.uint8_batches)
        return self._loader(GaitBatches(self.train_set, frames, rank), NumberedBatches(sampler))

    def _loader(self, batches: GaitBatches, batch_sampler: Any) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            batches,
            batch_sampler=batch_sampler,
            collate_fn=passthrough_collate,
            num_workers=workers,
            worker_init_fn=batches.sampler.worker_init_fn,
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            pin_memory=self.pin_memory,
        )

    def _inference_loader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = InferenceBatchSampler(
            len(self.test_set), batch_size=self.test_batch_size, rank=rank, world_size=world
        )
        frames = FrameSampler(
            sample_type="all_ordered",
            frames_all_limit=self.frames_all_limit,
            seed=self.seed,
            uint8_batches=self.uint8_batches,
        )
        return self._loader(GaitBatches(self.test_set, frames, rank), sampler)

    def val_dataloader(self) -> DataLoader:
        return self._inference_loader()

    def test_dataloader(self) -> DataLoader:
        return self._inference_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._inference_loader()
