"""Embedded synthetic multi-domain person re-identification data.

Each domain holds its own people, drawn from a seeded generator: clothing colours and patterns,
build, sleeves, trousers/shorts/skirt, hair, and optional hat and bag. Identity is therefore
carried by appearance, as in real ReID. Every person is seen by several cameras with pose,
scale, position, facing and lighting jitter. Domains differ in imaging style (colour cast, gamma,
contrast, capture resolution, blur, sensor noise, JPEG quality, background kind and colours) and
in the brightness and saturation range of the clothes people wear. Training on some domains and
testing on an unseen one is therefore a real domain-generalisation problem at toy scale.

Output uses the Market-1501 layout, readable by
:class:`metareid.data.reid.market1501.SyntheticReID`::

    <out>/<domain>/bounding_box_train/0001_c1s1_000000_01.jpg
    <out>/<domain>/query/...
    <out>/<domain>/bounding_box_test/...   (also pid 0000 distractors and -1 junk crops)
    <out>/<domain>/synthetic_reid.json     (generator parameters and counts)

Test identities are disjoint from training identities. Each test identity contributes one query
per camera (only camera 1 when it has a single image per camera), and the rest go to the gallery.

Rendering is vectorised with numpy over chunks of images; the default demo
(4 domains x 40 ids x 4 cameras x 3 images at 64x32) takes a few seconds.

Command line: ``python -m metareid.data.reid.synthetic --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from metareid.utils.progress import progress_bar

__all__ = [
    "DomainStyle",
    "PRESET_STYLES",
    "generate_synthetic_reid",
    "main",
    "random_domain_style",
]

MANIFEST_NAME = "synthetic_reid.json"
#: Marks a cache root of ``cache_by_settings=True`` (one ``reid-<hash>`` folder per setting).
CACHE_MANIFEST = "synthetic_reid_cache.json"
SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
# Rendering at twice the output size and shrinking with antialiasing gives smooth body edges.
SUPERSAMPLE = 2
# Images rendered at once: large enough to vectorise well, small enough to bound memory.
RENDER_CHUNK = 64


@dataclass(frozen=True)
class DomainStyle:
    """Imaging conditions shared by all cameras of a domain.

    Attributes:
        colour_gain: per-channel RGB multiplier (colour cast).
        gamma: exponent applied to the 0-1 image (>1 darkens mid-tones).
        contrast: scale of deviations from mid-grey.
        capture_scale: capture resolution as a fraction of the output size; the image is
            captured small and resized up, like a distant low-resolution camera.
        blur_sigma: Gaussian blur in capture pixels.
        noise_std: sensor noise standard deviation in 0-255 units.
        jpeg_quality: JPEG quality of the written files.
        background: one of ``gradient``, ``stripes``, ``tiles``, ``blobs``.
        wall_rgb, floor_rgb: background colours (0-1).
        clothing_value: range of HSV value (brightness) of clothing colours.
        clothing_saturation: range of HSV saturation of clothing colours.
        camera_light_spread: how much illumination differs between cameras of the domain.
    """

    colour_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    contrast: float = 1.0
    capture_scale: float = 1.0
    blur_sigma: float = 0.0
    noise_std: float = 2.0
    jpeg_quality: int = 92
    background: str = "gradient"
    wall_rgb: tuple[float, float, float] = (0.8, 0.75, 0.65)
    floor_rgb: tuple[float, float, float] = (0.55, 0.5, 0.45)
    clothing_value: tuple[float, float] = (0.25, 0.95)
    clothing_saturation: tuple[float, float] = (0.2, 0.9)
    camera_light_spread: float = 0.12


BACKGROUND_KINDS = ("gradient", "stripes", "tiles", "blobs")

PRESET_STYLES: dict[str, DomainStyle] = {
    # Bright indoor mall: neutral colours, sharp, clean.
    "synA": DomainStyle(),
    # Overcast street: blue cast, brighter mid-tones, slightly soft, pavement texture.
    "synB": DomainStyle(
        colour_gain=(0.88, 1.0, 1.18),
        gamma=0.8,
        capture_scale=0.75,
        blur_sigma=0.5,
        noise_std=4.0,
        jpeg_quality=85,
        background="blobs",
        wall_rgb=(0.6, 0.65, 0.7),
        floor_rgb=(0.45, 0.47, 0.5),
        clothing_value=(0.35, 1.0),
        camera_light_spread=0.15,
    ),
    # Dim surveillance under sodium light: yellow cast, dark, low-res, noisy, compressed.
    "synC": DomainStyle(
        colour_gain=(1.18, 1.0, 0.75),
        gamma=1.4,
        contrast=1.1,
        capture_scale=0.5,
        blur_sigma=0.7,
        noise_std=8.0,
        jpeg_quality=70,
        background="stripes",
        wall_rgb=(0.35, 0.3, 0.25),
        floor_rgb=(0.25, 0.22, 0.2),
        clothing_value=(0.15, 0.8),
        camera_light_spread=0.2,
    ),
    # Washed-out green-tinted station: low contrast, tiled floor.
    "synD": DomainStyle(
        colour_gain=(0.95, 1.1, 0.95),
        gamma=0.9,
        contrast=0.7,
        capture_scale=0.6,
        blur_sigma=0.3,
        noise_std=3.0,
        jpeg_quality=80,
        background="tiles",
        wall_rgb=(0.75, 0.8, 0.7),
        floor_rgb=(0.6, 0.6, 0.55),
        clothing_saturation=(0.1, 0.7),
        camera_light_spread=0.1,
    ),
}


def random_domain_style(rng: np.random.Generator) -> DomainStyle:
    """A random style for domains beyond the presets."""
    return DomainStyle(
        colour_gain=tuple(rng.uniform(0.8, 1.2, 3).round(3).tolist()),
        gamma=float(rng.uniform(0.75, 1.4)),
        contrast=float(rng.uniform(0.7, 1.15)),
        capture_scale=float(rng.uniform(0.5, 1.0)),
        blur_sigma=float(rng.uniform(0.0, 0.8)),
        noise_std=float(rng.uniform(1.0, 8.0)),
        jpeg_quality=int(rng.integers(65, 95)),
        background=str(rng.choice(BACKGROUND_KINDS)),
        wall_rgb=tuple(rng.uniform(0.2, 0.9, 3).round(3).tolist()),
        floor_rgb=tuple(rng.uniform(0.15, 0.7, 3).round(3).tolist()),
        clothing_value=(float(rng.uniform(0.1, 0.35)), float(rng.uniform(0.75, 1.0))),
        clothing_saturation=(float(rng.uniform(0.05, 0.3)), float(rng.uniform(0.6, 0.95))),
        camera_light_spread=float(rng.uniform(0.08, 0.2)),
    )


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs ``[...]`` in 0-1, output ``[..., 3]`` in 0-1."""
    sector = np.floor(hue * 6.0) % 6
    fraction = hue * 6.0 - np.floor(hue * 6.0)
    p = value * (1 - saturation)
    q = value * (1 - fraction * saturation)
    t = value * (1 - (1 - fraction) * saturation)
    # Row k lists the (r, g, b) sources for hue sector k.
    table = np.stack(
        [
            np.stack([value, t, p], -1),
            np.stack([q, value, p], -1),
            np.stack([p, value, t], -1),
            np.stack([p, q, value], -1),
            np.stack([t, p, value], -1),
            np.stack([value, p, q], -1),
        ],
        axis=0,
    )
    return np.take_along_axis(table, sector.astype(np.int64)[None, ..., None], axis=0)[0]


