"""Checks that keep an evaluation from reporting numbers computed from broken features."""

from __future__ import annotations

import torch


class NonFiniteFeaturesError(ValueError):
    """Evaluation features hold NaN or inf: any ranking computed from them is meaningless."""


def require_finite_features(features: torch.Tensor, metric: str) -> None:
    """Raise :class:`NonFiniteFeaturesError` unless every entry of ``features`` (``[N, ...]``,
    one row per sample) is finite; the message counts the affected samples.

    A NaN network ranks every gallery item alike and reports chance-level numbers (33.33 on the
    3-view tiny CASIA-B) as if they were results.
    """
    finite_rows = torch.isfinite(features.reshape(len(features), -1)).all(dim=1)
    if bool(finite_rows.all()):
        return
    bad = int((~finite_rows).sum())
    raise NonFiniteFeaturesError(
        f"{metric}: {bad} of {len(features)} evaluation samples have non-finite (NaN/inf) "
        "features, so no metric is reported. The weights are likely non-finite (a diverged run: "
        "evaluate an earlier checkpoint, or retrain with a lower model.optimizer.lr; training "
        "runs stop at the first non-finite step with callbacks.non_finite), or an fp16 overflow "
        "under trainer.precision=16-mixed (evaluate with 32-true)."
    )
