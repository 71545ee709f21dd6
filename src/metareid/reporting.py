"""Evaluation reports: markdown and JSON result tables plus figures, written into a run directory.

``src/eval.py`` and ``src/train.py`` hand the last evaluation result of their LightningModule
(``GaitModule.last_results`` / ``ReIDModule.last_results``) to :func:`write_report`, which writes
into ``<run dir>/report``:

* gait: ``gait_results.md``, ``gait_results.json`` and ``gait_heatmap.png`` (rank-1 of every
  probe view × gallery view cell, one panel per walking condition);
* ReID: ``reid_results.md``, ``reid_results.json`` and ``reid_cmc.png`` (one CMC curve per target).

Everything here is a pure function of its arguments. Figures are built on
``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot: reports can be written from
any thread or process without touching the global backend of a notebook that imports this module.
JSON files hold plain numbers; a NaN (a cell without probes or gallery) becomes ``null``, and
gait tables print it as ``n/a`` with the empty cells listed under the per-view table.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

__all__ = [
    "GAIT_CONDITIONS",
    "REID_METRICS",
    "REPORT_DIRNAME",
    "gait_markdown",
    "markdown_table",
    "plot_casiab_heatmap",
    "plot_cmc",
    "plot_retrieval_examples",
    "reid_markdown",
    "run_title",
    "to_jsonable",
    "write_gait_report",
    "write_reid_report",
    "write_report",
]

REPORT_DIRNAME = "report"
# Row order of the ``acc``/``per_view`` tensors of CasiaBIdentification (same as its CONDITIONS);
# repeated here so that writing a report does not import the evaluation stack.
GAIT_CONDITIONS: tuple[str, ...] = ("NM", "BG", "CL")
# (column title, result key) of the ReID tables, in the order fast-reid prints them; fast-reid's
# "metric" is the average of mAP and rank-1, which its bare name does not say.
REID_METRICS: tuple[tuple[str, str], ...] = (
    ("Rank-1", "rank1"),
    ("Rank-5", "rank5"),
    ("Rank-10", "rank10"),
    ("mAP", "mAP"),
    ("mINP", "mINP"),
    ("metric = (mAP + R1) / 2", "metric"),
)
# Cell values are written into the heatmap only while they stay legible.
MAX_ANNOTATED_VIEWS = 14


# ----------------------------------------------------------------------------- conversions


def to_jsonable(value: Any) -> Any:
    """``value`` with tensors and arrays as (nested) lists, NaN/inf as ``None``, paths as str.

    Mappings keep their keys (as strings), tuples become lists; anything else that ``json`` cannot
    write raises ``TypeError`` naming its type.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, Sequence):
        return [to_jsonable(item) for item in value]
    raise TypeError(f"cannot write a {type(value).__name__} into a JSON report: {value!r}")


def _as_float(value: Any) -> float:
    """A scalar (float, 0-d tensor/array, ``None``) as a float; ``None`` gives NaN."""
    if value is None:
        return math.nan
    return float(np.asarray(to_jsonable(value), dtype=float))


def _number(value: Any, missing: str = "-") -> str:
    number = _as_float(value)
    return missing if math.isnan(number) else f"{number:.2f}"


def _gait_number(value: Any) -> str:
    """A gait table value; NaN means no probe or no gallery sequence behind it: ``n/a``."""
    return _number(value, missing="n/a")


