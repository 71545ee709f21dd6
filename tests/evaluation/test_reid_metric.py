"""ReID CMC / mAP / mINP against a hand-worked case and a per-query reference loop."""

import json

import numpy as np
import pytest
import torch

from metareid.evaluation.reid import ReIDRetrieval, format_reid_table, reid_rank_metrics
from metareid.evaluation.rerank import k_reciprocal_rerank


def reference_metrics(distances, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """fast-reid ``eval_market1501`` semantics, one query at a time (stable sort for ties)."""
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(distances.shape[0]):
        order = np.argsort(distances[q], kind="stable")
        junk = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        relevant = (g_pids[order] == q_pids[q])[~junk].astype(np.int64)
        if not relevant.any():
            continue
        hits = relevant.cumsum()
        last = np.flatnonzero(relevant).max()
        all_inp.append(hits[last] / (last + 1.0))
        precision = hits / np.arange(1, len(relevant) + 1)
        all_ap.append((precision * relevant).sum() / relevant.sum())
        cmc = np.minimum(hits, 1)
        cmc = np.pad(cmc, (0, max(0, max_rank - len(cmc))), constant_values=1)[:max_rank]
        all_cmc.append(cmc)
    cmc = np.mean(all_cmc, axis=0) * 100
    return {
        "cmc": cmc,
        "mAP": np.mean(all_ap) * 100,
        "mINP": np.mean(all_inp) * 100,
        "num_valid_queries": len(all_ap),
    }


def hand_case():
    """4 queries x 6 gallery items, worked out by hand.

    q0 (pid 1, cam 0): sorted g0 g2 g3 g5 g1 g4; g0 is junk (pid 1, cam 0) -> relevance
        [0 0 0 1 1]: first hit at position 3, AP = (1/4 + 2/5) / 2 = 0.325, INP = 2/5.
    q1 (pid 2, cam 1): sorted g2 g1 g0 g5 g4 g3; g2 is junk -> [0 0 1 0 0]:
        first hit at 2, AP = 1/3, INP = 1/3.
    q2 (pid 4): not in the gallery -> skipped.
    q3 (pid 3, cam 1): g3 (pid 3, cam 0) ranked first -> AP = INP = 1.
    """
    distances = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.3, 0.9, 0.4],
            [0.3, 0.2, 0.1, 0.6, 0.5, 0.4],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            [0.5, 0.6, 0.7, 0.05, 0.8, 0.9],
        ]
    )
    q_pids, q_camids = torch.tensor([1, 2, 4, 3]), torch.tensor([0, 1, 0, 1])
    g_pids, g_camids = torch.tensor([1, 1, 2, 3, 1, 2]), torch.tensor([0, 1, 1, 0, 2, 0])
    return distances, q_pids, g_pids, q_camids, g_camids


def test_rank_metrics_hand_computed():
    results = reid_rank_metrics(*hand_case(), max_rank=6)
    assert int(results["num_valid_queries"]) == 3
    expected_cmc = [100 / 3, 100 / 3, 200 / 3, 100.0, 100.0, 100.0]
    assert results["cmc"].tolist() == pytest.approx(expected_cmc, abs=1e-4)
    assert results["rank1"].item() == pytest.approx(100 / 3, abs=1e-4)
    assert results["rank5"].item() == pytest.approx(100.0)
    assert results["mAP"].item() == pytest.approx((0.325 + 1 / 3 + 1) / 3 * 100, abs=1e-4)
    assert results["mINP"].item() == pytest.approx((0.4 + 1 / 3 + 1) / 3 * 100, abs=1e-4)
    expected_metric = ((0.325 + 1 / 3 + 1) / 3 * 100 + 100 / 3) / 2  # 44.3056
    assert results["metric"].item() == pytest.approx(expected_metric, abs=1e-4)


def test_rank_metrics_cmc_beyond_gallery_size_saturates():
    results = reid_rank_metrics(*hand_case(), max_rank=50)
    assert results["cmc"].shape == (50,)
    assert results["rank10"].item() == pytest.approx(100.0)


