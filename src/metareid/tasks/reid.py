"""LightningModule for DR50 / ACL: multi-source training with a first-order meta step.

One training iteration of the released ACL code (dr50.md §4.4):

1. **basic step** on a merged P×K batch of all sources (BN ``general``; main SGD, momentum 0.9);
   the very first iteration runs it ``initial_basic_steps`` (10) times;
2. every ``meta_interval`` (3) iterations a **meta step**: one random source is held out as
   meta-test; meta-train = one batch of each other source (BN ``hold``); inner gradient step of
   size ``lr_meta`` (×0.5 for ``adaptor`` parameters) on detached gradients (first order);
   meta-test forward on those fast weights; outer SGD step (momentum 0) on ``L_mtr + L_mte``.

Lightning hands one batch per ``training_step``; the extra basic steps of the first iteration are
therefore the first ``initial_basic_steps - 1`` training steps, run without a meta step and
without advancing the LR schedule (the reference keeps the LR fixed inside one iteration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call
from torchmetrics.utilities.data import dim_zero_cat

from metareid.evaluation.reid import ReIDRetrieval, format_reid_table
from metareid.losses.reid import ACLLosses
from metareid.models.meta_ops import bn_mode, fast_weights, meta_gradients
from metareid.utils.distributed import distributed_world, gather_with_grad

META_UPDATE_SCOPES = ("all", "router")


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
        inner_lr_scale: multiplies the inner (meta-train) step size, which is the meta
            optimizer's current LR (1.0 = released).
        adaptor_lr_scale: further factor of that step for the CODE-block branch parameters
            (names containing ``adaptor``; 0.5 = released, see ``meta_ops.default_step_scale``).
        keep_eval_features: after each evaluation keep, per target, the features ``[N, C]``,
            ``pids``, ``camids`` and ``is_query`` ``[N]`` (on CPU) in ``last_eval_features``,
            e.g. for rank-list pictures; costs one copy of the test features in host memory.
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
        print_table: bool = True,
        inner_lr_scale: float = 1.0,
        adaptor_lr_scale: float = 0.5,
        keep_eval_features: bool = False,
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
        self.inner_lr_scale = inner_lr_scale
        self.adaptor_lr_scale = adaptor_lr_scale
        self.keep_eval_features = keep_eval_features
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
                ReIDRetrieval(distance=self.distance, rerank=self.rerank) for _ in names
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
            }
            for opt in (optimizer, meta_optimizer)
        ]
        return [optimizer, meta_optimizer], schedulers

    # ---------------------------------------------------------------- training
    def _images(self, batch: Mapping[str, Tensor]) -> Tensor:
        images = batch["image"].float()
        if self.augment is not None:
            images = self.augment(images)
        return images

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

    def _basic_step(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        optimizer = self.optimizers()[0]
        with bn_mode(self.net, "general"):
            outputs = self.net(self._images(batch))
        terms = self._forward_losses(outputs, batch["label"], batch["domain_id"], "basic")
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        return terms

    def _meta_test_domain(self, iteration: int, num_domains: int) -> int:
        # A pure function of (seed, iteration): identical on all ranks and after a resume.
        seed = int(getattr(self.trainer.datamodule, "seed", 0))
        return int(np.random.default_rng([seed, iteration]).integers(num_domains))

    # ------------------------------------------------------------- meta batches
    def _meta_steps_taken(self) -> int:
        """Meta steps before the current training step (where the domain streams resume)."""
        if self.meta_interval <= 0:
            return 0
        completed = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
        iterations = max(0, completed - (self.initial_basic_steps - 1))
        return -(-iterations // self.meta_interval)

    def on_train_start(self) -> None:
        self._domain_iterators = []
        if self.meta_interval > 0:
            loaders = self.trainer.datamodule.domain_dataloaders(
                start_batch=self._meta_steps_taken()
            )
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
        # Every stream advances once per meta step, used or not, so resumes stay aligned.
        batches = [self._domain_batch(d) for d in range(num_domains)]
        meta_test = batches.pop(held_out)
        meta_train = {
            key: torch.cat([batch[key] for batch in batches])
            for key in ("image", "label", "domain_id")
        }

        with bn_mode(self.net, "hold"):
            train_terms = self._forward_losses(
                self.net(self._images(meta_train)),
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
            weights.update(dict(self.net.named_buffers()))
            test_outputs = functional_call(self.net, weights, (self._images(meta_test),))
            test_terms = self._forward_losses(
                test_outputs, meta_test["label"], meta_test["domain_id"], "meta_test"
            )
        meta_loss = meta_train_loss + sum(test_terms.values())
        meta_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(meta_loss)
        if self.meta_update_scope == "router":
            for name, param in self.net.named_parameters():
                if not _is_router_parameter(name):
                    # Dropping the gradient (not toggling requires_grad) keeps DDP's reducer intact.
                    param.grad = None
        meta_optimizer.step()
        terms = {f"mtrain/{k}": v for k, v in train_terms.items()}
        terms.update({f"mtest/{k}": v for k, v in test_terms.items()})
        return terms

    def _inner_step_scale(self, parameter_name: str) -> float:
        # The released rule of meta_ops.default_step_scale, with its 0.5 made configurable.
        return self.adaptor_lr_scale if "adaptor" in parameter_name else 1.0

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # Lightning step s <-> ACL iteration s - (initial_basic_steps - 1); negative = warm-start.
        iteration = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
        iteration -= self.initial_basic_steps - 1
        logs = {f"basic/{k}": v.detach() for k, v in self._basic_step(batch).items()}
        if iteration >= 0:
            if self.meta_interval > 0 and iteration % self.meta_interval == 0:
                logs.update({k: v.detach() for k, v in self._meta_step(iteration).items()})
            for scheduler in self.lr_schedulers() or []:
                scheduler.step()
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
            self.log_dict(
                {
                    f"test/{name}/{k}": float(result[k])
                    for k in ("rank1", "rank5", "rank10", "mAP", "mINP", "metric")
                },
                add_dataloader_idx=False,
            )
        if results:
            self.log("test/rank1", float(np.mean([r["rank1"] for r in results.values()])))
            self.log("test/mAP", float(np.mean([r["mAP"] for r in results.values()])))
        self.last_results = results
        if self.print_table and results and self.trainer.is_global_zero:
            print(
                f"\nReID retrieval (step {self.global_step})\n{format_reid_table(results)}",
                flush=True,
            )

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation()

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation()
