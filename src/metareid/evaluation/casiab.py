"""CASIA-B single-view-gallery rank-1 identification (metagait spec §8.1-8.2).

For each probe condition (NM = nm-05/06, BG = bg-01/02, CL = cl-01/02), each probe view ``v1``
and each gallery view ``v2``, the gallery is every nm-01..04 sequence *at view v2 only*, and the
cell's accuracy is the percentage of probes at ``v1`` whose nearest gallery sequence has the same
subject, rounded to 2 decimals. "Exclude identical-view" averages, per probe view, the cells of
the other gallery views, then averages over probe views; "include" averages the whole matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from metareid.evaluation.distances import part_cosine_distance, part_euclidean_distance

__all__ = [
    "CONDITIONS",
    "CONDITION_PROBE_TYPES",
    "GALLERY_TYPES",
    "TYPES",
    "VIEWS",
    "CasiaBIdentification",
    "format_casiab_table",
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

_DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "euc": part_euclidean_distance,
    "cos": part_cosine_distance,
}


def _type_lookup(names: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([TYPES.index(name) for name in names])


class CasiaBIdentification(Metric):
    """Accumulates test-set embeddings and computes the CASIA-B rank-1 protocol.

    States are concatenated across DDP ranks at ``compute()`` (``dist_sync_on_step`` stays off:
    per-batch results are meaningless for this protocol). ``compute()`` returns a dict with

    * ``NM``, ``BG``, ``CL`` (float): exclude-identical-view means; ``Mean``: their average
      (conditions without any probe or gallery are skipped);
    * ``NM_include``, ``BG_include``, ``CL_include`` (float): means of the full view matrix;
    * ``acc``: float64 ``[3, V, V]`` rank-1 percentages (condition, probe view, gallery view),
      rounded to 2 decimals, NaN where the cell has no probe or no gallery sequence;
    * ``per_view``: float64 ``[3, V]`` exclude-identical-view mean of each probe view;
    * ``views``: the ``V`` view names present in the data, in ``VIEWS`` order.

    All means skip NaN cells. ``V`` counts only the views present (a reduced synthetic set
    works).

    Args:
        metric: ``"euc"`` (mean over parts of per-part Euclidean distance) or ``"cos"``
            (1 - mean over parts of per-part cosine similarity).
        probe_chunk_size: probes per distance block; bounds memory to about
            ``parts * chunk * gallery`` floats for ``"euc"``.
        **kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, metric: str = "euc", probe_chunk_size: int = 128, **kwargs) -> None:
        super().__init__(**kwargs)
        if metric not in _DISTANCES:
            raise ValueError(f"metric must be one of {sorted(_DISTANCES)}, got {metric!r}")
        if probe_chunk_size <= 0:
            raise ValueError(f"probe_chunk_size must be > 0, got {probe_chunk_size}")
        self.metric = metric
        self.probe_chunk_size = probe_chunk_size
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("subjects", default=[], dist_reduce_fx="cat")
        self.add_state("type_index", default=[], dist_reduce_fx="cat")
        self.add_state("view_index", default=[], dist_reduce_fx="cat")

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
            type_index: ``[b]`` positions in ``TYPES``.
            view_index: ``[b]`` positions in ``VIEWS``.
        """
        if embeddings.dim() != 3:
            raise ValueError(
                "CasiaBIdentification.update expects embeddings [batch, parts, channels], got "
                f"{tuple(embeddings.shape)} (use x[:, None] for single-vector features)"
            )
        batch = embeddings.shape[0]
        for name, values, upper in (
            ("subjects", subjects, None),
            ("type_index", type_index, len(TYPES)),
            ("view_index", view_index, len(VIEWS)),
        ):
            if values.shape != (batch,):
                raise ValueError(
                    f"CasiaBIdentification.update: {name} must have shape [{batch}] to match "
                    f"embeddings, got {tuple(values.shape)}"
                )
            if values.is_floating_point():
                raise ValueError(f"CasiaBIdentification.update: {name} must be integers")
            if (
                upper is not None
                and batch
                and (int(values.min()) < 0 or int(values.max()) >= upper)
            ):
                names = TYPES if name == "type_index" else VIEWS
                raise ValueError(
                    f"CasiaBIdentification.update: {name} must index {names}; got values in "
                    f"[{int(values.min())}, {int(values.max())}]"
                )
        self.embeddings.append(embeddings.detach())
        self.subjects.append(subjects.detach().long())
        self.type_index.append(type_index.detach().long())
        self.view_index.append(view_index.detach().long())

    def format_table(self, result: dict) -> str:
        """The printed CASIA-B table of a ``compute()`` result."""
        return format_casiab_table(result)

    def compute(self) -> dict:
        # After a DDP sync the list states arrive already concatenated into tensors.
        if isinstance(self.subjects, list) and not self.subjects:
            raise RuntimeError("CasiaBIdentification.compute() called before any update()")
        subjects = dim_zero_cat(self.subjects)
        if subjects.numel() == 0:
            raise RuntimeError("CasiaBIdentification.compute(): every update() batch was empty")
        embeddings = dim_zero_cat(self.embeddings).float()
        type_index = dim_zero_cat(self.type_index)
        view_index = dim_zero_cat(self.view_index)

        present_views = torch.unique(view_index)  # sorted
        num_views = len(present_views)
        # Map VIEWS positions to 0..V-1 among the views actually present.
        view_slot = torch.full((len(VIEWS),), -1, dtype=torch.long, device=view_index.device)
        view_slot[present_views] = torch.arange(num_views, device=view_index.device)
        slot = view_slot[view_index]

        gallery_types = _type_lookup(GALLERY_TYPES).to(type_index.device)
        is_gallery = torch.isin(type_index, gallery_types)
        condition = torch.full_like(type_index, -1)
        for condition_id, name in enumerate(CONDITIONS):
            probe_types = _type_lookup(CONDITION_PROBE_TYPES[name]).to(type_index.device)
            condition[torch.isin(type_index, probe_types)] = condition_id
        is_probe = condition >= 0

        hits, probe_counts = self._count_rank1_hits(
            embeddings[is_probe],
            subjects[is_probe],
            condition[is_probe] * num_views + slot[is_probe],
            embeddings[is_gallery],
            subjects[is_gallery],
            slot[is_gallery],
            num_views,
        )
        gallery_counts = torch.bincount(slot[is_gallery], minlength=num_views)

        accuracy = 100.0 * hits.cpu() / probe_counts.cpu().double()[:, None]
        accuracy = torch.round(accuracy, decimals=2).reshape(len(CONDITIONS), num_views, num_views)
        empty_cell = (probe_counts.cpu() == 0).reshape(len(CONDITIONS), num_views, 1) | (
            gallery_counts.cpu() == 0
        ).reshape(1, 1, num_views)
        accuracy = accuracy.masked_fill(empty_cell, math.nan)

        off_diagonal = ~torch.eye(num_views, dtype=torch.bool)
        per_view = torch.nanmean(accuracy.masked_fill(~off_diagonal, math.nan), dim=-1)
        exclude = torch.nanmean(per_view, dim=-1)
        include = torch.nanmean(accuracy.flatten(1), dim=-1)

        result: dict = {}
        for condition_id, name in enumerate(CONDITIONS):
            result[name] = float(exclude[condition_id])
        result["Mean"] = float(torch.nanmean(exclude))
        for condition_id, name in enumerate(CONDITIONS):
            result[f"{name}_include"] = float(include[condition_id])
        result["acc"] = accuracy
        result["per_view"] = per_view
        result["views"] = [VIEWS[int(v)] for v in present_views]
        return result

    def _count_rank1_hits(
        self,
        probe_embeddings: torch.Tensor,
        probe_subjects: torch.Tensor,
        probe_row: torch.Tensor,
        gallery_embeddings: torch.Tensor,
        gallery_subjects: torch.Tensor,
        gallery_slot: torch.Tensor,
        num_views: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank-1 hits of every probe against the single-view gallery of every view.

        Args:
            probe_embeddings: ``[P, p, c]``; probe_subjects ``[P]``.
            probe_row: ``[P]`` row ``condition * V + probe view slot``.
            gallery_embeddings: ``[G, p, c]``; gallery_subjects ``[G]``.
            gallery_slot: ``[G]`` gallery view slot in ``0..V-1``.

        Returns:
            ``hits`` float64 ``[3 * V, V]`` (probe row, gallery view) and ``probe_counts``
            ``[3 * V]``.
        """
        device = probe_embeddings.device
        num_rows = len(CONDITIONS) * num_views
        hits = torch.zeros(num_rows, num_views, dtype=torch.float64, device=device)
        probe_counts = torch.bincount(probe_row, minlength=num_rows)
        if len(probe_subjects) == 0 or len(gallery_subjects) == 0:
            return hits, probe_counts

        distance_fn = _DISTANCES[self.metric]
        # [V, G]: which gallery sequences make up each single-view gallery.
        outside_view = gallery_slot[None, :] != torch.arange(num_views, device=device)[:, None]
        for start in range(0, len(probe_subjects), self.probe_chunk_size):
            stop = start + self.probe_chunk_size
            distances = distance_fn(probe_embeddings[start:stop], gallery_embeddings)  # [b, G]
            per_view = distances[:, None, :].masked_fill(outside_view[None], math.inf)
            nearest = per_view.argmin(-1)  # [b, V]; meaningless for empty views, masked later
            correct = gallery_subjects[nearest] == probe_subjects[start:stop, None]
            hits.index_add_(0, probe_row[start:stop], correct.double())
        return hits, probe_counts