def _sample_people(
    rng: np.random.Generator, count: int, style: DomainStyle
) -> dict[str, np.ndarray]:
    """Appearance attributes of ``count`` people; every array has leading dimension ``count``."""

    def clothing(n: int) -> np.ndarray:
        return _hsv_to_rgb(
            rng.uniform(0, 1, n),
            rng.uniform(*style.clothing_saturation, n),
            rng.uniform(*style.clothing_value, n),
        )

    skin_tone = rng.uniform(0, 1, count)[:, None]
    skin_dark, skin_light = np.array([0.36, 0.24, 0.16]), np.array([0.95, 0.8, 0.68])
    hair_palette = np.array(
        [[0.08, 0.06, 0.05], [0.3, 0.2, 0.1], [0.55, 0.4, 0.2], [0.8, 0.7, 0.45], [0.6, 0.6, 0.6]]
    )
    shoe_palette = np.array([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9], [0.4, 0.25, 0.15], [0.2, 0.2, 0.4]])
    return {
        "upper_rgb": clothing(count),
        "upper_second_rgb": clothing(count),
        # 0 solid, 1 horizontal stripes, 2 checks, 3 vertical stripes
        "upper_pattern": rng.choice(4, count, p=[0.45, 0.25, 0.15, 0.15]),
        "pattern_period": rng.uniform(0.035, 0.07, count),
        "lower_rgb": clothing(count),
        # 0 trousers, 1 shorts, 2 skirt
        "lower_kind": rng.choice(3, count, p=[0.65, 0.2, 0.15]),
        "long_sleeves": rng.random(count) < 0.6,
        "skin_rgb": skin_dark + skin_tone * (skin_light - skin_dark),
        "hair_rgb": hair_palette[rng.integers(0, len(hair_palette), count)],
        "shoe_rgb": shoe_palette[rng.integers(0, len(shoe_palette), count)],
        "height": rng.uniform(0.8, 0.93, count),
        "build": rng.uniform(0.82, 1.2, count),
        "has_hat": rng.random(count) < 0.2,
        "hat_rgb": clothing(count),
        "has_bag": rng.random(count) < 0.35,
        "bag_rgb": clothing(count),
        "bag_side": rng.choice([-1.0, 1.0], count),
    }


