"""Checkpoints in and out of metareid.

Two foreign formats are converted into the Lightning-style checkpoint that ``src/eval.py
ckpt_path=...`` (``trainer.test(ckpt_path=...)``) restores:

* ``"opengait"`` — OpenGait / MetaGait: ``{"model": state_dict, "optimizer", "scheduler",
  "iteration"}``, keys as the reference networks (``conv3d.0.conv3d.weight``, ``eca.*``, ...),
  possibly prefixed by ``module.`` (saved from a DDP wrapper).
* ``"acl"`` — ACL / fast-reid: ``{"model": state_dict with backbone.* and heads.* keys,
  "optimizer", "scheduler", "epoch", "metric", ...}``.

Our networks reproduce the reference module names, so converting is mostly validation: every
key of the target network must be present with its exact shape, and nothing may be left over.
The known, harmless differences are handled explicitly (``module.`` prefixes, numpy arrays,
BatchNorm counters absent from old checkpoints, fast-reid's persistent ``pixel_mean/std``
buffers, the part-major BNNeck layout of OpenGait before its ``[n, c, p]`` refactor). Anything
else stops the conversion with a report saying which keys differ and which setting to change.

The result holds weights only (``state_dict`` under the LightningModule's ``net.`` prefix,
``pytorch-lightning_version``, ``global_step``, ``epoch``): it evaluates, exports and extracts,
but cannot resume training (there are no optimizer or loop states).
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from omegaconf import OmegaConf, open_dict
from torch import Tensor, nn

log = logging.getLogger(__name__)

SOURCE_FORMATS = ("opengait", "acl")
BNNECK_LAYOUTS = ("channel-major", "part-major")
NET_PREFIX = "net."
# MetaBIN-era fast-reid saves the pixel statistics as persistent buffers (ACL's do not).
_PIXEL_BUFFERS = ("pixel_mean", "pixel_std")
_BN_COUNTER = "num_batches_tracked"


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the network it is meant for."""


# ----------------------------------------------------------------------------- reading


def _blocked_global(error: BaseException) -> str | None:
    """The global a ``weights_only`` load refused, from torch's message (wording varies by
    version: "Unsupported global: GLOBAL numpy.x was not an allowed global", "unsupported GLOBAL
    posix.system whose module posix is blocked")."""
    match = re.search(r"GLOBAL\s+([\w.]+)", str(error))
    return match.group(1) if match else None


def _torch_load_error_reason(error: BaseException) -> str:
    inner = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    if inner:
        return inner.group(1)
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else "the file ends before the checkpoint does"
    return f"{type(error).__name__}: {first_line}"


