"""Feature extractors of the metareid networks, and their TorchScript / ONNX export.

Both export routes record one forward pass, so a Python ``if`` on a tensor value or an
``int(tensor)`` freezes into a constant. Two wrappers give graphs without such values:

* :class:`GaitEmbedder` — ``sils [n, s, 64, 44]`` (float in [0, 1]) and optional
  ``seq_lens [n]`` → ``embeddings [n, p, c]``, dynamic in ``n`` and ``s``. ``GaitGL.forward``
  trims the time axis to ``int(max(seq_lens))`` and branches on the lengths; the wrapper runs
  the same layers through their masked (variable-length) path instead, on a time axis padded
  to ``s + 2`` frames (room to tile 1- and 2-frame clips). Masking makes the padding inert, so
  the result equals the eager network's, with or without ``seq_lens``.
* :class:`ReIDEmbedder` — ``images [N, 3, H, W]`` (float, 0–255) → BNNeck features ``[N, C]``,
  dynamic in ``N``; ``H, W`` are those of the example input.

:func:`export_torchscript` traces, :func:`export_onnx` uses the ``torch.export``-based exporter
(``"dynamo"``, PyTorch's default) or the TorchScript-based one (``"torchscript"``, faster to
export, deprecated by PyTorch). :func:`check_export` runs an exported file on new shapes and
compares it with the eager wrapper.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from metareid.models.gaitgl import GaitGL
from metareid.models.reid_baseline import ReIDBaseline

ONNX_EXPORTERS = ("dynamo", "torchscript")
GAIT_SIZE = (64, 44)
_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")


def tile_short_clips_static(
    sils: Tensor, seq_lens: Tensor, extra_frames: int = 2
) -> tuple[Tensor, Tensor]:
    """Loop 1- and 2-frame clips (×3 and ×2), on a time axis of ``s + extra_frames`` frames.

    Same tiling as :func:`metareid.models.gait_layers.tile_short_sequences`, but the output
    size depends only on the input shape, never on the length values.

    Args:
        sils: ``[n, s, h, w]`` zero-padded clips.
        seq_lens: ``[n]`` valid frames per clip, in ``[1, s]``.

    Returns:
        ``(tiled [n, s + extra_frames, h, w], lengths [n])``; frames past ``lengths`` are zero.
    """
    repeats = torch.where(seq_lens == 1, 3, torch.where(seq_lens == 2, 2, 1))
    lengths = seq_lens * repeats
    height, width = sils.shape[2], sils.shape[3]
    frame_index = torch.arange(sils.shape[1] + extra_frames, device=sils.device).unsqueeze(0)
    valid = frame_index < lengths.unsqueeze(1)
    source_index = torch.remainder(frame_index, seq_lens.unsqueeze(1)) * valid
    gather_index = rearrange(source_index, "n t -> n t 1 1").expand(-1, -1, height, width)
    tiled = sils.gather(1, gather_index) * rearrange(valid, "n t -> n t 1 1").to(sils.dtype)
    return tiled, lengths


class GaitEmbedder(nn.Module):
    """Retrieval embeddings of a GaitGL-family network, in an export-friendly form.

    ``forward(sils [n, s, h, w], seq_lens [n] | None) -> embeddings [n, p, c]`` — the
    ``"embeddings"`` output of the network in eval mode (post-BN features for ``head="bn"``,
    pre-BNNeck features for ``head="bnneck"``). Without ``seq_lens`` every frame is valid.
    """

    def __init__(self, net: GaitGL) -> None:
        super().__init__()
        if not isinstance(net, GaitGL):
            raise TypeError(f"GaitEmbedder needs a GaitGL/MetaGait network, got {type(net)}")
        self.net = net.eval()

    def forward(self, sils: Tensor, seq_lens: Tensor | None = None) -> Tensor:
        net = self.net
        if seq_lens is None:
            seq_lens = torch.ones_like(sils[:, :, 0, 0], dtype=torch.long).sum(dim=1)
        tiled, lengths = tile_short_clips_static(sils, seq_lens.long())
        features = rearrange(tiled, "n s h w -> n 1 s h w")
        # GaitGL.backbone's stages, always masked; tests compare with the eager network.
        for stage in (net.conv3d, net.LTA, net.GLConvA0):
            features, lengths = net._run_temporal_stage(stage, features, lengths)
        features = net.MaxPool0(features)
        for stage in (net.GLConvA1, net.GLConvB2):
            features, lengths = net._run_temporal_stage(stage, features, lengths)
        features = net.calibrate(features, lengths)
        gait = net.Head0(net.HPP(net.TP(features, lengths)))
        embeddings = net.Bn(gait) if net.head == "bn" else gait
        return rearrange(embeddings, "n c p -> n p c")


class ReIDEmbedder(nn.Module):
    """BNNeck features of a ReID network: ``images [N, 3, H, W]`` (0–255) -> ``[N, C]``.

    ``l2_normalize=True`` returns unit vectors (the cosine distance of the ACL evaluation then
    becomes ``1 - a·b``).
    """

    def __init__(self, net: ReIDBaseline, l2_normalize: bool = False) -> None:
        super().__init__()
        if not isinstance(net, ReIDBaseline):
            raise TypeError(f"ReIDEmbedder needs a ReIDBaseline network, got {type(net)}")
        self.net = net.eval()
        self.l2_normalize = l2_normalize

    def forward(self, images: Tensor) -> Tensor:
        features = self.net(images)
        if self.l2_normalize:
            features = nn.functional.normalize(features, dim=1)
        return features


def embedder_for(net: nn.Module, l2_normalize: bool = False) -> GaitEmbedder | ReIDEmbedder:
    """The feature extractor matching ``net``'s family (gait or ReID), in eval mode.

    ``l2_normalize`` applies to ReID features only (gait embeddings are compared part by part).
    """
    if isinstance(net, GaitGL):
        if l2_normalize:
            raise ValueError("l2_normalize is a ReID option; gait embeddings stay as they are")
        return GaitEmbedder(net).eval()
    if isinstance(net, ReIDBaseline):
        return ReIDEmbedder(net, l2_normalize=l2_normalize).eval()
    raise TypeError(
        f"No feature extractor for {type(net).__name__}: expected a GaitGL/MetaGait or a "
        "ReIDBaseline network"
    )


def example_inputs(
    embedder: nn.Module,
    batch_size: int = 2,
    frames: int = 30,
    image_size: Sequence[int] = (256, 128),
    with_seq_lens: bool = False,
) -> tuple[Tensor, ...]:
    """Random inputs of the right form: ``(sils,)`` / ``(sils, seq_lens)`` or ``(images,)``.

    ``seq_lens`` vary (the first clip full length, the others shorter) so the traced graph
    cannot mistake them for constants.
    """
    generator = torch.Generator().manual_seed(0)
    if isinstance(embedder, GaitEmbedder):
        sils = torch.rand(batch_size, frames, *GAIT_SIZE, generator=generator)
        if not with_seq_lens:
            return (sils,)
        seq_lens = torch.tensor(
            [frames - (i % frames) for i in range(batch_size)], dtype=torch.long
        )
        frame_index = rearrange(torch.arange(frames), "s -> 1 s 1 1")
        sils = sils * (frame_index < rearrange(seq_lens, "n -> n 1 1 1"))
        return sils, seq_lens
    if isinstance(embedder, ReIDEmbedder):
        height, width = int(image_size[0]), int(image_size[1])
        return (torch.rand(batch_size, 3, height, width, generator=generator) * 255,)
    raise TypeError(f"example_inputs: unsupported module {type(embedder).__name__}")


def io_names(embedder: nn.Module, inputs: Sequence[Tensor]) -> tuple[list[str], list[str]]:
    """Input and output names of the exported graphs."""
    if isinstance(embedder, GaitEmbedder):
        return ["sils", "seq_lens"][: len(inputs)], ["embeddings"]
    return ["images"], ["features"]


def _dynamic_axes(embedder: nn.Module, inputs: Sequence[Tensor]) -> dict[str, dict[int, str]]:
    if isinstance(embedder, GaitEmbedder):
        axes = {"sils": {0: "batch", 1: "frames"}, "embeddings": {0: "batch"}}
        if len(inputs) > 1:
            axes["seq_lens"] = {0: "batch"}
        return axes
    return {"images": {0: "batch"}, "features": {0: "batch"}}


def _dynamic_shapes(embedder: nn.Module, inputs: Sequence[Tensor]) -> tuple:
    batch = torch.export.Dim("batch", min=1)
    if isinstance(embedder, GaitEmbedder):
        frames = torch.export.Dim("frames", min=1)
        shapes: tuple = ({0: batch, 1: frames},)
        return shapes + (({0: batch},) if len(inputs) > 1 else ())
    return ({0: batch},)


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the warnings every trace of these networks raises by design.

    Spatial sizes (fixed by the example input) pass through Python ``if``s, PyTorch announces
    the deprecation of its TorchScript tools on every call, and the ONNX optimiser logs every
    initializer it merges at INFO level.
    """
    chatty = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(max(logger.level, logging.WARNING))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*is deprecated.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        warnings.filterwarnings("ignore", message=".*instance_norm.*train=True.*")
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        try:
            yield
        finally:
            for logger, level in zip(chatty, levels, strict=True):
                logger.setLevel(level)