def _is_scalar(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float | int):
        return True
    return isinstance(value, torch.Tensor | np.ndarray | np.generic) and np.ndim(value) == 0


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align_right_from: int = 1
) -> str:
    """A GitHub markdown table; columns from ``align_right_from`` on are right-aligned."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells to match the header {header}")
    rule = ["---:" if column >= align_right_from else "---" for column in range(len(header))]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def run_title(metadata: Mapping[str, Any] | None) -> str | None:
    """The title of a run's figures: its task name and the weights evaluated (a checkpoint's file
    name, or e.g. ``"end of training"``), joined by `` · ``; ``None`` without either."""
    metadata = metadata or {}
    weights = metadata.get("ckpt_path") or metadata.get("weights")
    if weights is not None and str(weights).endswith(".ckpt"):
        weights = Path(str(weights)).name
    parts = [str(part) for part in (metadata.get("task_name"), weights) if part]
    return " · ".join(parts) or None


def _metadata_lines(metadata: Mapping[str, Any] | None) -> list[str]:
    return [f"- {key}: `{value}`" for key, value in (metadata or {}).items() if value is not None]


def _write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(to_jsonable(payload), indent=1, allow_nan=False) + "\n")
    return path


def _save_figure(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------- gait


def _gait_conditions(result: Mapping[str, Any], rows: int | None = None) -> list[str]:
    """Names of the condition rows of ``acc``/``per_view``: ``result["conditions"]`` when the
    evaluator gives them, else the CASIA-B conditions (or ``C0, C1, ...`` past three rows)."""
    names = list(result.get("conditions") or GAIT_CONDITIONS)
    if rows is not None and len(names) < rows:
        names += [f"C{index}" for index in range(len(names), rows)]
    return names[:rows] if rows is not None else names


def _gait_matrix(result: Mapping[str, Any], key: str, dims: int) -> np.ndarray | None:
    """``result[key]`` as a float array with ``dims`` dimensions (``None`` -> NaN), or ``None``
    when the result has no such entry."""
    if result.get(key) is None:
        return None
    array = np.asarray(to_jsonable(result[key]), dtype=float)
    if array.ndim != dims:
        raise ValueError(
            f"gait result[{key!r}] must have {dims} dimensions (conditions first), got shape "
            f"{list(array.shape)}"
        )
    return array


def _gait_views(result: Mapping[str, Any], matrix: np.ndarray | None) -> list[str]:
    """View names of the last axis of ``matrix``: ``result["views"]``, else ``0, 1, ...``."""
    views = [str(view) for view in result.get("views") or []]
    if not views and matrix is not None:
        views = [str(index) for index in range(matrix.shape[-1])]
    return views


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _empty_cell_lines(
    result: Mapping[str, Any], acc: np.ndarray | None, conditions: Sequence[str]
) -> list[str]:
    """The "Empty cells" section: what ``result["empty_cells"]`` names (probe cells, gallery
    views, absent views), or, for results without that entry, the NaN cells of ``acc``."""
    empty = result.get("empty_cells")
    if empty is None and acc is not None and np.isnan(acc).any():
        views = _gait_views(result, acc)
        cells = [
            f"{conditions[c]} {views[probe]} → {views[gallery]}"
            for c, probe, gallery in zip(*np.nonzero(np.isnan(acc)), strict=True)
        ]
        empty = {"na_cells": len(cells), "cells": acc.size, "listed": cells}
    if not empty or not (empty.get("na_cells") or empty.get("absent_views")):
        return []
    lines = ["## Empty cells (n/a)", ""]
    if empty.get("na_cells"):
        lines += [
            f"{empty['na_cells']} of {empty.get('cells', 0)} probe view × gallery view cells "
            "have no probe or no gallery sequence; the means above average the remaining cells.",
            "",
        ]
    if empty.get("probe"):
        cells = ", ".join(f"{name} at {view}" for name, view in empty["probe"])
        lines.append(f"- no probe sequence (condition at probe view): {cells}")
    if empty.get("gallery"):
        lines.append(f"- no gallery sequence at view: {', '.join(empty['gallery'])}")
    if empty.get("absent_views"):
        lines.append(f"- views absent from the test data: {', '.join(empty['absent_views'])}")
    if empty.get("listed"):
        lines.append(f"- cells (condition probe → gallery): {', '.join(empty['listed'])}")
    return [*lines, ""]


def gait_markdown(result: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str:
    """Markdown report of a gait evaluation result (``CasiaBIdentification.compute()`` layout).

    Sections: rank-1 per condition (exclude / include identical-view means, and ``Mean``), the
    exclude-identical-view rank-1 of every probe view (``per_view [C, V]``), the empty cells
    (``empty_cells``, or the NaN cells of ``acc``) when there are any, then one probe view ×
    gallery view table per condition (``acc [C, V, V]``); sections whose entries are absent are
    left out, and scalar entries of other evaluators are listed under "Other metrics". Values
    without any non-empty cell behind them read ``n/a``.
    """
    lines = ["# Gait evaluation", *_metadata_lines(metadata), ""]
    per_view = _gait_matrix(result, "per_view", 2)
    acc = _gait_matrix(result, "acc", 3)
    rows = len(acc) if acc is not None else len(per_view) if per_view is not None else None
    conditions = _gait_conditions(result, rows)
    shown: set[str] = set()

    summary = []
    for name in conditions:
        if name in result or f"{name}_include" in result:
            summary.append(
                [
                    name,
                    _gait_number(result.get(name)),
                    _gait_number(result.get(f"{name}_include")),
                ]
            )
            shown |= {name, f"{name}_include"}
    if "Mean" in result:
        summary.append(["Mean", _gait_number(result["Mean"]), "-"])
        shown.add("Mean")
    if summary:
        header = ["Condition", "Exclude identical-view", "Include identical-view"]
        lines += ["## Rank-1 (%)", "", markdown_table(header, summary), ""]

    views = _gait_views(result, acc if acc is not None else per_view)
    if per_view is not None:
        if per_view.shape[1] != len(views):
            raise ValueError(
                f"gait result['per_view'] has {per_view.shape[1]} views but result['views'] "
                f"lists {len(views)}"
            )
        table = [
            [name, *(_gait_number(x) for x in row), _gait_number(_nanmean(row))]
            for name, row in zip(conditions, per_view, strict=True)
        ]
        lines += ["## Rank-1 per probe view, exclude identical-view (%)", ""]
        lines += [markdown_table(["Condition", *views, "Mean"], table), ""]
    lines += _empty_cell_lines(result, acc, conditions)
    if acc is not None:
        for name, matrix in zip(conditions, acc, strict=True):
            table = [
                [probe, *(_gait_number(x) for x in row)]
                for probe, row in zip(views, matrix, strict=True)
            ]
            lines += [f"## {name}: probe view (rows) × gallery view (columns), rank-1 (%)", ""]
            lines += [markdown_table(["Probe \\ gallery", *views], table), ""]

    others = [
        [key, _number(value)]
        for key, value in result.items()
        if key not in shown and _is_scalar(value)
    ]
    if others:
        lines += ["## Other metrics", "", markdown_table(["Metric", "Value"], others), ""]
    return "\n".join(lines).rstrip() + "\n"


def plot_casiab_heatmap(result: Mapping[str, Any], title: str | None = None) -> Figure:
    """Rank-1 of every (probe view, gallery view) cell, one panel per condition.

    Args:
        result: ``acc`` (``[C, V, V]`` percentages, NaN or ``None`` for empty cells: tensor,
            array or the nested lists of ``gait_results.json``), ``views`` (``V`` names) and,
            when present, the exclude-identical-view means under the condition names.
        title: figure title.

    Returns:
        the figure (Agg canvas); empty cells are grey.
    """
    acc = _gait_matrix(result, "acc", 3)
    if acc is None:
        raise ValueError(
            "plot_casiab_heatmap needs result['acc'] [conditions, probe views, gallery views]; "
            f"the result only has {sorted(result)}"
        )
    num_conditions, num_probe, num_gallery = acc.shape
    views = _gait_views(result, acc)
    if num_probe != num_gallery or len(views) != num_gallery:
        raise ValueError(
            f"result['acc'] must be [C, V, V] with V = len(result['views']) = {len(views)}; "
            f"got shape {list(acc.shape)}"
        )
    figure = Figure(figsize=(0.6 + 3.6 * num_conditions, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, num_conditions, squeeze=False)[0]
    colormap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = None
    for axis, name, matrix in zip(axes, _gait_conditions(result, num_conditions), acc, strict=True):
        image = axis.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=100, cmap=colormap)
        mean = f" (excl. {_number(result[name])})" if name in result else ""
        axis.set_title(f"{name}{mean}", fontsize=10)
        axis.set_xticks(range(num_gallery), views, rotation=90, fontsize=7)
        axis.set_yticks(range(num_probe), views, fontsize=7)
        axis.set_xlabel("gallery view")
        axis.set_ylabel("probe view")
        if num_gallery <= MAX_ANNOTATED_VIEWS:
            for (row, column), value in np.ndenumerate(matrix):
                if np.isfinite(value):
                    axis.text(
                        column,
                        row,
                        f"{value:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if value < 60 else "black",
                    )
    figure.colorbar(image, ax=list(axes), label="rank-1 (%)", shrink=0.85)
    if title:
        figure.suptitle(title)
    return figure


def write_gait_report(
    result: Mapping[str, Any],
    out_dir: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``gait_results.md``, ``gait_results.json`` and (with ``acc``) ``gait_heatmap.png``.

    Args:
        result: a gait evaluator's ``compute()`` dict (floats, ``acc [C, V, V]``,
            ``per_view [C, V]``, ``views``).
        out_dir: created when missing.
        metadata: run facts (checkpoint, task) shown on top of the markdown and stored in JSON.

    Returns:
        ``{"markdown", "json"[, "heatmap"]}`` -> path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"kind": "gait", "metadata": dict(metadata or {})}
    matrix = _gait_matrix(result, "acc", 3)
    if matrix is None:
        matrix = _gait_matrix(result, "per_view", 2)
    if matrix is not None:
        # Readers of the JSON need the row names of acc/per_view even from older evaluators.
        payload["conditions"] = _gait_conditions(result, len(matrix))
    payload.update(result)
    files = {
        "markdown": out_dir / "gait_results.md",
        "json": out_dir / "gait_results.json",
    }
    files["markdown"].write_text(gait_markdown(result, metadata))
    _write_json(files["json"], payload)
    if result.get("acc") is not None:
        heatmap = plot_casiab_heatmap(result, title=run_title(metadata))
        files["heatmap"] = _save_figure(heatmap, out_dir / "gait_heatmap.png")
    return files


# ---------------------------------------------------------------------------------- ReID


def _reid_mean(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Unweighted mean over targets of every table metric (``test/rank1`` and ``test/mAP`` of
    ``ReIDModule`` are two of these)."""
    means = {}
    for _, key in REID_METRICS:
        values = [_as_float(metrics.get(key)) for metrics in results.values()]
        finite = [value for value in values if not math.isnan(value)]
        means[key] = float(np.mean(finite)) if finite else math.nan
    return means


