"""LightningDataModule for multi-source domain-generalisable ReID (DR50 recipe, dr50.md §1.3, §4.2).

``train_dataloader`` gives the merged P×K batches over all sources (64 = 32 ids × 2), one ACL
epoch (``iters_per_epoch`` batches) per pass. ``domain_dataloaders`` gives one endless P×K loader
per source (32 = 16 ids × 2) that the meta step draws from only when it runs (every third
iteration), so single-domain images are not decoded for iterations that do not use them.

Each loader has its own :class:`~metareid.data.samplers.IdentityBatchSampler` seeded with
``seed + loader position``, so the streams are independent, identical on every rank before
sharding, and a resumed run continues them: the merged one from the LightningModule's
``merged_stream_start`` (the merged batches it has drawn, kept in its checkpoint; a module without
it resumes from the training steps Lightning has processed), the domain ones from the number of
meta steps taken, which the caller passes. ``merged_dataloader`` gives a stretch of the merged
stream outside Lightning's loop (the ACL first iteration's extra basic steps).

Evaluation gives one loader per target domain over its query followed by its gallery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from metareid.data.reid.dataset import ReIDDataset, ReIDImage
from metareid.data.reid.image_check import UndecodableImage, drop_undecodable_images
from metareid.data.reid.multisource import MultiSourceTrainSet, ReIDTestSet, SingleDomainView
from metareid.data.reid.registry import load_reid_dataset
from metareid.data.samplers import IdentityBatchSampler, InferenceBatchSampler

__all__ = ["ReIDDataModule"]

log = logging.getLogger(__name__)


def combine_all(dataset: ReIDDataset) -> list[ReIDImage]:
    """Training images plus the test split's query and gallery as extra identities.

    fast-reid's ``COMBINEALL`` (the "full dataset" protocol): test identities are new classes
    (``<Name>_test_<pid>`` there), so their pids are shifted past the training ones; a pid shared
    by query and gallery stays one identity.
    """
    offset = max((item.pid for item in dataset.train), default=-1) + 1
    test_items = [*dataset.query, *dataset.gallery]
    shift = offset - min((item.pid for item in test_items), default=0)
    return [*dataset.train, *(replace(item, pid=item.pid + shift) for item in test_items)]


def _dataset_from_entry(
    entry: Mapping[str, Any], role: str, position: int, strict: bool
) -> ReIDDataset:
    options = dict(entry)
    combine = bool(options.pop("combineall", False))
    if combine and role != "sources":
        raise ValueError(f"data.{role}[{position}].combineall: only sources can combine splits")
    missing = [key for key in ("name", "root") if key not in options]
    if missing:
        raise ValueError(
            f"data.{role}[{position}] lacks {', '.join(missing)}: every entry needs "
            "{name: <dataset name>, root: <folder>} plus optional constructor arguments."
        )
    name, root = options.pop("name"), options.pop("root")
    # `name` selects the dataset class here, so the domain-name override has its own key.
    if "domain_name" in options:
        options["name"] = options.pop("domain_name")
    options.setdefault("strict", strict)
    dataset = load_reid_dataset(name, root, **options)
    if combine:
        dataset.train = combine_all(dataset)
    return dataset


class _PositionedLoader(DataLoader):
    """A training loader whose sampler starts where the run stands when it is built.

    Its position comes from counters saved in the checkpoint (``start_batch``), so it keeps no
    state of its own; the empty state-dict interface tells Lightning that it resumes mid-epoch
    correctly, instead of warning that it cannot.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        del state_dict  # the position was set at construction


