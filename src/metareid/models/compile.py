"""Opt-in ``torch.compile`` and channels-last memory format for the training forward.

Both task modules (``GaitModule``, ``ReIDModule``) call :func:`training_forward` once with their
``model.compile`` / ``model.channels_last`` flags and use what it returns for the *training*
forward only:

* Evaluation stays eager. The gait evaluation path has data-dependent shapes (each batch is
  padded to its own longest sequence, read on the host; clips shorter than 3 frames are tiled;
  padded frames are masked after every temporal layer), so a static graph would be recompiled
  for each new frame count; the training batches have one shape (``frames_num_fixed`` frames,
  a fixed image size).
* ``torch.func.functional_call`` (the ReID meta-test forward on fast weights) calls the plain
  module, never the compiled one (the compiled wrapper holds the module under ``_orig_mod``, so
  its parameter names differ from the fast weights' keys).
* The compiled wrapper is *not* registered as a sub-module, so ``state_dict`` keys, checkpoints
  and exported weights are identical with and without ``compile``.
* Training batches must keep one shape: the gait ``fixed_*`` samplers do (``frames_num_fixed``
  frames, no ``seq_lens``); with ``unfixed_*`` training each new frame count recompiles, up to
  ``torch._dynamo.config.recompile_limit`` graphs, after which that forward runs eager.

``channels_last`` converts the parameters in place: 4-D convolution weights (DR50) to
``torch.channels_last``, 5-D ones (the gait networks' ``Conv3d``) to ``torch.channels_last_3d``.
cuDNN can then pick NHWC / NDHWC convolution kernels; the numbers change only by float
reassociation (tested). Whether either flag is faster depends on the GPU and the
shapes, so both default to off; turn them on after measuring (``bench/bench_metagait.py`` and
``bench/bench_dr50_meta.py`` take ``--compile`` and ``--channels-last``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["to_channels_last", "training_forward"]

_FORMAT_BY_RANK = {4: torch.channels_last, 5: torch.channels_last_3d}


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4-D parameter/buffer as ``channels_last`` and every 5-D one as
    ``channels_last_3d``, in place (the same ``Parameter`` objects, so optimizers built before
    or after see them); returns ``module``."""
    for tensor in [*module.parameters(), *module.buffers()]:
        memory_format = _FORMAT_BY_RANK.get(tensor.dim())
        if memory_format is not None:
            tensor.data = tensor.data.contiguous(memory_format=memory_format)
    return module


def training_forward(
    net: nn.Module, compile: bool = False, channels_last: bool = False, backend: str = "inductor"
) -> Callable[..., Any]:
    """The callable to use for ``net``'s training forward.

    Args:
        net: the network; with ``channels_last`` its parameters are converted in place.
        compile: wrap ``net`` with ``torch.compile`` (``dynamic=False``: training shapes are
            fixed, and a static graph lets inductor pick the best kernels).
        channels_last: see :func:`to_channels_last`.
        backend: ``torch.compile`` backend (tests use ``"aot_eager"``, which traces the same
            graphs without generating kernels).

    Returns:
        ``net.__call__``, or the call of a ``torch.compile`` wrapper sharing ``net``'s
        parameters and buffers. It is a bound method, not an ``nn.Module``: assigned to an
        attribute of a ``LightningModule`` it registers no second copy of the weights.
    """
    if channels_last:
        to_channels_last(net)
    if not compile:
        return net.__call__
    return torch.compile(net, dynamic=False, backend=backend).__call__
