"""Building blocks of the GaitGL family of silhouette networks.

Tensor layout conventions used throughout:

* silhouettes: ``[n, s, h, w]`` (batch, frames, height, width), float in ``[0, 1]``;
* 3-D feature maps: ``[n, c, t, h, w]``;
* part features: ``[n, c, p]`` (the current OpenGait layout; the models permute to ``[n, p, c]``
  only in their returned dictionaries).

Variable-length batches are supported through ``lengths`` (LongTensor ``[n]``): the number of
valid frames of each sequence along the time axis of the tensor it accompanies. Every helper
treats ``lengths=None`` as "all frames valid" and then takes the unmasked fast path.

Module and attribute names (``conv3d``, ``global_conv3d``, ``local_conv3d``, ``fc_bin``, ``p``,
``bn1d``) match OpenGait so that its released checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

Triple = tuple[int, int, int]


def _as_triple(value: int | Sequence[int]) -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    triple = tuple(int(v) for v in value)
    if len(triple) != 3:
        raise ValueError(f"expected an int or 3 ints, got {value!r}")
    return triple  # type: ignore[return-value]


# --------------------------------------------------------------------------- time masks


def frame_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Boolean validity mask of padded sequences.

    Args:
        lengths: ``[n]`` valid frame counts.
        num_frames: size ``t`` of the padded time axis.

    Returns:
        ``[n, t]`` bool, ``True`` where ``frame_index < lengths[i]``.
    """
    frame_index = torch.arange(num_frames, device=lengths.device)
    return frame_index.unsqueeze(0) < lengths.unsqueeze(1)


