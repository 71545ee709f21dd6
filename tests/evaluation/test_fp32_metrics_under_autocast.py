"""Every evaluation distance and metric gives its fp32 result inside bf16 autocast (issue 8 §1).

Validation and test steps run under autocast, and so may a ``compute()`` called from them. The
features below sit on a shell far from the origin (offset 10) with small differences between
them, the regime where a bf16 matrix product of ``|x|^2 + |y|^2 - 2xy`` (or of two nearly
parallel unit vectors) loses the digits that decide the ranking.
"""

from __future__ import annotations

import pytest
import torch

from metareid.data.gait.casiab import GREW_TYPES, OUMVLP_TYPES, OUMVLP_VIEWS
from metareid.evaluation.casiab import TYPES, VIEWS, CasiaBIdentification, OUMVLPIdentification
from metareid.evaluation.distances import (
    cosine_distance,
    euclidean_distance,
    part_cosine_distance,
    part_euclidean_distance,
    per_part_euclidean_distance,
)
from metareid.evaluation.grew import GREWIdentification
from metareid.evaluation.reid import ReIDRetrieval, reid_rank_metrics
from metareid.evaluation.rerank import jaccard_distance, k_reciprocal_rerank

RELATIVE = 1e-6


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def shell_features(*shape: int, seed: int = 0, spread: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 10.0 + spread * torch.randn(*shape, generator=generator)


def assert_same(value, reference, what: str) -> None:
    torch.testing.assert_close(
        value, reference, rtol=RELATIVE, atol=0.0, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize(
    ("name", "distance_fn", "parts"),
    [
        ("per_part_euclidean_distance", per_part_euclidean_distance, True),
        ("part_euclidean_distance", part_euclidean_distance, True),
        ("part_cosine_distance", part_cosine_distance, True),
        ("euclidean_distance", euclidean_distance, False),
        ("squared euclidean_distance", lambda x, y: euclidean_distance(x, y, squared=True), False),
        ("cosine_distance", cosine_distance, False),
    ],
)
def test_distances_are_fp32_under_autocast(name, distance_fn, parts):
    shape = (12, 4, 16) if parts else (12, 32)
    x, y = shell_features(*shape, seed=0), shell_features(*shape, seed=1)
    reference = distance_fn(x, y)
    with bf16_autocast():
        mixed = distance_fn(x, y)
    assert mixed.dtype == torch.float32
    assert_same(mixed, reference, name)


def gait_set(types, views, num_subjects=6, parts=4, channels=8, seed=0):
    """Every (subject, type, view) once: ``(embeddings, subjects, type_index, view_index)``."""
    rows = [
        (s, t, v) for s in range(num_subjects) for t in range(len(types)) for v in range(len(views))
    ]
    subjects = torch.tensor([s for s, _, _ in rows])
    type_index = torch.tensor([t for _, t, _ in rows])
    view_index = torch.tensor([v for _, _, v in rows])
    centres = shell_features(num_subjects, parts, channels, seed=seed, spread=0.2)
    noise = shell_features(len(rows), parts, channels, seed=seed + 1, spread=0.2) - 10.0
    return centres[subjects] + noise, subjects, type_index, view_index


def gait_metric_results(make_metric, data):
    results = []
    for use_autocast in (False, True):
        metric = make_metric()
        if use_autocast:
            with bf16_autocast():
                metric.update(*data)
                results.append(metric.compute())
        else:
            metric.update(*data)
            results.append(metric.compute())
    return results


def assert_results_equal(mixed: dict, reference: dict, name: str) -> None:
    assert mixed.keys() == reference.keys()
    for key, expected in reference.items():
        if isinstance(expected, torch.Tensor):
            assert_same(mixed[key], expected, f"{name}[{key}]")
        elif isinstance(expected, float):
            assert mixed[key] == pytest.approx(expected, rel=RELATIVE, nan_ok=True), (name, key)
        else:
            assert mixed[key] == expected, (name, key)


@pytest.mark.parametrize("metric", ["euc", "cos"])
def test_casiab_metric_is_fp32_under_autocast(metric):
    data = gait_set(TYPES, VIEWS[:4])
    reference, mixed = gait_metric_results(
        lambda: CasiaBIdentification(metric=metric, probe_chunk_size=16), data
    )
    assert_results_equal(mixed, reference, f"CASIA-B {metric}")


def test_oumvlp_metric_is_fp32_under_autocast():
    data = gait_set(OUMVLP_TYPES, OUMVLP_VIEWS[:5], num_subjects=10)
    reference, mixed = gait_metric_results(lambda: OUMVLPIdentification(), data)
    assert_results_equal(mixed, reference, "OU-MVLP")


@pytest.mark.parametrize("metric", ["euc", "cos"])
def test_grew_metric_is_fp32_under_autocast(metric):
    data = gait_set(GREW_TYPES, ["000"], num_subjects=24)
    reference, mixed = gait_metric_results(
        lambda: GREWIdentification(ranks=(1, 5), metric=metric, probe_chunk_size=8), data
    )
    assert_results_equal(mixed, reference, f"GREW {metric}")


def reid_set(num_ids=8, per_camera=3, dim=32, seed=0):
    """Two cameras per identity; camera 0 images are queries."""
    pids = torch.arange(num_ids).repeat_interleave(2 * per_camera)
    camids = torch.tensor([0] * per_camera + [1] * per_camera).repeat(num_ids)
    centres = shell_features(num_ids, dim, seed=seed, spread=0.05)
    noise = shell_features(len(pids), dim, seed=seed + 1, spread=0.05) - 10.0
    return centres[pids] + noise, pids, camids, camids == 0


@pytest.mark.parametrize(
    ("distance", "rerank"), [("cosine", False), ("euclidean", False), ("cosine", True)]
)
def test_reid_metric_is_fp32_under_autocast(distance, rerank):
    features, pids, camids, is_query = reid_set()
    results = []
    for use_autocast in (False, True):
        metric = ReIDRetrieval(distance=distance, rerank=rerank, rerank_k1=6, rerank_k2=3)
        if use_autocast:
            with bf16_autocast():
                metric.update(features, pids, camids, is_query)
                results.append(metric.compute())
        else:
            metric.update(features, pids, camids, is_query)
            results.append(metric.compute())
    assert_results_equal(results[1], results[0], f"ReID {distance} rerank={rerank}")


def test_reid_rank_metrics_and_rerank_are_fp32_under_autocast():
    features, pids, camids, is_query = reid_set()
    query, gallery = features[is_query], features[~is_query]
    original = euclidean_distance(query, gallery, squared=True)
    reference = {
        "jaccard": jaccard_distance(query, gallery, k1=6, k2=3),
        "rerank": k_reciprocal_rerank(query, gallery, original, k1=6, k2=3),
    }
    with bf16_autocast():
        mixed = {
            "jaccard": jaccard_distance(query, gallery, k1=6, k2=3),
            "rerank": k_reciprocal_rerank(query, gallery, original, k1=6, k2=3),
        }
        mixed_ranks = reid_rank_metrics(
            mixed["rerank"], pids[is_query], pids[~is_query], camids[is_query], camids[~is_query]
        )
    for key, value in reference.items():
        assert_same(mixed[key], value, key)
    reference_ranks = reid_rank_metrics(
        reference["rerank"], pids[is_query], pids[~is_query], camids[is_query], camids[~is_query]
    )
    assert_results_equal(mixed_ranks, reference_ranks, "reid_rank_metrics")
