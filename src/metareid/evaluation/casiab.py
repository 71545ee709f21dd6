"""Single-view-gallery rank-1 identification: CASIA-B (metagait spec §8.1-8.2) and OU-MVLP (§8.3).

For each probe set (CASIA-B: NM = nm-05/06, BG = bg-01/02, CL = cl-01/02; OU-MVLP: NM = ``00``),
each probe view ``v1`` and each gallery view ``v2``, the gallery is every sequence of a gallery
type (CASIA-B nm-01..04, OU-MVLP ``01``) *at view v2 only*, and the cell's accuracy is the
percentage of probes at ``v1`` whose nearest gallery sequence has the same subject, rounded to 2
decimals. "Exclude identical-view" averages, per probe view, the cells of the other gallery
views, then averages over probe views; "include" averages the whole matrix.

An incomplete test set (a probe set without probes at some view, a view without gallery
sequences) leaves those cells empty. The release then gives NaN means or fails; here the means
skip the empty cells, and the result lists them (``empty_cells``), the printed table shows
``n/a``, a warning gives the counts, and ``strict=True`` raises instead.

:class:`SingleViewGalleryIdentification` implements the protocol for any type/view vocabulary;
:class:`CasiaBIdentification` and :class:`OUMVLPIdentification` are its two configurations.
:class:`GaitEmbeddingStore` holds what every gait evaluator accumulates (also used for GREW).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from metareid.data.gait.casiab import OUMVLP_TYPES, OUMVLP_VIEWS
from metareid.evaluation.distances import part_cosine_distance, part_euclidean_distance
from metareid.evaluation.guards import require_finite_features
from metareid.utils.distributed import distributed_world
from metareid.utils.precision import fp32

__all__ = [
    "CONDITIONS",
    "CONDITION_PROBE_TYPES",
    "GALLERY_TYPES",
    "OUMVLP_GALLERY_TYPES",
    "OUMVLP_PROBE_TYPES",
    "TYPES",
    "VIEWS",
    "CasiaBIdentification",
    "GaitEmbeddingStore",
    "OUMVLPIdentification",
    "SingleViewGalleryIdentification",
    "describe_empty_cells",
    "format_casiab_table",
    "format_view_pair_table",
]

TYPES: tuple[str, ...] = (
    "nm-01", "nm-02", "nm-03", "nm-04", "nm-05", "nm-06", "bg-01", "bg-02", "cl-01", "cl-02",
)  # fmt: skip
VIEWS: tuple[str, ...] = tuple(f"{angle:03d}" for angle in range(0, 181, 18))
CONDITIONS: tuple[str, ...] = ("NM", "BG", "CL")
GALLERY_TYPES: tuple[str, ...] = ("nm-01", "nm-02", "nm-03", "nm-04")
CONDITION_PROBE_TYPES: dict[str, tuple[str, ...]] = {
    "NM": ("nm-05", "nm-06"),
    "BG": ("bg-01", "bg-02"),
    "CL": ("cl-01", "cl-02"),
}
#: OU-MVLP: the second walk (``01``) is the gallery, the first (``00``) the probe.
OUMVLP_GALLERY_TYPES: tuple[str, ...] = ("01",)
OUMVLP_PROBE_TYPES: dict[str, tuple[str, ...]] = {"NM": ("00",)}

log = logging.getLogger(__name__)

DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "euc": part_euclidean_distance,
    "cos": part_cosine_distance,
}


class GaitEmbeddingStore(Metric):
    """Accumulates test-set part embeddings with their subject, type and view indices.

    States are concatenated across DDP ranks at ``compute()`` (``dist_sync_on_step`` stays off:
    per-batch results are meaningless for retrieval protocols). Subclasses implement
    ``compute()`` from :meth:`gathered`.

    Args:
        types: sequence-type names ``type_index`` refers to.
        views: view names ``view_index`` refers to; ``None`` leaves ``view_index`` unchecked
            (datasets without view annotation, such as GREW).
        metric: ``"euc"`` (mean over parts of per-part Euclidean distance) or ``"cos"``
            (1 - mean over parts of per-part cosine similarity).
        probe_chunk_size: probes per distance block; bounds memory to about
            ``parts * chunk * gallery`` floats for ``"euc"``.
        **kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        types: Sequence[str],
        views: Sequence[str] | None,
        metric: str = "euc",
        probe_chunk_size: int = 128,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if metric not in DISTANCES:
            raise ValueError(f"metric must be one of {sorted(DISTANCES)}, got {metric!r}")
        if probe_chunk_size <= 0:
            raise ValueError(f"probe_chunk_size must be > 0, got {probe_chunk_size}")
        self.types = tuple(types)
        self.views = None if views is None else tuple(views)
        self.metric = metric
        self.probe_chunk_size = probe_chunk_size
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("subjects", default=[], dist_reduce_fx="cat")
        self.add_state("type_index", default=[], dist_reduce_fx="cat")
        self.add_state("view_index", default=[], dist_reduce_fx="cat")

    def type_positions(self, names: Sequence[str]) -> torch.Tensor:
        """``[len(names)]`` positions of type names in ``types`` (unknown names raise)."""
        unknown = [name for name in names if name not in self.types]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: types {unknown} are not among the types {self.types}"
            )
        return torch.tensor([self.types.index(name) for name in names], dtype=torch.long)

    def update(
        self,
        embeddings: torch.Tensor,
        subjects: torch.Tensor,
        type_index: torch.Tensor,
        view_index: torch.Tensor,
    ) -> None:
        """Add a batch of test sequences.

        Args:
            embeddings: ``[b, p, c]`` part features.
            subjects: ``[b]`` integer subject ids (any integers, e.g. 75..124).
            type_index: ``[b]`` positions in ``types``.
            view_index: ``[b]`` positions in ``views``.
        """
        name_of_metric = type(self).__name__
        if embeddings.dim() != 3:
            raise ValueError(
                f"{name_of_metric}.update expects embeddings [batch, parts, channels], got "
                f"{tuple(embeddings.shape)} (use x[:, None] for single-vector features)"
            )
        batch = embeddings.shape[0]
        for name, values, names in (
            ("subjects", subjects, None),
            ("type_index", type_index, self.types),
            ("view_index", view_index, self.views),
        ):
            if values.shape != (batch,):
                raise ValueError(
                    f"{name_of_metric}.update: {name} must have shape [{batch}] to match "
                    f"embeddings, got {tuple(values.shape)}"
                )
            if values.is_floating_point():
                raise ValueError(f"{name_of_metric}.update: {name} must be integers")
            if (
                names is not None
                and batch
                and (int(values.min()) < 0 or int(values.max()) >= len(names))
            ):
                raise ValueError(
                    f"{name_of_metric}.update: {name} must index {names}; got values in "
                    f"[{int(values.min())}, {int(values.max())}] (is the evaluator the one "
                    "of the dataset layout?)"
                )
        self.embeddings.append(embeddings.detach())
        self.subjects.append(subjects.detach().long())
        self.type_index.append(type_index.detach().long())
        self.view_index.append(view_index.detach().long())

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything added so far: embeddings ``[N, p, c]`` (fp32), subjects, type_index and
        view_index ``[N]``. Raises ``RuntimeError`` when nothing was added."""
        name = type(self).__name__
        # After a DDP sync the list states arrive already concatenated into tensors.
        if isinstance(self.subjects, list) and not self.subjects:
            raise RuntimeError(f"{name}.compute() called before any update()")
        subjects = dim_zero_cat(self.subjects)
        if subjects.numel() == 0:
            raise RuntimeError(f"{name}.compute(): every update() batch was empty")
        return (
            dim_zero_cat(self.embeddings).float(),
            subjects,
            dim_zero_cat(self.type_index),
            dim_zero_cat(self.view_index),
        )


class SingleViewGalleryIdentification(GaitEmbeddingStore):
    """Rank-1 accuracy for every (probe set, probe view, gallery view) with single-view galleries.

    ``compute()`` returns a dict with

    * one float per probe set (e.g. ``NM``, ``BG``, ``CL``): exclude-identical-view means;
      ``Mean``: their average (probe sets without any probe or gallery are skipped);
    * ``<set>_include`` (float): means of the full view matrix;
    * ``acc``: float64 ``[S, V, V]`` rank-1 percentages (probe set, probe view, gallery view),
      rounded to 2 decimals, NaN where the cell has no probe or no gallery sequence;
    * ``per_view``: float64 ``[S, V]`` exclude-identical-view mean of each probe view;
    * ``views``: the ``V`` view names present in the data, in ``views`` order;
    * ``conditions``: the ``S`` probe-set names;
    * ``empty_cells``: what is missing (see below), ``{"probe": [[set, view], ...],
      "gallery": [view, ...], "absent_views": [view, ...], "na_cells": int, "cells": int}``.

    ``V`` counts only the views present (a reduced synthetic set works); protocol views with no
    sequence at all are listed in ``empty_cells["absent_views"]``.

    Empty cells: a (probe set, probe view) without probe sequences (``empty_cells["probe"]``)
    makes its row of ``acc`` NaN, a view without gallery sequences (``empty_cells["gallery"]``)
    its column in every set; ``na_cells`` of the ``cells = S * V * V`` are then NaN. The means
    skip them: ``per_view[s, v1]`` is the mean of ``acc[s, v1, v2]`` over the non-empty cells
    with ``v2 != v1`` (NaN when there is none); a set's exclude mean is the plain mean of its
    non-NaN ``per_view`` entries (every remaining probe view weighs the same, whatever the
    number of gallery views behind it); ``<set>_include`` is the mean of the set's non-empty
    cells; ``Mean`` the mean of the non-NaN set means. With anything missing, ``compute()`` logs
    a warning with the counts (rank 0), or raises ``ValueError`` when ``strict``.

    Args:
        types, views: names ``type_index`` / ``view_index`` refer to.
        gallery_types: types that make up the gallery.
        probe_sets: probe-set name -> its probe types, in report order.
        metric, probe_chunk_size, **kwargs: see :class:`GaitEmbeddingStore`.
        strict: raise ``ValueError`` naming the empty cells and absent views instead of
            computing the means over what is there.
    """

    def __init__(
        self,
        types: Sequence[str] = TYPES,
        views: Sequence[str] = VIEWS,
        gallery_types: Sequence[str] = GALLERY_TYPES,
        probe_sets: Mapping[str, Sequence[str]] = CONDITION_PROBE_TYPES,
        metric: str = "euc",
        probe_chunk_size: int = 128,
        strict: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(types, views, metric=metric, probe_chunk_size=probe_chunk_size, **kwargs)
        if not probe_sets:
            raise ValueError(f"{type(self).__name__}: probe_sets must name at least one set")
        self.strict = bool(strict)
        self.gallery_types = tuple(gallery_types)
        self.probe_sets = {name: tuple(names) for name, names in probe_sets.items()}
        self.conditions = tuple(self.probe_sets)
        # Resolve the names now so that a typo fails at construction, not after a test epoch.
        self._gallery_positions = self.type_positions(self.gallery_types)
        self._probe_positions = [self.type_positions(t) for t in self.probe_sets.values()]

    def format_table(self, result: dict) -> str:
        """The printed table of a ``compute()`` result."""
        return format_view_pair_table(result)

    def compute(self) -> dict:
        embeddings, subjects, type_index, view_index = self.gathered()
        require_finite_features(embeddings, type(self).__name__)
        device = view_index.device
        num_conditions = len(self.conditions)

        present_views = torch.unique(view_index)  # sorted
        num_views = len(present_views)
        # Map positions in `views` to 0..V-1 among the views actually present.
        view_slot = torch.full((len(self.views),), -1, dtype=torch.long, device=device)
        view_slot[present_views] = torch.arange(num_views, device=device)
        slot = view_slot[view_index]

        is_gallery = torch.isin(type_index, self._gallery_positions.to(device))
        # One pass per probe set: sets may share types (a sequence then counts in each).
        hits, probe_counts = [], []
        for probe_types in self._probe_positions:
            is_probe = torch.isin(type_index, probe_types.to(device))
            set_hits, set_counts = self._count_rank1_hits(
                embeddings[is_probe],
                subjects[is_probe],
                slot[is_probe],
                embeddings[is_gallery],
                subjects[is_gallery],
                slot[is_gallery],
                num_views,
            )
            hits.append(set_hits)
            probe_counts.append(set_counts)
        hits, probe_counts = torch.cat(hits), torch.cat(probe_counts)
        gallery_counts = torch.bincount(slot[is_gallery], minlength=num_views)

        accuracy = 100.0 * hits.cpu() / probe_counts.cpu().double()[:, None]
        accuracy = torch.round(accuracy, decimals=2).reshape(num_conditions, num_views, num_views)
        empty_cell = (probe_counts.cpu() == 0).reshape(num_conditions, num_views, 1) | (
            gallery_counts.cpu() == 0
        ).reshape(1, 1, num_views)
        accuracy = accuracy.masked_fill(empty_cell, math.nan)

        off_diagonal = ~torch.eye(num_views, dtype=torch.bool)
        per_view = torch.nanmean(accuracy.masked_fill(~off_diagonal, math.nan), dim=-1)
        exclude = torch.nanmean(per_view, dim=-1)
        include = torch.nanmean(accuracy.flatten(1), dim=-1)

        view_names = [self.views[int(v)] for v in present_views]
        probe_counts_per_set = probe_counts.cpu().reshape(num_conditions, num_views)
        empty_cells = {
            "probe": [
                [self.conditions[condition_id], view_names[view]]
                for condition_id, view in torch.nonzero(probe_counts_per_set == 0).tolist()
            ],
            "gallery": [view_names[v] for v in range(num_views) if gallery_counts[v] == 0],
            "absent_views": [view for view in self.views if view not in view_names],
            "na_cells": int(empty_cell.expand_as(accuracy).sum()),
            "cells": accuracy.numel(),
        }
        self._report_incomplete(empty_cells)

        result: dict = {}
        for condition_id, name in enumerate(self.conditions):
            result[name] = float(exclude[condition_id])
        result["Mean"] = float(torch.nanmean(exclude))
        for condition_id, name in enumerate(self.conditions):
            result[f"{name}_include"] = float(include[condition_id])
        result["acc"] = accuracy
        result["per_view"] = per_view
        result["views"] = [self.views[int(v)] for v in present_views]
        result["conditions"] = list(self.conditions)
        result["empty_cells"] = empty_cells
        return result

    def _report_incomplete(self, empty_cells: dict) -> None:
        """Warn about (or with ``strict``, raise on) empty cells and absent views."""
        if not (empty_cells["na_cells"] or empty_cells["absent_views"]):
            return
        message = f"{type(self).__name__}: incomplete test set, {describe_empty_cells(empty_cells)}"
        if self.strict:
            raise ValueError(f"{message}. Complete the test set, or set strict=false.")
        if distributed_world()[0] == 0:
            log.warning(
                "%s. The means average the remaining cells (n/a in the tables); strict=true "
                "stops instead.",
                message,
            )

    @fp32  # argmin over a half-precision distance block would change the nearest sequence
    def _count_rank1_hits(
        self,
        probe_embeddings: torch.Tensor,
        probe_subjects: torch.Tensor,
        probe_slot: torch.Tensor,
        gallery_embeddings: torch.Tensor,
        gallery_subjects: torch.Tensor,
        gallery_slot: torch.Tensor,
        num_views: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank-1 hits of every probe against the single-view gallery of every view.

        Args:
            probe_embeddings: ``[P, p, c]``; probe_subjects ``[P]``.
            probe_slot: ``[P]`` probe view slot in ``0..V-1``.
            gallery_embeddings: ``[G, p, c]``; gallery_subjects ``[G]``.
            gallery_slot: ``[G]`` gallery view slot in ``0..V-1``.

        Returns:
            ``hits`` float64 ``[V, V]`` (probe view, gallery view) and ``probe_counts`` ``[V]``.
        """
        device = probe_embeddings.device
        hits = torch.zeros(num_views, num_views, dtype=torch.float64, device=device)
        probe_counts = torch.bincount(probe_slot, minlength=num_views)
        if len(probe_subjects) == 0 or len(gallery_subjects) == 0:
            return hits, probe_counts

        # Group the gallery by view (a stable sort keeps each view's order, hence argmin's
        # tie-breaking) so that each single-view gallery is a contiguous column range: memory
        # stays at one [chunk, G] distance block whatever the number of views.
        order = torch.argsort(gallery_slot, stable=True)
        gallery_embeddings, gallery_subjects = gallery_embeddings[order], gallery_subjects[order]
        ends = torch.cumsum(torch.bincount(gallery_slot, minlength=num_views), 0).tolist()
        view_ranges = [
            (view, start, stop)
            for view, (start, stop) in enumerate(zip([0, *ends[:-1]], ends, strict=True))
            if stop > start
        ]
        distance_fn = DISTANCES[self.metric]
        for start in range(0, len(probe_subjects), self.probe_chunk_size):
            stop = start + self.probe_chunk_size
            distances = distance_fn(probe_embeddings[start:stop], gallery_embeddings)  # [b, G]
            correct = torch.zeros(len(distances), num_views, dtype=torch.float64, device=device)
            for view, first, last in view_ranges:
                nearest = first + distances[:, first:last].argmin(-1)
                correct[:, view] = (
                    gallery_subjects[nearest] == probe_subjects[start:stop]
                ).double()
            hits.index_add_(0, probe_slot[start:stop], correct)
        return hits, probe_counts


