"""Export a model's feature extractor to TorchScript and/or ONNX.

    python src/export.py model=metagait data=casiab ckpt_path=metagait.ckpt format=onnx

Gait: ``sils [n, s, 64, 44]`` (+ ``seq_lens [n]`` with ``seq_lens_input=true``) ->
``embeddings [n, p, c]``, dynamic in ``n`` and ``s``. ReID: ``images [N, 3, H, W]`` (0-255)
-> BNNeck features ``[N, C]``, dynamic in ``N``. See ``conf/export.yaml`` for the options.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from metareid.checkpoints import network_from_config
from metareid.export import (
    GaitEmbedder,
    check_export,
    embedder_for,
    example_inputs,
    export_onnx,
    export_torchscript,
)
from metareid.utils.errors import exit_on_user_error
from metareid.utils.run_dirs import apply_run_dir

log = logging.getLogger(__name__)
# Relative paths in conf/paths resolve against the repository, wherever the command is run from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
FORMATS = {"torchscript": ("torchscript",), "onnx": ("onnx",), "both": ("torchscript", "onnx")}


def _image_size(cfg: DictConfig) -> list[int]:
    size = cfg.example.get("image_size") or cfg.get("data", {}).get("image_size") or (256, 128)
    return [int(s) for s in size]


def export(cfg: DictConfig) -> dict[str, Path]:
    """Write the requested files; returns ``{format: path}``."""
    cfg = apply_run_dir(cfg)
    if cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {cfg.format!r}")
    net = network_from_config(
        cfg.model.net, cfg.get("ckpt_path"), trust_pickle=bool(cfg.get("trust_pickle", False))
    )
    embedder = embedder_for(net, l2_normalize=cfg.l2_normalize)
    is_gait = isinstance(embedder, GaitEmbedder)
    if cfg.seq_lens_input and not is_gait:
        raise ValueError("seq_lens_input=true applies to gait models only")
    shape_args = dict(image_size=_image_size(cfg), with_seq_lens=bool(cfg.seq_lens_input))
    batch, frames = int(cfg.example.batch_size), int(cfg.example.frames)
    inputs = example_inputs(embedder, batch_size=batch, frames=frames, **shape_args)
    # Other batch sizes and frame counts than the traced ones prove the axes are dynamic.
    check_sets = [
        example_inputs(embedder, batch_size=batch + 1, frames=frames + 5, **shape_args),
        example_inputs(embedder, batch_size=1, frames=max(frames // 2, 1), **shape_args),
    ]

    output_dir = Path(cfg.output_dir)
    written: dict[str, Path] = {}
    for fmt in FORMATS[cfg.format]:
        if fmt == "torchscript":
            path = export_torchscript(embedder, inputs, output_dir / f"{cfg.name}.torchscript.pt")
        else:
            path = export_onnx(
                embedder,
                inputs,
                output_dir / f"{cfg.name}.onnx",
                exporter=cfg.onnx.exporter,
                opset=int(cfg.onnx.opset),
            )
        written[fmt] = path
        log.info("Wrote %s", path)
        if cfg.verify:
            _verify(embedder, path, check_sets, float(cfg.verify_tolerance))
    return written


def _verify(embedder, path: Path, check_sets, tolerance: float) -> None:
    try:
        error = check_export(embedder, path, check_sets)
    except ImportError as missing:
        log.warning("Not verifying %s: %s", path, missing)
        return
    shapes = [[list(t.shape) for t in inputs] for inputs in check_sets]
    if error > tolerance:
        raise ValueError(
            f"{path} differs from the PyTorch model by up to {error:.3g} (> verify_tolerance="
            f"{tolerance}) on inputs {shapes}"
        )
    log.info("Verified %s on inputs %s: max |difference| %.3g", path.name, shapes, error)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