def export_torchscript(embedder: nn.Module, inputs: Sequence[Tensor], path: str | Path) -> Path:
    """Trace ``embedder`` on ``inputs`` and save the TorchScript module to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(embedder.eval(), tuple(inputs), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def _require_onnxscript() -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "the dynamo ONNX exporter needs onnxscript (pip install onnx onnxscript); or use "
            "the TorchScript-based exporter (export.py: onnx.exporter=torchscript)"
        ) from error


def export_onnx(
    embedder: nn.Module,
    inputs: Sequence[Tensor],
    path: str | Path,
    exporter: str = "dynamo",
    opset: int = 18,
) -> Path:
    """Export ``embedder`` to a single ONNX file with a dynamic batch (and frame) axis."""
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"onnx exporter must be one of {ONNX_EXPORTERS}, got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    input_names, output_names = io_names(embedder, inputs)
    with _quiet_tracing(), torch.no_grad():
        if exporter == "dynamo":
            _require_onnxscript()
            program = torch.onnx.export(
                embedder.eval(),
                tuple(inputs),
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=_dynamic_shapes(embedder, inputs),
                opset_version=opset,
                verbose=False,
            )
            # One self-contained file: every metareid network is far below ONNX's 2 GB limit.
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(
                embedder.eval(),
                tuple(inputs),
                str(path),
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=_dynamic_axes(embedder, inputs),
                opset_version=opset,
            )
    return path


def run_onnx(path: str | Path, inputs: Sequence[Tensor]) -> Tensor:
    """Run an exported ONNX file with onnxruntime (CPU) and return its single output."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "running ONNX files needs onnxruntime: pip install onnxruntime"
        ) from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    feeds = {name: tensor.numpy() for name, tensor in zip(names, inputs, strict=True)}
    return torch.from_numpy(session.run(None, feeds)[0])


def check_export(
    embedder: nn.Module,
    path: str | Path,
    input_sets: Sequence[Sequence[Tensor]],
) -> float:
    """Largest absolute difference between the exported file and ``embedder`` over input sets.

    ``.onnx`` files run with onnxruntime, anything else loads as TorchScript. Raises
    ``ValueError`` when an output shape differs (a dimension frozen by the export).
    """
    path = Path(path)
    scripted = None if path.suffix == ".onnx" else torch.jit.load(str(path))
    worst = 0.0
    with torch.no_grad():
        for inputs in input_sets:
            expected = embedder(*inputs)
            actual = run_onnx(path, inputs) if scripted is None else scripted(*inputs)
            if actual.shape != expected.shape:
                raise ValueError(
                    f"{path}: output shape {list(actual.shape)} for inputs "
                    f"{[list(t.shape) for t in inputs]}, eager gives {list(expected.shape)}"
                )
            worst = max(worst, float((actual - expected).abs().max()))
    return worst