class CasiaBIdentification(SingleViewGalleryIdentification):
    """The CASIA-B protocol: gallery nm-01..04; probe sets NM, BG, CL over the 11 views.

    ``compute()`` gives ``NM``, ``BG``, ``CL``, ``Mean``, ``NM_include``, ``BG_include``,
    ``CL_include``, ``acc`` ``[3, V, V]``, ``per_view`` ``[3, V]``, ``views`` and ``conditions``
    (see :class:`SingleViewGalleryIdentification`).

    Args:
        metric, probe_chunk_size, strict, **kwargs: see
            :class:`SingleViewGalleryIdentification`.
    """

    def __init__(
        self, metric: str = "euc", probe_chunk_size: int = 128, strict: bool = False, **kwargs
    ) -> None:
        super().__init__(
            types=TYPES,
            views=VIEWS,
            gallery_types=GALLERY_TYPES,
            probe_sets=CONDITION_PROBE_TYPES,
            metric=metric,
            probe_chunk_size=probe_chunk_size,
            strict=strict,
            **kwargs,
        )


class OUMVLPIdentification(SingleViewGalleryIdentification):
    """The OU-MVLP protocol: probe sequence ``00`` against the gallery ``01`` of each of the 14
    views (metagait spec §8.3).

    ``compute()`` gives ``NM`` (exclude identical view), ``NM_include``, ``Mean`` (= ``NM``),
    ``acc`` ``[1, V, V]``, ``per_view`` ``[1, V]``, ``views`` and ``conditions``.

    Every probe counts, also one whose subject has no gallery sequence at the gallery view (as
    OpenGait does without ``remove_no_gallery``).

    Args:
        metric, probe_chunk_size, strict, **kwargs: see
            :class:`SingleViewGalleryIdentification`. The test set has about 67k gallery
            sequences, so keep ``probe_chunk_size`` small (a ``[64, chunk, 67k]`` float block
            for ``"euc"``).
    """

    def __init__(
        self, metric: str = "euc", probe_chunk_size: int = 32, strict: bool = False, **kwargs
    ) -> None:
        super().__init__(
            types=OUMVLP_TYPES,
            views=OUMVLP_VIEWS,
            gallery_types=OUMVLP_GALLERY_TYPES,
            probe_sets=OUMVLP_PROBE_TYPES,
            metric=metric,
            probe_chunk_size=probe_chunk_size,
            strict=strict,
            **kwargs,
        )


