"""GREW rank-k identification over the whole gallery (metagait spec §8.4).

GREW's public probe set (type ``03``) has no labels, so the labelled protocol (OpenGait's
``evaluate_real_scene``) uses the two sequences of every test subject: the first (``01``) forms
the gallery and the second (``02``) is the probe. Rank-k accuracy is the percentage of probes
with a sequence of their own subject among the k nearest gallery sequences, rounded to 2
decimals; there is no view split. Sequences of other types (training ``00``, probe ``03``) are
ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from metareid.data.gait.casiab import GREW_TYPES
from metareid.evaluation.casiab import DISTANCES, GaitEmbeddingStore
from metareid.evaluation.guards import require_finite_features
from metareid.utils.distributed import distributed_world
from metareid.utils.precision import fp32

__all__ = ["GREW_GALLERY_TYPES", "GREW_PROBE_TYPES", "GREWIdentification", "format_rank_table"]

log = logging.getLogger(__name__)

GREW_GALLERY_TYPES: tuple[str, ...] = ("01",)
GREW_PROBE_TYPES: tuple[str, ...] = ("02",)


class GREWIdentification(GaitEmbeddingStore):
    """Rank-k accuracy of the probe types against one gallery made of all gallery-type sequences.

    ``compute()`` returns a dict with ``Rank-<k>`` (float) for every ``k`` in ``ranks``,
    ``cmc`` (float64 ``[max(ranks)]``, the rank-1..max percentages, rounded to 2 decimals) and
    ``sizes`` (``{"probes": int, "gallery": int}``, in a dict so that it is not logged). With no
    probe or no gallery sequence every accuracy is NaN (``n/a`` in the table) and a warning is
    logged, or with ``strict`` a ``ValueError`` raised. A rank beyond the gallery size counts
    every probe whose subject is in the gallery.

    Args:
        ranks: the k values reported.
        gallery_types, probe_types: sequence types of the gallery and of the probes.
        types: names ``type_index`` refers to (GREW's ``00``..``03``).
        metric, probe_chunk_size, **kwargs: see :class:`GaitEmbeddingStore`. ``view_index`` is
            accepted but unused.
        strict: raise instead of returning NaN when the probes or the gallery are empty.
    """

    def __init__(
        self,
        ranks: Sequence[int] = (1, 5, 10, 20),
        gallery_types: Sequence[str] = GREW_GALLERY_TYPES,
        probe_types: Sequence[str] = GREW_PROBE_TYPES,
        types: Sequence[str] = GREW_TYPES,
        metric: str = "euc",
        probe_chunk_size: int = 256,
        strict: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(types, None, metric=metric, probe_chunk_size=probe_chunk_size, **kwargs)
        self.strict = bool(strict)
        self.gallery_types = tuple(gallery_types)
        self.probe_types = tuple(probe_types)
        self.ranks = tuple(int(k) for k in ranks)
        if not self.ranks or min(self.ranks) < 1:
            raise ValueError(f"ranks must be positive integers, got {list(ranks)}")
        self._gallery_positions = self.type_positions(gallery_types)
        self._probe_positions = self.type_positions(probe_types)

    def format_table(self, result: dict) -> str:
        """The printed table of a ``compute()`` result."""
        return format_rank_table(result)

    def compute(self) -> dict:
        embeddings, subjects, type_index, _ = self.gathered()
        require_finite_features(embeddings, type(self).__name__)
        device = type_index.device
        is_gallery = torch.isin(type_index, self._gallery_positions.to(device))
        is_probe = torch.isin(type_index, self._probe_positions.to(device))
        max_rank = max(self.ranks)
        hits = self._cumulative_hits(
            embeddings[is_probe], subjects[is_probe], embeddings[is_gallery], subjects[is_gallery]
        )
        num_probes, num_gallery = int(is_probe.sum()), int(is_gallery.sum())
        if num_probes and num_gallery:
            cmc = torch.round(100.0 * hits / num_probes, decimals=2)
        else:
            self._report_empty(num_probes, num_gallery)
            cmc = torch.full((max_rank,), math.nan, dtype=torch.float64)
        result: dict = {f"Rank-{k}": float(cmc[k - 1]) for k in self.ranks}
        result["cmc"] = cmc
        result["sizes"] = {"probes": num_probes, "gallery": num_gallery}
        return result

    def _report_empty(self, num_probes: int, num_gallery: int) -> None:
        message = (
            f"{type(self).__name__}: incomplete test set, {num_probes} probe sequences (types "
            f"{', '.join(self.probe_types)}) and {num_gallery} gallery sequences (types "
            f"{', '.join(self.gallery_types)}); every rank-k accuracy is n/a"
        )
        if self.strict:
            raise ValueError(f"{message}. Complete the test set, or set strict=false.")
        if distributed_world()[0] == 0:
            log.warning("%s; strict=true stops instead.", message)

    @fp32  # topk over a half-precision distance block would reorder close gallery sequences
    def _cumulative_hits(
        self,
        probe_embeddings: torch.Tensor,
        probe_subjects: torch.Tensor,
        gallery_embeddings: torch.Tensor,
        gallery_subjects: torch.Tensor,
    ) -> torch.Tensor:
        """float64 ``[max_rank]`` (CPU): probes with a correct match within the first k.

        Args:
            probe_embeddings: ``[P, p, c]``; probe_subjects ``[P]``.
            gallery_embeddings: ``[G, p, c]``; gallery_subjects ``[G]``.
        """
        max_rank = max(self.ranks)
        hits = torch.zeros(max_rank, dtype=torch.float64, device=probe_embeddings.device)
        if len(probe_subjects) == 0 or len(gallery_subjects) == 0:
            return hits.cpu()
        depth = min(max_rank, len(gallery_subjects))
        distance_fn = DISTANCES[self.metric]
        for start in range(0, len(probe_subjects), self.probe_chunk_size):
            stop = start + self.probe_chunk_size
            distances = distance_fn(probe_embeddings[start:stop], gallery_embeddings)  # [b, G]
            nearest = distances.topk(depth, dim=1, largest=False, sorted=True).indices  # [b, k]
            matches = gallery_subjects[nearest] == probe_subjects[start:stop, None]
            found_by_rank = matches.cumsum(dim=1) > 0  # [b, k]
            hits[:depth] += found_by_rank.sum(0).double()
        # Deeper than the gallery: nothing new is found after the last gallery sequence.
        hits[depth:] = hits[depth - 1]
        return hits.cpu()


def format_rank_table(result: dict) -> str:
    """One line of rank-k accuracies (2 decimals, ``n/a`` for NaN) with the set sizes."""
    ranks = [key for key in result if key.startswith("Rank-")]
    cells = ", ".join(
        f"{key}: {'n/a' if math.isnan(result[key]) else format(result[key], '.2f')}"
        for key in ranks
    )
    sizes = f"{result['sizes']['probes']} probes, {result['sizes']['gallery']} gallery sequences"
    return f"===Rank-k ({sizes})===\n{cells}"
