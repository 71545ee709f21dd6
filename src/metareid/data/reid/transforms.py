"""Batched training augmentation for person re-identification (DR50 recipe, dr50.md §1.2).

The reference (fast-reid, per image with PIL) runs::

    AutoAugment(p=0.1) -> Resize(256x128, bicubic) -> Pad(10, zeros) -> RandomCrop(256x128)
    -> HFlip(0.5) -> ColorJitter(0.15, 0.15, 0.1, 0.1) with p=0.5

:class:`ReIDTrainAugment` applies the same operations, in the same order, to a whole batch on the
device. Deviations from the reference:

* Resizing happens in the loader workers
  (:func:`metareid.data.reid.multisource.load_resized_image`), so AutoAugment runs *after* the
  resize and sees the model-size crop instead of the original-size one (the reference runs it
  before). Its geometric operations (rotate, shear) act on the smaller image and its histogram
  operations (equalize, auto-contrast) on resampled pixels, so results differ slightly.
* kornia's AutoAugment draws one sub-policy per call for the whole batch; here it is called per
  selected image so that, as in the reference, each image gets its own draw.
* kornia fills the corners uncovered by AutoAugment's rotate/shear with black; the reference fills
  them with grey (128).
* Colour jitter is on by default because the released code always applies it to the image the
  model sees, although its config says ``CJ.ENABLED: False`` (dr50.md §7, item 4);
  ``color_jitter_p=0`` turns it off.

Randomness comes from torch's global generators (kornia has no per-module generator).
:func:`augment_seeded` runs the augmentation with those generators seeded from a key such as
``(seed, stream, batch number, rank)`` and restores them afterwards, so a training batch's
augmentation is a function of its position in the run, identical after a resume, and the
global random state is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import numpy as np
import torch
from kornia.augmentation.auto import AutoAugment
from torch import nn

__all__ = ["ReIDTrainAugment", "augment_seeded", "seed_from_key"]

# kornia expects floats in [0, 1]; our batches carry the 0-255 range the model normalises.
PIXEL_SCALE = 255.0


class ReIDTrainAugment(nn.Module):
    """Random training augmentation of a batch of person crops.

    Args:
        image_size: ``(height, width)`` of the crops; the random crop returns this size.
        autoaugment_p: per-image probability of one ImageNet-policy AutoAugment sub-policy.
        flip_p: probability of a horizontal flip.
        padding: zero padding before the random crop back to ``image_size``; 0 disables both.
        color_jitter_p: per-image probability of colour jitter.
        brightness, contrast, saturation, hue: colour jitter strengths (torchvision semantics).
        erasing_p: probability of random erasing (off in the DR50 recipe).
        erasing_value: fill value of erased rectangles, in 0-255 units.

    Shapes:
        input ``[B, 3, H, W]`` float in 0-255 (``uint8`` is accepted and converted);
        output ``[B, 3, H, W]`` float32 in 0-255.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 128),
        autoaugment_p: float = 0.1,
        flip_p: float = 0.5,
        padding: int = 10,
        color_jitter_p: float = 0.5,
        brightness: float = 0.15,
        contrast: float = 0.15,
        saturation: float = 0.1,
        hue: float = 0.1,
        erasing_p: float = 0.0,
        erasing_value: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("autoaugment_p", autoaugment_p),
            ("flip_p", flip_p),
            ("color_jitter_p", color_jitter_p),
            ("erasing_p", erasing_p),
        ]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ReIDTrainAugment: {name} must be a probability, got {value}")
        if padding < 0:
            raise ValueError(f"ReIDTrainAugment: padding must be >= 0, got {padding}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.autoaugment_p = autoaugment_p
        self.autoaugment = AutoAugment(policy="imagenet")
        self.pad_and_crop = (
            K.RandomCrop(self.image_size, padding=padding, fill=0.0, padding_mode="constant", p=1.0)
            if padding > 0
            else None
        )
        self.flip = K.RandomHorizontalFlip(p=flip_p) if flip_p > 0 else None
        self.color_jitter = (
            K.ColorJitter(brightness, contrast, saturation, hue, p=color_jitter_p)
            if color_jitter_p > 0
            else None
        )
        self.erasing = (
            K.RandomErasing(p=erasing_p, value=erasing_value / PIXEL_SCALE)
            if erasing_p > 0
            else None
        )

    def _autoaugment_some(self, images: torch.Tensor) -> torch.Tensor:
        # kornia draws one sub-policy per call for the whole batch; the reference draws one per
        # image. Calling it image by image keeps the draws independent, and with p=0.1 only a
        # handful of images per batch take this path.
        chosen = torch.nonzero(
            torch.rand(images.shape[0], device=images.device) < self.autoaugment_p
        )
        if chosen.numel() == 0:
            return images
        images = images.clone()
        for index in chosen.flatten().tolist():
            images[index : index + 1] = self.autoaugment(images[index : index + 1])
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"ReIDTrainAugment expects a batch [B, 3, H, W], got shape {tuple(images.shape)}"
            )
        if tuple(images.shape[2:]) != self.image_size:
            raise ValueError(
                f"ReIDTrainAugment was built for {self.image_size} crops but got "
                f"{tuple(images.shape[2:])}; resize in the dataset (image_size) to match."
            )
        unit = images.float() / PIXEL_SCALE
        if self.autoaugment_p > 0:
            unit = self._autoaugment_some(unit)
        for transform in (self.pad_and_crop, self.flip, self.color_jitter, self.erasing):
            if transform is not None:
                unit = transform(unit)
        return (unit * PIXEL_SCALE).clamp_(0.0, PIXEL_SCALE)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, autoaugment_p={self.autoaugment_p}"


def seed_from_key(key: Sequence[int]) -> int:
    """A 63-bit seed mixed from a tuple of non-negative ints (numpy's ``SeedSequence``), so
    neighbouring keys such as ``(seed, 0, 7)`` and ``(seed, 0, 8)`` give unrelated streams."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def augment_seeded(augment: nn.Module, images: torch.Tensor, key: Sequence[int]) -> torch.Tensor:
    """``augment(images)`` with torch's generators seeded from ``key``, restored afterwards.

    The CPU generator and, for CUDA input, the generator of the input's device are seeded
    (kornia draws its parameters on either); no other generator is touched.

    Args:
        augment: a module whose randomness comes from torch's global generators.
        images: batch ``[B, 3, H, W]``.
        key: non-negative ints naming the batch, e.g. ``(seed, stream, batch number, rank)``.

    Returns:
        ``augment(images)``, a pure function of ``(images, key)``.
    """
    seed = seed_from_key(key)
    cuda_devices = []
    if images.device.type == "cuda":
        index = images.device.index
        cuda_devices = [torch.cuda.current_device() if index is None else index]
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda_devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        return augment(images)