class ReIDDataModule(pl.LightningDataModule):
    """Multi-source training and per-target evaluation data for DR50-style ReID.

    Args:
        sources: source domains, in domain-id order; each a mapping ``{name, root, ...}`` where
            ``name`` picks the dataset class (:func:`load_reid_dataset`), ``domain_name``
            optionally renames the domain, ``combineall: true`` adds its query and gallery as
            extra training identities, and other keys go to the class (``strict``,
            ``domain`` ...).
        targets: target (evaluation) domains in the same form.
        image_size: model input ``(height, width)``; images are resized in the workers.
        batch_size: images per merged batch (over all ranks).
        num_instances: images per identity (K) in every training batch.
        domain_batch_size: images per single-domain batch (over all ranks).
        num_workers: workers per loader (there are 1 + D training loaders).
        seed: base seed of the samplers; loader ``i`` (merged first, then domains) uses
            ``seed + i``.
        test_batch_size: images per evaluation batch on each rank.
        strict: raise on an unparsable file name or an undecodable image, naming the files;
            ``False`` skips and counts them (logged with each domain's summary,
            ``undecodable_images``), and replaces an image that breaks after the start-up
            check by a black one (counted, logged).
        check_images: decode every used image cheaply at set-up (cached by file size and mtime
            in ``<dataset root>/.metareid_image_check.json``), so that a bad file fails or is
            skipped before training instead of crashing a loader mid-run.
        synthetic: when given, ``generate_synthetic_reid(**synthetic)`` runs in
            ``prepare_data`` (it reuses an existing tree written with the same arguments).
    """

    def __init__(
        self,
        sources: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        image_size: Sequence[int] = (256, 128),
        batch_size: int = 64,
        num_instances: int = 2,
        domain_batch_size: int = 32,
        num_workers: int = 4,
        seed: int = 0,
        test_batch_size: int = 128,
        strict: bool = True,
        synthetic: Mapping[str, Any] | None = None,
        check_images: bool = True,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("data.sources is empty: give at least one {name, root} source.")
        if not targets:
            raise ValueError("data.targets is empty: give at least one {name, root} target.")
        for key, size in [("batch_size", batch_size), ("domain_batch_size", domain_batch_size)]:
            if num_instances < 1 or size % num_instances:
                raise ValueError(
                    f"data.{key}={size} must be a multiple of data.num_instances={num_instances} "
                    "(batches hold whole groups of K images per identity)."
                )
        self.sources = [dict(entry) for entry in sources]
        self.targets = [dict(entry) for entry in targets]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.domain_batch_size = domain_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.test_batch_size = test_batch_size
        self.strict = strict
        self.check_images = check_images
        self.undecodable_images: list[UndecodableImage] = []
        self.synthetic = dict(synthetic) if synthetic else None
        if self.synthetic is not None:
            from metareid.data.reid.synthetic import cached_domain_entries

            # Each generator setting has its own cached folder under synthetic.root.
            self.sources = cached_domain_entries(self.synthetic, self.sources)
            self.targets = cached_domain_entries(self.synthetic, self.targets)
        self.train_set: MultiSourceTrainSet | None = None
        self.domain_sets: list[SingleDomainView] = []
        self.test_sets: dict[str, ReIDTestSet] = {}

    # ----------------------------------------------------------------- set-up
    def prepare_data(self) -> None:
        if self.synthetic is None:
            return
        from metareid.data.reid.synthetic import generate_synthetic_reid

        log.info("Ensuring synthetic ReID domains under %s", self.synthetic.get("root"))
        generate_synthetic_reid(**self.synthetic, cache_by_settings=True)

    def _build_train_set(self) -> MultiSourceTrainSet:
        if self.train_set is None:
            datasets = [
                _dataset_from_entry(entry, "sources", i, self.strict)
                for i, entry in enumerate(self.sources)
            ]
            names = [dataset.name for dataset in datasets]
            if len(set(names)) != len(names):
                raise ValueError(
                    f"data.sources has repeated domain names {names}; give each entry a distinct "
                    "`domain_name` so domain ids and classifiers stay distinguishable."
                )
            for dataset in datasets:
                skipped = self._drop_undecodable(dataset, ("train",), "source")
                log.info("source %s%s", dataset.summary(), skipped)
            self.train_set = MultiSourceTrainSet(
                [dataset.train for dataset in datasets],
                names,
                image_size=self.image_size,
                strict=self.strict,
            )
            self.domain_sets = self.train_set.domain_views()
            self._check_identity_counts()
        return self.train_set

    def _check_identity_counts(self) -> None:
        merged_p = self.batch_size // self.num_instances
        if self.train_set.num_classes < merged_p:
            raise ValueError(
                f"data.batch_size={self.batch_size} with num_instances={self.num_instances} needs "
                f"{merged_p} identities but the sources hold {self.train_set.num_classes}."
            )
        domain_p = self.domain_batch_size // self.num_instances
        for name, count in zip(
            self.train_set.domain_names, self.train_set.num_classes_per_domain, strict=True
        ):
            if count < domain_p:
                raise ValueError(
                    f"data.domain_batch_size={self.domain_batch_size} with num_instances="
                    f"{self.num_instances} needs {domain_p} identities per domain but source "
                    f"{name!r} has {count}; lower domain_batch_size."
                )

    def _build_test_sets(self) -> dict[str, ReIDTestSet]:
        if not self.test_sets:
            for i, entry in enumerate(self.targets):
                dataset = _dataset_from_entry(entry, "targets", i, self.strict)
                skipped = self._drop_undecodable(dataset, ("query", "gallery"), "target")
                log.info("target %s%s", dataset.summary(), skipped)
                if dataset.name in self.test_sets:
                    raise ValueError(
                        f"data.targets repeats the domain {dataset.name!r}; give each a distinct "
                        "`domain_name`."
                    )
                self.test_sets[dataset.name] = ReIDTestSet(
                    dataset.query, dataset.gallery, image_size=self.image_size, strict=self.strict
                )
        return self.test_sets

    def _drop_undecodable(self, dataset: ReIDDataset, splits: tuple[str, ...], role: str) -> str:
        """Start-up image check of the splits this run reads; the summary's note on skips."""
        if not self.check_images:
            return ""
        dropped = drop_undecodable_images(dataset, splits, strict=self.strict, role=role)
        self.undecodable_images.extend(dropped)
        return f" ({len(dropped)} undecodable images skipped)" if dropped else ""

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._build_train_set()
        self._build_test_sets()

    @property
    def num_classes_per_domain(self) -> list[int]:
        """Identity count of each source in domain order (indexes the sources on first use)."""
        return list(self._build_train_set().num_classes_per_domain)

    @property
    def source_names(self) -> list[str]:
        return list(self._build_train_set().domain_names)

    @property
    def target_names(self) -> list[str]:
        return list(self._build_test_sets())

    # ----------------------------------------------------------------- loaders
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _train_stream_start(self) -> int:
        """Number of the merged batch the training loader yields first."""
        if self.trainer is None:
            return 0
        start = getattr(self.trainer.lightning_module, "merged_stream_start", None)
        if start is not None:
            return int(start)
        # One merged batch per training step. `processed`, not `completed`: a checkpoint written
        # at a batch end has processed that batch before Lightning counts it completed (Lightning
        # catches up only after this loader is built). global_step would over-count: with manual
        # optimisation it counts each optimiser's steps.
        return self.trainer.fit_loop.epoch_loop.batch_progress.total.processed

    @property
    def iters_per_epoch(self) -> int:
        """ACL's epoch: ``len(merged sources) // batch_size`` iterations (1,214 for the mix)."""
        return max(1, len(self._build_train_set()) // self.batch_size)

    def _identity_loader(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        start_batch: int,
        batches_per_epoch: int | None,
        persistent_workers: bool = True,
        loader_class: type[DataLoader] = DataLoader,
    ) -> DataLoader:
        rank, world = self._rank_world()
        sampler = IdentityBatchSampler(
            dataset.labels,
            p=batch_size // self.num_instances,
            k=self.num_instances,
            seed=seed,
            rank=rank,
            world_size=world,
            start_batch=start_batch,
            batches_per_epoch=batches_per_epoch,
        )
        return loader_class(
            dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=persistent_workers and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Merged P×K batches; one ACL epoch per pass, so Lightning's epochs are ACL's."""
        return self._identity_loader(
            self._build_train_set(),
            self.batch_size,
            self.seed,
            start_batch=self._train_stream_start(),
            batches_per_epoch=self.iters_per_epoch,
            loader_class=_PositionedLoader,
        )

    def merged_dataloader(self, start_batch: int, num_batches: int) -> DataLoader:
        """Merged batches ``start_batch, ..., start_batch + num_batches - 1`` of the stream that
        ``train_dataloader`` continues (same sampler seed), for batches drawn outside Lightning's
        loop."""
        return self._identity_loader(
            self._build_train_set(),
            self.batch_size,
            self.seed,
            start_batch=start_batch,
            batches_per_epoch=num_batches,
            persistent_workers=False,
        )

    def domain_dataloaders(self, start_batch: int = 0) -> list[DataLoader]:
        """One endless P×K loader per source domain (domain-id order) for the meta step.

        ``start_batch``: batches of each stream already consumed (meta steps taken) on resume.
        """
        self._build_train_set()
        return [
            self._identity_loader(
                view,
                self.domain_batch_size,
                self.seed + 1 + domain_id,
                start_batch=start_batch,
                batches_per_epoch=None,
            )
            for domain_id, view in enumerate(self.domain_sets)
        ]

    def _evaluation_loaders(self) -> list[DataLoader]:
        rank, world = self._rank_world()
        return [
            DataLoader(
                test_set,
                batch_sampler=InferenceBatchSampler(
                    len(test_set), batch_size=self.test_batch_size, rank=rank, world_size=world
                ),
                num_workers=self.num_workers,
                pin_memory=torch.cuda.is_available(),
            )
            for test_set in self._build_test_sets().values()
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._evaluation_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._evaluation_loaders()

    def predict_dataloader(self) -> list[DataLoader]:
        return self._evaluation_loaders()

    def describe(self) -> str:
        """Multi-line summary of sources, label ranges and targets."""
        train_set = self._build_train_set()
        lines = []
        for d, name in enumerate(train_set.domain_names):
            first = train_set.label_offsets[d]
            count = train_set.num_classes_per_domain[d]
            lines.append(f"source {d} {name}: labels [{first}, {first + count})")
        for name, test_set in self._build_test_sets().items():
            lines.append(
                f"target {name}: {test_set.num_query} query, "
                f"{len(test_set) - test_set.num_query} gallery"
            )
        return "\n".join(lines)