def reid_markdown(
    results: Mapping[str, Mapping[str, Any]], metadata: Mapping[str, Any] | None = None
) -> str:
    """Markdown report of ``{target: ReIDRetrieval.compute()}``: one row per target (percent),
    the number of evaluated queries, and a mean row when there are several targets."""
    header = ["Target", *(title for title, _ in REID_METRICS), "Queries"]
    rows = []
    for name, metrics in results.items():
        queries = metrics.get("num_valid_queries")
        rows.append(
            [
                name,
                *(_number(metrics.get(key)) for _, key in REID_METRICS),
                "-" if queries is None else str(int(_as_float(queries))),
            ]
        )
    if len(results) > 1:
        mean = _reid_mean(results)
        rows.append(["Mean", *(_number(mean[key]) for _, key in REID_METRICS), "-"])
    lines = ["# ReID evaluation", *_metadata_lines(metadata), ""]
    lines += ["## Retrieval (%)", "", markdown_table(header, rows)]
    topk = sorted({int(_as_float(m["map_topk"])) for m in results.values() if "map_topk" in m})
    if topk:  # model.retrieval=faiss (metareid.evaluation.topk)
        lines += [
            "",
            f"mAP is mAP@{topk[0]}: top-{topk[0]} retrieval (model.retrieval=faiss), true matches "
            "ranked lower count as missed (a lower bound of the full mAP); mINP is `-` unless "
            "every match is in the top k.",
        ]
    return "\n".join(lines) + "\n"