def describe_empty_cells(empty_cells: Mapping) -> str:
    """One line naming what an ``empty_cells`` entry of a result holds, e.g. ``"33 of 363
    view-pair cells are n/a: no probe sequence for CL@108; no gallery sequence at view 036"``."""
    causes = []
    if empty_cells.get("probe"):
        cells = ", ".join(f"{name}@{view}" for name, view in empty_cells["probe"])
        causes.append(f"no probe sequence for {cells}")
    if empty_cells.get("gallery"):
        causes.append(f"no gallery sequence at view {', '.join(empty_cells['gallery'])}")
    parts = []
    if empty_cells.get("na_cells"):
        counts = f"{empty_cells['na_cells']} of {empty_cells.get('cells', 0)} view-pair cells"
        parts.append(f"{counts} are n/a: " + "; ".join(causes))
    if empty_cells.get("absent_views"):
        parts.append(f"views absent from the data: {', '.join(empty_cells['absent_views'])}")
    return "; ".join(parts)


def format_view_pair_table(result: dict) -> str:
    """Render a ``SingleViewGalleryIdentification.compute()`` result in the OpenGait log layout.

    The include/exclude means come first, then an aligned table of the per-probe-view
    exclude-identical-view rank-1 (one row per probe set, one column per view, plus the mean).
    Values without any non-empty cell behind them print as ``n/a``, and the empty cells are
    listed under the table; ``Mean`` is printed only with several probe sets.
    """

    def number(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.2f}"

    conditions = list(result.get("conditions", CONDITIONS))
    views = list(result["views"])
    lines = ["===Rank-1 (Include identical-view cases)==="]
    lines.append(", ".join(f"{name}: {number(result[f'{name}_include'])}" for name in conditions))
    lines.append("===Rank-1 (Exclude identical-view cases)===")
    summary = [*conditions, "Mean"] if len(conditions) > 1 else conditions
    lines.append(", ".join(f"{name}: {number(result[name])}" for name in summary))
    lines.append("===Rank-1 of each angle (Exclude identical-view cases)===")
    width = 7
    label_width = max(5, max(len(name) for name in conditions) + 2)
    header = "view".ljust(label_width) + "".join(v.rjust(width) for v in views)
    lines.append(header + "mean".rjust(width + 1))
    per_view = result["per_view"]
    for condition_id, name in enumerate(conditions):
        cells = "".join(number(float(x)).rjust(width) for x in per_view[condition_id])
        lines.append(f"{name}:".ljust(label_width) + cells + number(result[name]).rjust(width + 1))
    empty_cells = result.get("empty_cells") or {}
    if empty_cells.get("na_cells") or empty_cells.get("absent_views"):
        lines.append(f"n/a: {describe_empty_cells(empty_cells)}")
    return "\n".join(lines)


#: The CASIA-B name of :func:`format_view_pair_table` (the table is the same for every dataset).
format_casiab_table = format_view_pair_table
