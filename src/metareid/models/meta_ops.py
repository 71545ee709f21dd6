"""Meta-learning layers for DR50 and the fast-weight machinery that drives them.

Design
------
The ACL/MetaBIN reference threads an ``opt`` dict through every ``forward`` and consumes a list of
gradients *positionally*, which silently breaks as soon as a module runs out of registration
order. Here the two concerns are separated instead:

* **Fast weights are keyed by parameter name.** Every layer below is an ordinary ``nn.Module``
  whose ``forward`` reads ``self.weight`` / ``self.bias`` etc. A meta-test forward is therefore
  ``torch.func.functional_call(model, fast_weights(model, grads, step_size), (inputs,))``; no layer
  needs to know whether it runs with real or fast weights.
* **BatchNorm running-statistics behaviour is module state**, set for a whole model with
  ``with bn_mode(model, "hold"): ...``. In training mode a :class:`MetaBNNorm` normalises with
  the batch statistics and either updates its running statistics (``"general"``, the basic step)
  or leaves them untouched (``"hold"``, the meta-train and meta-test steps). In ``eval()`` mode it
  always normalises with the running statistics, whatever the mode attribute says.

The ``Meta*`` subclasses of ``nn.Conv2d`` / ``nn.Linear`` add no behaviour beyond defaults and
type identity: DR50's initialisation rule is keyed on :class:`MetaConv2d`, and checkpoint key
names follow from the module tree, not from these classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

RUNNING_STATS_MODES = ("general", "hold")


def default_step_scale(parameter_name: str) -> float:
    """Inner-step multiplier of the released ACL code: half the step for the CODE-block branches."""
    return 0.5 if "adaptor" in parameter_name else 1.0


def _require_4d(module: nn.Module, inputs: Tensor) -> None:
    if inputs.dim() != 4:
        raise ValueError(
            f"{type(module).__name__} expects a 4-D input [N, C, H, W], got shape "
            f"{tuple(inputs.shape)}; add singleton spatial dims (x[..., None, None]) for vectors."
        )


class MetaConv2d(nn.Conv2d):
    """``nn.Conv2d`` marker class; DR50 initialises these with N(0, sqrt(2 / (k_h k_w C_out)))."""


class MetaLinear(nn.Linear):
    """``nn.Linear`` that is bias-free unless asked otherwise (every DR50/ACL use is bias-free).

    Shapes: ``[..., in_features] -> [..., out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)


class MetaBNNorm(nn.BatchNorm2d):
    """BatchNorm2d with a selectable running-statistics mode and an optionally frozen bias.

    ``running_stats_mode`` (set it with :func:`bn_mode` / :func:`set_bn_mode`):

    * ``"general"``: training mode normalises with batch statistics and updates the running
      statistics (exactly ``nn.BatchNorm2d`` in training mode). Default.
    * ``"hold"``: training mode normalises with batch statistics; running statistics are neither
      used nor updated.
    * In ``eval()`` mode the running statistics are used regardless of the attribute.

    The reference falls back to ``"hold"`` when no mode is given; here the default is
    ``"general"`` so the layer is a drop-in BatchNorm2d outside meta-learning, and the trainer
    sets the mode of each step explicitly. ``SyncBatchNorm.convert_sync_batchnorm`` (Lightning's
    ``sync_batchnorm=True``) would replace these layers by plain SyncBatchNorm and lose the mode.

    ``bias_freeze=True`` sets ``bias.requires_grad = False`` (the BNNeck trick);
    :func:`fast_weights` then leaves the bias as it is.

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        bias_freeze: bool = False,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias_freeze = bias_freeze
        self.bias.requires_grad_(not bias_freeze)
        self.running_stats_mode = "general"

    def forward(self, inputs: Tensor) -> Tensor:
        _require_4d(self, inputs)
        if self.running_stats_mode not in RUNNING_STATS_MODES:
            raise ValueError(
                f"MetaBNNorm.running_stats_mode must be one of {RUNNING_STATS_MODES}, "
                f"got {self.running_stats_mode!r}; use bn_mode()/set_bn_mode() to set it"
            )
        if self.training and self.running_stats_mode == "hold":
            return F.batch_norm(
                inputs, None, None, self.weight, self.bias, training=True, eps=self.eps
            )
        # "general" in training and any mode in eval are plain BatchNorm2d semantics.
        return super().forward(inputs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias_freeze={self.bias_freeze}"


class MetaINNorm(nn.InstanceNorm2d):
    """Affine instance norm (weight 1, bias 0 at init), no running statistics.

    Unlike the reference, a 1-pixel-high input is not special-cased to zeros (DR50 never feeds
    one); a single spatial element raises PyTorch's own error.

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        _require_4d(self, inputs)
        return F.instance_norm(inputs, weight=self.weight, bias=self.bias, eps=self.eps)


class MetaIBNNorm(nn.Module):
    """IBN-a normalisation: instance norm on the first ``C // 2`` channels, BatchNorm on the rest.

    Children are named ``IN`` and ``BN`` to match IBN-Net / ACL checkpoint keys.

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.half = num_features // 2
        self.IN = MetaINNorm(self.half)
        self.BN = MetaBNNorm(num_features - self.half)

    def forward(self, inputs: Tensor) -> Tensor:
        _require_4d(self, inputs)
        instance_part, batch_part = inputs.split([self.half, inputs.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(instance_part), self.BN(batch_part)], dim=1)


class MetaGate(nn.Module):
    """Input-independent channel gate fusing two feature maps: ``σ(g)·a + (1 − σ(g))·b``.

    ``gate`` has shape ``[C]`` and starts at N(0, 1)·0.1 (so σ(g) ≈ 0.5).

    Shapes: ``a, b: [N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.randn(num_features) * 0.1)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        mix = torch.sigmoid(self.gate).view(1, -1, 1, 1)
        return mix * first + (1.0 - mix) * second