def random_problem(num_query, num_gallery, seed, tied=False):
    rng = np.random.default_rng(seed)
    distances = rng.random((num_query, num_gallery))
    if tied:
        distances = np.round(distances * 4) / 4  # only 5 distinct values: many ties
    return (
        distances.astype(np.float32),
        rng.integers(0, 10, num_query),  # pids 8 and 9 have no gallery image
        rng.integers(0, 8, num_gallery),
        rng.integers(0, 3, num_query),
        rng.integers(0, 3, num_gallery),
    )


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_rank_metrics_match_reference_for_any_chunk_size(tied, chunk):
    problem = random_problem(25, 60, seed=11, tied=tied)
    expected = reference_metrics(*problem)
    assert 0 < expected["num_valid_queries"] < 25  # some queries are skipped
    tensors = [torch.from_numpy(np.asarray(a)) for a in problem]
    results = reid_rank_metrics(*tensors, query_chunk_size=chunk)
    assert int(results["num_valid_queries"]) == expected["num_valid_queries"]
    np.testing.assert_allclose(results["cmc"].numpy(), expected["cmc"], atol=1e-4)
    assert results["mAP"].item() == pytest.approx(expected["mAP"], abs=1e-4)
    assert results["mINP"].item() == pytest.approx(expected["mINP"], abs=1e-4)


def feature_problem(seed=0, num_ids=6, dim=8):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids, dim, generator=generator)
    pids = torch.arange(num_ids).repeat_interleave(6)
    camids = torch.arange(6).repeat(num_ids) % 3
    features = centers[pids] + 0.9 * torch.randn(len(pids), dim, generator=generator)
    is_query = torch.arange(len(pids)) % 6 == 0
    return features, pids, camids, is_query


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_metric_from_features_matches_reference(distance):
    features, pids, camids, is_query = feature_problem()
    metric = ReIDRetrieval(distance=distance, query_chunk_size=4)
    # Batches interleave query and gallery samples; the flag decides the split.
    for start in range(0, len(pids), 10):
        batch = slice(start, start + 10)
        metric.update(features[batch], pids[batch], camids[batch], is_query[batch])
    results = metric.compute()

    query, gallery = features[is_query].double().numpy(), features[~is_query].double().numpy()
    if distance == "cosine":
        query = query / np.linalg.norm(query, axis=1, keepdims=True)
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        distances = 1 - query @ gallery.T
    else:
        distances = ((query[:, None] - gallery[None]) ** 2).sum(-1)
    expected = reference_metrics(
        distances,
        pids[is_query].numpy(),
        pids[~is_query].numpy(),
        camids[is_query].numpy(),
        camids[~is_query].numpy(),
    )
    assert int(results["num_valid_queries"]) == 6
    np.testing.assert_allclose(results["cmc"].numpy(), expected["cmc"], atol=1e-4)
    assert results["mAP"].item() == pytest.approx(expected["mAP"], abs=1e-4)
    assert results["mINP"].item() == pytest.approx(expected["mINP"], abs=1e-4)
    assert 0 < results["mAP"].item() < 100  # not a trivial problem


def test_metric_accepts_one_flag_per_batch_and_resets():
    features, pids, camids, is_query = feature_problem(seed=1)
    metric = ReIDRetrieval()
    metric.update(features[is_query], pids[is_query], camids[is_query], True)
    metric.update(features[~is_query], pids[~is_query], camids[~is_query], False)
    first = metric.compute()
    metric.reset()
    metric.update(features, pids, camids, is_query)
    second = metric.compute()
    assert first["mAP"].item() == pytest.approx(second["mAP"].item())
    assert first["rank1"].item() == pytest.approx(second["rank1"].item())


