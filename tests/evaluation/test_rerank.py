"""k-reciprocal re-ranking against a plain numpy transcription of the algorithm."""

import numpy as np
import pytest
import torch

from metareid.evaluation.rerank import jaccard_distance, k_reciprocal_rerank


def numpy_jaccard(query: np.ndarray, gallery: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Loop-by-loop k-reciprocal Jaccard distance with fast-reid's conventions (float64)."""
    features = np.concatenate([query, gallery]).astype(np.float64)
    n = len(features)
    squared = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    ranked = np.argsort(squared, axis=1, kind="stable")[:, :k1]  # exact k-NN, k1 columns

    def reciprocal(i, k):
        forward = ranked[i, : k + 1]
        return np.array([j for j in forward if i in ranked[j, : k + 1]], dtype=int)

    half = int(np.around(k1 / 2))
    full_sets = [reciprocal(i, k1) for i in range(n)]
    half_sets = [reciprocal(i, half) for i in range(n)]

    encoding = np.zeros((n, n))
    for i in range(n):
        expanded = full_sets[i]
        for candidate in full_sets[i]:
            candidate_set = half_sets[candidate]
            if len(np.intersect1d(candidate_set, full_sets[i])) > 2 / 3 * len(candidate_set):
                expanded = np.append(expanded, candidate_set)
        expanded = np.unique(expanded)
        logits = -squared[i, expanded]
        weights = np.exp(logits - logits.max())
        encoding[i, expanded] = weights / weights.sum()

    if k2 != 1:
        encoding = np.stack([encoding[ranked[i, :k2]].mean(0) for i in range(n)])

    num_query = len(query)
    jaccard = np.zeros((num_query, n - num_query))
    for q in range(num_query):
        for g in range(num_query, n):
            overlap = np.minimum(encoding[q], encoding[g]).sum()
            jaccard[q, g - num_query] = 1 - overlap / (2 - overlap)
    return np.clip(jaccard, 0, None)


def clustered_features(num_ids, per_id, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids, dim, generator=generator)
    features = centers.repeat_interleave(per_id, 0) + 0.6 * torch.randn(
        num_ids * per_id, dim, generator=generator
    )
    features = features[torch.randperm(len(features), generator=generator)]
    return torch.nn.functional.normalize(features, dim=1)


@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (7, 3), (6, 1)])
def test_jaccard_matches_numpy_reference(k1, k2):
    features = clustered_features(num_ids=8, per_id=5, dim=6, seed=k1)
    query, gallery = features[:9], features[9:]
    expected = numpy_jaccard(query.numpy(), gallery.numpy(), k1, k2)
    result = jaccard_distance(query, gallery, k1=k1, k2=k2)
    assert result.shape == (9, 31)
    assert np.abs(result.numpy() - expected).max() < 1e-5
    # Not a degenerate case: distances spread over a wide range.
    assert expected.max() - expected.min() > 0.4


def test_rerank_mixes_jaccard_and_original_distance():
    features = clustered_features(num_ids=6, per_id=4, dim=5, seed=3)
    query, gallery = features[:6], features[6:]
    original = 1 - query @ gallery.T
    jaccard = torch.from_numpy(numpy_jaccard(query.numpy(), gallery.numpy(), 8, 3)).float()
    reranked = k_reciprocal_rerank(query, gallery, original, k1=8, k2=3, lambda_value=0.3)
    assert torch.allclose(reranked, 0.7 * jaccard + 0.3 * original, atol=1e-5)


def test_rerank_rejects_too_small_sets_and_bad_shapes():
    features = clustered_features(num_ids=2, per_id=4, dim=4, seed=0)
    with pytest.raises(ValueError, match="k1=20"):
        jaccard_distance(features[:3], features[3:], k1=20, k2=6)
    with pytest.raises(ValueError, match="original_distance"):
        k_reciprocal_rerank(features[:3], features[3:], torch.zeros(5, 3), k1=4, k2=2)