def is_loadable_checkpoint(path: str | Path) -> bool:
    """Whether ``torch.load(path, weights_only=True)`` succeeds (memory-mapped: cheap)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # any failure means "not loadable"; the caller reports the original one
        return False
    return True


def newest_loadable_sibling(path: str | Path) -> Path | None:
    """The most recently written ``*.ckpt`` next to ``path`` (itself excluded) that loads."""
    path = Path(path)
    if not path.parent.is_dir():
        return None
    siblings = [p for p in path.parent.glob("*.ckpt") if p.is_file() and p.name != path.name]
    for candidate in sorted(siblings, key=lambda p: p.stat().st_mtime, reverse=True):
        if is_loadable_checkpoint(candidate):
            return candidate
    return None


def _sibling_hint(path: Path) -> str:
    sibling = newest_loadable_sibling(path)
    if sibling is None:
        return " No loadable checkpoint lies next to it."
    return f" The newest loadable checkpoint next to it is {sibling}: pass ckpt_path={sibling}."


def load_checkpoint_file(
    path: str | Path, trust_pickle: bool = False, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load`` (on the CPU unless ``map_location`` says otherwise).

    The one way every entry point reads checkpoints. Tensors, numbers, strings and containers
    load with an explicit ``weights_only=True``, which no environment variable
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) overrides. A file that also pickles Python objects
    (numpy scalars, configs) needs ``trust_pickle=True``, which unpickles arbitrary code: only
    for files from a source you trust. Every failure is a :class:`CheckpointError` naming the
    file (truncated or corrupt files also name the newest loadable checkpoint next to them), or
    ``FileNotFoundError``. ``mmap=True`` maps the tensors instead of reading them (checks).
    """
    path = Path(path)
    if not path.is_file():
        kind = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"Checkpoint {path} {kind}.{_sibling_hint(path)}")
    try:
        # torch only memory-maps its zip format; legacy files (torch < 1.6) are read whole.
        mmap = mmap and zipfile.is_zipfile(path)
        checkpoint = torch.load(
            path, map_location=map_location, weights_only=not trust_pickle, mmap=mmap
        )
    except pickle.UnpicklingError as error:
        blocked = _blocked_global(error)
        if blocked is None:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint ({_torch_load_error_reason(error)})."
                f"{_sibling_hint(path)}"
            ) from None
        raise CheckpointError(
            f"{path}: holds pickled Python objects such as {blocked} besides tensors, refused "
            "because unpickling them can run arbitrary code. If you trust the file's source, "
            "load it with trust_pickle=true (src/convert.py: --trust-pickle)."
        ) from None
    except Exception as error:  # torch.load fails with EOFError, RuntimeError... on bad files
        size = path.stat().st_size
        state = "empty (0 bytes)" if size == 0 else f"truncated or corrupt ({size} bytes)"
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, the file is {state} "
            f"({_torch_load_error_reason(error)}).{_sibling_hint(path)}"
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}; save "
            "`{'model': model.state_dict()}` instead of the pickled module"
        )
    return dict(checkpoint)


def _strip_common_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def source_state_dict(
    checkpoint: Mapping[str, Any], origin: str = "checkpoint"
) -> dict[str, Tensor]:
    """The network weights of an OpenGait/ACL checkpoint, as tensors, without ``module.``.

    Accepts the reference container (weights under ``"model"``) or a bare state dict.
    ``origin`` names the file in error messages.
    """
    if "state_dict" in checkpoint and "pytorch-lightning_version" in checkpoint:
        raise CheckpointError(
            f"{origin} is already a Lightning checkpoint; pass it to src/eval.py directly"
        )
    if "model" in checkpoint:
        weights = checkpoint["model"]
        if not isinstance(weights, Mapping):
            raise CheckpointError(
                f"{origin}: 'model' holds a {type(weights).__name__}, expected a state dict"
            )
    elif checkpoint and all(isinstance(v, (Tensor, np.ndarray)) for v in checkpoint.values()):
        weights = checkpoint
    else:
        raise CheckpointError(
            f"{origin}: no 'model' entry (top-level keys: {sorted(checkpoint)[:10]}); expected "
            "an OpenGait/ACL checkpoint {'model': state_dict, ...} or a bare state dict"
        )
    state: dict[str, Tensor] = {}
    for key, value in weights.items():
        if isinstance(value, np.ndarray):  # fast-reid checkpoints may store numpy arrays
            value = torch.from_numpy(value)
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{origin}: model entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        state[key] = value
    return _strip_common_prefix(state, "module.")


# ----------------------------------------------------------------------------- describing


