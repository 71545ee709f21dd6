"""LightningDataModule for gait pkl trees: CASIA-B (real or embedded synthetic), OU-MVLP, GREW.

Training: an infinite identity-balanced P×K batch sampler (identical on every rank, sharded by
rank) and fixed-length frame sampling. Evaluation: whole sequences, several per batch, zero-padded
with their lengths so the network can mask the padding.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from metareid.data.gait.casiab import GaitDataset, find_partition_file, get_layout
from metareid.data.gait.frame_sampling import FrameSampler
from metareid.data.samplers import IdentityBatchSampler, InferenceBatchSampler

log = logging.getLogger(__name__)


class GaitDataModule(pl.LightningDataModule):
    """Gait data in the pkl layout ``root/<id>/<type>/<view>/*.pkl``.

    Args:
        root: pkl tree ``root/<id>/<type>/<view>/*.pkl``.
        partition_file: partition JSON; a bare name is looked up in the bundled partitions
            (``CASIA-B_include_005.json``, ``CASIA-B.json``); ``None`` uses ``root/partition.json``
            when present (``src/prepare.py`` writes it), else the 74-id CASIA-B split (CASIA-B
            only; OU-MVLP and GREW have no bundled partition).
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
        strict: raise on an unusable pkl; ``False`` skips (and counts) such sequences.
        cache: keep loaded sequences in memory.
        validate: load every pkl at set-up so none can fail mid-run; ``False`` only walks the
            tree (much faster on OU-MVLP/GREW, whose ``src/prepare.py --check`` does the deep
            check once instead).
        synthetic: generator arguments of ``generate_synthetic_casiab``; when given, the dataset is
            generated into ``root`` on first use (and regenerated when the arguments change).
        seed: drives the sampler and the frame sampling of every worker.
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
        self.seed = seed
        self.train_set: GaitDataset | None = None
        self.test_set: GaitDataset | None = None

    # ----------------------------------------------------------------- set-up
    def prepare_data(self) -> None:
        if self.synthetic is None:
            return
        from metareid.data.gait.synthetic import generate_synthetic_casiab

        stamp = self.root / ".synthetic_args.json"
        wanted = json.dumps(self.synthetic, sort_keys=True)
        if stamp.is_file() and stamp.read_text() == wanted:
            return
        log.info("Generating the synthetic CASIA-B into %s", self.root)
        generate_synthetic_casiab(self.root, **self.synthetic)
        stamp.write_text(wanted)

    def resolve_partition(self) -> Path:
        try:
            return find_partition_file(self.root, self.partition_file, self.layout)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"data.partition_file: {error}") from None

    def setup(self, stage: str | None = None) -> None:
        if not self.root.is_dir():
            synthetic = ", or use data=casiab_synthetic" if self.layout.name == "casiab" else ""
            raise FileNotFoundError(
                f"data.root={str(self.root)!r} does not exist. Prepare {self.layout.title} with "
                f"`python src/prepare.py {self.layout.name} --raw <silhouettes> --out <dir>` and "
                f"set data.root{synthetic}."
            )
        partition = self.resolve_partition()
        kwargs = dict(
            partition_file=partition,
            layout=self.layout,
            strict=self.strict,
            cache=self.cache,
            validate=self.validate,
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
        if self.test_set is None:
            self.test_set = GaitDataset(self.root, split="test", **kwargs)

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
        collate = FrameSampler(**self.train_frames, seed=self.seed + 1000 * rank + start)
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            worker_init_fn=collate.worker_init_fn,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _inference_loader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = InferenceBatchSampler(
            len(self.test_set), batch_size=self.test_batch_size, rank=rank, world_size=world
        )
        collate = FrameSampler(
            sample_type="all_ordered", frames_all_limit=self.frames_all_limit, seed=self.seed
        )
        return DataLoader(
            self.test_set,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            worker_init_fn=collate.worker_init_fn,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._inference_loader()

    def test_dataloader(self) -> DataLoader:
        return self._inference_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._inference_loader()
