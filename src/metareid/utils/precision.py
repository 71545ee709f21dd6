"""Run numerically fragile code (losses, metric distances) in fp32 under mixed precision.

Lightning runs ``training_step`` / ``validation_step`` / ``test_step`` inside ``torch.autocast``.
Calling ``.float()`` on a network output does not leave that context: the next matmul
(``baddbmm`` of a distance matrix, the ``einsum`` of re-ranking) is cast back to fp16/bf16.
:func:`fp32` disables autocast for the device types of the arguments and upcasts half-precision
floating inputs, so the wrapped function computes exactly what it computes in an fp32 run; the
network forward around it stays in mixed precision.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

__all__ = ["autocast_disabled", "fp32", "upcast_half"]

F = TypeVar("F", bound=Callable[..., Any])

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _tensors(values: Iterable[Any]) -> Iterator[torch.Tensor]:
    """Every tensor in ``values``, looking inside lists, tuples and dict values."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)
        elif isinstance(value, dict):
            yield from _tensors(value.values())


def upcast_half(value: Any) -> Any:
    """``value`` with every fp16/bf16 tensor cast to fp32 (inside lists, tuples and dicts).

    fp32 and fp64 tensors, integer tensors and non-tensors are returned unchanged; the cast is
    differentiable, so gradients flow back to the half-precision tensor.
    """
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in _HALF_DTYPES else value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(upcast_half(item) for item in value)
    if isinstance(value, dict):
        return type(value)((key, upcast_half(item)) for key, item in value.items())
    return value


@contextlib.contextmanager
def autocast_disabled(device_types: Iterable[str]) -> Iterator[None]:
    """Autocast off for each of ``device_types`` (e.g. ``{"cuda"}``) inside the block."""
    with contextlib.ExitStack() as stack:
        for device_type in sorted(set(device_types)):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def fp32(function: F) -> F:
    """Decorator: run ``function`` with autocast disabled and half-precision inputs upcast.

    Autocast is turned off for the device type of every tensor argument (positional or keyword,
    also inside lists/tuples/dicts; ``self`` of a method is skipped as it is not a tensor), and
    fp16/bf16 tensor arguments are cast to fp32 (fp64 stays fp64). Under an enabled autocast the
    result therefore equals the fp32 result on the same inputs.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device_types = {tensor.device.type for tensor in _tensors((*args, *kwargs.values()))}
        if not device_types:
            return function(*args, **kwargs)
        with autocast_disabled(device_types):
            return function(
                *(upcast_half(arg) for arg in args),
                **{key: upcast_half(value) for key, value in kwargs.items()},
            )

    return wrapper  # type: ignore[return-value]