def describe_gait_state(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Constructor settings a GaitGL/MetaGait state dict was built with, as far as it shows them.

    Returns a subset of ``channels`` (list), ``bin_num`` (total parts), ``class_num``, ``head``
    (``"bn"``/``"bnneck"``) and ``attention`` (``True`` when MetaGait's ``eca``/``se`` exist).
    """
    info: dict[str, Any] = {}
    first = state.get("conv3d.0.conv3d.weight")
    stages = ["GLConvA0", "GLConvA1", "GLConvB2"]
    if first is not None:
        channels = [int(first.shape[0])]
        large = "conv3d.2.conv3d.weight" in state
        for stage in stages:
            key = f"{stage}.{'1.' if large else ''}global_conv3d.conv3d.weight"
            if key in state:
                channels.append(int(state[key].shape[0]))
        # In the CASIA-B variant GLConvB2 keeps the width of GLConvA1.
        info["channels"] = channels if large else channels[:3]
    if "Head0.fc_bin" in state:
        info["bin_num"] = int(state["Head0.fc_bin"].shape[0])
    for key, head in (("Head1.fc_bin", "bn"), ("BNNecks.fc_bin", "bnneck")):
        if key in state:
            info["class_num"] = int(state[key].shape[2])
            info["head"] = head
    info["attention"] = any(key.startswith(("eca.", "se.")) for key in state)
    return info


def describe_reid_state(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Settings of a DR50 + MetaEmbeddingHead state dict: ``width_mult`` (stem width / 64),
    ``num_classes`` (identities per source domain, in domain order) and ``feat_dim``."""
    info: dict[str, Any] = {}
    stem = state.get("backbone.conv1.weight")
    if stem is not None:
        info["width_mult"] = int(stem.shape[0]) / 64
    classifiers = {}
    for key, value in state.items():
        match = re.fullmatch(r"heads\.weight(\d+)\.weight", key)
        if match:
            classifiers[int(match.group(1))] = value
    if classifiers:
        info["num_classes"] = [int(classifiers[d].shape[0]) for d in sorted(classifiers)]
        info["feat_dim"] = int(next(iter(classifiers.values())).shape[1])
    return info


# ----------------------------------------------------------------------------- validating


@dataclass
class ConversionReport:
    """How a source state dict lines up with the target network.

    ``missing``: target keys absent from the source. ``unexpected``: source keys the target
    lacks. ``mismatched``: ``(key, source shape, target shape)``. ``filled``: BatchNorm counters
    absent from the source, taken from the target. ``dropped``: source keys removed on purpose
    (``ignore_keys`` patterns, persistent pixel statistics). ``notes``: other remarks.
    ``hints``: for an incompatible checkpoint, the settings that would make it fit.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        loaded = "compatible" if self.compatible else "INCOMPATIBLE"
        return (
            f"{loaded}: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} shape mismatches, {len(self.filled)} BN counters filled, "
            f"{len(self.dropped)} keys dropped"
        )

    def format(self, limit: int = 12) -> str:
        """Multi-line report: the summary, then the differing keys, notes and hints."""

        def listing(title: str, items: list[str]) -> list[str]:
            if not items:
                return []
            shown = [f"    {item}" for item in items[:limit]]
            if len(items) > limit:
                shown.append(f"    ... and {len(items) - limit} more")
            return [f"  {title} ({len(items)}):", *shown]

        lines = [self.summary()]
        lines += listing("missing from the checkpoint", self.missing)
        lines += listing("not in the network", self.unexpected)
        lines += listing(
            "shape mismatches (checkpoint vs network)",
            [f"{key}: {list(src)} vs {list(dst)}" for key, src, dst in self.mismatched],
        )
        lines += listing("dropped", self.dropped)
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  hint: {hint}" for hint in self.hints]
        return "\n".join(lines)


def _gait_hints(source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> list[str]:
    have, want = describe_gait_state(source), describe_gait_state(target)
    hints = []
    if have.get("class_num") is not None and have.get("class_num") != want.get("class_num"):
        hints.append(
            f"the checkpoint's classifier has {have['class_num']} identities, the network "
            f"{want.get('class_num')}: set data.num_classes={have['class_num']} "
            "(model.net.class_num follows it)"
        )
    if have.get("bin_num") is not None and have.get("bin_num") != want.get("bin_num"):
        hints.append(
            f"the checkpoint has {have['bin_num']} horizontal parts, the network "
            f"{want.get('bin_num')}: set model.net.bin_num={have['bin_num']}"
        )
    if have.get("channels") and have.get("channels") != want.get("channels"):
        channels = ",".join(str(c) for c in have["channels"])
        hints.append(
            f"the checkpoint's backbone widths are {have['channels']}, the network's "
            f"{want.get('channels')}: set model.net.channels=[{channels}]"
        )
    if have.get("attention") and not want.get("attention"):
        hints.append("the checkpoint has MetaGait attention (eca.*, se.*): use --model metagait")
    if want.get("attention") and not have.get("attention"):
        hints.append("the checkpoint has no eca.*/se.* attention (a GaitGL): use --model gaitgl")
    if have.get("head") and want.get("head") and have["head"] != want["head"]:
        hints.append(
            f"the checkpoint uses head={have['head']!r}: set model.net.head={have['head']}"
        )
    return hints


def _reid_hints(source: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> list[str]:
    have, want = describe_reid_state(source), describe_reid_state(target)
    hints = []
    if have.get("num_classes") and have.get("num_classes") != want.get("num_classes"):
        hints.append(
            f"the checkpoint's classifiers have {have['num_classes']} identities per source "
            f"domain, the network {want.get('num_classes')}: build MetaEmbeddingHead with "
            f"num_classes={have['num_classes']} (the per-domain class counts of the ReID data "
            "config, i.e. the same source datasets in the same order)"
        )
    if have.get("width_mult") is not None and have.get("width_mult") != want.get("width_mult"):
        hints.append(
            f"the checkpoint's stem is {round(have['width_mult'] * 64)} channels wide: build DR50 "
            f"with width_mult={have['width_mult']:g}"
        )
    return hints


def _part_major_to_channel_major(value: Tensor, parts: int) -> Tensor:
    """Reorder a ``[p * c]`` BNNeck vector indexed ``p * C + c`` to ``c * P + p``."""
    return rearrange(value, "(p c) -> (c p)", p=parts)


def map_state_dict(
    source: Mapping[str, Tensor],
    network: nn.Module,
    source_format: str,
    ignore_keys: Iterable[str] = (),
    bnneck_layout: str = "channel-major",
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Match ``source`` (reference key names) against ``network.state_dict()``.

    Args:
        source: weights from :func:`source_state_dict`.
        network: the target network (its keys, shapes and dtypes are the reference).
        source_format: ``"opengait"`` or ``"acl"`` (chooses the hints and known extras).
        ignore_keys: regular expressions; matching source keys are dropped before matching.
        bnneck_layout: ``"part-major"`` for OpenGait checkpoints older than its ``[n, c, p]``
            refactor, whose ``BNNecks.bn1d`` vectors are indexed ``part * C + channel``.

    Returns:
        ``(state dict for network.load_state_dict(strict=True), report)``. The state dict is
        only complete when ``report.compatible``.
    """
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f"source_format must be one of {SOURCE_FORMATS}, got {source_format!r}")
    if bnneck_layout not in BNNECK_LAYOUTS:
        raise ValueError(f"bnneck_layout must be one of {BNNECK_LAYOUTS}, got {bnneck_layout!r}")
    target = network.state_dict()
    report = ConversionReport()
    patterns = [re.compile(pattern) for pattern in ignore_keys]
    remaining: dict[str, Tensor] = {}
    for key, value in source.items():
        if any(pattern.search(key) for pattern in patterns):
            report.dropped.append(key)
        elif source_format == "acl" and key in _PIXEL_BUFFERS:
            report.dropped.append(key)
            expected = getattr(network, key, None)
            if isinstance(expected, Tensor) and not torch.allclose(
                value.float().flatten(), expected.float().flatten()
            ):
                report.notes.append(
                    f"the checkpoint's {key} is {value.flatten().tolist()}, the network normalises "
                    f"with {expected.flatten().tolist()}: set the network's {key} to match"
                )
        else:
            remaining[key] = value

    if bnneck_layout == "part-major" and "Head0.fc_bin" in remaining:
        parts = int(remaining["Head0.fc_bin"].shape[0])
        for name in ("weight", "bias", "running_mean", "running_var"):
            key = f"BNNecks.bn1d.{name}"
            if key in remaining:
                remaining[key] = _part_major_to_channel_major(remaining[key], parts)
        report.notes.append("BNNecks.bn1d reordered from part-major to channel-major")

    converted: dict[str, Tensor] = {}
    for key, expected in target.items():
        if key not in remaining:
            if key.endswith(_BN_COUNTER):
                converted[key] = expected.clone()
                report.filled.append(key)
            else:
                report.missing.append(key)
            continue
        value = remaining[key]
        if tuple(value.shape) != tuple(expected.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(expected.shape)))
            continue
        if value.dtype != expected.dtype:
            value = value.to(expected.dtype)
        converted[key] = value.detach().clone().contiguous()
    report.unexpected = [key for key in remaining if key not in target]
    if not report.compatible:
        hints = _gait_hints if source_format == "opengait" else _reid_hints
        report.hints = hints(remaining, target)
    return converted, report