def _segment_mask(
    x: np.ndarray,
    y: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    end: tuple[np.ndarray, np.ndarray],
    radius: np.ndarray,
) -> np.ndarray:
    """Pixels within ``radius`` of a segment (a limb). Grids ``[1, H, W]``, params ``[N, 1, 1]``."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    along = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return (x - x0 - along * dx) ** 2 + (y - y0 - along * dy) ** 2 <= radius**2


def _smooth_noise(rng: np.random.Generator, count: int, grid: tuple[int, int], size) -> np.ndarray:
    """Low-frequency noise ``[count, H, W, 3]`` in about -1..1 (bilinear upsampled random grid)."""
    coarse = torch.from_numpy(rng.uniform(-1, 1, (count, 3, *grid)).astype(np.float32))
    fine = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return fine.permute(0, 2, 3, 1).contiguous().numpy()


def _sample_cameras(rng: np.random.Generator, num_cameras: int, style: DomainStyle) -> dict:
    """Per-camera scene and lighting parameters; arrays with leading dimension ``num_cameras``."""
    spread = style.camera_light_spread

    def uniform(low: float, high: float, shape) -> np.ndarray:
        return rng.uniform(low, high, shape).astype(np.float32)

    return {
        # cameras sit at different distances, so people appear at different scales
        "distance": uniform(0.9, 1.05, num_cameras),
        "background_tint": 1 + uniform(-0.15, 0.15, (num_cameras, 3)),
        "horizon": uniform(0.55, 0.8, num_cameras),
        "texture_period": uniform(0.06, 0.16, num_cameras),
        "texture_phase": uniform(0, 1, num_cameras),
        "light": 1 + uniform(-spread, spread, (num_cameras, 3)),
        "falloff": uniform(-0.15, 0.15, num_cameras),
    }


def _sample_views(rng: np.random.Generator, count: int) -> dict:
    """Per-image pose, placement and exposure; arrays with leading dimension ``count``."""

    def uniform(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, count).astype(np.float32)

    return {
        "height_jitter": uniform(0.95, 1.04),
        "feet": uniform(0.95, 0.99),
        "centre_shift": uniform(-0.04, 0.04),
        "stride": uniform(0.0, 0.12),
        "arm_swing": uniform(-0.05, 0.05),
        "exposure": uniform(0.92, 1.08),
        "facing_left": rng.random(count) < 0.5,
    }


def _render_background(
    rng: np.random.Generator,
    style: DomainStyle,
    camera_params: dict,
    camera_of_image: np.ndarray,
    size: tuple[int, int],
) -> np.ndarray:
    """Backgrounds ``[N, H, W, 3]`` in 0-1: layout and colours per camera, clutter per image."""
    count = len(camera_of_image)
    height, width = size
    y = (np.arange(height, dtype=np.float32)[None, :, None] + 0.5) / height
    x = (np.arange(width, dtype=np.float32)[None, None, :] + 0.5) / height

    def of_camera(name: str) -> np.ndarray:
        values = camera_params[name][camera_of_image]
        return values[:, None, None] if values.ndim == 1 else values[:, None, None, :]

    tint = of_camera("background_tint")
    horizon, period, phase = (
        of_camera("horizon"),
        of_camera("texture_period"),
        of_camera("texture_phase"),
    )
    wall = np.asarray(style.wall_rgb, dtype=np.float32) * tint
    floor = np.asarray(style.floor_rgb, dtype=np.float32) * tint
    is_floor = (y > horizon)[..., None]
    if style.background == "gradient":
        shade = (1.1 - 0.3 * y)[..., None]
        canvas = np.where(is_floor, floor, wall) * shade
    elif style.background == "stripes":
        bars = ((np.floor(x / period + phase) % 2) == 0)[..., None]
        canvas = np.where(is_floor, floor, np.where(bars, wall, wall * 0.7))
    elif style.background == "tiles":
        tiles = ((np.floor(x / period + phase) + np.floor(y / period)) % 2 == 0)[..., None]
        canvas = np.where(is_floor, np.where(tiles, floor, floor * 0.8), wall)
    elif style.background == "blobs":
        texture = _smooth_noise(rng, count, (6, 3), size)
        canvas = np.where(is_floor, floor, wall) * (1 + 0.25 * texture)
    else:
        raise ValueError(
            f"DomainStyle.background must be one of {BACKGROUND_KINDS}, got {style.background!r}"
        )
    # Clutter is mostly brightness with a little colour, like real scenes.
    clutter = _smooth_noise(rng, count, (8, 4), size)
    clutter = 0.75 * clutter.mean(axis=-1, keepdims=True) + 0.25 * clutter
    return np.clip(canvas * (1 + 0.12 * clutter), 0, 1).astype(np.float32)


def _render_people(
    rng: np.random.Generator,
    people: dict[str, np.ndarray],
    views: dict[str, np.ndarray],
    camera_params: dict[str, np.ndarray],
    person_of_image: np.ndarray,
    camera_of_image: np.ndarray,
    style: DomainStyle,
    size: tuple[int, int],
) -> np.ndarray:
    """Render one crop per entry of ``person_of_image``; returns ``[N, H, W, 3]`` floats in 0-1.

    Lengths are in units of the canvas height so proportions do not depend on resolution; body
    parts are placed at fixed fractions of the person's height ``h`` (a stick-figure canon).
    """
    count = len(person_of_image)
    height, width = size

    def attribute(name: str) -> np.ndarray:
        values = people[name][person_of_image]
        if values.dtype == np.float64:
            values = values.astype(np.float32)
        return values[:, None, None] if values.ndim == 1 else values[:, None, None, :]

    y = (np.arange(height, dtype=np.float32)[None, :, None] + 0.5) / height
    x = (np.arange(width, dtype=np.float32)[None, None, :] + 0.5) / height

    def per_image(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32)[:, None, None]

    person_height = (
        people["height"][person_of_image]
        * camera_params["distance"][camera_of_image]
        * views["height_jitter"]
    )
    h = per_image(person_height)
    top = per_image(views["feet"] - person_height)
    cx = per_image(width / height / 2 + views["centre_shift"])
    stride, arm_swing = per_image(views["stride"]), per_image(views["arm_swing"])
    build = attribute("build")

    canvas = _render_background(rng, style, camera_params, camera_of_image, size)

    def paint(mask: np.ndarray, rgb: np.ndarray) -> None:
        np.copyto(canvas, rgb.astype(np.float32, copy=False), where=mask[..., None])

    skin, upper, lower = attribute("skin_rgb"), attribute("upper_rgb"), attribute("lower_rgb")

    # Legs and shoes.
    hip_y, ankle_y, knee_y = top + 0.52 * h, top + h - 0.03 * h, top + 0.74 * h
    leg_radius = 0.028 * h * build
    legs = np.zeros((count, height, width), dtype=bool)
    for side in (-1.0, 1.0):
        hip = (cx + side * 0.045 * h * build, hip_y)
        ankle = (cx + side * (0.045 * h * build + stride / 2 * h), ankle_y)
        legs |= _segment_mask(x, y, hip, ankle, leg_radius)
        shoe = ((x - ankle[0]) / (0.04 * h)) ** 2 + ((y - ankle_y) / (0.022 * h)) ** 2 <= 1
        paint(shoe, attribute("shoe_rgb"))
        legs &= ~shoe
    kind = attribute("lower_kind")
    bare_leg = legs & (y > knee_y) & (kind != 0)
    paint(legs & ~bare_leg, lower)
    paint(bare_leg, skin)
    skirt_half_width = (0.11 + 0.12 * (y - hip_y) / (knee_y - hip_y)) * h * build
    skirt = (
        (kind == 2) & (y >= hip_y - 0.01 * h) & (y <= knee_y) & (np.abs(x - cx) <= skirt_half_width)
    )
    paint(skirt, lower)

    # Torso with a pattern, then arms.
    shoulder_y, waist_y = top + 0.15 * h, top + 0.54 * h
    along_torso = np.clip((y - shoulder_y) / (waist_y - shoulder_y), 0, 1)
    torso_half_width = (0.125 - 0.03 * along_torso) * h * build
    torso = (y >= shoulder_y) & (y <= waist_y) & (np.abs(x - cx) <= torso_half_width)
    # Periods were drawn for a person of typical height 0.85; scale them with the actual height
    # so a pattern keeps its look when the person is nearer or farther.
    period = attribute("pattern_period") * h / 0.85
    stripe_rows = np.floor((y - shoulder_y) / period) % 2 == 1
    stripe_cols = np.floor((x - cx) / period + 0.5) % 2 == 1
    pattern = attribute("upper_pattern")
    secondary = (
        ((pattern == 1) & stripe_rows)
        | ((pattern == 2) & (stripe_rows ^ stripe_cols))
        | ((pattern == 3) & stripe_cols)
    )
    paint(torso & ~secondary, upper)
    paint(torso & secondary, attribute("upper_second_rgb"))
    arm_radius = 0.024 * h * build
    sleeve_end_y = np.where(attribute("long_sleeves"), top + 0.5 * h, top + 0.27 * h)
    for side in (-1.0, 1.0):
        shoulder = (cx + side * (0.125 * h * build + 0.015 * h), shoulder_y + 0.025 * h)
        hand = (shoulder[0] + side * 0.01 * h + arm_swing * side * h, top + 0.53 * h)
        arm = _segment_mask(x, y, shoulder, hand, arm_radius)
        paint(arm & (y <= sleeve_end_y), upper)
        paint(arm & (y > sleeve_end_y), skin)

    # Bag hanging at the hip, with a strap from the opposite shoulder.
    has_bag, bag_side = attribute("has_bag"), attribute("bag_side")
    bag_inner = cx + bag_side * 0.1 * h * build
    bag_outer = bag_inner + bag_side * 0.09 * h
    bag_top, bag_bottom = top + 0.42 * h, top + 0.62 * h
    bag = has_bag & (y >= bag_top) & (y <= bag_bottom) & ((x - bag_inner) * (x - bag_outer) <= 0)
    strap = has_bag & _segment_mask(
        x,
        y,
        (cx - bag_side * 0.09 * h, shoulder_y),
        ((bag_inner + bag_outer) / 2, bag_top),
        0.008 * h,
    )
    paint(bag | strap, attribute("bag_rgb"))

    # Head, hair, optional hat.
    head_y = top + 0.075 * h
    head = ((x - cx) / (0.052 * h)) ** 2 + ((y - head_y) / (0.072 * h)) ** 2 <= 1
    paint(head, skin)
    paint(head & (y < head_y - 0.02 * h), attribute("hair_rgb"))
    hat = attribute("has_hat") & (
        ((np.abs(x - cx) <= 0.06 * h) & (y >= top - 0.025 * h) & (y <= top + 0.04 * h))
        | ((np.abs(x - cx) <= 0.085 * h) & (np.abs(y - top - 0.04 * h) <= 0.007 * h))
    )
    paint(hat, attribute("hat_rgb"))

    # Per-camera illumination (colour and top-to-bottom falloff) and per-image exposure.
    light = camera_params["light"][camera_of_image]
    falloff = camera_params["falloff"][camera_of_image]
    canvas *= light[:, None, None, :]
    canvas *= 1 + falloff[:, None, None, None] * (y[..., None] - 0.5)
    canvas *= views["exposure"][:, None, None, None]
    # Walking the other way mirrors the person (and the side the bag is on).
    facing_left = views["facing_left"]
    canvas[facing_left] = canvas[facing_left, :, ::-1]
    return np.clip(canvas, 0, 1, out=canvas)


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, 3, H, W]`` with reflect padding."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)


def _apply_camera_style(
    rng: np.random.Generator, images: np.ndarray, style: DomainStyle, output_size: tuple[int, int]
) -> np.ndarray:
    """Turn supersampled renders ``[N, h, w, 3]`` (0-1) into styled ``uint8 [N, H, W, 3]``."""
    height, width = output_size
    capture_size = (
        max(8, round(height * style.capture_scale)),
        max(4, round(width * style.capture_scale)),
    )
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    batch = F.interpolate(batch, size=capture_size, mode="bilinear", antialias=True)
    batch = batch * torch.tensor(style.colour_gain, dtype=torch.float32).view(1, 3, 1, 1)
    batch = (0.5 + (batch - 0.5) * style.contrast).clamp(0, 1) ** style.gamma
    if style.blur_sigma > 0:
        batch = _gaussian_blur(batch, style.blur_sigma)
    noise = rng.normal(0.0, style.noise_std / 255.0, tuple(batch.shape)).astype(np.float32)
    batch = batch + torch.from_numpy(noise)
    if capture_size != (height, width):
        batch = F.interpolate(batch, size=(height, width), mode="bicubic", align_corners=False)
    pixels = (batch.clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class _ImageRecord:
    split: str
    pid: int
    camera: int
    frame: int

    @property
    def file_name(self) -> str:
        # Market writes junk as "-1" and others zero-padded to four digits.
        pid_text = "-1" if self.pid < 0 else f"{self.pid:04d}"
        return f"{pid_text}_c{self.camera + 1}s1_{self.frame:06d}_01.jpg"


def _plan_domain(
    rng: np.random.Generator,
    ids_per_domain: int,
    num_train_ids: int,
    cameras: int,
    images_per_id_per_camera: int,
    distractors: int,
    junk: int,
) -> tuple[list[_ImageRecord], np.ndarray, np.ndarray]:
    """Decide every file of a domain.

    Returns the records, and for each record the person index into the sampled people
    (distractors get their own people after the identities) and the camera.
    """
    records: list[_ImageRecord] = []
    person_of_image: list[int] = []
    frame = 0
    for person in range(ids_per_domain):
        pid = person + 1
        is_train = person < num_train_ids
        for camera in range(cameras):
            for instance in range(images_per_id_per_camera):
                if is_train:
                    split = "bounding_box_train"
                elif instance == 0 and (images_per_id_per_camera > 1 or camera == 0):
                    split = "query"
                else:
                    split = "bounding_box_test"
                records.append(_ImageRecord(split, pid, camera, frame))
                person_of_image.append(person)
                frame += 1
    for distractor in range(distractors):
        camera = int(rng.integers(0, cameras))
        records.append(_ImageRecord("bounding_box_test", 0, camera, frame))
        person_of_image.append(ids_per_domain + distractor)
        frame += 1
    # Junk crops are renders of random distractor people; the loader must drop them by pid.
    for _ in range(junk):
        camera = int(rng.integers(0, cameras))
        records.append(_ImageRecord("bounding_box_test", -1, camera, frame))
        person_of_image.append(ids_per_domain + int(rng.integers(0, max(distractors, 1))))
        frame += 1
    cameras_of_image = np.array([record.camera for record in records], dtype=np.int64)
    return records, np.array(person_of_image, dtype=np.int64), cameras_of_image


def _write_domain(
    domain_root: Path,
    name: str,
    style: DomainStyle,
    rng: np.random.Generator,
    manifest: dict,
    ids_per_domain: int,
    num_train_ids: int,
    cameras: int,
    images_per_id_per_camera: int,
    distractors: int,
    junk: int,
    size: tuple[int, int],
    advance: Callable[[int], None],
) -> None:
    """Render and save every image of one domain; ``advance(n)`` after each ``n`` saved."""
    people = _sample_people(rng, ids_per_domain + max(distractors, 1), style)
    records, person_of_image, camera_of_image = _plan_domain(
        rng, ids_per_domain, num_train_ids, cameras, images_per_id_per_camera, distractors, junk
    )
    camera_params = _sample_cameras(rng, cameras, style)
    views = _sample_views(rng, len(records))
    render_size = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
    for folder in SPLIT_FOLDERS:
        (domain_root / folder).mkdir(parents=True, exist_ok=True)
    # Chunks bound the memory of the supersampled float canvases at larger sizes.
    for start in range(0, len(records), RENDER_CHUNK):
        chunk = slice(start, start + RENDER_CHUNK)
        renders = _render_people(
            rng,
            people,
            {key: values[chunk] for key, values in views.items()},
            camera_params,
            person_of_image[chunk],
            camera_of_image[chunk],
            style,
            render_size,
        )
        pixels = _apply_camera_style(rng, renders, style, size)
        for record, image in zip(records[chunk], pixels, strict=True):
            Image.fromarray(image).save(
                domain_root / record.split / record.file_name, quality=style.jpeg_quality
            )
        advance(len(pixels))
    counts = {folder: sum(r.split == folder for r in records) for folder in SPLIT_FOLDERS}
    full_manifest = {**manifest, "domain": name, "style": asdict(style), "counts": counts}
    (domain_root / MANIFEST_NAME).write_text(json.dumps(full_manifest, indent=2))


def generate_synthetic_reid(
    root: str | Path,
    domains: Sequence[str] = ("synA", "synB", "synC", "synD"),
    ids_per_domain: int = 40,
    cameras: int = 4,
    images_per_id_per_camera: int = 3,
    size: tuple[int, int] = (64, 32),
    seed: int = 0,
    train_fraction: float = 0.5,
    distractors_per_domain: int = 8,
    junk_per_domain: int = 4,
    styles: dict[str, DomainStyle] | None = None,
    overwrite: bool = False,
    cache_by_settings: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Write synthetic ReID domains in the Market-1501 layout.

    A domain folder that already holds a manifest with identical parameters is reused as is,
    so calling this before every run is cheap.

    Args:
        root: output folder; domain ``d`` goes to ``root / d``.
        domains: domain names. Names in :data:`PRESET_STYLES` get their preset style, others a
            random one drawn from ``seed`` and the domain position.
        ids_per_domain: identities per domain (training plus test).
        cameras: cameras per domain (2-9; the Market name pattern has a single camera digit).
            Every identity appears in every camera.
        images_per_id_per_camera: crops of one identity per camera.
        size: output ``(height, width)`` of every crop.
        seed: base seed; every domain uses ``(seed, domain position)``.
        train_fraction: share of identities in the training split; the rest are test ids.
        distractors_per_domain: extra gallery crops of unrelated people, written as pid 0000.
        junk_per_domain: extra gallery crops written as pid -1 (readers drop them).
        styles: per-domain style overrides.
        overwrite: regenerate domains whose folder exists with other parameters.
        cache_by_settings: write into ``root/reid-<hash of the settings>``
            (:func:`synthetic_reid_folder`) instead of ``root``: each setting keeps its own
            folder, so changing one never regenerates or overwrites another's domains (what the
            DataModule uses). ``root`` must then be absent, empty or the generator's.
        progress: draw a progress bar over the images written (none when every domain is
            reused).

    Returns:
        Mapping domain name -> domain folder.
    """
    if not 2 <= cameras <= 9:
        raise ValueError(f"cameras must be between 2 and 9 (one digit in c<camera>), got {cameras}")
    if images_per_id_per_camera < 1:
        raise ValueError(f"images_per_id_per_camera must be >= 1, got {images_per_id_per_camera}")
    num_train_ids = int(round(ids_per_domain * train_fraction))
    if num_train_ids < 1 or ids_per_domain - num_train_ids < 1:
        raise ValueError(
            f"ids_per_domain={ids_per_domain} with train_fraction={train_fraction} leaves "
            f"{num_train_ids} training and {ids_per_domain - num_train_ids} test identities; "
            "both need at least one."
        )
    if ids_per_domain > 9999:
        raise ValueError(f"ids_per_domain must fit four digits, got {ids_per_domain}")
    if size[0] < 16 or size[1] < 8:
        raise ValueError(f"size must be at least (16, 8), got {size}")
    if len(set(domains)) != len(domains) or not domains:
        raise ValueError(f"domains must be non-empty and unique, got {list(domains)}")
    root = Path(root).expanduser()
    styles = dict(styles or {})
    if cache_by_settings:
        cache_root = root
        _check_cache_root(cache_root)
        settings = _full_settings(
            domains=domains,
            ids_per_domain=ids_per_domain,
            cameras=cameras,
            images_per_id_per_camera=images_per_id_per_camera,
            size=size,
            seed=seed,
            train_fraction=train_fraction,
            distractors_per_domain=distractors_per_domain,
            junk_per_domain=junk_per_domain,
            styles=styles,
        )
        root = _settings_folder(cache_root, settings)
        cache_root.mkdir(parents=True, exist_ok=True)
        manifest_path = cache_root / CACHE_MANIFEST
        cache = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        cache.setdefault("generator", "metareid.data.reid.synthetic")
        cache.setdefault("folders", {})[root.name] = settings
        manifest_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
        # The folder belongs to these settings alone: a half-written domain is simply redone.
        overwrite = True
    manifest = {
        "generator": "metareid.data.reid.synthetic",
        "version": 1,
        "ids_per_domain": ids_per_domain,
        "train_ids": num_train_ids,
        "cameras": cameras,
        "images_per_id_per_camera": images_per_id_per_camera,
        "size": [int(size[0]), int(size[1])],
        "seed": seed,
        "distractors_per_domain": distractors_per_domain,
        "junk_per_domain": junk_per_domain,
    }
    domain_roots: dict[str, Path] = {}
    pending: list[tuple[int, str, DomainStyle]] = []
    for position, name in enumerate(domains):
        domain_root = root / name
        domain_roots[name] = domain_root
        style = styles.get(name) or PRESET_STYLES.get(name)
        if style is None:
            style = random_domain_style(np.random.default_rng([seed, position, 1]))
        expected = {**manifest, "domain": name, "style": asdict(style)}
        manifest_path = domain_root / MANIFEST_NAME
        if manifest_path.is_file():
            existing = json.loads(manifest_path.read_text())
            existing.pop("counts", None)
            if json.loads(json.dumps(expected)) == existing:
                continue
        if domain_root.exists() and any(domain_root.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{domain_root} exists and was not written with these parameters. Pass "
                    "overwrite=True (CLI: --overwrite) to regenerate it, or choose another root."
                )
            for folder in SPLIT_FOLDERS:
                shutil.rmtree(domain_root / folder, ignore_errors=True)
            manifest_path.unlink(missing_ok=True)
        pending.append((position, name, style))
    if not pending:
        return domain_roots
    images_per_domain = (
        ids_per_domain * cameras * images_per_id_per_camera
        + distractors_per_domain
        + junk_per_domain
    )
    with progress_bar(progress) as bar:
        task = bar.add_task(
            f"Rendering synthetic ReID {'/'.join(name for _, name, _ in pending)}",
            total=images_per_domain * len(pending),
        )
        for position, name, style in pending:
            _write_domain(
                domain_roots[name],
                name,
                style,
                np.random.default_rng([seed, position]),
                manifest,
                ids_per_domain,
                num_train_ids,
                cameras,
                images_per_id_per_camera,
                distractors_per_domain,
                junk_per_domain,
                (int(size[0]), int(size[1])),
                lambda count: bar.advance(task, count),
            )
    return domain_roots


