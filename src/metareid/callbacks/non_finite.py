"""Stop a run at the first non-finite loss or weight, before a checkpoint of that state exists.

Lightning runs ``ModelCheckpoint`` callbacks after all others, so raising from this callback's
``on_train_batch_end`` ends the run before the checkpoint of the faulty step is written: the
newest checkpoint (``last.ckpt``) stays the last finite state.

What is checked after every training batch:

* the module's ``loss_terms`` (``{name: detached scalar tensor}``, set by ``training_step``;
  GaitModule: triplet / ce / total; ReIDModule: basic, meta-train and meta-test terms and the
  fast weights), or the returned loss when a module has none;
* every parameter and floating-point buffer (BatchNorm statistics) of the module;
* without a grad scaler, the gradients before each optimizer step: non-finite ones are dropped
  (``grad = None``, so the optimizer leaves every parameter as it is) and the batch counts as
  faulty. Under ``16-mixed`` inf/NaN gradients are the scaler's business: it skips those steps and
  lowers its scale, which is normal a few times in a row; ``max_consecutive_amp_skips`` in a row
  is not.

``max_non_finite_steps`` faulty batches whose weights stayed finite are tolerated (skipped,
counted, logged); the next one stops the run. Non-finite weights always stop it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)
# Names listed in a message (terms, weights, batch items) before "... and N more".
_LISTED = 8


class NonFiniteTrainingError(RuntimeError):
    """Training met a non-finite loss, gradient or weight (or the AMP scaler gave up)."""


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors if t.numel()]
    return bool(torch.stack(flags).all()) if flags else True  # one device sync, not one per tensor


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" ... and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def non_finite_names(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors with at least one NaN or inf (one device sync when none has)."""
    if _all_finite(tensors.values()):
        return []
    return [name for name, t in tensors.items() if t.numel() and not torch.isfinite(t).all()]


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating-point buffers (integer counters cannot be non-finite)."""
    state = dict(module.named_parameters())
    state.update(
        (name, buffer) for name, buffer in module.named_buffers() if buffer.is_floating_point()
    )
    return state


class NonFiniteGuard(Callback):
    """See the module docstring.

    Args:
        max_non_finite_steps: faulty training batches tolerated over the run (their optimizer
            steps skipped) before the run stops; 0 stops at the first.
        max_consecutive_amp_skips: optimizer steps in a row that the fp16 grad scaler may skip
            (inf gradients) before the run stops.
        check_weights: also check every parameter and floating-point buffer after each batch.
    """

    def __init__(
        self,
        max_non_finite_steps: int = 0,
        max_consecutive_amp_skips: int = 30,
        check_weights: bool = True,
    ) -> None:
        for name, value in (
            ("max_non_finite_steps", max_non_finite_steps),
            ("max_consecutive_amp_skips", max_consecutive_amp_skips),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"callbacks.non_finite.{name} must be a non-negative integer, got {value!r}"
                )
        self.max_non_finite_steps = max_non_finite_steps
        self.max_consecutive_amp_skips = max_consecutive_amp_skips
        self.check_weights = check_weights
        self.tolerated_steps = 0
        self.consecutive_amp_skips = 0
        self._last_scale: float | None = None
        self._dropped_gradients: list[str] = []

    # ----------------------------------------------------------------- state (resumes)
    def state_dict(self) -> dict[str, Any]:
        return {
            "tolerated_steps": self.tolerated_steps,
            "consecutive_amp_skips": self.consecutive_amp_skips,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tolerated_steps = int(state_dict.get("tolerated_steps", 0))
        self.consecutive_amp_skips = int(state_dict.get("consecutive_amp_skips", 0))

    # -------------------------------------------------------------------------- hooks
    @staticmethod
    def _grad_scaler(trainer: pl.Trainer):
        return getattr(trainer.precision_plugin, "scaler", None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._dropped_gradients = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._grad_scaler(trainer) is not None:
            return  # the scaler skips inf-gradient steps itself; see on_train_batch_end
        parameters = pl_module.named_parameters()
        gradients = {name: param.grad for name, param in parameters if param.grad is not None}
        bad = non_finite_names(gradients)
        if not bad:
            return
        self._dropped_gradients.extend(name for name in bad if name not in self._dropped_gradients)
        # Torch optimizers skip parameters without a gradient: this optimizer step changes nothing.
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        terms = self._loss_terms(pl_module, outputs)
        bad_terms = non_finite_names(terms)
        bad_weights = non_finite_names(module_state(pl_module)) if self.check_weights else []
        self._check_grad_scaler(trainer, pl_module)
        if not (bad_terms or bad_weights or self._dropped_gradients):
            return
        if not bad_weights and self.tolerated_steps < self.max_non_finite_steps:
            self.tolerated_steps += 1
            log.warning(
                "Non-finite training step %d tolerated (%d of callbacks.non_finite."
                "max_non_finite_steps=%d; its optimizer step was skipped): terms %s, gradients %s",
                self._step(trainer),
                self.tolerated_steps,
                self.max_non_finite_steps,
                bad_terms or "finite",
                _listing(self._dropped_gradients) or "finite",
            )
            return
        raise NonFiniteTrainingError(
            self._message(trainer, pl_module, terms, bad_terms, bad_weights)
        )

    def on_train_end(self, trainer, pl_module) -> None:
        if self.tolerated_steps:
            log.warning(
                "%d non-finite training step(s) were skipped during this run "
                "(callbacks.non_finite.max_non_finite_steps=%d)",
                self.tolerated_steps,
                self.max_non_finite_steps,
            )

    # ------------------------------------------------------------------------ helpers
    @staticmethod
    def _step(trainer: pl.Trainer) -> int:
        """1-based index of the training batch being finished (= optimizer step of one-optimizer
        modules; Lightning's global_step counts every optimizer's steps)."""
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)

    @staticmethod
    def _loss_terms(pl_module: pl.LightningModule, outputs: Any) -> dict[str, torch.Tensor]:
        terms = getattr(pl_module, "loss_terms", None)
        if terms:
            return {name: torch.as_tensor(value).detach() for name, value in terms.items()}
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        return {"loss": loss.detach()} if isinstance(loss, torch.Tensor) else {}

    def _check_grad_scaler(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scaler = self._grad_scaler(trainer)
        if scaler is None or not scaler.is_enabled():
            return
        scale = float(scaler.get_scale())
        skipped = self._last_scale is not None and scale < self._last_scale
        self._last_scale = scale
        self.consecutive_amp_skips = self.consecutive_amp_skips + 1 if skipped else 0
        if self.consecutive_amp_skips > self.max_consecutive_amp_skips:
            raise NonFiniteTrainingError(
                f"The fp16 grad scaler skipped {self.consecutive_amp_skips} optimizer steps in a "
                f"row up to training step {self._step(trainer)} (its scale fell to {scale:.3g}): "
                "the gradients overflow at every step, so the weights no longer change. Likely "
                f"causes: a learning rate too high ({self._learning_rates(trainer)}), fp16 "
                "overflow in the network (try trainer.precision=bf16-mixed or 32-true), or bad "
                f"input data.{self._checkpoint_hint(trainer)} To allow longer streaks, raise "
                "callbacks.non_finite.max_consecutive_amp_skips."
            )

    @staticmethod
    def _learning_rates(trainer: pl.Trainer) -> str:
        rates = [f"{group['lr']:.3g}" for opt in trainer.optimizers for group in opt.param_groups]
        return "lr " + ", ".join(dict.fromkeys(rates)) if rates else "no optimizer"

    @staticmethod
    def _checkpoint_hint(trainer: pl.Trainer) -> str:
        saved = [cb.last_model_path or cb.best_model_path for cb in trainer.checkpoint_callbacks]
        saved = [path for path in saved if path]
        if not saved:
            return " No checkpoint of this run was written before the fault."
        return (
            f" Nothing was saved of this state; the last finite checkpoint is {saved[0]} "
            f"(resume with ckpt_path={saved[0]} after fixing the cause)."
        )

    def _message(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        terms: Mapping[str, torch.Tensor],
        bad_terms: list[str],
        bad_weights: list[str],
    ) -> str:
        step = self._step(trainer)
        what = []
        if bad_terms:
            values = [f"{name}={float(terms[name].float().mean()):g}" for name in bad_terms]
            what.append(f"loss term(s) {_listing(values)}")
        if self._dropped_gradients:
            first = self._dropped_gradients[0]
            what.append(f"gradients of {len(self._dropped_gradients)} parameter(s) ({first}, ...)")
        if bad_weights:
            what.append(f"weights {_listing(bad_weights)}")
        batch_items = list(getattr(pl_module, "batch_descriptions", None) or [])
        batch = _listing(batch_items) if batch_items else "(the module does not describe it)"
        tolerance = (
            f"{self.tolerated_steps} earlier faulty step(s) were tolerated. "
            if self.tolerated_steps
            else ""
        )
        weights_note = (
            " The weights themselves are no longer finite, which no tolerance can undo."
            if bad_weights
            else ""
        )
        return (
            f"Non-finite values at training step {step} (epoch {trainer.current_epoch}, "
            f"precision {trainer.precision}): {'; '.join(what)}. The run stops here."
            f"{self._checkpoint_hint(trainer)}{weights_note}\nLikely causes:\n"
            f"  - the learning rate is too high ({self._learning_rates(trainer)}): lower "
            "model.optimizer.lr (and the warm-up);\n"
            "  - an fp16 overflow under trainer.precision=16-mixed: try bf16-mixed or 32-true;\n"
            f"  - a bad input batch: {batch}.\n"
            f"{tolerance}To skip up to N such steps instead of stopping, set "
            "callbacks.non_finite.max_non_finite_steps=N."
        )
