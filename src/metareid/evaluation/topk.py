"""ReID retrieval from top-k lists (faiss exact search), for galleries too large to rank densely.

The dense path (:class:`metareid.evaluation.reid.ReIDRetrieval`) sorts a ``[chunk, G]`` distance
block per query chunk: about 4 GB per 256-query chunk for Market-1501 with 500k distractors, and
k-reciprocal re-ranking needs the whole ``[Q + G, Q + G]`` matrix. Here faiss' exact
``IndexFlatIP`` (cosine) / ``IndexFlatL2`` (squared Euclidean) gives each query its nearest
gallery items without that block, and the metrics are computed from those lists.

Each query's list is long enough to keep ``k`` entries once its same-identity same-camera
("junk") items are removed, as the Market-1501 protocol does. Then, over the valid queries (those
with a true match in the gallery, counted from the labels as in the dense path):

* CMC@r for every ``r <= k`` equals the dense value;
* ``mAP`` is **mAP@k**: a query's precision at each true match within its first ``k`` junk-free
  ranks, summed and divided by *all* its true matches, so a match ranked below ``k`` counts as
  missed. A lower bound of the full mAP, equal to it when every match is within the top ``k``
  (always when ``k`` is at least the gallery size);
* ``mINP`` needs every query's last true match: it is reported when all matches are within the
  top ``k`` and is NaN otherwise.

Ties are broken by gallery index, as the dense path's stable sort does, including ties that
straddle the end of a list. faiss and torch round differently, so two gallery items within
float32 rounding of each other can still swap places relative to the dense path.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metareid.evaluation.reid import DistanceName, _summarise

__all__ = ["faiss_topk", "junk_and_relevant_counts", "topk_rank_metrics"]


def _faiss():
    try:
        import faiss
    except ImportError as error:  # an optional dependency of this path only
        raise ImportError(
            "model.retrieval=faiss needs the faiss-cpu package (requirements.txt pins it: "
            "pip install faiss-cpu==1.15.1), or use model.retrieval=dense"
        ) from error
    return faiss


def _complete_boundary_ties(index, query: np.ndarray, scores, indices, k: int, similarity: bool):
    """Rows whose k-th and (k+1)-th scores tie: replace the top k by the lowest-index tied items.

    faiss picks any of the tied items; a range search returns all items at least as close as the
    k-th, which are then ordered by (score, gallery index) like the dense stable sort.
    """
    tied_rows = np.flatnonzero(scores[:, k - 1] == scores[:, k])
    for row in tied_rows:
        boundary = scores[row, k - 1]
        # range_search keeps scores strictly beyond the radius: step one float past the boundary.
        radius = np.nextafter(boundary, -np.inf if similarity else np.inf, dtype=np.float32)
        _, row_scores, row_indices = index.range_search(query[row : row + 1], float(radius))
        if row_scores.size < k:  # rounded differently from the batched search: keep its list
            continue
        order = np.lexsort((row_indices, -row_scores if similarity else row_scores))[:k]
        scores[row, :k], indices[row, :k] = row_scores[order], row_indices[order]
    return scores[:, :k], indices[:, :k]


def faiss_topk(
    query: Tensor, gallery: Tensor, k: int, distance: DistanceName = "cosine"
) -> tuple[Tensor, Tensor]:
    """Exact ``k`` nearest gallery items of every query, nearest first, ties by gallery index.

    Args:
        query: ``[Q, d]`` features (any device; searched on the CPU in float32).
        gallery: ``[G, d]`` features.
        k: list length, capped at ``G``.
        distance: ``"cosine"`` (``1 - cos``) or ``"euclidean"`` (squared), as the dense path.

    Returns:
        ``distances [Q, min(k, G)]`` (float32) and ``indices [Q, min(k, G)]`` (int64), on the
        query's device.
    """
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query and gallery must be [Q, d] and [G, d], got {tuple(query.shape)} and "
            f"{tuple(gallery.shape)}"
        )
    if distance not in ("cosine", "euclidean"):
        raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    faiss = _faiss()
    device = query.device
    query, gallery = query.detach().float().cpu(), gallery.detach().float().cpu()
    similarity = distance == "cosine"
    if similarity:
        query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
        index = faiss.IndexFlatIP(query.shape[1])
    else:
        index = faiss.IndexFlatL2(query.shape[1])
    index.add(np.ascontiguousarray(gallery.numpy()))
    query_array = np.ascontiguousarray(query.numpy())
    num_gallery = gallery.shape[0]
    k = min(k, num_gallery)
    # One item more than asked shows which rows have a tie across the end of their list.
    scores, indices = index.search(query_array, min(k + 1, num_gallery))
    if k < num_gallery:
        scores, indices = _complete_boundary_ties(
            index, query_array, scores, indices, k, similarity
        )
    scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
    distances = 1.0 - scores if similarity else scores
    # Within the list, equal distances in gallery order (faiss leaves their order open).
    by_index = indices.argsort(dim=1)
    indices, distances = indices.gather(1, by_index), distances.gather(1, by_index)
    by_distance = distances.argsort(dim=1, stable=True)
    return distances.gather(1, by_distance).to(device), indices.gather(1, by_distance).to(device)


def junk_and_relevant_counts(
    query_pids: Tensor, query_camids: Tensor, gallery_pids: Tensor, gallery_camids: Tensor
) -> tuple[Tensor, Tensor]:
    """Per query, the gallery items the protocol removes and the true matches, from labels alone.

    Args:
        query_pids, query_camids: ``[Q]`` integers.
        gallery_pids, gallery_camids: ``[G]`` integers.

    Returns:
        ``junk [Q]`` (same identity, same camera) and ``relevant [Q]`` (same identity, other
        camera) counts, int64.
    """

    def count_in_gallery(query_keys: Tensor, gallery_keys: Tensor) -> Tensor:
        values, counts = torch.unique(gallery_keys, return_counts=True)
        position = torch.searchsorted(values, query_keys).clamp(max=values.numel() - 1)
        return torch.where(values[position] == query_keys, counts[position], 0)

    all_camids = torch.cat([query_camids, gallery_camids])
    camera_offset = int(all_camids.min())
    num_cameras = int(all_camids.max()) - camera_offset + 1
    same_identity = count_in_gallery(query_pids, gallery_pids)
    junk = count_in_gallery(
        query_pids * num_cameras + (query_camids - camera_offset),
        gallery_pids * num_cameras + (gallery_camids - camera_offset),
    )
    return junk, same_identity - junk


def topk_rank_metrics(
    query: Tensor,
    gallery: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    query_camids: Tensor,
    gallery_camids: Tensor,
    k: int = 100,
    distance: DistanceName = "cosine",
    max_rank: int = 50,
) -> dict[str, Tensor | int]:
    """CMC@1..max_rank, mAP@k and (when exact) mINP from faiss top-k lists.

    Args:
        query: ``[Q, d]``; gallery: ``[G, d]`` features.
        query_pids, query_camids: ``[Q]``; gallery_pids, gallery_camids: ``[G]`` integers.
        k: junk-free ranks kept per query; at least ``max_rank``.
        distance: ``"cosine"`` or ``"euclidean"``.
        max_rank: length of the returned CMC curve.

    Returns:
        The keys of :func:`metareid.evaluation.reid.reid_rank_metrics` (percent; ``mAP`` is
        mAP@k, ``mINP`` NaN unless every true match is within the top ``k``) plus ``map_topk``
        (``k``) and ``matches_beyond_topk`` (true matches of valid queries ranked below ``k``);
        ``num_gallery`` is ``G``, not ``k``.
    """
    if k < max_rank:
        raise ValueError(
            f"top-k retrieval with k={k} cannot give CMC up to max_rank={max_rank}: raise "
            "model.retrieval_topk to at least max_rank"
        )
    query_pids, gallery_pids = query_pids.long().cpu(), gallery_pids.long().cpu()
    query_camids, gallery_camids = query_camids.long().cpu(), gallery_camids.long().cpu()
    junk, relevant = junk_and_relevant_counts(
        query_pids, query_camids, gallery_pids, gallery_camids
    )
    # Long enough that every query keeps k entries after its junk is removed.
    _, order = faiss_topk(query, gallery, k + int(junk.max()), distance)
    order = order.cpu()

    same_identity = gallery_pids[order] == query_pids[:, None]  # [Q, L]
    is_junk = same_identity & (gallery_camids[order] == query_camids[:, None])
    position = (~is_junk).cumsum(1) - 1  # junk-free rank of every non-junk entry
    is_hit = same_identity & ~is_junk & (position < k)
    hits_through = is_hit.cumsum(1)

    precision = torch.where(is_hit, hits_through.double() / (position + 1).double(), 0.0)
    average_precision = precision.sum(1) / relevant.clamp(min=1).double()
    beyond = torch.full_like(position, k)
    first_hit = torch.where(is_hit, position, beyond).amin(1)
    last_hit = torch.where(is_hit, position, -1).amax(1)
    valid = relevant > 0
    found = is_hit.sum(1)
    missing = int((relevant - found)[valid].sum())
    inverse_negative_penalty = relevant.double() / (last_hit.double() + 1.0)
    if missing:
        inverse_negative_penalty.fill_(float("nan"))
    results = _summarise(
        relevant, first_hit, average_precision, inverse_negative_penalty, max_rank, len(gallery)
    )
    results.update(map_topk=torch.tensor(k), matches_beyond_topk=torch.tensor(missing))
    return results