def mask_frames(features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded frames of ``features`` ``[n, c, t, h, w]`` (returned with the same shape).

    Applied after every temporal operation so that, for the next temporal convolution, the padded
    frames are indistinguishable from the convolution's own zero padding.
    """
    if lengths is None:
        return features
    valid = frame_mask(lengths, features.shape[2]).to(features.dtype)
    return features * rearrange(valid, "n t -> n 1 t 1 1")


def conv_output_lengths(
    lengths: torch.Tensor | None, kernel: int, stride: int, padding: int
) -> torch.Tensor | None:
    """Valid output length of a temporal convolution: ``floor((L + 2*pad - k) / stride) + 1``."""
    if lengths is None:
        return None
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


def masked_global_average(features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Mean over time, height and width counting only valid frames.

    Args:
        features: ``[n, c, t, h, w]`` with padded frames already zero.
        lengths: ``[n]`` or ``None``.

    Returns:
        ``[n, c]``.
    """
    # Accumulate in fp32: under fp16/bf16 autocast a long sum (and the count) would lose digits.
    if lengths is None:
        return features.mean(dim=(2, 3, 4), dtype=torch.float32).to(features.dtype)
    height, width = features.shape[3:]
    frame_total = features.sum(dim=(2, 3, 4), dtype=torch.float32)
    count = (lengths * height * width).to(torch.float32)
    return (frame_total / count.unsqueeze(1)).to(features.dtype)


def temporal_max(features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Max over valid frames: ``[n, c, t, h, w] -> [n, c, h, w]``."""
    if lengths is None:
        return features.amax(dim=2)
    padded = ~frame_mask(lengths, features.shape[2])
    return features.masked_fill(rearrange(padded, "n t -> n 1 t 1 1"), float("-inf")).amax(dim=2)


def temporal_mean(features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid frames of zero-padded ``[n, c, t, h, w]`` -> ``[n, c, h, w]``."""
    if lengths is None:
        return features.mean(dim=2, dtype=torch.float32).to(features.dtype)
    count = rearrange(lengths.to(torch.float32), "n -> n 1 1 1")
    frame_total = mask_frames(features, lengths).sum(dim=2, dtype=torch.float32)
    return (frame_total / count).to(features.dtype)


def tile_short_sequences(
    sils: torch.Tensor, seq_lens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loop clips shorter than 3 frames so that the temporal stride-3 aggregation has input.

    A 1-frame clip is repeated 3 times, a 2-frame clip ``AB`` becomes ``ABAB`` (the clip is tiled,
    frames are not duplicated in place). With ``seq_lens`` each sequence uses its own length and
    the result is re-padded with zeros; the time axis is trimmed to the longest valid sequence.

    Args:
        sils: ``[n, s, h, w]``.
        seq_lens: ``[n]`` valid lengths or ``None`` (all ``s`` frames valid).

    Returns:
        ``(sils [n, s', h, w], lengths [n] or None)``.
    """
    if seq_lens is None:
        num_frames = sils.shape[1]
        if num_frames < 3:
            sils = sils.repeat(1, 3 if num_frames == 1 else 2, 1, 1)
        return sils, None

    repeats = torch.ones_like(seq_lens)
    repeats = torch.where(seq_lens == 2, torch.full_like(seq_lens, 2), repeats)
    repeats = torch.where(seq_lens == 1, torch.full_like(seq_lens, 3), repeats)
    new_lens = seq_lens * repeats
    new_frames = int(new_lens.max())
    if bool((repeats == 1).all()):
        return sils[:, :new_frames], new_lens

    frame_index = torch.arange(new_frames, device=sils.device).unsqueeze(0)
    valid = frame_index < new_lens.unsqueeze(1)
    source_index = torch.remainder(frame_index, seq_lens.unsqueeze(1)) * valid
    height, width = sils.shape[2:]
    gather_index = source_index.view(-1, new_frames, 1, 1).expand(-1, -1, height, width)
    tiled = sils.gather(1, gather_index) * valid.view(-1, new_frames, 1, 1).to(sils.dtype)
    return tiled, new_lens


# --------------------------------------------------------------------------- convolutions


class BasicConv3d(nn.Module):
    """A bias-free 3-D convolution; the backbone has no normalisation layers.

    Shapes: ``[n, c_in, t, h, w] -> [n, c_out, t', h', w']``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=_as_triple(kernel_size),
            stride=_as_triple(stride),
            padding=_as_triple(padding),
            bias=bias,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv3d(features)

    def output_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        """Valid frame counts after this convolution, from its temporal kernel/stride/padding."""
        return conv_output_lengths(
            lengths,
            kernel=self.conv3d.kernel_size[0],
            stride=self.conv3d.stride[0],
            padding=self.conv3d.padding[0],  # type: ignore[index]
        )


class GLConv(nn.Module):
    """Global-local 3-D convolution of GaitGL.

    The global branch convolves the whole map. The local branch cuts the height into strips of
    ``h // 2**halving`` rows and convolves each strip on its own (zero padding at strip borders,
    so no information crosses strips); ``halving=0`` disables the cut.

    ``fm_sign=False``: ``LeakyReLU(global) + LeakyReLU(local)``, shape ``[n, c_out, t, h, w]``.
    ``fm_sign=True``: ``LeakyReLU(cat_height(global, local))``, shape ``[n, c_out, t, 2h, w]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        halving: int,
        fm_sign: bool = False,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        if halving < 0:
            raise ValueError(f"GLConv halving must be >= 0, got {halving}")
        self.halving = halving
        self.fm_sign = fm_sign
        self.global_conv3d = BasicConv3d(in_channels, out_channels, kernel_size, stride, padding)
        self.local_conv3d = BasicConv3d(in_channels, out_channels, kernel_size, stride, padding)

    def _local_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.halving == 0:
            return self.local_conv3d(features)
        height = features.shape[3]
        strip_rows = height // 2**self.halving
        if strip_rows < 1:
            raise ValueError(
                f"GLConv: feature height {height} is smaller than 2**halving = {2**self.halving}; "
                "use taller silhouettes or a smaller halving"
            )
        if height % strip_rows == 0:
            # Folding the strips into the batch runs one convolution instead of a Python loop;
            # per-sample zero padding then plays the role of the strip borders.
            strips = rearrange(features, "n c t (k r) w -> (n k) c t r w", r=strip_rows)
            local = self.local_conv3d(strips)
            return rearrange(local, "(n k) c t r w -> n c t (k r) w", n=features.shape[0])
        return torch.cat([self.local_conv3d(s) for s in features.split(strip_rows, dim=3)], dim=3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        global_features = self.global_conv3d(features)
        local_features = self._local_features(features)
        if self.fm_sign:
            return F.leaky_relu(torch.cat([global_features, local_features], dim=3))
        return F.leaky_relu(global_features) + F.leaky_relu(local_features)

    def output_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        return self.global_conv3d.output_lengths(lengths)


# --------------------------------------------------------------------------- pooling and heads


class TemporalMaxPool(nn.Module):
    """Set pooling by max over (valid) frames: ``[n, c, t, h, w] -> [n, c, h, w]``."""

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return temporal_max(features, lengths)


class GeMHPP(nn.Module):
    """Horizontal pyramid pooling with generalised-mean pooling inside each strip.

    One learnable scalar exponent ``p`` is shared by all channels and strips. For a strip ``z``:
    ``GeM(z) = mean(clamp(z, eps) ** p) ** (1 / p)``.

    Shapes: ``[n, c, h, w] -> [n, c, sum(bin_num)]``; each ``b`` in ``bin_num`` must divide ``h``.
    """

    def __init__(self, bin_num: int | Sequence[int] = 64, p: float = 6.5, eps: float = 1e-6):
        super().__init__()
        self.bin_num = [bin_num] if isinstance(bin_num, int) else [int(b) for b in bin_num]
        if not self.bin_num or min(self.bin_num) < 1:
            raise ValueError(f"GeMHPP bin_num must be positive ints, got {bin_num!r}")
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    @property
    def parts(self) -> int:
        return sum(self.bin_num)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        height = features.shape[2]
        pooled = []
        for bins in self.bin_num:
            if height % bins:
                raise ValueError(
                    f"GeMHPP: feature height {height} is not divisible by bin count {bins}; "
                    "choose bin_num dividing the final map height (64 for 64x44 silhouettes)"
                )
            strips = rearrange(features, "n c (b r) w -> n c b (r w)", b=bins)
            powered_mean = strips.clamp(min=self.eps).pow(self.p).mean(dim=-1)
            pooled.append(powered_mean.pow(1.0 / self.p))
        return torch.cat(pooled, dim=-1)


class SeparateFCs(nn.Module):
    """One bias-free linear map per part: ``[n, c_in, p] -> [n, c_out, p]``.

    ``fc_bin`` ``[p, c_in, c_out]`` keeps PyTorch's Xavier-uniform on the 3-D tensor, whose fans
    are ``fan_in = c_in * c_out`` and ``fan_out = p * c_out`` — the reference initialisation, kept
    for parity of initial statistics. ``norm=True`` L2-normalises each weight column (cosine
    classifier).
    """

    def __init__(self, parts_num: int, in_channels: int, out_channels: int, norm: bool = False):
        super().__init__()
        self.parts_num = parts_num
        self.norm = norm
        self.fc_bin = nn.Parameter(
            nn.init.xavier_uniform_(torch.empty(parts_num, in_channels, out_channels))
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weight = F.normalize(self.fc_bin, dim=1) if self.norm else self.fc_bin
        return torch.einsum("nip,pio->nop", features, weight)


class SeparateBNNecks(nn.Module):
    """BNNeck head of OpenGait: BN over all ``c * p`` features, then per-part classifiers.

    Shapes: ``[n, c, p] -> (features [n, c, p], logits [n, class_num, p])``. With ``norm=True``
    (default) features are L2-normalised per part and logits are cosine similarities.
    ``bn1d`` indexes features channel-major (``c * p_total + p``), as current OpenGait does.
    """

    def __init__(self, parts_num: int, in_channels: int, class_num: int, norm: bool = True):
        super().__init__()
        self.parts_num = parts_num
        self.norm = norm
        self.fc_bin = nn.Parameter(
            nn.init.xavier_uniform_(torch.empty(parts_num, in_channels, class_num))
        )
        self.bn1d = nn.BatchNorm1d(in_channels * parts_num)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = features.shape[1]
        normalised = self.bn1d(rearrange(features, "n c p -> n (c p)"))
        normalised = rearrange(normalised, "n (c p) -> n c p", c=channels)
        if self.norm:
            normalised = F.normalize(normalised, dim=1)
            weight = F.normalize(self.fc_bin, dim=1)
        else:
            weight = self.fc_bin
        logits = torch.einsum("nip,pio->nop", normalised, weight)
        return normalised, logits
