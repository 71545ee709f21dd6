"""Distance matrices shared by the gait and ReID evaluators and by the gait triplet loss.

All functions compute in float32 (or float64 when given float64), whatever the input precision
and with autocast disabled (:func:`metareid.utils.precision.fp32`), because half-precision squared
norms and matrix products lose the small differences that decide a ranking or a triplet term.

Euclidean distances use ``sqrt(relu(|x|^2 + |y|^2 - 2 x.y))``: the relu (rather than a clamp)
matters for training, since its backward sends zero gradient where the expansion rounds to
``<= 0`` (e.g. a sample against itself) instead of the infinite slope of ``sqrt`` at zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from metareid.utils.precision import fp32

__all__ = [
    "cosine_distance",
    "euclidean_distance",
    "part_cosine_distance",
    "part_euclidean_distance",
    "per_part_euclidean_distance",
]


def _to_compute_dtype(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    return x.to(dtype), y.to(dtype)


def _check_part_features(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(
            "part features must be [samples, parts, channels]; got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)} (add a parts axis with x[:, None] for "
            "single-vector features)"
        )
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"part features disagree on [parts, channels]: {tuple(x.shape[1:])} vs "
            f"{tuple(y.shape[1:])}"
        )


def _check_flat_features(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            "features must be [samples, dim] with equal dim; got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )


@fp32
def per_part_euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between every pair of samples, separately for each part.

    Args:
        x: ``[n, p, c]`` features.
        y: ``[m, p, c]`` features.

    Returns:
        ``[p, n, m]`` distances (float32, or float64 for float64 input).
    """
    _check_part_features(x, y)
    x, y = _to_compute_dtype(x, y)
    x_parts = rearrange(x, "n p c -> p n c")
    y_parts = rearrange(y, "m p c -> p m c")
    squared_norms = x_parts.pow(2).sum(-1)[:, :, None] + y_parts.pow(2).sum(-1)[:, None, :]
    squared = torch.baddbmm(squared_norms, x_parts, y_parts.transpose(1, 2), alpha=-2.0)
    return F.relu(squared).sqrt()


@fp32
def part_euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over parts of the per-part Euclidean distance (OpenGait ``metric="euc"``).

    Args:
        x: ``[n, p, c]`` features.
        y: ``[m, p, c]`` features.

    Returns:
        ``[n, m]`` distances.
    """
    return per_part_euclidean_distance(x, y).mean(0)


@fp32
def part_cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One minus the mean over parts of the cosine similarity (OpenGait ``metric="cos"``).

    Args:
        x: ``[n, p, c]`` features.
        y: ``[m, p, c]`` features.

    Returns:
        ``[n, m]`` distances in ``[0, 2]``.
    """
    _check_part_features(x, y)
    num_parts = x.shape[1]
    # Normalising each part and flattening turns the sum over parts of per-part cosines into a
    # single matrix product, with no [p, n, m] intermediate.
    x, y = _to_compute_dtype(x, y)
    x_flat = rearrange(F.normalize(x, dim=-1), "n p c -> n (p c)")
    y_flat = rearrange(F.normalize(y, dim=-1), "m p c -> m (p c)")
    return 1.0 - x_flat @ y_flat.T / num_parts


@fp32
def euclidean_distance(x: torch.Tensor, y: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Euclidean distance between rows.

    Args:
        x: ``[n, d]`` features.
        y: ``[m, d]`` features.
        squared: return squared distances (cheaper; same ranking).

    Returns:
        ``[n, m]`` distances.
    """
    _check_flat_features(x, y)
    x, y = _to_compute_dtype(x, y)
    squared_norms = x.pow(2).sum(-1)[:, None] + y.pow(2).sum(-1)[None, :]
    squared_distance = F.relu(torch.addmm(squared_norms, x, y.T, alpha=-2.0))
    return squared_distance if squared else squared_distance.sqrt()


@fp32
def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One minus the cosine similarity between rows (fast-reid ``METRIC: cosine``).

    Args:
        x: ``[n, d]`` features.
        y: ``[m, d]`` features.

    Returns:
        ``[n, m]`` distances in ``[0, 2]``.
    """
    _check_flat_features(x, y)
    x, y = _to_compute_dtype(x, y)
    x_unit = F.normalize(x, dim=-1)
    y_unit = F.normalize(y, dim=-1)
    return 1.0 - x_unit @ y_unit.T
