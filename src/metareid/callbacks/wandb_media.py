"""Weights & Biases logging: the logger factory behind ``logger=wandb`` and the media callback.

Scalars (losses, learning rates, ``test/*``) and the resolved Hydra config reach wandb through
Lightning's ``WandbLogger`` like any other logger. What a scalar logger cannot show is logged by
:class:`WandbMedia`: training inputs as images, evaluation results as ``wandb.Table`` objects and a
CMC chart, and ReID rank lists. Without a ``WandbLogger`` on the trainer the callback does nothing,
so it is safe to keep in any callback list.

Runs are offline unless an API key is configured (``WANDB_API_KEY`` or ``wandb login``); offline
runs are written to ``<output_dir>/wandb/offline-run-*`` and uploaded later with ``wandb sync``.
``WANDB_MODE`` (``online``, ``offline``, ``disabled``) always wins over that default.
"""

from __future__ import annotations

import math
import netrc
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytorch_lightning as pl
import torch
from einops import rearrange
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from metareid.data.gait.frame_sampling import silhouettes_to_float
from metareid.evaluation.casiab import CONDITIONS
from metareid.evaluation.distances import cosine_distance, euclidean_distance

__all__ = [
    "WandbMedia",
    "finish_wandb_runs",
    "image_grid",
    "rank_gallery",
    "rank_list_grid",
    "resolve_wandb_mode",
    "silhouette_strip",
    "wandb_logger",
]

# "dryrun" and "run" are wandb's older spellings of offline and online.
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"

# Border colours of the rank-list tiles (RGB).
QUERY_COLOUR = (128, 128, 128)
MATCH_COLOUR = (0, 180, 0)
MISMATCH_COLOUR = (220, 0, 0)


