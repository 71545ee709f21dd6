"""Person re-identification retrieval metric: CMC, mAP and mINP (Market-1501 protocol).

The numbers follow fast-reid's ``evaluate_rank`` (``use_metric_cuhk03=False``): for every query,
gallery samples with the same identity *and* the same camera are removed ("junk"); queries with
no remaining true match are skipped. On the ranked, junk-free gallery list with relevance
``rel_k``:

* CMC@k = 1 if a true match appears within the first ``k`` positions;
* AP = ``sum_k precision@k * rel_k / #relevant``;
* INP = ``#relevant / (position of the hardest true match + 1)`` (Ye et al., TPAMI'21).

All three are computed in torch without a per-query loop: queries are processed in chunks and
each chunk's distance rows are sorted once. The same-identity entries of the sorted rows (true
matches and junk, a handful per query) are then listed with their positions, and cumulative sums
over that list give every match's junk-free position and precision for all queries at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from metareid.evaluation.distances import cosine_distance, euclidean_distance
from metareid.evaluation.guards import require_finite_features
from metareid.evaluation.rerank import k_reciprocal_rerank
from metareid.utils.precision import fp32

__all__ = ["ReIDRetrieval", "format_reid_table", "reid_rank_metrics"]

DistanceName = Literal["cosine", "euclidean"]


@fp32
def _distance(query: Tensor, gallery: Tensor, distance: DistanceName) -> Tensor:
    if distance == "cosine":
        return cosine_distance(query, gallery)
    # Squared, like fast-reid's euclidean metric: same ranking, and the scale re-ranking mixes in.
    return euclidean_distance(query, gallery, squared=True)


def _chunk_statistics(
    distances: Tensor,
    query_pids: Tensor,
    query_camids: Tensor,
    gallery_pids: Tensor,
    gallery_camids: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-query retrieval statistics for one chunk of distance rows.

    Args:
        distances: ``[q, G]``.
        query_pids, query_camids: ``[q]``.
        gallery_pids, gallery_camids: ``[G]``.

    Returns:
        ``num_relevant [q]`` (0 marks a query to skip), ``first_hit [q]`` (0-based position of
        the first true match in the junk-free list), ``average_precision [q]`` and
        ``inverse_negative_penalty [q]`` (float64; meaningless where ``num_relevant == 0``).
    """
    num_rows = distances.shape[0]
    # Stable sort: ties keep gallery order, so results do not depend on the chunking.
    order = distances.argsort(dim=1, stable=True)
    # Only same-identity entries matter (true matches and junk), a few per row: from here on
    # everything works on their (row, sorted position) list, which nonzero returns row-major.
    row, column = (gallery_pids[order] == query_pids[:, None]).nonzero(as_tuple=True)
    is_junk = gallery_camids[order[row, column]] == query_camids[row]
    is_hit = ~is_junk

    entries_per_row = torch.bincount(row, minlength=num_rows)
    row_first_entry = (entries_per_row.cumsum(0) - entries_per_row)[row]
    junk_before = is_junk.cumsum(0) - is_junk.long()  # exclusive, over the whole list
    hits_through = is_hit.cumsum(0)  # inclusive
    junk_before_in_row = junk_before - junk_before[row_first_entry]
    hits_through_in_row = hits_through - (hits_through - is_hit.long())[row_first_entry]
    # Position in the junk-free list: every junk item ranked earlier in the row shifts it by one.
    position = (column - junk_before_in_row)[is_hit]
    hit_row = row[is_hit]

    num_relevant = torch.bincount(hit_row, minlength=num_rows)
    precision = hits_through_in_row[is_hit].double() / (position.double() + 1.0)
    precision_sum = torch.zeros(num_rows, dtype=torch.float64, device=distances.device)
    precision_sum.index_add_(0, hit_row, precision)
    first_hit = torch.full((num_rows,), distances.shape[1], device=distances.device)
    first_hit.scatter_reduce_(0, hit_row, position, reduce="amin")
    last_hit = torch.zeros(num_rows, dtype=torch.long, device=distances.device)
    last_hit.scatter_reduce_(0, hit_row, position, reduce="amax")

    average_precision = precision_sum / num_relevant.clamp(min=1)
    inverse_negative_penalty = num_relevant.double() / (last_hit.double() + 1.0)
    return num_relevant, first_hit, average_precision, inverse_negative_penalty