def plot_cmc(
    results: Mapping[str, Mapping[str, Any]], max_rank: int | None = None, title: str = "CMC"
) -> Figure:
    """CMC curves (matching rate in % against rank), one per target, on integer rank ticks.

    Args:
        results: ``{target: {"cmc": [R] percentages, "rank1", "mAP", ...}}`` (tensors, arrays or
            lists, e.g. read back from ``reid_results.json``). A target's curve stops at its
            gallery size when the result gives it (``num_gallery``, or ``sizes["gallery"]``):
            evaluators pad the curve to a fixed length, and ranks past the last gallery item
            mean nothing.
        max_rank: plot ranks ``1..max_rank`` only (default: the whole curve).
        title: axes title.
    """
    if not results:
        raise ValueError("plot_cmc needs at least one target result")
    figure = Figure(figsize=(5.0, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for name, metrics in results.items():
        if metrics.get("cmc") is None:
            raise ValueError(
                f"ReID result of target {name!r} has no 'cmc' curve (keys: {sorted(metrics)})"
            )
        cmc = np.asarray(to_jsonable(metrics["cmc"]), dtype=float).reshape(-1)[:max_rank]
        gallery_size = _gallery_size(metrics)
        if gallery_size is not None:
            cmc = cmc[:gallery_size]
        ranks = np.arange(1, len(cmc) + 1)
        label = f"{name} (R1 {_number(metrics.get('rank1'))}, mAP {_number(metrics.get('mAP'))})"
        axis.plot(ranks, cmc, marker="o" if len(cmc) <= 20 else None, markersize=3, label=label)
    axis.set_xlabel("rank")
    axis.set_ylabel("matching rate (%)")
    axis.set_ylim(0, 101)
    axis.set_xlim(left=1)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title(title)
    return figure


def _gallery_size(metrics: Mapping[str, Any]) -> int | None:
    """The gallery size a result states (``num_gallery`` or ``sizes["gallery"]``), else None."""
    size = metrics.get("num_gallery")
    if size is None and isinstance(metrics.get("sizes"), Mapping):
        size = metrics["sizes"].get("gallery")
    return None if size is None else int(_as_float(size))


def write_reid_report(
    results: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``reid_results.md``, ``reid_results.json`` and ``reid_cmc.png``.

    Args:
        results: ``{target_name: ReIDRetrieval.compute()}`` (``rank1``, ..., ``cmc [R]``,
            ``num_valid_queries``).
        out_dir: created when missing.
        metadata: run facts shown on top of the markdown and stored in JSON.

    Returns:
        ``{"markdown", "json", "cmc"}`` -> path. The JSON holds ``targets`` (the results, CMC as
        a list) and ``mean`` (unweighted mean over targets of each table metric).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "kind": "reid",
        "metadata": dict(metadata or {}),
        "targets": results,
        "mean": _reid_mean(results),
    }
    files = {
        "markdown": out_dir / "reid_results.md",
        "json": out_dir / "reid_results.json",
    }
    files["markdown"].write_text(reid_markdown(results, metadata))
    _write_json(files["json"], payload)
    title = run_title(metadata)
    cmc = plot_cmc(results, title=f"CMC · {title}" if title else "CMC")
    files["cmc"] = _save_figure(cmc, out_dir / "reid_cmc.png")
    return files


def write_report(
    results: Mapping[str, Any] | None,
    out_dir: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the report of a ``last_results`` dict: ReID when every value is a per-target dict,
    gait otherwise. Nothing is written (and ``{}`` returned) for an empty result."""
    if not results:
        log.warning("No evaluation results to report (was anything evaluated?); nothing written")
        return {}
    if all(isinstance(value, Mapping) for value in results.values()):
        files = write_reid_report(results, out_dir, metadata)
    else:
        files = write_gait_report(results, out_dir, metadata)
    log.info("Report written to %s (%s)", Path(out_dir), ", ".join(p.name for p in files.values()))
    return files


# ----------------------------------------------------------------------- retrieval examples


def _display_image(image: Any) -> np.ndarray:
    """``[3, H, W]`` image with 0-255 values (uint8 or float) -> float ``[H, W, 3]`` in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image, dtype=float)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"retrieval images must be [3, H, W], got shape {list(array.shape)}")
    return np.clip(np.moveaxis(array, 0, -1) / 255.0, 0.0, 1.0)


def plot_retrieval_examples(
    query_images: Sequence[Any],
    gallery_images: Sequence[Any],
    ranking: Any,
    is_match: Any,
    query_captions: Sequence[str] | None = None,
    gallery_captions: Sequence[str] | None = None,
) -> Figure:
    """Grid of queries (first column) and their top-ranked gallery images.

    Args:
        query_images: ``Q`` images ``[3, H, W]`` with 0-255 values (uint8 or float), e.g. a
            ``[Q, 3, H, W]`` tensor.
        gallery_images: the gallery, indexed by ``ranking``.
        ranking: ``[Q, k]`` gallery indices, best first.
        is_match: ``[Q, k]`` bools, whether each ranked image shows the query's identity; matches
            get a green frame, others a red one.
        query_captions: one caption per query (e.g. ``"pid 3 cam 1"``).
        gallery_captions: one caption per gallery image.
    """
    ranking = np.asarray(to_jsonable(ranking), dtype=int)
    is_match = np.asarray(to_jsonable(is_match), dtype=bool)
    if ranking.ndim != 2 or is_match.shape != ranking.shape:
        raise ValueError(
            f"ranking and is_match must both be [queries, k]; got {list(ranking.shape)} and "
            f"{list(is_match.shape)}"
        )
    num_queries, top_k = ranking.shape
    if len(query_images) != num_queries:
        raise ValueError(f"{len(query_images)} query images for {num_queries} ranking rows")
    figure = Figure(figsize=(1.1 * (top_k + 1), 2.0 * num_queries), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(num_queries, top_k + 1, squeeze=False)
    for row in range(num_queries):
        query_caption = f"query {query_captions[row]}" if query_captions else "query"
        cells = [(query_images[row], "black", query_caption)]
        for position, index in enumerate(ranking[row]):
            colour = "tab:green" if is_match[row, position] else "tab:red"
            caption = f"#{position + 1} {gallery_captions[index]}" if gallery_captions else ""
            cells.append((gallery_images[index], colour, caption or f"#{position + 1}"))
        for axis, (image, colour, caption) in zip(axes[row], cells, strict=True):
            axis.imshow(_display_image(image))
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            axis.set_title(caption, fontsize=7)
    return figure
