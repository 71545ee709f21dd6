"""Initialise DR50 from ImageNet IBN-ResNet-a weights (``resnet50_ibn_a-d9d0bb7b.pth``).

Mapping (spec dr50.md §2.7), per key of the DR50 state dict:

1. Key present in the checkpoint: copy it, or its leading slice when the checkpoint tensor is
   larger in every dimension (reduced-width models). This covers the stem, the kept standard
   blocks ``layer{i}.0 .. layer{i}.{n-2}`` and their ``downsample``.
2. CODE-block keys take the block they replace, ``layer{i}.{n-1}`` of the original stage:

   * ``adaptor{i}_base.*``: copied where the shapes match (the IN affine receives BN affine
     values). In stages 1-3 the source ``bn1`` is IBN (``bn1.IN/BN.*``), so the base ``bn1``
     keeps weight 1 / bias 0.
   * ``adaptor{i}_sub.conv3.weight``: ``[C, p, 1, 1]`` → mean over each run of K consecutive
     input channels → ``[C, p/K, 1, 1]`` → tiled K times along the output channels: every expert
     starts from the same channel-averaged projection.
   * ``adaptor{i}_sub.bn3.*``: ``[C]`` tiled K times → ``[K·C]``.
   * ``adaptor{i}_sub.bn1.{IN,BN}.*`` where the source ``bn1`` is a plain BN (stage 4): the IN
     half takes the first ``p//2`` entries, the BN half the rest.
   * Other ``adaptor{i}_sub.*``: copied when the shapes match (conv1, IBN ``bn1``, ``bn2``);
     otherwise (grouped conv2) averaged over K consecutive input channels, without tiling.

3. Everything else (routers, invariant/specific norms, gates, SE, ``map{i}``) keeps its
   initialisation. ``num_batches_tracked`` counters are never mapped (the reference crashes when
   a checkpoint carries them); they keep the model's value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from metareid.models.dr50 import DR50

IBN_RESNET50_A_FILENAME = "resnet50_ibn_a-d9d0bb7b.pth"
IBN_RESNET50_A_URL = (
    "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/" + IBN_RESNET50_A_FILENAME
)
_CODE_BLOCK_KEY = re.compile(r"^adaptor(?P<stage>\d+)_(?P<branch>base|sub)\.(?P<suffix>.+)$")
_IBN_SUFFIX = re.compile(r"^bn1\.(?P<part>IN|BN)\.(?P<param>\w+)$")


@dataclass
class PretrainedLoadReport:
    """What :func:`load_ibn_resnet50_pretrained` did to every key of the DR50 state dict.

    ``loaded``: same key, same shape. ``sliced``: same key, leading slice of a larger tensor.
    ``mapped``: model key → ``"<source key> (<rule>)"`` for CODE-block keys.
    ``initialised``: model key → why it kept its initial value. ``skipped``: BN counters.
    ``unused``: checkpoint keys nothing was taken from (e.g. ``fc.*``).
    """

    loaded: list[str] = field(default_factory=list)
    sliced: list[str] = field(default_factory=list)
    mapped: dict[str, str] = field(default_factory=dict)
    initialised: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"IBN-ResNet-a init: {len(self.loaded)} copied, {len(self.sliced)} sliced, "
            f"{len(self.mapped)} mapped to CODE blocks, {len(self.initialised)} left at init, "
            f"{len(self.skipped)} BN counters skipped, {len(self.unused)} checkpoint keys unused"
        )


def _average_input_groups(weight: Tensor, group: int) -> Tensor:
    """``[O, I, kh, kw] -> [O, I/group, kh, kw]``: mean of each run of ``group`` input channels."""
    return rearrange(weight, "o (i g) h w -> o i g h w", g=group).mean(dim=2)


def _leading_slice(source: Tensor, target_shape: torch.Size) -> Tensor | None:
    if source.dim() != len(target_shape) or any(
        have < need for have, need in zip(source.shape, target_shape, strict=True)
    ):
        return None
    return source[tuple(slice(0, need) for need in target_shape)]


def _map_expert_key(
    suffix: str, block: str, source: Mapping[str, Tensor], target: Tensor, half: int, experts: int
) -> tuple[str, Tensor, str] | str:
    """Source tensor for ``adaptor{i}_sub.<suffix>``: ``(source key, tensor, rule)`` or a reason."""
    key = f"{block}.{suffix}"
    ibn = _IBN_SUFFIX.match(suffix)
    if ibn and key not in source:
        plain_key = f"{block}.bn1.{ibn['param']}"
        if plain_key not in source:
            return f"neither {key} nor {plain_key} in checkpoint"
        plain = source[plain_key]
        part = plain[:half] if ibn["part"] == "IN" else plain[half:]
        return plain_key, part, f"{ibn['part']} half of plain BN"
    if key not in source:
        return f"{key} not in checkpoint"
    value = source[key]
    if suffix == "conv3.weight" and value.dim() == 4 and value.shape[1] % experts == 0:
        averaged = _average_input_groups(value, experts)
        return (
            key,
            averaged.repeat(experts, 1, 1, 1),
            f"input-channel mean /{experts}, tiled x{experts}",
        )
    if suffix.startswith("bn3.") and value.dim() == 1:
        return key, value.repeat(experts), f"tiled x{experts}"
    if value.shape == target.shape:
        return key, value, "copy"
    if value.dim() == 4 and value.shape[1] == target.shape[1] * experts:
        return key, _average_input_groups(value, experts), f"input-channel mean /{experts}"
    return f"{key} has shape {tuple(value.shape)}, no rule gives {tuple(target.shape)}"


def map_ibn_resnet_state_dict(
    model: DR50, source: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], PretrainedLoadReport]:
    """Apply the §2.7 rules: returns the tensors to load (by DR50 key) and the report."""
    if not isinstance(model, DR50):
        raise TypeError(
            f"IBN-ResNet-a mapping needs a DR50 backbone, got {type(model).__name__}; "
            "pass ReIDBaseline.backbone"
        )
    report = PretrainedLoadReport()
    updates: dict[str, Tensor] = {}
    consumed: set[str] = set()
    for name, target in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            report.skipped.append(name)
            continue
        if name in source:
            value = source[name]
            if value.shape == target.shape:
                updates[name] = value
                report.loaded.append(name)
                consumed.add(name)
                continue
            sliced = _leading_slice(value, target.shape)
            if sliced is None:
                report.initialised[name] = (
                    f"checkpoint shape {tuple(value.shape)} cannot cover {tuple(target.shape)}"
                )
            else:
                updates[name] = sliced
                report.sliced.append(name)
                consumed.add(name)
            continue
        code_key = _CODE_BLOCK_KEY.match(name)
        if code_key is None:
            report.initialised[name] = "not in checkpoint"
            continue
        stage = int(code_key["stage"])
        block = f"layer{stage}.{model.blocks_per_stage[stage - 1] - 1}"
        suffix = code_key["suffix"]
        if code_key["branch"] == "base":
            key = f"{block}.{suffix}"
            if key in source and source[key].shape == target.shape:
                result: tuple[str, Tensor, str] | str = (key, source[key], "copy")
            elif key in source:
                result = f"{key} has shape {tuple(source[key].shape)}"
            else:
                result = f"{key} not in checkpoint"
        else:
            expert_branch = getattr(model, f"adaptor{stage}_sub")
            half = getattr(expert_branch.bn1, "half", 0)
            result = _map_expert_key(suffix, block, source, target, half, model.num_experts)
        if isinstance(result, str):
            report.initialised[name] = result
            continue
        source_key, value, rule = result
        if value.shape != target.shape:
            report.initialised[name] = (
                f"{rule} of {source_key} gives {tuple(value.shape)}, "
                f"model has {tuple(target.shape)}"
            )
            continue
        updates[name] = value
        report.mapped[name] = f"{source_key} ({rule})"
        consumed.add(source_key)
    report.unused = sorted(set(source) - consumed)
    return updates, report


def _unwrap_checkpoint(checkpoint: object, path: Path) -> dict[str, Tensor]:
    if isinstance(checkpoint, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(checkpoint.get(wrapper), Mapping):
                checkpoint = checkpoint[wrapper]
                break
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(value, Tensor) for value in checkpoint.values()
    ):
        raise ValueError(
            f"{path} is not a state dict of tensors (nor one wrapped under 'state_dict'/'model'); "
            f"expected the IBN-Net release file {IBN_RESNET50_A_FILENAME}"
        )
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def load_ibn_resnet50_pretrained(
    model: DR50, path: str | Path, config_key: str = "model.net.backbone.pretrained_path"
) -> PretrainedLoadReport:
    """Load IBN-ResNet-a ImageNet weights from ``path`` into ``model`` (in place).

    ``config_key`` only names the setting in the error message for a missing file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet IBN-ResNet50-a weights not found at '{path}'. Download "
            f"{IBN_RESNET50_A_FILENAME} from {IBN_RESNET50_A_URL} and set "
            f"{config_key}=/path/to/{IBN_RESNET50_A_FILENAME} "
            "(or turn ImageNet initialisation off)."
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    updates, report = map_ibn_resnet_state_dict(model, _unwrap_checkpoint(checkpoint, path))
    merged = model.state_dict()
    merged.update(updates)
    model.load_state_dict(merged)
    return report


def build_dr50(pretrained_path: str | Path | None = None, **kwargs) -> DR50:
    """``DR50(**kwargs)``, initialised from ImageNet IBN-ResNet50-a weights when a path is given.

    The config entry point of the backbone (``model.net.backbone``): the reference always starts
    from ImageNet weights (``BACKBONE.PRETRAIN: True``); ``pretrained_path=None`` trains from
    scratch, as the synthetic demo does.
    """
    model = DR50(**kwargs)
    if pretrained_path is not None:
        report = load_ibn_resnet50_pretrained(
            model, pretrained_path, config_key="model.net.backbone.pretrained_path"
        )
        logging.getLogger(__name__).info(report.summary())
    return model
