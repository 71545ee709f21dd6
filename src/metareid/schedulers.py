"""Learning-rate factor schedules for ``torch.optim.lr_scheduler.LambdaLR``.

Each schedule is a small callable class mapping the number of scheduler steps taken so far
(``t = 0`` before the first step) to a multiplier of the optimizer's base learning rate. They
hold only ints, floats, strings and tuples: ``LambdaLR.state_dict()`` stores a callable
object's ``__dict__``, so a Lightning checkpoint stays loadable with
``torch.load(weights_only=True)`` -- which a lambda or ``functools.partial`` would break.

Both are meant to be stepped once per optimizer step (Lightning ``interval="step"``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosine", "WarmupMultiStep", "build_lambda_lr", "warmup_multiplier"]

_WARMUP_METHODS = ("linear", "constant")


def warmup_multiplier(step: int, warmup_iters: int, warmup_factor: float, method: str) -> float:
    """Warm-up multiplier at ``step``: 1 once ``step >= warmup_iters``.

    ``linear`` rises from ``warmup_factor`` at step 0 towards 1, i.e.
    ``warmup_factor * (1 - step / warmup_iters) + step / warmup_iters``; ``constant`` stays at
    ``warmup_factor`` for the whole warm-up.
    """
    if step >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    progress = step / warmup_iters
    return warmup_factor * (1.0 - progress) + progress


def _check_warmup(warmup_iters: int, warmup_factor: float, warmup_method: str) -> None:
    if warmup_method not in _WARMUP_METHODS:
        raise ValueError(f"warmup_method must be one of {_WARMUP_METHODS}, got {warmup_method!r}")
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
    if not 0.0 < warmup_factor <= 1.0:
        raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")


class WarmupMultiStep:
    """Warm-up followed by step decay (maskrcnn-benchmark style, used by MetaGait and GaitGL).

    ``factor(t) = warmup(t) * gamma ** (number of milestones <= t)``, so the decay takes effect
    *at* a milestone. MetaGait: the defaults with base lr 3.5e-4; GaitGL CASIA-B:
    ``warmup_iters=0, milestones=(70000,)`` with base lr 1e-4.

    Args:
        warmup_iters: warm-up length in steps (0 disables warm-up).
        warmup_factor: multiplier at step 0.
        milestones: strictly increasing steps at which the factor is multiplied by ``gamma``.
        gamma: decay per milestone.
        warmup_method: ``"linear"`` or ``"constant"``.
    """

    def __init__(
        self,
        warmup_iters: int = 10000,
        warmup_factor: float = 0.01,
        milestones: Sequence[int] = (80000, 100000),
        gamma: float = 0.1,
        warmup_method: str = "linear",
    ) -> None:
        _check_warmup(warmup_iters, warmup_factor, warmup_method)
        # tuple(int) also turns a Hydra ListConfig into checkpoint-safe primitives.
        milestones = tuple(int(m) for m in milestones)
        if list(milestones) != sorted(set(milestones)):
            raise ValueError(f"milestones must be strictly increasing, got {milestones}")
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.milestones = milestones
        self.gamma = float(gamma)
        self.warmup_method = warmup_method

    def __call__(self, step: int) -> float:
        warmup = warmup_multiplier(step, self.warmup_iters, self.warmup_factor, self.warmup_method)
        return warmup * self.gamma ** bisect_right(self.milestones, step)

    def __repr__(self) -> str:
        return (
            f"WarmupMultiStep(warmup_iters={self.warmup_iters}, "
            f"warmup_factor={self.warmup_factor}, milestones={self.milestones}, "
            f"gamma={self.gamma}, warmup_method={self.warmup_method!r})"
        )


class WarmupCosine:
    """fast-reid / ACL schedule: per-iteration warm-up, then cosine annealing once per epoch.

    With ``W = warmup_iters``, ``E = iters_per_epoch``, epoch ``e = t // E`` and
    ``T = max_epochs - ceil(W / E)`` cosine epochs:

    * ``t < W``: ``lr = base_lr * warmup(t)`` (linear from ``warmup_factor``).
    * otherwise, with ``k = max(0, e - ceil(W / E) + 1)`` cosine steps taken (fast-reid steps
      the cosine at the end of every epoch whose last iteration reaches ``W``):
      ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * k / T)) / 2``.

    For ACL (base 0.04, eta_min 4e-5, 60 epochs, 10 warm-up epochs) this gives 4e-4 at ``t = 0``,
    ``eta_min + (base - eta_min)(1 + cos(pi (e - 9) / 50)) / 2`` in epoch ``e`` of 10..59 and
    exactly ``eta_min`` in epoch 59. ``k`` is capped at ``T``, so running past ``max_epochs``
    holds ``eta_min`` (torch's ``CosineAnnealingLR`` would start rising again).

    The factor is ``lr / base_lr``, so ``base_lr`` must equal the optimizer's learning rate
    (``build_lambda_lr`` checks this).

    Note: fast-reid chains torch's recursive ``CosineAnnealingLR`` onto the last warm-up value
    ``base_lr * warmup(W - 1)`` rather than ``base_lr``; that scales the cosine part by
    ``1 - (1 - warmup_factor) / W`` (a relative 1e-4 for W = 10,000). This class follows the
    closed form of the specification instead.

    Args:
        iters_per_epoch: optimizer steps per epoch.
        base_lr: the optimizer's base learning rate.
        eta_min: absolute learning-rate floor of the cosine.
        max_epochs: total training epochs.
        warmup_epochs: warm-up length in epochs, used when ``warmup_iters`` is None.
        warmup_iters: warm-up length in steps; overrides ``warmup_epochs``.
        warmup_factor: warm-up multiplier at step 0.
        warmup_method: ``"linear"`` or ``"constant"``.
    """

    def __init__(
        self,
        iters_per_epoch: int,
        base_lr: float = 0.04,
        eta_min: float = 4e-5,
        max_epochs: int = 60,
        warmup_epochs: int = 10,
        warmup_iters: int | None = None,
        warmup_factor: float = 0.01,
        warmup_method: str = "linear",
    ) -> None:
        if iters_per_epoch <= 0:
            raise ValueError(f"iters_per_epoch must be > 0, got {iters_per_epoch}")
        if warmup_iters is None:
            warmup_iters = warmup_epochs * iters_per_epoch
        _check_warmup(warmup_iters, warmup_factor, warmup_method)
        if not 0.0 <= eta_min <= base_lr:
            raise ValueError(f"need 0 <= eta_min <= base_lr, got eta_min={eta_min}, {base_lr=}")
        warmup_epoch_count = math.ceil(warmup_iters / iters_per_epoch)
        if max_epochs <= warmup_epoch_count:
            raise ValueError(
                f"max_epochs ({max_epochs}) must exceed the {warmup_epoch_count} warm-up epochs"
            )
        self.iters_per_epoch = int(iters_per_epoch)
        self.base_lr = float(base_lr)
        self.eta_min = float(eta_min)
        self.max_epochs = int(max_epochs)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_method = warmup_method
        self.warmup_epoch_count = warmup_epoch_count
        self.cosine_epochs = self.max_epochs - warmup_epoch_count

    def __call__(self, step: int) -> float:
        if step < self.warmup_iters:
            return warmup_multiplier(
                step, self.warmup_iters, self.warmup_factor, self.warmup_method
            )
        epoch = step // self.iters_per_epoch
        cosine_steps = min(max(0, epoch - self.warmup_epoch_count + 1), self.cosine_epochs)
        cosine = (1.0 + math.cos(math.pi * cosine_steps / self.cosine_epochs)) / 2.0
        lr = self.eta_min + (self.base_lr - self.eta_min) * cosine
        return lr / self.base_lr

    def __repr__(self) -> str:
        return (
            f"WarmupCosine(iters_per_epoch={self.iters_per_epoch}, base_lr={self.base_lr}, "
            f"eta_min={self.eta_min}, max_epochs={self.max_epochs}, "
            f"warmup_iters={self.warmup_iters}, warmup_factor={self.warmup_factor}, "
            f"warmup_method={self.warmup_method!r})"
        )


def build_lambda_lr(
    optimizer: torch.optim.Optimizer,
    schedule: WarmupMultiStep | WarmupCosine,
    last_step: int = -1,
) -> LambdaLR:
    """Wrap ``schedule`` in a ``LambdaLR`` (one shared factor for every parameter group).

    Args:
        optimizer: the optimizer whose groups' ``lr`` is the base learning rate.
        schedule: a factor schedule of this module.
        last_step: passed to ``LambdaLR`` as ``last_epoch`` (resuming needs ``initial_lr`` in
            the groups, as for any torch scheduler).

    Raises:
        ValueError: if a ``WarmupCosine``'s ``base_lr`` differs from a group's learning rate,
            which would make its absolute ``eta_min`` wrong.
    """
    if isinstance(schedule, WarmupCosine):
        for index, group in enumerate(optimizer.param_groups):
            group_lr = group.get("initial_lr", group["lr"])
            if not math.isclose(group_lr, schedule.base_lr, rel_tol=1e-9):
                raise ValueError(
                    f"WarmupCosine(base_lr={schedule.base_lr}) does not match the learning "
                    f"rate {group_lr} of optimizer param group {index}; pass the optimizer's "
                    "lr as base_lr"
                )
    return LambdaLR(optimizer, lr_lambda=schedule, last_epoch=last_step)