def test_metric_rerank_uses_reranked_distances():
    features, pids, camids, is_query = feature_problem(seed=2, num_ids=8)
    metric = ReIDRetrieval(rerank=True, rerank_k1=8, rerank_k2=3)
    metric.update(features, pids, camids, is_query)
    results = metric.compute()

    query = torch.nn.functional.normalize(features[is_query], dim=1)
    gallery = torch.nn.functional.normalize(features[~is_query], dim=1)
    reranked = k_reciprocal_rerank(query, gallery, 1 - query @ gallery.T, k1=8, k2=3)
    expected = reference_metrics(
        reranked.numpy(),
        pids[is_query].numpy(),
        pids[~is_query].numpy(),
        camids[is_query].numpy(),
        camids[~is_query].numpy(),
    )
    assert results["mAP"].item() == pytest.approx(expected["mAP"], abs=1e-4)
    plain = ReIDRetrieval()
    plain.update(features, pids, camids, is_query)
    assert plain.compute()["mAP"].item() != pytest.approx(results["mAP"].item(), abs=1e-3)


def test_metric_errors_name_the_problem():
    features, pids, camids, _ = feature_problem()
    metric = ReIDRetrieval()
    metric.update(features, pids, camids, True)
    with pytest.raises(ValueError, match="both query and gallery"):
        metric.compute()
    no_match = ReIDRetrieval()
    no_match.update(features[:2], torch.tensor([0, 1]), torch.tensor([0, 0]), True)
    no_match.update(features[2:4], torch.tensor([2, 3]), torch.tensor([1, 1]), False)
    with pytest.raises(ValueError, match="none of the 2 queries"):
        no_match.compute()
    with pytest.raises(ValueError, match="pids must be a 1-D tensor with 36 entries"):
        ReIDRetrieval().update(features, pids[:5], camids, True)


def test_format_reid_table():
    table = format_reid_table(
        {
            "CUHK03": {
                "rank1": 41.8,
                "rank5": 60.0,
                "rank10": 70.5,
                "mAP": 41.2,
                "mINP": 20.0,
                "metric": torch.tensor(41.5),
            },
            "MSMT17": {"rank1": 45.9, "mAP": 20.4},
        }
    )
    assert table.splitlines() == [
        "| Target |  Rank-1 |  Rank-5 | Rank-10 |     mAP |    mINP | (mAP+R1)/2 |",
        "|--------|---------|---------|---------|---------|---------|------------|",
        "| CUHK03 |   41.80 |   60.00 |   70.50 |   41.20 |   20.00 |      41.50 |",
        "| MSMT17 |   45.90 |       - |       - |   20.40 |       - |          - |",
    ]


@pytest.mark.parametrize(
    "options",
    [{}, {"rerank": True, "rerank_k1": 8, "rerank_k2": 3}, {"retrieval": "faiss"}],
    ids=["dense", "rerank", "faiss"],
)
def test_every_retrieval_path_states_the_gallery_size_for_the_cmc_plot(options, tmp_path):
    from metareid.reporting import plot_cmc, write_reid_report

    features, pids, camids, is_query = feature_problem(seed=2, num_ids=8)
    metric = ReIDRetrieval(**options)
    metric.update(features, pids, camids, is_query)
    results = metric.compute()
    gallery_size = int((~is_query).sum())
    assert gallery_size == 40 < len(results["cmc"]) == 50  # the curve is padded past it
    assert results["num_gallery"] == gallery_size and type(results["num_gallery"]) is int
    (axis,) = plot_cmc({"synD": results}).axes
    assert len(axis.get_lines()[0].get_xdata()) == gallery_size
    files = write_reid_report({"synD": results}, tmp_path)
    assert json.loads(files["json"].read_text())["targets"]["synD"]["num_gallery"] == 40
    assert "(mAP+R1)/2" in format_reid_table({"synD": results})


def test_rank_metrics_of_a_distance_matrix_state_its_gallery_size():
    assert reid_rank_metrics(*hand_case(), max_rank=10)["num_gallery"] == 6