_NOT_SETTINGS = ("root", "overwrite", "cache_by_settings", "progress")


def _full_settings(**settings: Any) -> dict[str, Any]:
    """Generator settings with defaults filled in, as plain JSON values."""
    parameters = inspect.signature(generate_synthetic_reid).parameters
    unknown = sorted(set(settings) - set(parameters) - set(_NOT_SETTINGS))
    if unknown:
        raise ValueError(f"data.synthetic: unknown generator setting(s) {unknown}")
    full = {
        name: settings.get(name, parameter.default)
        for name, parameter in parameters.items()
        if name not in _NOT_SETTINGS
    }
    full["domains"] = list(full["domains"])
    full["size"] = [int(v) for v in full["size"]]
    full["styles"] = {
        name: asdict(style) for name, style in sorted(dict(full["styles"] or {}).items())
    }
    return json.loads(json.dumps(full, sort_keys=True))


def _settings_folder(root: Path, full: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"reid-{digest}"


def synthetic_reid_folder(root: str | Path, **settings: Any) -> Path:
    """Where ``generate_synthetic_reid(root, cache_by_settings=True, **settings)`` writes:
    ``root/reid-<hash of the full settings>`` (defaults filled in)."""
    return _settings_folder(Path(root).expanduser(), _full_settings(**settings))


def cached_domain_entries(
    synthetic: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``data.sources``/``data.targets`` entries redirected into the settings folder that
    ``cache_by_settings=True`` generates: a ``root`` equal to the synthetic root, or to one of
    its domain folders (``<root>/<domain>``), moves into ``<root>/reid-<hash>``."""
    root = Path(synthetic["root"]).expanduser()
    settings = {key: value for key, value in synthetic.items() if key not in _NOT_SETTINGS}
    folder = synthetic_reid_folder(root, **settings)
    redirected = []
    for entry in entries:
        entry = dict(entry)
        where = Path(entry["root"]).expanduser() if "root" in entry else None
        if where == root:
            entry["root"] = str(folder)
        elif where is not None and where.parent == root:
            entry["root"] = str(folder / where.name)
        redirected.append(entry)
    return redirected


def _check_cache_root(root: Path) -> None:
    """Refuse a cache root holding anything but the generator's output (a mistyped root)."""
    if not root.exists():
        return
    visible = [c for c in root.iterdir() if not c.name.startswith(".")]
    if visible and not (root / CACHE_MANIFEST).is_file():
        raise FileExistsError(
            f"{root} is not empty and holds no {CACHE_MANIFEST} of the synthetic ReID generator "
            f"(found e.g. {sorted(c.name for c in visible)[:3]}); nothing was written. Point the "
            "synthetic root at an empty or new folder."
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m metareid.data.reid.synthetic",
        description="Write synthetic multi-domain ReID data in the Market-1501 layout.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--domains", nargs="+", default=["synA", "synB", "synC", "synD"])
    parser.add_argument("--ids-per-domain", type=int, default=40)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--images-per-id-per-camera", type=int, default=3)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--overwrite", action="store_true", help="regenerate existing domains")
    args = parser.parse_args(argv)
    roots = generate_synthetic_reid(
        args.out,
        domains=args.domains,
        ids_per_domain=args.ids_per_domain,
        cameras=args.cameras,
        images_per_id_per_camera=args.images_per_id_per_camera,
        size=(args.height, args.width),
        seed=args.seed,
        train_fraction=args.train_fraction,
        overwrite=args.overwrite,
    )
    for name, domain_root in roots.items():
        counts = json.loads((domain_root / MANIFEST_NAME).read_text())["counts"]
        summary = ", ".join(f"{folder} {count}" for folder, count in counts.items())
        print(f"{name}: {domain_root} ({summary})")
    return roots


if __name__ == "__main__":
    main()
