"""The faiss top-k retrieval path against the dense one: equal CMC up to k, mAP@k as documented."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from metareid.evaluation.reid import ReIDRetrieval, format_reid_table
from metareid.evaluation.topk import faiss_topk, junk_and_relevant_counts, topk_rank_metrics
from metareid.reporting import reid_markdown
from metareid.utils.config_checks import check_config
from metareid.utils.errors import ConfigValueError

MARKET_QUERIES, MARKET_GALLERY, MARKET_IDS, MARKET_CAMERAS = 3368, 15913, 751, 6


def market_like(num_query: int, num_gallery: int, distance: str, seed: int = 0):
    """Features whose distances float32 computes exactly in both paths, so ties are real ties.

    Euclidean: small integer vectors (squared distances are integers < 2^24). Cosine: ±1 vectors
    of dimension 64 (unit entries ±1/8, cosines multiples of 1/64). Identities share a centre
    and the noise is strong enough that some true matches fall below rank 50.
    """
    generator = torch.Generator().manual_seed(seed)
    num_ids = min(MARKET_IDS, num_gallery // 4)
    dim = 64 if distance == "cosine" else 32
    pids = torch.randint(0, num_ids, (num_query + num_gallery,), generator=generator)
    camids = torch.randint(0, MARKET_CAMERAS, (num_query + num_gallery,), generator=generator)
    if distance == "cosine":
        centres = torch.randint(0, 2, (num_ids, dim), generator=generator) * 2 - 1
        flips = torch.rand(pids.numel(), dim, generator=generator) < 0.3
        features = torch.where(flips, -centres[pids], centres[pids])
    else:
        centres = torch.randint(-2, 3, (num_ids, dim), generator=generator)
        features = centres[pids] + torch.randint(-2, 3, (pids.numel(), dim), generator=generator)
    features = features.float()
    is_query = torch.zeros(pids.numel(), dtype=torch.bool)
    is_query[:num_query] = True
    return features, pids, camids, is_query


def evaluate(features, pids, camids, is_query, **options) -> dict[str, torch.Tensor]:
    metric = ReIDRetrieval(**options)
    metric.update(features, pids, camids, is_query)
    return metric.compute()


def dense_average_precision_at_k(features, pids, camids, is_query, k: int, distance: str):
    """Reference mAP@k, one query at a time from the full distance matrix (stable ranking)."""
    query, gallery = features[is_query], features[~is_query]
    if distance == "cosine":
        query = torch.nn.functional.normalize(query, dim=1)
        gallery = torch.nn.functional.normalize(gallery, dim=1)
        distances = 1.0 - query @ gallery.T
    else:
        distances = torch.cdist(query.double(), gallery.double()).pow(2)
    precisions = []
    for row, (pid, camid) in enumerate(zip(pids[is_query], camids[is_query], strict=True)):
        order = distances[row].argsort(stable=True)
        same = pids[~is_query][order] == pid
        junk = same & (camids[~is_query][order] == camid)
        hits = (same & ~junk)[~junk].numpy()
        if hits.sum() == 0:
            continue
        top = hits[:k]
        ranks = np.flatnonzero(top)
        precisions.append(((np.arange(len(ranks)) + 1) / (ranks + 1)).sum() / hits.sum())
    return 100.0 * float(np.mean(precisions))


SIZES = [
    pytest.param((MARKET_QUERIES, MARKET_GALLERY), id="market", marks=pytest.mark.slow),
    pytest.param((MARKET_QUERIES // 4, MARKET_GALLERY // 4), id="quarter-market"),
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_topk_equals_dense_cmc_and_truncates_map_as_documented(distance, size):
    features, pids, camids, is_query = market_like(*size, distance)
    dense = evaluate(features, pids, camids, is_query, distance=distance)
    topk = evaluate(features, pids, camids, is_query, distance=distance, retrieval="faiss", topk=50)

    assert torch.equal(topk["cmc"], dense["cmc"])  # every rank 1..50 = k
    for key in ("rank1", "rank5", "rank10", "num_valid_queries"):
        assert torch.equal(topk[key], dense[key]), key
    # The data put true matches below rank 50: mAP@50 is a strict lower bound, mINP unknown.
    assert int(topk["matches_beyond_topk"]) > 0 and int(topk["map_topk"]) == 50
    assert float(topk["mAP"]) < float(dense["mAP"])
    assert torch.isnan(topk["mINP"]) and not torch.isnan(dense["mINP"])
    assert 0.0 < float(dense["rank1"]) < 100.0


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_map_at_k_matches_a_per_query_reference(distance):
    features, pids, camids, is_query = market_like(120, 900, distance, seed=1)
    topk = evaluate(features, pids, camids, is_query, distance=distance, retrieval="faiss", topk=50)
    reference = dense_average_precision_at_k(features, pids, camids, is_query, 50, distance)
    assert float(topk["mAP"]) == pytest.approx(reference, abs=1e-4)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_topk_covering_the_gallery_equals_the_dense_path_on_every_metric(distance):
    features, pids, camids, is_query = market_like(150, 600, distance, seed=2)
    dense = evaluate(features, pids, camids, is_query, distance=distance)
    full = evaluate(
        features, pids, camids, is_query, distance=distance, retrieval="faiss", topk=600
    )
    assert int(full["matches_beyond_topk"]) == 0
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP", "metric", "cmc"):
        torch.testing.assert_close(full[key], dense[key], rtol=1e-6, atol=1e-5, msg=key)


def test_float_features_agree_with_the_dense_ranking():
    """Ordinary float features (no exact ties): same CMC on a small random problem."""
    generator = torch.Generator().manual_seed(3)
    pids = torch.randint(0, 60, (1000,), generator=generator)
    camids = torch.randint(0, 4, (1000,), generator=generator)
    features = torch.randn(60, 128, generator=generator)[pids] + 1.5 * torch.randn(
        1000, 128, generator=generator
    )
    is_query = torch.arange(1000) < 150
    dense = evaluate(features, pids, camids, is_query)
    topk = evaluate(features, pids, camids, is_query, retrieval="faiss", topk=50)
    assert torch.equal(topk["cmc"], dense["cmc"])


def test_ties_across_the_end_of_a_list_keep_the_lowest_gallery_indices():
    gallery = torch.tensor([[3.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    query = torch.zeros(25, 2)  # >= 20 queries: faiss' batched (BLAS) search
    distances, indices = faiss_topk(query, gallery, k=3, distance="euclidean")
    assert indices[0].tolist() == [5, 1, 2] and distances[0].tolist() == [0.0, 1.0, 1.0]
    assert (indices == indices[0]).all()


def test_junk_and_relevant_counts_come_from_the_labels():
    query_pids, query_camids = torch.tensor([7, 7, 9]), torch.tensor([0, 1, 0])
    gallery_pids = torch.tensor([7, 7, 7, 8, 9])
    gallery_camids = torch.tensor([0, 0, 1, 0, 0])
    junk, relevant = junk_and_relevant_counts(
        query_pids, query_camids, gallery_pids, gallery_camids
    )
    assert junk.tolist() == [2, 1, 1] and relevant.tolist() == [1, 2, 0]


def test_topk_shorter_than_the_cmc_curve_is_refused():
    with pytest.raises(ValueError, match="topk >= max_rank"):
        ReIDRetrieval(retrieval="faiss", topk=10)
    with pytest.raises(ValueError, match="cannot re-rank"):
        ReIDRetrieval(retrieval="faiss", rerank=True)
    with pytest.raises(ValueError, match="max_rank=50"):
        labels = torch.zeros(3, dtype=torch.long)
        topk_rank_metrics(torch.zeros(3, 4), torch.zeros(3, 4), *[labels] * 4, k=10)


def test_model_retrieval_key_reaches_the_metric(make_config):
    cfg = make_config("train", ["experiment=demo_dr50", "debug=tiny", "model.retrieval=faiss"])
    check_config(cfg)
    model = hydra.utils.instantiate(cfg.model, net={"head": {"num_classes": [4, 4, 4]}})
    model.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    model.setup("test")
    assert [(m.retrieval, m.topk) for m in model.eval_metrics] == [("faiss", 100)]
    faiss_and_rerank = ["experiment=demo_dr50", "model.retrieval=faiss", "model.rerank=true"]
    with pytest.raises(ConfigValueError, match="model.rerank=true needs the whole distance"):
        check_config(make_config("train", faiss_and_rerank))


def test_the_results_table_states_the_truncation():
    features, pids, camids, is_query = market_like(120, 900, "euclidean", seed=1)
    topk = evaluate(features, pids, camids, is_query, distance="euclidean", retrieval="faiss")
    table = format_reid_table({"synD": topk})
    assert "mAP@100" in table.splitlines()[0]
    assert "true matches ranked lower count as missed" in table.splitlines()[-1]
    assert "mAP is mAP@100: top-100 retrieval" in reid_markdown({"synD": topk})
    dense = evaluate(features, pids, camids, is_query, distance="euclidean")
    assert "mAP@" not in format_reid_table({"synD": dense}) + reid_markdown({"synD": dense})