# ----------------------------------------------------------------------------- logger factory
def _api_key_configured() -> bool:
    """Whether wandb could authenticate: ``WANDB_API_KEY`` or a netrc entry from ``wandb login``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    if not host or not path.is_file():
        return False
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        # A netrc wandb cannot read either: run offline rather than fail at the first log call.
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(mode: str | None = None) -> str:
    """The wandb run mode: ``mode`` if given, else ``$WANDB_MODE``, else online iff a key exists.

    Raises:
        ValueError: for a mode wandb does not know, naming where it came from.
    """
    source = "logger.wandb.mode"
    if mode is None and os.environ.get("WANDB_MODE"):
        mode, source = os.environ["WANDB_MODE"], "the WANDB_MODE environment variable"
    if mode is None:
        return "online" if _api_key_configured() else "offline"
    mode = str(mode).strip().lower()
    if mode not in WANDB_MODES:
        raise ValueError(
            f"{source} is {mode!r}; use one of {', '.join(WANDB_MODES[:3])} "
            "(or leave logger.wandb.mode null to pick offline/online from the API key)"
        )
    return mode


# Loggers made by wandb_logger() whose runs are not finished yet. Strong references: a run must
# be finished even after its trainer is gone (finishing is what flushes an offline run to disk).
_created_loggers: list[WandbLogger] = []


def finish_wandb_runs() -> int:
    """Finish the wandb runs started through :func:`wandb_logger`; returns how many.

    Call it when a run is over (end of a test, end of ``train()``): finishing flushes the offline
    run file (``run-*.wandb``). Runs created by the user (``wandb.init``) are left alone.
    """
    finished = 0
    while _created_loggers:
        # `_experiment` rather than `.experiment`: the latter would start a run to finish it.
        run = getattr(_created_loggers.pop(), "_experiment", None)
        if run is not None and hasattr(run, "finish"):
            run.finish()
            finished += 1
    return finished


def wandb_logger(mode: str | None = None, **kwargs: Any) -> WandbLogger:
    """A ``WandbLogger`` running in :func:`resolve_wandb_mode` ``(mode)``.

    Args:
        mode: ``online``, ``offline``, ``disabled`` or ``None`` (environment / API key decide).
        kwargs: ``WandbLogger`` / ``wandb.init`` arguments (``project``, ``name``, ``save_dir``,
            ``log_model``, ``group``, ``tags`` ...). ``offline`` is not accepted: use ``mode``.

    The mode goes to ``wandb.init(mode=...)`` instead of ``WandbLogger(offline=True)``, which would
    overwrite ``WANDB_MODE`` with ``dryrun`` for the whole process and so turn ``disabled`` into an
    offline run. A run left open by an earlier logger from this factory (the previous job of a
    Hydra multirun, the previous test) is finished first: Lightning would otherwise append this
    run's logs to it.
    """
    if "offline" in kwargs:
        raise TypeError(
            "logger.wandb.offline is not supported; set logger.wandb.mode=offline (or "
            "WANDB_MODE=offline) instead"
        )
    finish_wandb_runs()
    resolved = resolve_wandb_mode(mode)
    save_dir = kwargs.get("save_dir")
    if save_dir is not None and resolved != "disabled":
        # wandb falls back to the system temp dir, with a warning, when `dir` does not exist.
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    if save_dir is not None and "id" not in kwargs:
        # A run resumed in its own folder continues the same wandb run.
        kwargs.update(id=wandb_run_id(Path(save_dir)), resume="allow")
    logger = WandbLogger(offline=False, mode=resolved, **kwargs)
    _created_loggers.append(logger)
    return logger


WANDB_ID_FILE = "wandb_run_id.txt"


def wandb_run_id(run_folder: Path) -> str:
    """The wandb run id of a run folder: created on first use, read back on a resume."""
    id_file = run_folder / WANDB_ID_FILE
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = secrets.token_hex(4)  # wandb ids: up to 128 lower-case letters/digits
    run_folder.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + "\n")
    return run_id


def _find_wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def _logging_step(trainer: pl.Trainer) -> int:
    # The step Lightning's logger connector (and LearningRateMonitor) gives this batch's scalars:
    # it counts batches, not optimizer steps, so two-optimizer ReID training stays aligned.
    return trainer.fit_loop.epoch_loop._batches_that_stepped


# ------------------------------------------------------------------------------- image helpers
def silhouette_strip(sils: Tensor, max_sequences: int = 4, max_frames: int = 8) -> np.ndarray:
    """Tile silhouette clips into one grey image: a row per sequence, a column per frame.

    Args:
        sils: ``[n, s, h, w]`` in [0, 1].
        max_sequences / max_frames: how many rows / columns to keep.

    Returns:
        ``uint8 [rows · h, cols · w]``.
    """
    if sils.dim() != 4:
        raise ValueError(f"silhouettes must be [n, s, h, w], got shape {tuple(sils.shape)}")
    clips = sils[:max_sequences, :max_frames].detach().float().cpu()
    tiled = rearrange(clips, "n s h w -> (n h) (s w)")
    return (tiled.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def image_grid(images: Tensor, max_images: int = 16, columns: int = 8) -> np.ndarray:
    """Tile a batch of RGB images (0-255) into one grid, filling the last row with black.

    Args:
        images: ``[N, 3, H, W]``, uint8 or float in [0, 255].

    Returns:
        ``uint8 [rows · H, columns · W, 3]`` with ``rows = ceil(min(N, max_images) / columns)``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    kept = images[:max_images].detach().cpu().float().clamp(0, 255).round().to(torch.uint8)
    columns = min(columns, kept.shape[0])
    missing = -kept.shape[0] % columns
    if missing:
        kept = torch.cat([kept, kept.new_zeros(missing, *kept.shape[1:])])
    return rearrange(kept, "(r c) ch h w -> (r h) (c w) ch", c=columns).numpy()