def _summarise(
    num_relevant: Tensor,
    first_hit: Tensor,
    average_precision: Tensor,
    inverse_negative_penalty: Tensor,
    max_rank: int,
    num_gallery: int,
) -> dict[str, Tensor | int]:
    valid = num_relevant > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"none of the {num_relevant.numel()} queries has a true match in the gallery once "
            "same-identity same-camera images are removed; check the is_query flags and that "
            "query identities also appear in the gallery under another camera"
        )
    # CMC@k counts queries whose first hit is at position < k; positions >= max_rank share a bin.
    hits_per_position = torch.bincount(
        first_hit[valid].clamp(max=max_rank), minlength=max_rank + 1
    )[:max_rank]
    cmc = hits_per_position.cumsum(0).double() / num_valid * 100.0
    mean_ap = average_precision[valid].mean() * 100.0
    mean_inp = inverse_negative_penalty[valid].mean() * 100.0
    results = {f"rank{k}": cmc[k - 1] for k in (1, 5, 10) if k <= max_rank}
    results.update(
        mAP=mean_ap,
        mINP=mean_inp,
        metric=(mean_ap + cmc[0]) / 2.0,
        cmc=cmc,
        num_valid_queries=torch.tensor(num_valid),
    )
    summary: dict[str, Tensor | int] = {
        key: value.float() if value.is_floating_point() else value for key, value in results.items()
    }
    # Where the CMC curve stops meaning anything: it is flat past the last gallery position.
    summary["num_gallery"] = int(num_gallery)
    return summary


def _validate_ids(name: str, ids: Tensor, expected: int) -> Tensor:
    if ids.ndim != 1 or ids.shape[0] != expected:
        raise ValueError(
            f"{name} must be a 1-D tensor with {expected} entries, got {tuple(ids.shape)}"
        )
    if ids.is_floating_point():
        raise ValueError(f"{name} must hold integers, got dtype {ids.dtype}")
    return ids.long()


@fp32
def reid_rank_metrics(
    distances: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    query_camids: Tensor,
    gallery_camids: Tensor,
    max_rank: int = 50,
    query_chunk_size: int = 256,
) -> dict[str, Tensor | int]:
    """CMC / mAP / mINP from a precomputed distance matrix (smaller distance = more similar).

    Args:
        distances: ``[Q, G]``.
        query_pids, query_camids: ``[Q]`` integers.
        gallery_pids, gallery_camids: ``[G]`` integers.
        max_rank: length of the returned CMC curve.
        query_chunk_size: queries sorted at once (temporaries take about ``32 B * chunk * G``).

    Returns:
        ``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mINP``, ``metric = (mAP + rank1) / 2`` (0-d,
        in percent), ``cmc`` (``[max_rank]``, percent), ``num_valid_queries`` and
        ``num_gallery`` (``G``, a Python int).
    """
    if distances.ndim != 2:
        raise ValueError(f"distances must be [Q, G], got shape {tuple(distances.shape)}")
    num_query, num_gallery = distances.shape
    query_pids = _validate_ids("query_pids", query_pids, num_query)
    query_camids = _validate_ids("query_camids", query_camids, num_query)
    gallery_pids = _validate_ids("gallery_pids", gallery_pids, num_gallery)
    gallery_camids = _validate_ids("gallery_camids", gallery_camids, num_gallery)
    statistics = [
        _chunk_statistics(
            distances[start : start + query_chunk_size],
            query_pids[start : start + query_chunk_size],
            query_camids[start : start + query_chunk_size],
            gallery_pids,
            gallery_camids,
        )
        for start in range(0, num_query, query_chunk_size)
    ]
    return _summarise(
        *(torch.cat(parts) for parts in zip(*statistics, strict=True)), max_rank, num_gallery
    )