class MetaParam(nn.Module):
    """Learnable class centres returning squared Euclidean distances to them (centre loss).

    ``centers``: ``[num_centers, num_features]``, initialised N(0, ``init_std``²).

    Shapes: ``[N, num_features] -> [N, num_centers]``.
    """

    def __init__(self, num_features: int, num_centers: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_centers, num_features) * init_std)

    def forward(self, inputs: Tensor) -> Tensor:
        input_sq = inputs.pow(2).sum(dim=1, keepdim=True)
        center_sq = self.centers.pow(2).sum(dim=1).unsqueeze(0)
        return input_sq + center_sq - 2.0 * inputs @ self.centers.t()


class MetaSELayer(nn.Module):
    """Squeeze-and-excitation with bias-free ``fc1`` (C → C/reduction) and ``fc2`` (back to C).

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, num_features: int, reduction: int = 16) -> None:
        super().__init__()
        if num_features % reduction:
            raise ValueError(
                f"MetaSELayer: num_features={num_features} must be divisible by "
                f"reduction={reduction}"
            )
        self.fc1 = MetaLinear(num_features, num_features // reduction)
        self.fc2 = MetaLinear(num_features // reduction, num_features)

    def forward(self, inputs: Tensor) -> Tensor:
        squeezed = inputs.mean(dim=(2, 3))
        excitation = torch.sigmoid(self.fc2(F.relu(self.fc1(squeezed))))
        return inputs * rearrange(excitation, "n c -> n c 1 1")


# --------------------------------------------------------------------------------------------
# Running-statistics mode
# --------------------------------------------------------------------------------------------


def _meta_batch_norms(model: nn.Module) -> Iterator[MetaBNNorm]:
    return (module for module in model.modules() if isinstance(module, MetaBNNorm))


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """Set ``running_stats_mode`` (``"general"`` or ``"hold"``) on every MetaBNNorm of ``model``."""
    if mode not in RUNNING_STATS_MODES:
        raise ValueError(
            f"BN running-stats mode must be one of {RUNNING_STATS_MODES}, got {mode!r}"
        )
    for norm in _meta_batch_norms(model):
        norm.running_stats_mode = mode


@contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily set the running-statistics mode of every MetaBNNorm in ``model``.

    The previous per-module modes are restored on exit, also when the body raises::

        with bn_mode(model, "hold"):
            loss = criterion(torch.func.functional_call(model, fast, (images,)))
    """
    norms = list(_meta_batch_norms(model))
    previous = [norm.running_stats_mode for norm in norms]
    set_bn_mode(model, mode)
    try:
        yield model
    finally:
        for norm, old_mode in zip(norms, previous, strict=True):
            norm.running_stats_mode = old_mode


# --------------------------------------------------------------------------------------------
# Fast weights
# --------------------------------------------------------------------------------------------


def meta_gradients(
    loss: Tensor, model: nn.Module, create_graph: bool = False
) -> dict[str, Tensor | None]:
    """Gradients of ``loss`` w.r.t. every trainable parameter of ``model``, keyed by name.

    Parameters the loss does not reach map to ``None``. With ``create_graph=False`` the result
    is detached, i.e. the first-order update of the released code; the graph of ``loss`` is
    retained so the caller can still back-propagate it in the outer step.
    """
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    grads = torch.autograd.grad(
        loss,
        [param for _, param in named],
        retain_graph=True,
        create_graph=create_graph,
        allow_unused=True,
    )
    return {name: grad for (name, _), grad in zip(named, grads, strict=True)}


def fast_weights(
    model: nn.Module,
    grads: Mapping[str, Tensor | None],
    step_size: float,
    scale_fn: Callable[[str], float] = default_step_scale,
) -> dict[str, Tensor]:
    """One inner gradient step by name: ``θ − step_size · scale_fn(name) · g`` for every parameter.

    Returns a dict covering all parameters of ``model`` (ready for
    ``torch.func.functional_call``). A parameter keeps its own tensor θ (same object) when its
    gradient is ``None`` or absent from ``grads``, or when it is frozen (``requires_grad=False``,
    e.g. the BNNeck bias) even if a gradient was supplied. Gradients are used as given: pass
    detached ones (see :func:`meta_gradients`) for the first-order update of the released code.
    """
    params = dict(model.named_parameters())
    unknown = sorted(set(grads) - set(params))
    if unknown:
        raise KeyError(
            f"fast_weights: gradient names {unknown[:5]} are not parameters of "
            f"{type(model).__name__}; compute them on the same module (no 'module.' or "
            "sub-module prefix mismatch)."
        )
    updated: dict[str, Tensor] = {}
    for name, param in params.items():
        grad = grads.get(name)
        if grad is None or not param.requires_grad:
            updated[name] = param
            continue
        if grad.shape != param.shape:
            raise ValueError(
                f"fast_weights: gradient for {name!r} has shape {tuple(grad.shape)}, "
                f"parameter has {tuple(param.shape)}"
            )
        updated[name] = param - step_size * scale_fn(name) * grad
    return updated