def rank_gallery(
    query_features: Tensor,
    gallery_features: Tensor,
    query_pids: Tensor,
    query_camids: Tensor,
    gallery_pids: Tensor,
    gallery_camids: Tensor,
    top_k: int,
    distance: str = "cosine",
) -> tuple[Tensor, Tensor]:
    """The ``top_k`` nearest gallery samples of each query, with the evaluation's junk removed.

    Same-identity same-camera gallery samples are skipped, as in the CMC/mAP protocol.

    Args:
        query_features: ``[q, d]``; gallery_features: ``[G, d]``.
        query_pids, query_camids: ``[q]``; gallery_pids, gallery_camids: ``[G]``.
        distance: ``"cosine"`` or ``"euclidean"``.

    Returns:
        ``indices [q, k]`` into the gallery and ``is_match [q, k]`` (same identity), with
        ``k = min(top_k, fewest non-junk gallery samples of any query)``.
    """
    if distance == "cosine":
        distances = cosine_distance(query_features, gallery_features)
    elif distance == "euclidean":
        distances = euclidean_distance(query_features, gallery_features)
    else:
        raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
    same_pid = gallery_pids[None, :] == query_pids[:, None]
    junk = same_pid & (gallery_camids[None, :] == query_camids[:, None])
    available = int((~junk).sum(dim=1).min()) if junk.numel() else 0
    k = min(top_k, available)
    # Stable order like the metric, with junk pushed behind every real candidate.
    order = distances.masked_fill(junk, math.inf).argsort(dim=1, stable=True)[:, :k]
    return order, same_pid.gather(1, order)


def rank_list_grid(
    query_images: Tensor, ranked_images: Tensor, is_match: Tensor, border: int = 2
) -> np.ndarray:
    """One row per query: the query (grey frame), then its ranked gallery (green hit, red miss).

    Args:
        query_images: ``[q, 3, H, W]``; ranked_images: ``[q, k, 3, H, W]`` (0-255).
        is_match: ``[q, k]`` bool.

    Returns:
        ``uint8 [q · (H + 2·border), (k + 1) · (W + 2·border), 3]``.
    """
    tiles = torch.cat([query_images[:, None], ranked_images], dim=1).float().cpu()
    num_queries, num_tiles, _, height, width = tiles.shape
    colours = torch.tensor([MISMATCH_COLOUR, MATCH_COLOUR, QUERY_COLOUR], dtype=torch.float32)
    # Index 2 = query column, else the match flag picks green (1) or red (0).
    colour_index = torch.cat([torch.full((num_queries, 1), 2), is_match.long().cpu()], dim=1)
    canvas = colours[colour_index][..., None, None].expand(
        num_queries, num_tiles, 3, height + 2 * border, width + 2 * border
    )
    canvas = canvas.clone()
    canvas[..., border : border + height, border : border + width] = tiles.clamp(0, 255)
    grid = rearrange(canvas, "q t ch h w -> (q h) (t w) ch")
    return grid.round().to(torch.uint8).numpy()