class ReIDRetrieval(Metric):
    """Query/gallery retrieval metric for person re-id (Market-1501 protocol, fast-reid numbers).

    Feed every evaluation batch with its ``is_query`` flags; ``compute()`` splits the accumulated
    features into query and gallery, ranks the gallery for every query and returns the dict of
    :func:`reid_rank_metrics` (percentages). Flip test-time augmentation is the caller's job
    (average the two features before ``update``).

    Args:
        distance: ``"cosine"`` (``1 - cos`` after L2 normalisation, released setting) or
            ``"euclidean"`` (squared Euclidean, as fast-reid).
        max_rank: length of the CMC curve.
        query_chunk_size: queries ranked at once; any value gives the same numbers.
        rerank: apply k-reciprocal re-ranking (fast-reid ``TEST.RERANK``); with the cosine
            distance it runs on L2-normalised features.
        rerank_k1, rerank_k2, rerank_lambda: re-ranking parameters.
        retrieval: ``"dense"`` ranks the whole gallery; ``"faiss"`` ranks each query's exact top
            ``topk`` (:mod:`metareid.evaluation.topk`, for galleries too large for the dense
            blocks): the same CMC up to ``topk``, ``mAP`` becomes mAP@topk (a lower bound),
            ``mINP`` NaN unless every true match is in the lists. No re-ranking.
        topk: list length of the faiss path (at least ``max_rank``).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        distance: DistanceName = "cosine",
        max_rank: int = 50,
        query_chunk_size: int = 256,
        rerank: bool = False,
        rerank_k1: int = 20,
        rerank_k2: int = 6,
        rerank_lambda: float = 0.3,
        retrieval: Literal["dense", "faiss"] = "dense",
        topk: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if retrieval not in ("dense", "faiss"):
            raise ValueError(f"retrieval must be 'dense' or 'faiss', got {retrieval!r}")
        if retrieval == "faiss" and (rerank or topk < max_rank):
            raise ValueError(
                "retrieval='faiss' ranks top-k lists only: it cannot re-rank (set rerank=false) "
                f"and needs topk >= max_rank (got topk={topk}, max_rank={max_rank})"
            )
        self.retrieval = retrieval
        self.topk = topk
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
        if max_rank < 1 or query_chunk_size < 1:
            raise ValueError("max_rank and query_chunk_size must be positive")
        self.distance = distance
        self.max_rank = max_rank
        self.query_chunk_size = query_chunk_size
        self.rerank = rerank
        self.rerank_k1 = rerank_k1
        self.rerank_k2 = rerank_k2
        self.rerank_lambda = rerank_lambda
        for name in ("features", "pids", "camids", "is_query"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, features: Tensor, pids: Tensor, camids: Tensor, is_query: Tensor | bool
    ) -> None:
        """Accumulate one batch.

        Args:
            features: ``[N, d]`` embeddings.
            pids: ``[N]`` identity labels.
            camids: ``[N]`` camera labels.
            is_query: ``[N]`` bool, or one bool for the whole batch.
        """
        if features.ndim != 2:
            raise ValueError(f"features must be [N, d], got shape {tuple(features.shape)}")
        batch_size = features.shape[0]
        if not isinstance(is_query, Tensor) or is_query.ndim == 0:
            is_query = torch.full((batch_size,), bool(is_query), device=features.device)
        if is_query.shape != (batch_size,) or is_query.dtype != torch.bool:
            raise ValueError(f"is_query must be a bool tensor of shape [{batch_size}]")
        device = features.device
        self.features.append(features.detach().float())
        self.pids.append(_validate_ids("pids", pids, batch_size).to(device))
        self.camids.append(_validate_ids("camids", camids, batch_size).to(device))
        self.is_query.append(is_query.to(device))

    def compute(self) -> dict[str, Tensor | int]:
        """Rank the gallery for every query; see :func:`reid_rank_metrics` for the keys."""
        if isinstance(self.features, list) and not self.features:
            raise ValueError("ReIDRetrieval.compute() called before any update()")
        features = dim_zero_cat(self.features)
        require_finite_features(features, type(self).__name__)
        pids = dim_zero_cat(self.pids)
        camids = dim_zero_cat(self.camids)
        is_query = dim_zero_cat(self.is_query)
        num_query = int(is_query.sum())
        if num_query == 0 or num_query == is_query.numel():
            raise ValueError(
                f"ReIDRetrieval needs both query and gallery samples; got {num_query} queries "
                f"out of {is_query.numel()} samples (check the is_query flags passed to update)"
            )
        query, gallery = features[is_query], features[~is_query]
        query_pids, gallery_pids = pids[is_query], pids[~is_query]
        query_camids, gallery_camids = camids[is_query], camids[~is_query]

        if self.retrieval == "faiss":
            from metareid.evaluation.topk import topk_rank_metrics

            return topk_rank_metrics(
                query,
                gallery,
                query_pids,
                gallery_pids,
                query_camids,
                gallery_camids,
                k=self.topk,
                distance=self.distance,
                max_rank=self.max_rank,
            )
        if self.rerank:
            if self.distance == "cosine":
                query = torch.nn.functional.normalize(query, dim=1)
                gallery = torch.nn.functional.normalize(gallery, dim=1)
            distances = k_reciprocal_rerank(
                query,
                gallery,
                _distance(query, gallery, self.distance),
                self.rerank_k1,
                self.rerank_k2,
                self.rerank_lambda,
            )
            return reid_rank_metrics(
                distances,
                query_pids,
                gallery_pids,
                query_camids,
                gallery_camids,
                self.max_rank,
                self.query_chunk_size,
            )

        # Without re-ranking the [Q, G] matrix is never materialised: one chunk at a time.
        statistics = []
        for start in range(0, num_query, self.query_chunk_size):
            stop = start + self.query_chunk_size
            statistics.append(
                _chunk_statistics(
                    _distance(query[start:stop], gallery, self.distance),
                    query_pids[start:stop],
                    query_camids[start:stop],
                    gallery_pids,
                    gallery_camids,
                )
            )
        return _summarise(
            *(torch.cat(parts) for parts in zip(*statistics, strict=True)),
            self.max_rank,
            len(gallery),
        )


_TABLE_COLUMNS = (
    ("Rank-1", "rank1"),
    ("Rank-5", "rank5"),
    ("Rank-10", "rank10"),
    ("mAP", "mAP"),
    ("mINP", "mINP"),
    ("(mAP+R1)/2", "metric"),
)


def format_reid_table(results: Mapping[str, Mapping[str, float | Tensor]]) -> str:
    """Markdown-style table of ReID results, one row per target dataset.

    Args:
        results: ``{target_name: ReIDRetrieval.compute() output}`` (percent values); missing
            entries are shown as ``-``.

    Returns:
        The table as a string (no trailing newline); results of top-k retrieval (``map_topk``,
        :mod:`metareid.evaluation.topk`) title the column ``mAP@k`` and add a note under it.
    """
    topk = {int(m["map_topk"]) for m in results.values() if m.get("map_topk") is not None}
    titles = [
        f"mAP@{min(topk)}" if key == "mAP" and topk else title for title, key in _TABLE_COLUMNS
    ]
    name_width = max([len("Target"), *(len(name) for name in results)])
    widths = [max(7, len(title)) for title in titles]
    header = [
        f"{'Target':<{name_width}}",
        *(f"{title:>{width}}" for title, width in zip(titles, widths, strict=True)),
    ]
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("-" * (len(cell) + 2) for cell in header) + "|")
    for name, metrics in results.items():
        cells = [f"{name:<{name_width}}"]
        for (_, key), width in zip(_TABLE_COLUMNS, widths, strict=True):
            value = metrics.get(key)
            cells.append(f"{'-':>{width}}" if value is None else f"{float(value):>{width}.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if topk:
        lines.append(
            f"mAP@{min(topk)}: top-{min(topk)} retrieval (model.retrieval=faiss); true matches "
            "ranked lower count as missed (a lower bound of mAP); mINP is nan unless every match "
            "is in the top k."
        )
    return "\n".join(lines)
