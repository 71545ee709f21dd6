"""LightningModule for DR50 / ACL: multi-source training with a first-order meta step.

One training iteration of the released ACL code (dr50.md §4.4):

1. **basic step** on a merged P×K batch of all sources (BN ``general``; main SGD, momentum 0.9);
   the very first iteration runs it ``initial_basic_steps`` (10) times;
2. every ``meta_interval`` (3) iterations a **meta step**: one random source is held out as
   meta-test; meta-train = one batch of each other source (BN ``hold``); inner gradient step of
   size ``lr_meta`` (×0.5 for ``adaptor`` parameters) on detached gradients (first order);
   meta-test forward on those fast weights; outer SGD step (momentum 0) on ``L_mtr + L_mte``.

One ``training_step`` is one ACL iteration, so a run does ``epochs × iters_per_epoch``
iterations and Lightning's epoch boundaries (LR schedule, evaluation, checkpoints) fall where the
release has them. The first iteration's extra basic steps take merged batches ``0 …
initial_basic_steps - 2`` from a side loader of the same stream; Lightning's loader starts at the
next batch. Only one optimizer step per iteration is counted by Lightning, so
``trainer.global_step`` is the number of ACL iterations done (checkpoint names, ``max_steps``,
``every_n_train_steps``, the logged x-axis).

Resuming is exact: the iteration, meta-step and merged-batch counters live in the checkpoint
(``acl_loop``), the samplers are functions of (seed, batch number), and the augmentation of
every batch is seeded from its position (:func:`~metareid.data.reid.transforms.augment_seeded`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.func import functional_call
from torchmetrics.utilities.data import dim_zero_cat

from metareid.data.reid.transforms import augment_seeded
from metareid.evaluation.reid import ReIDRetrieval, format_reid_table
from metareid.losses.reid import ACLLosses
from metareid.models.compile import training_forward
from metareid.models.meta_ops import bn_mode, fast_weights, meta_gradients
from metareid.utils.distributed import distributed_world, gather_with_grad
from metareid.utils.publish import evaluation_stage, publish_table

META_UPDATE_SCOPES = ("all", "router")
#: LearningRateMonitor names of the main and the meta optimizer's learning rates.
LR_NAMES = ("lr-main", "lr-meta")
# Checkpoint key of the loop counters; Lightning's own progress counts batches one short at a
# batch-end checkpoint and its global_step cannot tell the two optimizers apart.
LOOP_STATE_KEY = "acl_loop"
# Augmentation streams: every augmented batch is keyed by (seed, stream, position, rank).
_MERGED_STREAM, _META_TRAIN_STREAM, _META_TEST_STREAM = 0, 1, 2

log = logging.getLogger(__name__)


def _no_closure() -> None:
    return None


def _is_router_parameter(name: str) -> bool:
    # The authors' stated intent (ACL issue #2): only the HyperRouters' fc1/fc2 are meta-updated.
    return ".router" in name and "fc_classifier" not in name


class ReIDModule(pl.LightningModule):
    """Train DR50 + MetaEmbeddingHead with the ACL losses and evaluate CMC/mAP per target.

    Args:
        net: ``ReIDBaseline`` (pixel normalisation, backbone, head); training forward returns the
            head dict plus ``routing_weights``, eval forward the neck features ``[N, C]``.
        losses: ``ACLLosses`` with the released weights.
        optimizer / meta_optimizer: partial SGD factories (main: momentum 0.9; meta: momentum 0).
        scheduler: partial schedule factory called with ``iters_per_epoch`` (e.g. ``WarmupCosine``);
            one instance per optimizer, stepped once per iteration.
        augment: batch augmentation applied on device to the training images (0-255 floats).
        meta_interval: a meta step every this many iterations (0 disables meta-learning).
        initial_basic_steps: basic steps of the first iteration.
        meta_update_scope: ``"all"`` (released behaviour: every parameter with a gradient) or
            ``"router"`` (only the HyperRouters).
        flip_test: average the features of each test image and its mirror.
        distance / rerank: evaluation distance and k-reciprocal re-ranking.
        retrieval / retrieval_topk: ``"dense"`` ranks the whole gallery; ``"faiss"`` ranks each
            query's exact top ``retrieval_topk`` (``metareid.evaluation.topk``: mAP@k, no
            re-ranking) for galleries too large for the dense distance blocks.
        inner_lr_scale: multiplies the inner (meta-train) step size, which is the meta
            optimizer's current LR (1.0 = released).
        adaptor_lr_scale: further factor of that step for the CODE-block branch parameters
            (names containing ``adaptor``; 0.5 = released, see ``meta_ops.default_step_scale``).
        keep_eval_features: after each evaluation keep, per target, the features ``[N, C]``,
            ``pids``, ``camids`` and ``is_query`` ``[N]`` (on CPU) in ``last_eval_features``,
            e.g. for rank-list pictures; costs one copy of the test features in host memory.
        release_zero_grad: clear gradients the way the release's torch 1.6 did, by zeroing
            them (``zero_grad(set_to_none=False)``): a parameter that once had a gradient keeps
            getting weight decay (and momentum, in the basic step) when a step's loss does not
            reach it, e.g. the classifier of a domain absent from a basic batch, and the three
            classifiers in every meta step. ``False`` drops the gradients (today's torch), so
            such parameters stay put.
        compile: run the basic-step and meta-train forwards through ``torch.compile`` (one
            graph per BN mode); the meta-test forward (``functional_call`` on fast weights) and
            evaluation use the plain module. See ``metareid.models.compile``. Off by default:
            turn on where measured faster.
        channels_last: store the convolution weights as ``channels_last`` (NHWC convolutions).

    Attributes:
        iterations_done / meta_steps_done / merged_batches_drawn: loop counters, saved in the
            checkpoint under ``acl_loop``.
        loss_terms: after each ``training_step``, its detached 0-dim loss terms by name
            (``basic/<term>``, ``mtrain/<term>``, ``mtest/<term>``) plus, when a meta step ran,
            ``meta/fast_weights`` = the largest ``|θ'|`` of the fast weights, non-finite iff
            one of them is.
        batch_descriptions: the image paths of every batch that step used (merged first, then
            meta-train, then meta-test).
    """

    def __init__(
        self,
        net: nn.Module,
        losses: ACLLosses,
        optimizer: Callable[..., torch.optim.Optimizer],
        meta_optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Callable[[int], float]] | None = None,
        augment: nn.Module | None = None,
        meta_interval: int = 3,
        initial_basic_steps: int = 10,
        meta_update_scope: str = "all",
        flip_test: bool = False,
        distance: str = "cosine",
        rerank: bool = False,
        retrieval: str = "dense",
        retrieval_topk: int = 100,
        print_table: bool = True,
        inner_lr_scale: float = 1.0,
        adaptor_lr_scale: float = 0.5,
        keep_eval_features: bool = False,
        release_zero_grad: bool = True,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("inner_lr_scale", inner_lr_scale),
            ("adaptor_lr_scale", adaptor_lr_scale),
        ):
            if not value >= 0:
                raise ValueError(f"model.{name} must be a non-negative number, got {value!r}")
        if meta_update_scope not in META_UPDATE_SCOPES:
            raise ValueError(
                f"model.meta_update_scope must be one of {META_UPDATE_SCOPES}, "
                f"got {meta_update_scope!r}"
            )
        self.save_hyperparameters(
            ignore=["net", "losses", "optimizer", "meta_optimizer", "scheduler", "augment"],
            logger=False,
        )
        self.automatic_optimization = False
        self.net = net
        # A bound method, not a sub-module: the weights stay registered once, under `net`.
        self._training_forward = training_forward(net, compile=compile, channels_last=channels_last)
        self.losses = losses
        self.optimizer_factory = optimizer
        self.meta_optimizer_factory = meta_optimizer
        self.schedule_factory = scheduler
        self.augment = augment
        self.meta_interval = meta_interval
        self.initial_basic_steps = max(1, initial_basic_steps)
        self.meta_update_scope = meta_update_scope
        self.flip_test = flip_test
        self.print_table = print_table
        self.distance, self.rerank = distance, rerank
        self.retrieval, self.retrieval_topk = retrieval, retrieval_topk
        self.inner_lr_scale = inner_lr_scale
        self.adaptor_lr_scale = adaptor_lr_scale
        self.keep_eval_features = keep_eval_features
        self.release_zero_grad = release_zero_grad
        self.iterations_done = 0
        self.meta_steps_done = 0
        self.merged_batches_drawn = 0
        self.loss_terms: dict[str, Tensor] = {}
        self.batch_descriptions: list[str] = []
        self.eval_metrics = nn.ModuleList()
        self.target_names: list[str] = []
        self.last_results: dict[str, dict[str, Any]] = {}
        self.last_eval_features: dict[str, dict[str, Tensor]] = {}
        self._domain_iterators: list = []

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        names = list(getattr(datamodule, "target_names", None) or ["target"])
        if names != self.target_names:
            self.target_names = names
            self.eval_metrics = nn.ModuleList(
                ReIDRetrieval(
                    distance=self.distance,
                    rerank=self.rerank,
                    retrieval=self.retrieval,
                    topk=self.retrieval_topk,
                )
                for _ in names
            )

    def precise_bn_forward(self, batch: Mapping[str, Any]) -> None:
        """Training-mode forward of a merged batch for the PreciseBN callback (BN ``general``)."""
        with bn_mode(self.net, "general"):
            self.net(batch["image"].float())

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        meta_optimizer = self.meta_optimizer_factory(params=params)
        if self.schedule_factory is None:
            return [optimizer, meta_optimizer]
        iters_per_epoch = self.trainer.datamodule.iters_per_epoch
        schedulers = [
            {
                "scheduler": torch.optim.lr_scheduler.LambdaLR(
                    opt, self.schedule_factory(iters_per_epoch=iters_per_epoch)
                ),
                "interval": "step",
                # LearningRateMonitor's column (it would otherwise be lr-SGD / lr-SGD-1).
                "name": name,
            }
            for opt, name in ((optimizer, LR_NAMES[0]), (meta_optimizer, LR_NAMES[1]))
        ]
        return [optimizer, meta_optimizer], schedulers

    # ---------------------------------------------------------------- training
    def _data_seed(self) -> int:
        return int(getattr(self.trainer.datamodule, "seed", 0))

    def _images(self, batch: Mapping[str, Tensor], stream: int, position: int) -> Tensor:
        """Training images ``[B, 3, H, W]``, augmented as a pure function of their position."""
        images = batch["image"].float()
        if self.augment is not None:
            key = (self._data_seed(), stream, position, self.global_rank)
            images = augment_seeded(self.augment, images, key)
        return images

    def _clear_gradients(self, optimizer) -> None:
        # torch 1.6 (the release) zeroed gradients; zeroed ones still get weight decay/momentum.
        optimizer.zero_grad(set_to_none=not self.release_zero_grad)

    def _optimizer_step(self, optimizer, counted: bool) -> None:
        """Step ``optimizer``; only a ``counted`` step advances ``trainer.global_step``.

        Lightning counts every ``LightningOptimizer.step()``. The uncounted path is the same call
        minus that count: the strategy's ``optimizer_step`` (precision plugin, AMP scaler,
        ``on_before_optimizer_step`` hooks) on the wrapped torch optimizer.
        """
        if counted:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=_no_closure)

    def _forward_losses(
        self, outputs: dict, labels: Tensor, domain_ids: Tensor, step: str
    ) -> dict[str, Tensor]:
        """Loss terms of one step, always on the whole batch gathered from all ranks.

        The cross-domain terms (triplet_add, SCT, cluster losses) and the non-zero-averaged CE
        change meaning on a per-device chunk (the reference's DataParallel pitfall, dr50.md §4.1).
        """
        gathered = {
            key: [gather_with_grad(v.float()) for v in value]
            if isinstance(value, list | tuple)
            else gather_with_grad(value.float())
            for key, value in outputs.items()
        }
        loss_fn = {
            "basic": self.losses.basic,
            "meta_train": self.losses.meta_train,
            "meta_test": self.losses.meta_test,
        }[step]
        return loss_fn(gathered, gather_with_grad(labels), gather_with_grad(domain_ids))

    def _basic_step(self, batch: Mapping[str, Tensor], counted: bool) -> dict[str, Tensor]:
        """One main-optimizer step on merged batch number ``merged_batches_drawn``."""
        optimizer = self.optimizers()[0]
        with bn_mode(self.net, "general"):
            outputs = self._training_forward(
                self._images(batch, _MERGED_STREAM, self.merged_batches_drawn)
            )
        self.merged_batches_drawn += 1
        terms = self._forward_losses(outputs, batch["label"], batch["domain_id"], "basic")
        loss = sum(terms.values())
        self._clear_gradients(optimizer)
        self.manual_backward(loss)
        self._optimizer_step(optimizer, counted)
        return terms

    def _meta_test_domain(self, iteration: int, num_domains: int) -> int:
        # A pure function of (seed, iteration): identical on all ranks and after a resume.
        return int(np.random.default_rng([self._data_seed(), iteration]).integers(num_domains))

    # ------------------------------------------------------------ loop state
    @property
    def merged_stream_start(self) -> int:
        """Merged batch number Lightning's training loader must yield next (read by the data
        module): before the first iteration, the batch after those of the side loader."""
        if self.iterations_done == 0:
            return self.merged_batches_drawn + self.initial_basic_steps - 1
        return self.merged_batches_drawn

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[LOOP_STATE_KEY] = {
            "iterations_done": self.iterations_done,
            "meta_steps_done": self.meta_steps_done,
            "merged_batches_drawn": self.merged_batches_drawn,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(LOOP_STATE_KEY)
        if state is None:
            # Older checkpoints: one Lightning step per basic step, global_step counting both
            # optimizers. Derive the counters; the data streams continue approximately.
            state = self._legacy_loop_state(checkpoint)
            # Evaluating such a file (or a converted ACL one) needs no counters; resuming does.
            if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
                log.warning(
                    "The checkpoint has no '%s' counters (written before they existed); derived "
                    "%s from Lightning's progress. The resumed run is not an exact continuation.",
                    LOOP_STATE_KEY,
                    state,
                )
        self.iterations_done = int(state["iterations_done"])
        self.meta_steps_done = int(state["meta_steps_done"])
        self.merged_batches_drawn = int(state["merged_batches_drawn"])

    def _legacy_loop_state(self, checkpoint: Mapping[str, Any]) -> dict[str, int]:
        progress = (
            checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        )
        steps = int(progress.get("total", {}).get("processed", 0))
        iterations = max(0, steps - (self.initial_basic_steps - 1))
        meta = -(-iterations // self.meta_interval) if self.meta_interval > 0 else 0
        return {
            "iterations_done": iterations,
            "meta_steps_done": meta,
            "merged_batches_drawn": steps,
        }

    # ------------------------------------------------------------- meta batches
    def on_train_start(self) -> None:
        self._domain_iterators = []
        if self.meta_interval > 0:
            loaders = self.trainer.datamodule.domain_dataloaders(start_batch=self.meta_steps_done)
            if len(loaders) < 2:
                raise ValueError(
                    f"The meta step needs at least two source domains; data.sources has "
                    f"{len(loaders)}. Set model.meta_interval=0 for single-source training."
                )
            self._domain_iterators = [iter(loader) for loader in loaders]

    def on_train_end(self) -> None:
        self._domain_iterators = []  # releases the loaders' worker processes

    def _domain_batch(self, domain_id: int) -> dict[str, Tensor]:
        batch = next(self._domain_iterators[domain_id])
        return self.transfer_batch_to_device(batch, self.device, 0)

    def _meta_step(self, iteration: int) -> dict[str, Tensor]:
        meta_optimizer = self.optimizers()[1]
        num_domains = len(self._domain_iterators)
        held_out = self._meta_test_domain(iteration, num_domains)
        position = self.meta_steps_done
        # Every stream advances once per meta step, used or not, so resumes stay aligned.
        batches = [self._domain_batch(d) for d in range(num_domains)]
        self.meta_steps_done += 1
        meta_test = batches.pop(held_out)
        meta_train = {
            key: torch.cat([batch[key] for batch in batches])
            for key in ("image", "label", "domain_id")
        }
        self.batch_descriptions += [
            *(path for batch in batches for path in _paths(batch)),
            *_paths(meta_test),
        ]

        with bn_mode(self.net, "hold"):
            train_terms = self._forward_losses(
                self._training_forward(self._images(meta_train, _META_TRAIN_STREAM, position)),
                meta_train["label"],
                meta_train["domain_id"],
                "meta_train",
            )
            meta_train_loss = sum(train_terms.values())
            grads = meta_gradients(meta_train_loss, self.net)
            _, world = distributed_world()
            if world > 1:
                # Each rank's autograd.grad only sees its local samples; the inner step uses the
                # gradient of the global meta-train loss (see utils.distributed).
                for grad in grads.values():
                    if grad is not None:
                        dist.all_reduce(grad)
                        grad.div_(world)
            step_size = meta_optimizer.param_groups[0]["lr"] * self.inner_lr_scale
            weights = fast_weights(self.net, grads, step_size, scale_fn=self._inner_step_scale)
            # max |θ'|: non-finite iff some fast weight is (amax propagates NaN).
            fast_weights_absmax = torch.stack(
                [w.detach().abs().amax() for w in weights.values() if w.numel()]
            ).amax()
            weights.update(dict(self.net.named_buffers()))
            test_images = self._images(meta_test, _META_TEST_STREAM, position)
            test_outputs = functional_call(self.net, weights, (test_images,))
            test_terms = self._forward_losses(
                test_outputs, meta_test["label"], meta_test["domain_id"], "meta_test"
            )
        meta_loss = meta_train_loss + sum(test_terms.values())
        self._clear_gradients(meta_optimizer)
        self.manual_backward(meta_loss)
        if self.meta_update_scope == "router":
            for name, param in self.net.named_parameters():
                if not _is_router_parameter(name):
                    # Dropping the gradient (not toggling requires_grad) keeps DDP's reducer intact.
                    param.grad = None
        self._optimizer_step(meta_optimizer, counted=False)
        terms = {f"mtrain/{k}": v for k, v in train_terms.items()}
        terms.update({f"mtest/{k}": v for k, v in test_terms.items()})
        terms["meta/fast_weights"] = fast_weights_absmax
        return terms

    def _inner_step_scale(self, parameter_name: str) -> float:
        # The released rule of meta_ops.default_step_scale, with its 0.5 made configurable.
        return self.adaptor_lr_scale if "adaptor" in parameter_name else 1.0

    def _first_iteration_batches(self) -> Iterator[Mapping[str, Any]]:
        """The extra merged batches of iteration 0 (numbers ``0 … initial_basic_steps - 2``)."""
        count = self.initial_basic_steps - 1
        if count <= 0:
            return
        loader = self.trainer.datamodule.merged_dataloader(self.merged_batches_drawn, count)
        for batch in loader:
            yield self.transfer_batch_to_device(batch, self.device, 0)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """One ACL iteration: basic step(s), a meta step every ``meta_interval``, LR step."""
        iteration = self.iterations_done
        self.batch_descriptions = []
        basic_terms: dict[str, Tensor] = {}
        for extra_batch in self._first_iteration_batches() if iteration == 0 else ():
            self.batch_descriptions += _paths(extra_batch)
            terms = self._basic_step(extra_batch, counted=False)
            basic_terms = _keep_first_non_finite(basic_terms, terms)
        # Lightning's batch comes last and its step is the iteration's one counted step.
        self.batch_descriptions += _paths(batch)
        terms = self._basic_step(batch, counted=True)
        basic_terms = _keep_first_non_finite(basic_terms, terms)
        logs = {f"basic/{k}": v.detach() for k, v in basic_terms.items()}
        if self.meta_interval > 0 and iteration % self.meta_interval == 0:
            logs.update({k: v.detach() for k, v in self._meta_step(iteration).items()})
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()
        self.iterations_done += 1
        self.loss_terms = dict(logs)
        logs.pop("meta/fast_weights", None)  # a fault signal for loss_terms, not a curve to log
        logs["train/loss"] = sum(v for k, v in logs.items() if k.startswith("basic/"))
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch["label"].shape[0])

    def lr_schedulers(self):
        schedulers = super().lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    # -------------------------------------------------------------- evaluation
    def _features(self, images: Tensor) -> Tensor:
        features = self.net(images.float())
        if self.flip_test:
            features = (features + self.net(images.float().flip(-1))) / 2
        return features

    def _evaluation_step(self, batch: Mapping[str, Tensor], dataloader_idx: int = 0) -> None:
        self.eval_metrics[dataloader_idx].update(
            self._features(batch["image"]), batch["pid"], batch["camid"], batch["is_query"]
        )

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx)

    def _finish_evaluation(self) -> None:
        stage = evaluation_stage(self.trainer)
        results = {}
        self.last_eval_features = {}
        for name, metric in zip(self.target_names, self.eval_metrics, strict=True):
            if not metric.update_called:
                continue
            result = metric.compute()
            if self.keep_eval_features:
                # This process's samples, in loader order (compute() restores the local states).
                self.last_eval_features[name] = {
                    key: dim_zero_cat(getattr(metric, key)).detach().cpu()
                    for key in ("features", "pids", "camids", "is_query")
                }
            metric.reset()
            results[name] = result
            # Every rank computed the same synced values: sync_dist averages equal numbers.
            self.log_dict(
                {
                    f"{stage}/{name}/{k}": float(result[k])
                    for k in ("rank1", "rank5", "rank10", "mAP", "mINP", "metric")
                },
                add_dataloader_idx=False,
                sync_dist=True,
            )
        if results:
            for key in ("rank1", "mAP"):
                mean = float(np.mean([r[key] for r in results.values()]))
                self.log(f"{stage}/{key}", mean, sync_dist=True)
        self.last_results = results
        self.evaluated_weights_step = self.trainer.global_step
        if self.print_table and results and self.trainer.is_global_zero:
            publish_table(
                f"\nReID retrieval (step {self.global_step})\n{format_reid_table(results)}"
            )

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation()

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation()


def _paths(batch: Mapping[str, Any]) -> list[str]:
    """The batch's image paths, or its labels when the dataset gives no paths."""
    if "path" in batch:
        return [str(path) for path in batch["path"]]
    return [f"label {label}" for label in batch["label"].tolist()]


def _keep_first_non_finite(kept: dict[str, Tensor], latest: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per term, the latest value unless an earlier step already gave a non-finite one."""
    merged = dict(latest)
    for name, value in kept.items():
        if not torch.isfinite(value).all():
            merged[name] = value
    return merged