def _finite_or_none(value: Any) -> float | None:
    # wandb tables are JSON: NaN cells (conditions without probes) become empty cells.
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------ callback
class WandbMedia(pl.Callback):
    """Log images and evaluation tables to the trainer's ``WandbLogger`` (no-op without one).

    * every ``every_n_steps`` training batches: a silhouette strip (gait batches, ``sils``) or an
      image grid (ReID batches, ``merged.image`` before augmentation) as ``train/inputs``;
    * after each validation / test: ``pl_module.last_results`` as tables under ``val/`` or
      ``test/`` — the CASIA-B per-probe-view accuracy (``per_view_accuracy``) and the full
      probe x gallery view matrix (``view_accuracy``) for gait; per-target CMC/mAP/mINP
      (``retrieval``), a CMC chart (``cmc``) and rank lists (``<target>/rank_list``) for ReID;
      the scalar entries (``summary``) for other evaluators.

    Rank lists need the features of the last evaluation: on single-process runs the callback
    sets ``pl_module.keep_eval_features = True`` when the module has that flag. They rank with
    the module's plain distance (no re-ranking).

    Args:
        every_n_steps: log training inputs on batches ``0, n, 2n, ...`` (0 disables them).
        max_sequences / max_frames: size of the silhouette strip.
        max_images / grid_columns: size of the ReID image grid.
        rank_list_queries: queries shown per target (0 disables rank lists).
        rank_list_top_k: gallery samples shown per query.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        max_sequences: int = 4,
        max_frames: int = 8,
        max_images: int = 16,
        grid_columns: int = 8,
        rank_list_queries: int = 4,
        rank_list_top_k: int = 8,
    ) -> None:
        super().__init__()
        if every_n_steps < 0 or rank_list_queries < 0 or rank_list_top_k < 1:
            raise ValueError(
                "WandbMedia: every_n_steps and rank_list_queries must be >= 0 and "
                f"rank_list_top_k >= 1; got {every_n_steps}, {rank_list_queries}, "
                f"{rank_list_top_k} (callbacks.wandb_media)"
            )
        self.every_n_steps = every_n_steps
        self.max_sequences, self.max_frames = max_sequences, max_frames
        self.max_images, self.grid_columns = max_images, grid_columns
        self.rank_list_queries, self.rank_list_top_k = rank_list_queries, rank_list_top_k

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        wants_rank_lists = self.rank_list_queries > 0 and trainer.world_size == 1
        if (
            wants_rank_lists
            and hasattr(pl_module, "keep_eval_features")
            and _find_wandb_logger(trainer) is not None
        ):
            pl_module.keep_eval_features = True

    # ------------------------------------------------------------------------- training inputs
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.every_n_steps == 0 or not trainer.is_global_zero:
            return
        step = _logging_step(trainer)
        logger = _find_wandb_logger(trainer)
        if logger is None or step % self.every_n_steps != 0 or not isinstance(batch, Mapping):
            return
        if "sils" in batch:
            image = silhouette_strip(
                silhouettes_to_float(batch["sils"]), self.max_sequences, self.max_frames
            )
            labels = batch.get("labels")
            shown = labels[: self.max_sequences].tolist() if labels is not None else []
            caption = f"rows: labels {shown}; columns: frames"
        else:
            images = batch.get("merged", batch).get("image")
            if images is None:
                return
            image = image_grid(images, self.max_images, self.grid_columns)
            caption = f"first {min(len(images), self.max_images)} training images (before augment)"
        logger.log_image(key="train/inputs", images=[image], step=step, caption=[caption])

    # ------------------------------------------------------------------------------ evaluation
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_evaluation(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_evaluation(trainer, pl_module, "test")

    def log_validation_as_test(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final report when train.py reuses the last validation (it ran on the final
        weights) instead of running the test protocol again: the same media under ``test/``."""
        self._log_evaluation(trainer, pl_module, "test", from_validation=True)

    def _log_evaluation(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        from_validation: bool = False,
    ):
        logger = _find_wandb_logger(trainer)
        results = getattr(pl_module, "last_results", None)
        if logger is None or not results or not trainer.is_global_zero:
            return
        step = _logging_step(trainer)
        if "per_view" in results and "views" in results:
            self._log_view_tables(logger, results, stage, step)
            return
        if all(isinstance(value, Mapping) for value in results.values()):
            self._log_retrieval(logger, results, stage, step)
            features = getattr(pl_module, "last_eval_features", None)
            if self.rank_list_queries > 0 and features and trainer.world_size == 1:
                validation = stage == "val" or from_validation
                loaders = trainer.val_dataloaders if validation else trainer.test_dataloaders
                self._log_rank_lists(logger, pl_module, features, loaders, stage, step)
            return
        # Another evaluator's protocol: its scalar entries, one row.
        scalars = {
            key: float(value)
            for key, value in results.items()
            if isinstance(value, float | int) and not isinstance(value, bool)
        }
        if scalars:
            logger.log_table(
                key=f"{stage}/summary",
                columns=list(scalars),
                data=[[_finite_or_none(v) for v in scalars.values()]],
                step=step,
            )

    @staticmethod
    def _log_view_tables(logger: WandbLogger, results: Mapping, stage: str, step: int) -> None:
        """CASIA-B-style results: ``per_view [C, V]``, ``acc [C, V, V]``, ``views``."""
        views = [str(view) for view in results["views"]]
        per_view = torch.as_tensor(results["per_view"]).double()
        conditions = [str(c) for c in results.get("conditions", CONDITIONS)]
        if len(conditions) != per_view.shape[0]:
            conditions = [f"condition_{i}" for i in range(per_view.shape[0])]
        rows = []
        for name, accuracies in zip(conditions, per_view, strict=True):
            mean = results.get(name, float(torch.nanmean(accuracies)))
            rows.append([name, *map(_finite_or_none, accuracies.tolist()), _finite_or_none(mean)])
        logger.log_table(
            key=f"{stage}/per_view_accuracy",
            columns=["condition", *views, "mean"],
            data=rows,
            step=step,
        )
        if "acc" in results:
            accuracy = torch.as_tensor(results["acc"]).double()
            matrix_rows = [
                [name, probe, gallery, _finite_or_none(accuracy[c, p, g])]
                for c, name in enumerate(conditions)
                for p, probe in enumerate(views)
                for g, gallery in enumerate(views)
            ]
            logger.log_table(
                key=f"{stage}/view_accuracy",
                columns=["condition", "probe_view", "gallery_view", "accuracy"],
                data=matrix_rows,
                step=step,
            )

    @staticmethod
    def _log_retrieval(logger: WandbLogger, results: Mapping, stage: str, step: int) -> None:
        """ReID results: ``{target: {rank1, rank5, rank10, mAP, mINP, metric, cmc, ...}}``."""
        import wandb

        names = ("rank1", "rank5", "rank10", "mAP", "mINP", "metric", "num_valid_queries")
        columns = [n for n in names if all(n in r for r in results.values())]
        rows = [
            [target, *(_finite_or_none(result[n]) for n in columns)]
            for target, result in results.items()
        ]
        logger.log_table(
            key=f"{stage}/retrieval", columns=["target", *columns], data=rows, step=step
        )
        curves = {
            # Ranks past the gallery size carry no information: the curve stops there.
            t: torch.as_tensor(r["cmc"]).tolist()[: r.get("num_gallery") or None]
            for t, r in results.items()
            if "cmc" in r
        }
        if curves:
            length = min(len(curve) for curve in curves.values())
            chart = wandb.plot.line_series(
                xs=list(range(1, length + 1)),
                ys=[curve[:length] for curve in curves.values()],
                keys=list(curves),
                title=f"CMC ({stage})",
                xname="rank",
            )
            logger.log_metrics({f"{stage}/cmc": chart}, step=step)

    def _log_rank_lists(
        self,
        logger: WandbLogger,
        pl_module: pl.LightningModule,
        features: Mapping[str, Mapping[str, Tensor]],
        loaders: Any,
        stage: str,
        step: int,
    ) -> None:
        """Top-k thumbnails of a few evenly spread queries per target.

        Sample ``i`` of a target's kept features is item ``i`` of its (unshuffled) loader's
        dataset: the metric accumulates batches in loader order on a single process.
        """
        if loaders is None:
            return
        loaders = list(loaders) if isinstance(loaders, Sequence) else [loaders]
        target_names = list(getattr(pl_module, "target_names", features))
        for target, kept in features.items():
            if target not in target_names or target_names.index(target) >= len(loaders):
                continue
            dataset = loaders[target_names.index(target)].dataset
            is_query = kept["is_query"].bool()
            query_index = is_query.nonzero().flatten()
            gallery_index = (~is_query).nonzero().flatten()
            if len(query_index) == 0 or len(gallery_index) == 0:
                continue
            picks = torch.linspace(0, len(query_index) - 1, self.rank_list_queries)
            query_index = query_index[picks.round().long().unique()]
            ranked, is_match = rank_gallery(
                kept["features"][query_index],
                kept["features"][gallery_index],
                kept["pids"][query_index],
                kept["camids"][query_index],
                kept["pids"][gallery_index],
                kept["camids"][gallery_index],
                top_k=self.rank_list_top_k,
                distance=getattr(pl_module, "distance", "cosine"),
            )
            if ranked.shape[1] == 0:
                continue
            query_images = torch.stack([dataset[int(i)]["image"] for i in query_index])
            ranked_images = torch.stack(
                [
                    torch.stack([dataset[int(gallery_index[j])]["image"] for j in row])
                    for row in ranked
                ]
            )
            grid = rank_list_grid(query_images, ranked_images, is_match)
            hits = is_match.sum(dim=1).tolist()
            caption = (
                f"{target}: query pids {kept['pids'][query_index].tolist()}, "
                f"true matches in the top {ranked.shape[1]}: {hits}"
            )
            logger.log_image(
                key=f"{stage}/{target}/rank_list", images=[grid], step=step, caption=[caption]
            )
