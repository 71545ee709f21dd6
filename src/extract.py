"""Embeddings of a folder of images (ReID) or of a pkl tree (gait), written to .npz or .pt.

    python src/extract.py model=metagait data=casiab ckpt_path=metagait.ckpt \
        input=/data/CASIA-B-pkl output=casiab_features.npz

Gait inputs are the pretreated ``uint8 [T, 64, 64]`` pkl files (cut to 64x44 and scaled to
[0, 1] as in training); sequences of a batch are zero-padded and passed with their lengths, so
each gets the embedding it would get alone. ReID images are resized to the model input size.
See ``conf/extract.yaml`` for the options.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from metareid.checkpoints import network_from_config
from metareid.data.gait.casiab import read_silhouettes
from metareid.data.gait.frame_sampling import cut_silhouettes
from metareid.data.reid.multisource import load_resized_image
from metareid.export import GaitEmbedder, embedder_for
from metareid.utils.errors import exit_on_user_error
from metareid.utils.progress import track
from metareid.utils.run_dirs import apply_run_dir

log = logging.getLogger(__name__)
# Relative paths in conf/paths resolve against the repository, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_BATCH_SIZE = {"gait": 4, "reid": 64}
OUTPUT_SUFFIXES = (".npz", ".pt")


def list_inputs(root: str | Path, suffixes: Sequence[str], what: str) -> list[Path]:
    """Files under ``root`` (recursively, hidden entries excluded) with one of ``suffixes``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input={str(root)!r} is not a directory of {what}")
    files = sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in suffixes
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    if not files:
        raise FileNotFoundError(f"input={str(root)!r}: no {what} ({'/'.join(suffixes)}) under it")
    return files


class ImageFolderSet(Dataset):
    """Every image under ``root``: item ``{"index", "image": uint8 [3, H, W]}``.

    With ``strict=False`` an undecodable image gives ``{"index", "error"}`` instead of raising.
    """

    def __init__(self, root: str | Path, image_size: Sequence[int], strict: bool = True) -> None:
        self.root = Path(root)
        self.files = list_inputs(self.root, IMAGE_SUFFIXES, "images")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.strict = strict

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = load_resized_image(self.files[index], self.image_size)
        except OSError as error:
            if self.strict:
                raise OSError(f"{error} (extract.py: strict=false skips such files)") from None
            return {"index": index, "error": str(error)}
        return {"index": index, "image": image}


class SilhouetteTreeSet(Dataset):
    """Every pkl sequence under ``root``: item ``{"index", "sils": float [T, 64, 44]}``.

    ``max_frames`` keeps the leading frames only. With ``strict=False`` an unusable pkl gives
    ``{"index", "error"}`` instead of raising.
    """

    def __init__(
        self, root: str | Path, max_frames: int | None = None, strict: bool = True
    ) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be a positive frame count or null, got {max_frames}")
        self.root = Path(root)
        self.files = list_inputs(self.root, (".pkl",), "silhouette pkl files")
        self.max_frames = max_frames
        self.strict = strict

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            # Any frame width: GREW frames come pre-normalised (cut_silhouettes keeps width < 64).
            frames = read_silhouettes(self.files[index], frame_width=None)
        except ValueError as error:
            if self.strict:
                raise ValueError(f"{error} (extract.py: strict=false skips such files)") from None
            return {"index": index, "error": str(error)}
        if self.max_frames is not None:
            frames = frames[: self.max_frames]
        return {"index": index, "sils": torch.from_numpy(cut_silhouettes(frames))}