# ----------------------------------------------------------------------------- writing


def lightning_checkpoint(
    net_state: Mapping[str, Tensor],
    extra_state: Mapping[str, Tensor] | None = None,
    global_step: int = 0,
    epoch: int = 0,
    conversion: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A weights-only checkpoint that ``trainer.test/validate/predict(ckpt_path=...)`` restores.

    Lightning 2.6 reads ``state_dict`` and ``pytorch-lightning_version`` (the latter drives its
    checkpoint migrations; the current version means none run); ``global_step`` and ``epoch``
    are informative. ``extra_state`` are LightningModule entries outside ``net.`` (strict
    loading needs them too); ``conversion`` is stored as plain data for provenance.
    """
    # Imported here: reading and matching checkpoints (export, extract) does not need Lightning.
    import pytorch_lightning as pl

    state = {NET_PREFIX + key: value for key, value in net_state.items()}
    state.update(extra_state or {})
    checkpoint: dict[str, Any] = {
        "state_dict": state,
        "pytorch-lightning_version": pl.__version__,
        "global_step": int(global_step),
        "epoch": int(epoch),
    }
    if conversion is not None:
        checkpoint["metareid_conversion"] = dict(conversion)
    return checkpoint


def _as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def convert_checkpoint(
    checkpoint: Mapping[str, Any],
    source_format: str,
    network: nn.Module,
    extra_state: Mapping[str, Tensor] | None = None,
    ignore_keys: Iterable[str] = (),
    bnneck_layout: str = "channel-major",
    origin: str = "checkpoint",
) -> tuple[dict[str, Any], ConversionReport]:
    """Convert an OpenGait (``"opengait"``) or ACL (``"acl"``) checkpoint for ``network``.

    Raises :class:`CheckpointError` with the formatted report when the weights do not fit.
    ``global_step`` comes from the source ``iteration``, ``epoch`` from the source ``epoch``
    (ACL's 0-based index of the last finished epoch, as Lightning stores it).
    """
    weights = source_state_dict(checkpoint, origin)
    net_state, report = map_state_dict(
        weights, network, source_format, ignore_keys=ignore_keys, bnneck_layout=bnneck_layout
    )
    if not report.compatible:
        raise CheckpointError(f"{origin} does not fit {type(network).__name__}: {report.format()}")
    conversion = {
        "source": origin,
        "source_format": source_format,
        "network": type(network).__name__,
        "dropped_keys": list(report.dropped),
        "filled_keys": list(report.filled),
    }
    converted = lightning_checkpoint(
        net_state,
        extra_state=extra_state,
        global_step=_as_int(checkpoint.get("iteration")),
        epoch=_as_int(checkpoint.get("epoch")),
        conversion=conversion,
    )
    return converted, report


# ----------------------------------------------------------------------------- loading ours


def _require_lightning_format(checkpoint: Mapping[str, Any], path: str | Path) -> None:
    if "state_dict" in checkpoint and "pytorch-lightning_version" in checkpoint:
        return
    hint = (
        " It looks like an OpenGait/ACL checkpoint: convert it first with "
        f"`python src/convert.py {{opengait,acl}} --src {path} --out <file>.ckpt`."
        if "model" in checkpoint
        else " metareid checkpoints come from src/train.py or src/convert.py."
    )
    missing = [k for k in ("state_dict", "pytorch-lightning_version") if k not in checkpoint]
    raise CheckpointError(
        f"{path}: not a metareid (Lightning) checkpoint, no {' / '.join(repr(k) for k in missing)} "
        f"entry (keys: {sorted(map(str, checkpoint))[:8]}).{hint}"
    )


def check_fits_module(
    path: str | Path, module: nn.Module, trust_pickle: bool = False
) -> dict[str, Any]:
    """Check, before Lightning restores it, that ``path`` is a metareid checkpoint whose
    ``state_dict`` fits ``module`` (a LightningModule) key for key and shape for shape; returns
    the checkpoint (tensors memory-mapped). Raises :class:`CheckpointError` with a short report
    (instead of Lightning's list of every key) or the ``convert.py`` hint for foreign files."""
    checkpoint = load_checkpoint_file(path, trust_pickle=trust_pickle, mmap=True)
    _require_lightning_format(checkpoint, path)
    load_state_strictly(module, checkpoint["state_dict"], str(path), load=False)
    return checkpoint


def read_network_state(
    path: str | Path, prefix: str = NET_PREFIX, trust_pickle: bool = False
) -> dict[str, Tensor]:
    """The network weights of a metareid (Lightning) checkpoint, ``prefix`` removed.

    A foreign checkpoint is recognised and pointed to ``src/convert.py``.
    """
    checkpoint = load_checkpoint_file(path, trust_pickle=trust_pickle)
    if "state_dict" not in checkpoint:
        _require_lightning_format(checkpoint, path)
    state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    if not state:
        raise CheckpointError(
            f"{path}: no weights under the {prefix!r} prefix; metareid LightningModules keep "
            "their network as `self.net`"
        )
    return state


def load_state_strictly(
    network: nn.Module, state: Mapping[str, Tensor], origin: str, load: bool = True
) -> None:
    """``network.load_state_dict(state, strict=True)`` with one readable error for all problems
    (``load=False``: only the check)."""
    target = network.state_dict()
    missing = [key for key in target if key not in state]
    unexpected = [key for key in state if key not in target]
    mismatched = [
        f"{key}: {list(state[key].shape)} vs {list(value.shape)}"
        for key, value in target.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{origin} does not fit {type(network).__name__} (was it trained with another model "
            f"config?): missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches "
            f"(checkpoint vs network) {mismatched[:5]} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} mismatched in all)"
        )
    if load:
        network.load_state_dict(state, strict=True)


def load_network_weights(network: nn.Module, path: str | Path, prefix: str = NET_PREFIX) -> None:
    """Load the ``prefix`` weights of a metareid checkpoint into ``network``, strictly."""
    load_state_strictly(network, read_network_state(path, prefix), str(path))


def with_head_sizes(net_config: Any, state: Mapping[str, Tensor] | None) -> Any:
    """Fill a ReID head's ``num_classes: null`` from the classifier widths in ``state``.

    ReID configs leave the widths to the data (one per source domain, known once the sources
    are indexed). A checkpoint already fixes them; without one the classifiers do not affect
    the features, so a single 1-identity domain stands in. Other configs come back unchanged.
    """
    head = OmegaConf.select(net_config, "head")
    if head is None or "num_classes" not in head or head.num_classes is not None:
        return net_config
    counts = describe_reid_state(state or {}).get("num_classes") or [1]
    filled = net_config.copy()
    with open_dict(filled):
        filled.head.num_classes = counts
    return filled


def network_from_config(
    net_config: Any, ckpt_path: str | Path | None = None, trust_pickle: bool = False
) -> nn.Module:
    """Instantiate a Hydra ``model.net`` config and load the metareid weights of ``ckpt_path``.

    Without ``ckpt_path`` the network keeps its initialisation. Returned in eval mode.
    """
    import hydra

    state = read_network_state(ckpt_path, trust_pickle=trust_pickle) if ckpt_path else None
    network = hydra.utils.instantiate(with_head_sizes(net_config, state))
    if state is not None:
        load_state_strictly(network, state, str(ckpt_path))
    return network.eval()