def format_casiab_table(result: dict) -> str:
    """Render a ``CasiaBIdentification.compute()`` result in the OpenGait log layout.

    The include/exclude means come first, then an aligned table of the per-probe-view
    exclude-identical-view rank-1 (one row per condition, one column per view, plus the mean).
    Missing values print as ``-``.
    """

    def number(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.2f}"

    views = list(result["views"])
    lines = ["===Rank-1 (Include identical-view cases)==="]
    lines.append(", ".join(f"{name}: {number(result[f'{name}_include'])}" for name in CONDITIONS))
    lines.append("===Rank-1 (Exclude identical-view cases)===")
    excluded = [f"{name}: {number(result[name])}" for name in (*CONDITIONS, "Mean")]
    lines.append(", ".join(excluded))
    lines.append("===Rank-1 of each angle (Exclude identical-view cases)===")
    width = 7
    lines.append("view".ljust(5) + "".join(v.rjust(width) for v in views) + "mean".rjust(width + 1))
    per_view = result["per_view"]
    for condition_id, name in enumerate(CONDITIONS):
        cells = "".join(number(float(x)).rjust(width) for x in per_view[condition_id])
        lines.append(f"{name}:".ljust(5) + cells + number(result[name]).rjust(width + 1))
    return "\n".join(lines)