def collate_items(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch the readable items; failures pass through as ``(index, reason)``.

    Returns ``{"index": [b], "inputs": (images [b, 3, H, W],) or (sils [b, s, 64, 44] zero
    padded, seq_lens [b]), "failures": [...]}`` (``inputs`` is empty when nothing was read).
    """
    readable = [item for item in items if "error" not in item]
    failures = [(item["index"], item["error"]) for item in items if "error" in item]
    batch: dict[str, Any] = {
        "index": torch.tensor([item["index"] for item in readable], dtype=torch.long),
        "failures": failures,
        "inputs": (),
    }
    if not readable:
        return batch
    if "image" in readable[0]:
        batch["inputs"] = (torch.stack([item["image"] for item in readable]),)
        return batch
    clips = [item["sils"] for item in readable]
    seq_lens = torch.tensor([len(clip) for clip in clips], dtype=torch.long)
    padded = clips[0].new_zeros(len(clips), int(seq_lens.max()), *clips[0].shape[1:])
    for row, clip in enumerate(clips):
        padded[row, : len(clip)] = clip
    batch["inputs"] = (padded, seq_lens)
    return batch


@dataclass
class Extraction:
    """``features`` (float32, one row per readable input, in file order), ``indices`` into the
    dataset's ``files`` for those rows, and ``failures`` as ``(index, reason)``."""

    features: Tensor
    indices: list[int]
    failures: list[tuple[int, str]] = field(default_factory=list)


@torch.no_grad()
def extract_features(
    embedder: nn.Module,
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Extraction:
    """Run ``embedder`` over an :class:`ImageFolderSet` or a :class:`SilhouetteTreeSet`,
    behind a progress bar over the batches unless ``progress`` is false."""
    device = torch.device(device)
    embedder = embedder.to(device).eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_items,
    )
    chunks, indices, failures = [], [], []
    batches = track(loader, len(loader), f"Extracting {len(dataset)} inputs", progress)
    for batch in batches:
        failures += batch["failures"]
        if not batch["inputs"]:
            continue
        inputs = [tensor.to(device) for tensor in batch["inputs"]]
        if inputs[0].dtype == torch.uint8:
            inputs[0] = inputs[0].float()
        chunks.append(embedder(*inputs).float().cpu())
        indices += batch["index"].tolist()
    if not chunks:
        raise ValueError(f"none of the {len(dataset)} inputs could be read: {failures[:3]}")
    return Extraction(torch.cat(chunks), indices, failures)


def save_features(
    path: str | Path, features: Tensor, columns: dict[str, list[str]], skipped: list[str]
) -> Path:
    """Write ``features`` with per-row string ``columns`` (``paths``, ...) and the ``skipped``
    input paths. ``.npz`` stores numpy arrays (loadable without pickle), ``.pt`` a dict of a
    tensor and string lists."""
    path = Path(path)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"output={str(path)!r} must end in one of {OUTPUT_SUFFIXES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        arrays = {name: np.asarray(values, dtype=str) for name, values in columns.items()}
        np.savez(path, features=features.numpy(), skipped=np.asarray(skipped, dtype=str), **arrays)
    else:
        torch.save({"features": features, "skipped": list(skipped), **columns}, path)
    return path


def sequence_columns(relative_paths: Sequence[str]) -> dict[str, list[str]]:
    """``subjects``/``types``/``views`` when every path is ``<id>/<type>/<view>/<file>.pkl``."""
    parts = [Path(path).parts for path in relative_paths]
    if not parts or any(len(p) != 4 for p in parts):
        return {}
    return {
        "subjects": [p[0] for p in parts],
        "types": [p[1] for p in parts],
        "views": [p[2] for p in parts],
    }


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def extract(cfg: DictConfig) -> Path:
    """Extract the embeddings of ``cfg.input`` with ``cfg.model`` + ``cfg.ckpt_path``
    (or the run folder ``cfg.run_dir``: its model and checkpoint)."""
    cfg = apply_run_dir(cfg)
    if not cfg.get("ckpt_path"):
        raise ValueError(
            "No weights: give run_dir=<training run folder> or ckpt_path=<checkpoint> (with the "
            "model overrides it was trained with)."
        )
    net = network_from_config(
        cfg.model.net, cfg.ckpt_path, trust_pickle=bool(cfg.get("trust_pickle", False))
    )
    embedder = embedder_for(net, l2_normalize=cfg.l2_normalize)
    family = "gait" if isinstance(embedder, GaitEmbedder) else "reid"
    if family == "gait":
        dataset: ImageFolderSet | SilhouetteTreeSet = SilhouetteTreeSet(
            cfg.input, max_frames=cfg.max_frames, strict=cfg.strict
        )
    else:
        size = cfg.image_size or cfg.get("data", {}).get("image_size") or (256, 128)
        dataset = ImageFolderSet(cfg.input, image_size=size, strict=cfg.strict)
    batch_size = cfg.batch_size or DEFAULT_BATCH_SIZE[family]
    result = extract_features(
        embedder, dataset, batch_size, cfg.num_workers, _resolve_device(cfg.device)
    )
    relative = [dataset.files[i].relative_to(dataset.root).as_posix() for i in result.indices]
    columns = {"paths": relative}
    if family == "gait":
        columns.update(sequence_columns(relative))
    skipped = [dataset.files[i].relative_to(dataset.root).as_posix() for i, _ in result.failures]
    if result.failures:
        log.warning(
            "Skipped %d unreadable inputs, e.g. %s", len(result.failures), result.failures[0][1]
        )
    path = save_features(cfg.output, result.features, columns, skipped)
    log.info(
        "Wrote %s: %d %s features of shape %s",
        path,
        len(relative),
        family,
        list(result.features.shape[1:]),
    )
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="extract")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    extract(cfg)


if __name__ == "__main__":
    main()
