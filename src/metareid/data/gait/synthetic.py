"""Embedded synthetic CASIA-B: walking silhouettes of parametric 3-D bodies.

Every subject is a body of capsules (sphere-swept segments: head, neck, three torso columns, upper
and lower arms, thighs, shins, feet) with its own proportions, limb widths and gait (stride, knee
flexion, cadence, arm swing and its left/right asymmetry, vertical bob, lateral sway, trunk lean).
Walking conditions follow CASIA-B: ``nm-01…06`` normal, ``bg-01/02`` carrying the subject's bag
(backpack, shoulder bag or hand bag, two capsules), ``cl-01/02`` wearing a coat (thicker torso
and limbs plus a skirt of capsules over the thighs). A view rotates the body about the vertical
axis (0° = walking towards the camera, 90° = side view, 180° = walking away) before an
orthographic projection.

Frames are rasterised row by row: a horizontal line meets a 2-D capsule (the projection of a 3-D
capsule) in one interval, found in closed form, and the union of the intervals of a row is filled
with a difference array. Like the real pretreatment, each frame is cropped to the silhouette's
rows, scaled to height 64 with its aspect ratio kept, and centred on the column-mass median.
Output: ``root/<id:03d>/<type>/<view>/<view>.pkl`` (pickled ``uint8 [T, 64, 64]``) and
``root/partition.json``. Per-sequence noise (proportions, gait, phase, length, view angle) is
small next to the spread between subjects, so identity is recoverable across views and
conditions.

CLI: ``python -m metareid.data.gait.synthetic --out DIR [--num-subjects 40 ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import pickle
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from metareid.data.gait.casiab import SIL_SIZE, TYPES, VIEWS
from metareid.data.gait.packed import has_packed_store, write_packed_store
from metareid.utils.progress import track

MARKER_FILE = ".synthetic_casiab"
#: Written at the top of a cache root by :func:`ensure_synthetic_casiab`: the settings of each
#: dataset below it (one sub-folder per settings hash).
CACHE_MANIFEST = "synthetic_casiab_cache.json"
PARTITION_FILE = "partition.json"
CANVAS_WIDTH = 96  # columns rendered around the torso before centring on the mass median
# Frames rendered per vectorised pass. Small enough that the temporary arrays (~15 MB) stay
# under glibc's mmap threshold and are recycled instead of being page-faulted afresh each pass,
# which otherwise costs as much system time as the rendering itself.
FRAMES_PER_CHUNK = 128

# Capsule order; a radius of 0 disables one (bag/coat capsules outside bg/cl sequences).
SEGMENTS = (
    "head",
    "neck",
    "torso_left",
    "torso_centre",
    "torso_right",
    "upper_arm_left",
    "forearm_left",
    "upper_arm_right",
    "forearm_right",
    "thigh_left",
    "shin_left",
    "foot_left",
    "thigh_right",
    "shin_right",
    "foot_right",
    "bag_main",
    "bag_second",
    "coat_left",
    "coat_right",
    "coat_centre",
)
BAG_KINDS = ("backpack", "shoulder_bag", "hand_bag")
# Typical bag size in metres (height, width, depth); each subject's bag is scaled by 0.8-1.25.
BAG_SIZES_M = {
    "backpack": (0.42, 0.30, 0.17),
    "shoulder_bag": (0.26, 0.32, 0.10),
    "hand_bag": (0.24, 0.30, 0.10),
}

# Identity parameters: uniform ranges. Lengths are fractions of the body height, angles degrees.
IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "height_m": (1.55, 1.90),
    "leg": (0.45, 0.52),  # hip joint above the sole
    "thigh_share": (0.47, 0.56),  # of the leg; the rest is shin
    "torso": (0.27, 0.32),  # pelvis to shoulder line
    "neck": (0.03, 0.055),
    "head_radius": (0.052, 0.068),
    "shoulder_width": (0.20, 0.27),
    "hip_width": (0.14, 0.20),
    "torso_radius": (0.055, 0.08),
    "thigh_radius": (0.042, 0.068),
    "shin_radius": (0.028, 0.045),
    "upper_arm": (0.16, 0.20),
    "forearm": (0.15, 0.19),
    "upper_arm_radius": (0.024, 0.038),
    "forearm_radius": (0.018, 0.030),
    "foot": (0.11, 0.15),
    "hip_swing": (14.0, 30.0),
    "knee_swing": (35.0, 68.0),
    "knee_stance": (2.0, 16.0),
    "arm_swing": (6.0, 38.0),
    "arm_asymmetry": (0.7, 1.3),  # right/left arm swing ratio
    "elbow": (5.0, 40.0),
    "arm_abduction": (2.0, 14.0),
    "cycle_frames": (20.0, 32.0),  # frames per gait cycle (two steps)
    "bob": (0.003, 0.02),
    "sway": (0.003, 0.025),
    "lean": (-2.0, 10.0),
    "head_forward": (-0.01, 0.035),
}
# Per-sequence multiplicative noise (standard deviation) of the identity parameters.
SEQUENCE_NOISE = {"shape": 0.015, "gait": 0.05, "cadence": 0.03, "view_deg": 1.5}
_GAIT_KEYS = {"hip_swing", "knee_swing", "knee_stance", "arm_swing", "elbow", "bob", "sway"}


# --------------------------------------------------------------------------- parameters
def _draw_subject(seed: int, subject: int) -> dict:
    """Identity, bag styles (one per bg type) and coats (one per cl type) of one subject."""
    rng = np.random.default_rng([seed, subject])
    identity = {key: rng.uniform(lo, hi) for key, (lo, hi) in IDENTITY_RANGES.items()}
    bags = {}
    for type_name in ("bg-01", "bg-02"):
        kind = int(rng.integers(len(BAG_KINDS)))
        bags[type_name] = {
            "kind": kind,
            "side": float(rng.choice([-1.0, 1.0])),
            "size": rng.uniform(0.8, 1.25, size=3),  # height, width, depth scales
        }
    coats = {
        type_name: {
            "torso_scale": rng.uniform(1.15, 1.4),
            "limb_scale": rng.uniform(1.15, 1.35),
            "hem": rng.uniform(0.35, 0.8),  # coat length down the thigh
        }
        for type_name in ("cl-01", "cl-02")
    }
    return {"identity": identity, "bags": bags, "coats": coats}


def _sequence_params(
    subject_params: dict,
    seed: int,
    subject: int,
    type_name: str,
    view: str,
    frames: tuple[int, int],
) -> dict[str, float]:
    """Flat parameter record of one sequence: identity + small noise + condition."""
    rng = np.random.default_rng([seed, subject, TYPES.index(type_name), VIEWS.index(view), 1])
    record = {}
    for key, value in subject_params["identity"].items():
        if key == "cycle_frames":
            noise = SEQUENCE_NOISE["cadence"]
        elif key in _GAIT_KEYS:
            noise = SEQUENCE_NOISE["gait"]
        else:
            noise = SEQUENCE_NOISE["shape"]
        record[key] = value * (1.0 + noise * rng.standard_normal())
    record["phase"] = rng.uniform(0.0, 2.0 * np.pi)
    record["view_rad"] = np.deg2rad(
        float(view) + SEQUENCE_NOISE["view_deg"] * rng.standard_normal()
    )
    record["num_frames"] = int(rng.integers(frames[0], frames[1] + 1))
    record["bag_kind"] = -1.0
    record["bag_side"], record["bag_height"], record["bag_width"], record["bag_depth"] = 0, 0, 0, 0
    record["coat_torso"], record["coat_limb"], record["coat_hem"] = 1.0, 1.0, 0.0
    if type_name in subject_params["bags"]:
        bag = subject_params["bags"][type_name]
        base = BAG_SIZES_M[BAG_KINDS[bag["kind"]]]
        height_m = record["height_m"]
        record["bag_kind"] = float(bag["kind"])
        record["bag_side"] = bag["side"]
        record["bag_height"], record["bag_width"], record["bag_depth"] = (
            b * s / height_m for b, s in zip(base, bag["size"], strict=True)
        )
    if type_name in subject_params["coats"]:
        coat = subject_params["coats"][type_name]
        record["coat_torso"] = coat["torso_scale"]
        record["coat_limb"] = coat["limb_scale"]
        record["coat_hem"] = coat["hem"]
    return record


# --------------------------------------------------------------------------- kinematics
def _sagittal(angle: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``[F, 3]`` vector of ``length`` hanging down, swung forward by ``angle`` (radians)."""
    zeros = np.zeros_like(angle)
    return np.stack([zeros, length * np.sin(angle), -length * np.cos(angle)], axis=-1)


def _arm(shoulder, flexion, elbow, abduction, side, upper, lower):
    """Elbow and wrist ``[F, 3]`` of an arm swung by ``flexion`` and bent by ``elbow``."""

    def direction(angle):
        return np.stack(
            [
                side * np.sin(abduction),
                np.sin(angle) * np.cos(abduction),
                -np.cos(angle) * np.cos(abduction),
            ],
            axis=-1,
        )

    elbow_point = shoulder + upper[:, None] * direction(flexion)
    wrist = elbow_point + lower[:, None] * direction(flexion + elbow)
    return elbow_point, wrist


def _pose_capsules(p: dict[str, np.ndarray], t: np.ndarray):
    """Capsules of every frame in body coordinates (x right, y forward, z up; height 1).

    Args:
        p: per-frame parameter arrays ``[F]``.
        t: frame number within its sequence ``[F]``.

    Returns:
        ``starts [F, S, 3]``, ``ends [F, S, 3]``, ``radii [F, S]`` (S = len(SEGMENTS)).
    """
    deg = np.pi / 180.0
    phase = 2.0 * np.pi * t / p["cycle_frames"] + p["phase"]
    num = len(t)
    ex, ez = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    coat_torso, coat_limb = p["coat_torso"], p["coat_limb"]

    pelvis = np.stack(
        [p["sway"] * np.sin(phase), np.zeros(num), p["leg"] + p["bob"] * np.cos(2.0 * phase)],
        axis=-1,
    )
    lean = p["lean"] * deg
    shoulder_centre = pelvis + p["torso"][:, None] * np.stack(
        [np.zeros(num), np.sin(lean), np.cos(lean)], axis=-1
    )
    head_radius = p["head_radius"]
    head = shoulder_centre + np.stack(
        [np.zeros(num), p["head_forward"], p["neck"] + head_radius], axis=-1
    )

    legs = {}
    for name, offset, side in (("left", 0.0, -1.0), ("right", np.pi, 1.0)):
        leg_phase = phase + offset
        hip_angle = p["hip_swing"] * deg * np.sin(leg_phase)
        # The knee bends mostly in early swing, while the hip swings forward through vertical.
        knee = deg * (
            p["knee_stance"] + p["knee_swing"] * np.maximum(np.cos(leg_phase + 0.3), 0.0) ** 2
        )
        hip = pelvis + side * 0.5 * p["hip_width"][:, None] * ex
        thigh = p["leg"] * p["thigh_share"]
        shin = p["leg"] - thigh - 0.04
        knee_point = hip + _sagittal(hip_angle, thigh)
        ankle = knee_point + _sagittal(hip_angle - knee, shin)
        foot_pitch = 0.5 * (hip_angle - knee)
        toe = ankle + p["foot"][:, None] * np.stack(
            [np.zeros(num), np.cos(foot_pitch), np.sin(foot_pitch)], axis=-1
        )
        legs[name] = (hip, knee_point, ankle, toe)

    arms = {}
    for name, sign, side, gain in (
        ("left", -1.0, -1.0, 1.0),
        ("right", 1.0, 1.0, p["arm_asymmetry"]),
    ):
        # Each arm swings against the leg on its own side.
        flexion = sign * gain * p["arm_swing"] * deg * np.sin(phase)
        elbow = deg * p["elbow"] + 0.4 * np.abs(flexion)
        shoulder = (
            shoulder_centre
            + side * (0.5 * p["shoulder_width"] - p["upper_arm_radius"])[:, None] * ex
            - p["upper_arm_radius"][:, None] * ez
        )
        elbow_point, wrist = _arm(
            shoulder,
            flexion,
            elbow,
            p["arm_abduction"] * deg,
            side,
            p["upper_arm"],
            p["forearm"],
        )
        arms[name] = (shoulder, elbow_point, wrist)

    torso_radius = p["torso_radius"] * coat_torso
    side_top = 0.5 * p["shoulder_width"] - torso_radius
    side_bottom = np.maximum(0.5 * p["hip_width"] + p["thigh_radius"] - torso_radius, 0.0)
    chest_drop = (0.3 * torso_radius)[:, None] * ez

    starts = np.zeros((num, len(SEGMENTS), 3))
    ends = np.zeros((num, len(SEGMENTS), 3))
    radii = np.zeros((num, len(SEGMENTS)))

    def put(name, start, end, radius):
        index = SEGMENTS.index(name)
        starts[:, index], ends[:, index], radii[:, index] = start, end, radius

    head_axis = (0.25 * head_radius)[:, None] * ez
    put("head", head - head_axis, head + head_axis, 0.92 * head_radius)
    put("neck", shoulder_centre, head - head_radius[:, None] * ez, 0.45 * head_radius)
    for name, side in (("torso_left", -1.0), ("torso_right", 1.0)):
        put(
            name,
            shoulder_centre + side * side_top[:, None] * ex - chest_drop,
            pelvis + side * side_bottom[:, None] * ex,
            torso_radius,
        )
    put("torso_centre", shoulder_centre - chest_drop, pelvis, torso_radius)
    for name in ("left", "right"):
        shoulder, elbow_point, wrist = arms[name]
        put(f"upper_arm_{name}", shoulder, elbow_point, p["upper_arm_radius"] * coat_limb)
        put(f"forearm_{name}", elbow_point, wrist, p["forearm_radius"] * coat_limb)
        hip, knee_point, ankle, toe = legs[name]
        put(f"thigh_{name}", hip, knee_point, p["thigh_radius"] * coat_limb)
        put(f"shin_{name}", knee_point, ankle, p["shin_radius"])
        put(f"foot_{name}", ankle, toe, 0.6 * p["shin_radius"])

    # Coat: a skirt over both thighs down to ``hem`` of their length, bridged in the middle.
    has_coat = p["coat_hem"] > 0
    hem = p["coat_hem"][:, None]
    for name in ("left", "right"):
        hip, knee_point, _, _ = legs[name]
        put(
            f"coat_{name}",
            hip,
            hip + hem * (knee_point - hip),
            np.where(has_coat, 1.25 * p["thigh_radius"] * coat_limb, 0.0),
        )
    thigh_length = (p["leg"] * p["thigh_share"])[:, None]
    put(
        "coat_centre",
        pelvis,
        pelvis - hem * thigh_length * ez,
        np.where(has_coat, 0.5 * p["hip_width"] + 0.6 * p["thigh_radius"], 0.0),
    )

    _put_bag(p, put, phase, pelvis, shoulder_centre, arms, torso_radius)
    return starts, ends, radii


def _put_bag(p, put, phase, pelvis, shoulder_centre, arms, torso_radius):
    """Two capsules forming the bag of ``bg`` sequences (radius 0 elsewhere)."""
    kind, side = p["bag_kind"], p["bag_side"][:, None]
    height, width, depth = p["bag_height"], p["bag_width"], p["bag_depth"]
    num = len(kind)
    zeros = np.zeros(num)

    def vec(x, y, z):
        return np.stack([x + zeros, y + zeros, z + zeros], axis=-1)

    # Backpack: two upright lobes side by side behind the upper back.
    back = shoulder_centre + vec(0, -(torso_radius + 0.5 * depth), -0.5 * height - 0.03)
    pack_half = vec(0, 0, 0.5 * height - 0.5 * depth)
    pack_offset = vec(0.25 * width, 0, 0)
    # Shoulder bag: a box-like pair of horizontal lobes on one hip, swinging a little.
    hip_side = pelvis + side * vec(0.5 * p["hip_width"] + p["thigh_radius"] + 0.5 * depth, 0, 0.03)
    hip_side = hip_side + vec(0, 0.02 * np.sin(phase), 0)
    bag_half = vec(0, 0.5 * width - 0.5 * depth, 0)
    bag_lift = vec(0, 0, 0.25 * (height - depth))
    # Hand bag: hangs from the wrist on its side and follows the arm.
    wrist = np.where(side > 0, arms["right"][2], arms["left"][2])
    hand_top = wrist - vec(0, 0, 0.5 * depth + 0.02)
    hand_drop = vec(0, 0, -(height - depth))
    hand_width = vec(0, 0.25 * (width - depth), 0)

    choices = [
        (
            back - pack_half - pack_offset,
            back + pack_half - pack_offset,
            back - pack_half + pack_offset,
            back + pack_half + pack_offset,
        ),
        (
            hip_side - bag_half + bag_lift,
            hip_side + bag_half + bag_lift,
            hip_side - bag_half - bag_lift,
            hip_side + bag_half - bag_lift,
        ),
        (
            hand_top - hand_width,
            hand_top + hand_drop - hand_width,
            hand_top + hand_width,
            hand_top + hand_drop + hand_width,
        ),
    ]
    main_start, main_end, second_start, second_end = (np.zeros((num, 3)) for _ in range(4))
    for kind_index, capsules in enumerate(choices):
        chosen = (kind == kind_index)[:, None]
        main_start = np.where(chosen, capsules[0], main_start)
        main_end = np.where(chosen, capsules[1], main_end)
        second_start = np.where(chosen, capsules[2], second_start)
        second_end = np.where(chosen, capsules[3], second_end)
    radius = np.where(kind >= 0, 0.5 * depth, 0.0)
    put("bag_main", main_start, main_end, radius)
    put("bag_second", second_start, second_end, radius)


# --------------------------------------------------------------------------- rendering
def capsule_row_intervals(au, az, bu, bz, radius, rows):
    """Where each horizontal line ``z = rows`` crosses each 2-D capsule.

    A capsule is convex, so each crossing is one interval: the hull of the crossings of its two
    end discs and of its rectangular body (two linear constraints on ``u``). Misses are NaN,
    which ``fmin``/``fmax`` skip, so no branch is evaluated per row.

    Args:
        au, az, bu, bz, radius: capsule ends and radius, ``[F, 1, S]`` (pixels).
        rows: line heights ``[1, R, 1]``.

    Returns:
        ``left, right`` ``[F, R, S]``, NaN where a line misses a capsule.
    """
    du, dz = bu - au, bz - az
    length = np.sqrt(du**2 + dz**2)
    safe = np.maximum(length, 1e-6)
    eu, ez = du / safe, dz / safe
    # Along the axis: 0 <= eu*u + ez*(z - az) - eu*au <= length; across it:
    # -radius <= -ez*u + eu*(z - az) + ez*au <= radius. Both are linear in (u, z), so each bound
    # on u is ``constant + gain * z``. A near-zero slope gives huge bounds of the right sign.
    band = []
    for slope, row_gain, offset, low, high in (
        (eu, ez, -az * ez - au * eu, 0.0, length),
        (-ez, eu, -az * eu + au * ez, -radius, radius),
    ):
        slope = np.where(np.abs(slope) < 1e-6, 1e-6, slope)
        gain = -row_gain / slope
        shifted = gain * rows
        first = shifted + (low - offset) / slope
        second = shifted + (high - offset) / slope
        band.append((np.minimum(first, second), np.maximum(first, second)))
    band_left = np.maximum(band[0][0], band[1][0])
    band_right = np.minimum(band[0][1], band[1][1])
    # A segment shorter than a thousandth of a pixel is just its end discs.
    hit = (band_left <= band_right) & (length > 1e-3)
    left = np.where(hit, band_left, np.nan)
    right = np.where(hit, band_right, np.nan)
    with np.errstate(invalid="ignore"):
        for cu, cz in ((au, az), (bu, bz)):
            half = np.sqrt(radius**2 - (rows - cz) ** 2)  # NaN where the disc is missed
            left = np.fmin(left, cu - half)
            right = np.fmax(right, cu + half)
    return left, right


def render_silhouettes(
    starts: np.ndarray, ends: np.ndarray, radii: np.ndarray, view_rad: np.ndarray
) -> np.ndarray:
    """Rasterise posed capsule bodies the way CASIA-B silhouettes are pretreated.

    Args:
        starts, ends: capsule end points ``[F, S, 3]`` (x right, y forward, z up).
        radii: ``[F, S]``; capsules with radius <= 0 are ignored.
        view_rad: camera azimuth per frame ``[F]`` (0 = front view, pi/2 = side view).

    Returns:
        ``uint8 [F, 64, 64]`` silhouettes (0/255), height-normalised and centred.
    """
    num = len(radii)
    cos, sin = np.cos(view_rad)[:, None], np.sin(view_rad)[:, None]
    u_start = starts[..., 0] * cos + starts[..., 1] * sin
    u_end = ends[..., 0] * cos + ends[..., 1] * sin
    enabled = radii > 0
    top = np.where(enabled, np.maximum(starts[..., 2], ends[..., 2]) + radii, -np.inf).max(1)
    bottom = np.where(enabled, np.minimum(starts[..., 2], ends[..., 2]) - radii, np.inf).min(1)
    scale = (SIL_SIZE / (top - bottom))[:, None]
    anchor = u_start[:, SEGMENTS.index("torso_centre")][:, None]
    # Capsules disabled in every frame (no bag, no coat in this chunk) cost nothing.
    active = enabled.any(0)
    enabled = enabled[:, active]
    half = SIL_SIZE // 2
    width = CANVAS_WIDTH + 2 * half  # zero margins so that the final crop never leaves it

    # Pixel coordinates: columns around the torso, rows downwards from the top of the body.
    def columns(u):
        return ((u[:, active] - anchor) * scale + width / 2).astype(np.float32)[:, None, :]

    def rows_of(z):
        # Disabled capsules are moved far above the image so that no row meets them.
        rows = np.where(enabled, (top[:, None] - z[:, active]) * scale, -1e6)
        return rows.astype(np.float32)[:, None, :]

    radius_px = np.where(enabled, radii[:, active] * scale, 0.0).astype(np.float32)[:, None, :]
    row_centres = (np.arange(SIL_SIZE, dtype=np.float32) + 0.5)[None, :, None]
    left, right = capsule_row_intervals(
        columns(u_start),
        rows_of(starts[..., 2]),
        columns(u_end),
        rows_of(ends[..., 2]),
        radius_px,
        row_centres,
    )
    # Pixel c is covered when its centre c + 0.5 lies in [left, right]; the union of a row's
    # intervals is filled by summing +1 at each first and -1 after each last pixel.
    lo_limit, hi_limit = half, width - half
    crossed = left <= right  # False for NaN (missed capsules)
    left, right = np.where(crossed, left, 0.0), np.where(crossed, right, -1.0)
    first = np.clip(np.ceil(left - 0.5), lo_limit, hi_limit).astype(np.int64)
    last = np.clip(np.floor(right - 0.5) + 1, lo_limit, hi_limit).astype(np.int64)
    valid = first < last
    row_base = (np.arange(num * SIL_SIZE) * (width + 1)).reshape(num, SIL_SIZE, 1)
    size = num * SIL_SIZE * (width + 1)
    difference = np.bincount((row_base + first)[valid], minlength=size) - np.bincount(
        (row_base + last)[valid], minlength=size
    )
    difference = difference.astype(np.int8).reshape(num, SIL_SIZE, width + 1)
    coverage = difference.cumsum(-1, dtype=np.int8)[..., :-1] > 0

    # Centre on the first column whose cumulative mass exceeds half the total, keep 64 columns.
    mass = coverage.sum(1).cumsum(-1)
    centre = np.argmax(mass > mass[:, -1:] / 2, axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(coverage, SIL_SIZE, axis=2)
    frames = windows[np.arange(num), :, centre - half]
    return frames.astype(np.uint8) * 255


# --------------------------------------------------------------------------- generation
def _normalise_views(views: Sequence[str | int]) -> tuple[str, ...]:
    normalised = []
    for view in views:
        name = f"{int(view):03d}" if str(view).isdigit() else str(view)
        if name not in VIEWS:
            raise ValueError(f"views: {view!r} is not a CASIA-B view; choose from {list(VIEWS)}")
        normalised.append(name)
    return tuple(normalised)


def _prepare_root(root: Path) -> None:
    """Create ``root`` or clear a previous generation there; never touch foreign data."""
    if root.exists():
        visible = [c for c in root.iterdir() if not c.name.startswith(".")]
        if visible and not (root / MARKER_FILE).is_file():
            raise FileExistsError(
                f"{root} is not empty and was not written by generate_synthetic_casiab (no "
                f"{MARKER_FILE} file); choose an empty or new directory"
            )
        for child in visible:
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    root.mkdir(parents=True, exist_ok=True)


def generate_synthetic_casiab(
    root: str | Path,
    num_subjects: int = 40,
    train_subjects: int = 24,
    views: Sequence[str | int] = VIEWS,
    types: Sequence[str] = TYPES,
    frames: Sequence[int] = (20, 40),
    seed: int = 0,
    packed: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic CASIA-B pkl tree and its partition into ``root``.

    Subjects ``001…num_subjects``; the first ``train_subjects`` form TRAIN_SET, the rest
    TEST_SET. A subject's body, bags and coats depend only on ``(seed, subject)`` and a sequence
    only on ``(seed, subject, type, view)``, so changing the sizes keeps existing sequences.

    Args:
        root: output directory (created; a previous generation there is replaced).
        num_subjects, train_subjects: identities in total and in the training split.
        views: CASIA-B views to render (``"000"…"180"`` or the angles as ints).
        types: CASIA-B conditions to render.
        frames: inclusive ``(min, max)`` number of frames per sequence.
        seed: generator seed.
        packed: also write the packed store ``root/packed`` (same frames, see
            :mod:`metareid.data.gait.packed`).
        progress: draw a progress bar over the sequences.

    Returns:
        Path of the partition JSON (``root/partition.json``).
    """
    root = Path(root)
    views = _normalise_views(views)
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise ValueError(f"types: {unknown} are not CASIA-B conditions; choose from {list(TYPES)}")
    if not 0 < train_subjects < num_subjects:
        raise ValueError(
            f"need 0 < train_subjects < num_subjects, got {train_subjects}, {num_subjects}"
        )
    low, high = (int(f) for f in frames)
    if not 1 <= low <= high:
        raise ValueError(f"frames must be (min, max) with 1 <= min <= max, got {frames}")
    _prepare_root(root)
    arguments = dict(
        num_subjects=num_subjects,
        train_subjects=train_subjects,
        views=list(views),
        types=list(types),
        frames=[low, high],
        seed=seed,
    )
    (root / MARKER_FILE).write_text(json.dumps(arguments, indent=1))

    jobs = []
    for subject in range(1, num_subjects + 1):
        subject_params = _draw_subject(seed, subject)
        for type_name in types:
            for view in views:
                params = _sequence_params(
                    subject_params, seed, subject, type_name, view, (low, high)
                )
                jobs.append((subject, type_name, view, params))

    def rendered():
        chunk: list = []
        chunk_frames = 0
        for job in jobs:
            chunk.append(job)
            chunk_frames += job[3]["num_frames"]
            if chunk_frames >= FRAMES_PER_CHUNK:
                yield from _render_and_write(root, chunk)
                chunk, chunk_frames = [], 0
        if chunk:
            yield from _render_and_write(root, chunk)

    sequences = track(
        rendered(), len(jobs), f"Rendering {len(jobs)} synthetic CASIA-B sequences", progress
    )
    if packed:
        write_packed_store(
            root, sequences, layout="casiab", source=f"synthetic CASIA-B {root}", progress=False
        )
    else:
        for _ in sequences:
            pass

    ids = [f"{s:03d}" for s in range(1, num_subjects + 1)]
    partition = root / PARTITION_FILE
    partition.write_text(
        json.dumps({"TRAIN_SET": ids[:train_subjects], "TEST_SET": ids[train_subjects:]})
    )
    return partition


def _render_and_write(root: Path, jobs: list) -> Iterator[tuple[str, str, str, np.ndarray]]:
    """Render a chunk of sequences in one vectorised pass, pickle each one and yield
    ``(id, type, view, uint8 [T, 64, 64])``."""
    lengths = np.array([params["num_frames"] for *_, params in jobs])
    sequence_of_frame = np.repeat(np.arange(len(jobs)), lengths)
    frame_in_sequence = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keys = jobs[0][3].keys()
    per_frame = {
        key: np.array([params[key] for *_, params in jobs], dtype=np.float64)[sequence_of_frame]
        for key in keys
    }
    starts, ends, radii = _pose_capsules(per_frame, frame_in_sequence.astype(np.float64))
    frames = render_silhouettes(starts, ends, radii, per_frame["view_rad"])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for (subject, type_name, view, _), begin, end in zip(
        jobs, offsets[:-1], offsets[1:], strict=True
    ):
        folder = root / f"{subject:03d}" / type_name / view
        folder.mkdir(parents=True, exist_ok=True)
        sequence = np.ascontiguousarray(frames[begin:end])
        with open(folder / f"{view}.pkl", "wb") as handle:
            pickle.dump(sequence, handle, protocol=4)
        yield f"{subject:03d}", type_name, view, sequence


#: The settings of :func:`generate_synthetic_casiab` with their defaults (what a cache key hashes).
GENERATOR_DEFAULTS: dict = {
    name: parameter.default
    for name, parameter in inspect.signature(generate_synthetic_casiab).parameters.items()
    if name not in ("root", "packed", "progress")
}


def synthetic_settings(**settings) -> dict:
    """The full generator arguments (defaults filled in, lists normalised) of ``settings``.

    Raises:
        ValueError: for an argument ``generate_synthetic_casiab`` does not take.
    """
    defaults = GENERATOR_DEFAULTS
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(
            f"data.synthetic: unknown generator setting(s) {unknown}; known: {sorted(defaults)}"
        )
    full = {**defaults, **settings}
    full["views"] = list(_normalise_views(full["views"]))
    full["types"] = [str(t) for t in full["types"]]
    full["frames"] = [int(f) for f in full["frames"]]
    for key in ("num_subjects", "train_subjects", "seed"):
        full[key] = int(full[key])
    return full


def synthetic_casiab_folder(root: str | Path, **settings) -> Path:
    """Where :func:`ensure_synthetic_casiab` keeps the dataset of ``settings`` under ``root``:
    ``root/<hash of the full settings>``, so two settings never share a folder."""
    full = synthetic_settings(**settings)
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"casiab-{digest}"


def _check_cache_root(root: Path) -> None:
    """Refuse a ``root`` that holds anything but the generator's own output (a mistyped
    ``data.root`` pointing at real data must never be written into)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise NotADirectoryError(
            f"data.root={str(root)!r} is a file; the synthetic CASIA-B needs a folder"
        )
    visible = [c for c in root.iterdir() if not c.name.startswith(".")]
    own = (root / CACHE_MANIFEST).is_file() or (root / MARKER_FILE).is_file()
    if visible and not own:
        raise FileExistsError(
            f"data.root={str(root)!r} is not empty and holds no {CACHE_MANIFEST} of the synthetic "
            f"CASIA-B generator (found e.g. {sorted(c.name for c in visible)[:3]}); nothing was "
            "written. Point data.root at an empty or new folder (or one the generator wrote), or "
            "drop data.synthetic to read the real dataset there."
        )


def ensure_synthetic_casiab(root: str | Path, packed: bool = True, **settings) -> Path:
    """The synthetic CASIA-B of ``settings`` under the cache root ``root``, generated if absent.

    Each settings get their own folder (:func:`synthetic_casiab_folder`), generated into a
    temporary folder and renamed into place, so changing a setting never regenerates or
    overwrites another's data and an interrupted generation is never taken as complete.
    ``root`` must be absent, empty or already the generator's (``CACHE_MANIFEST``).

    Args:
        root: cache root (``data.root`` of ``data=casiab_synthetic``).
        packed: also write (or add to an existing folder) the packed store.
        settings: arguments of :func:`generate_synthetic_casiab`.

    Returns:
        The dataset folder (a pkl tree with ``partition.json``, and ``packed/`` when asked).
    """
    root = Path(root)
    _check_cache_root(root)
    full = synthetic_settings(**settings)
    folder = synthetic_casiab_folder(root, **settings)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / CACHE_MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.setdefault("generator", "metareid.data.gait.synthetic")
    manifest.setdefault("datasets", {})
    manifest["datasets"][folder.name] = full
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    if (folder / PARTITION_FILE).is_file():
        if packed and not has_packed_store(folder):
            from metareid.data.gait.casiab import pack_gait_tree

            pack_gait_tree(folder, "casiab", folder / PARTITION_FILE)
        return folder
    partial = root / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    generate_synthetic_casiab(partial, packed=packed, **full)
    os.replace(partial, folder)
    return folder


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m metareid.data.gait.synthetic",
        description="Generate the embedded synthetic CASIA-B (pkl tree + partition.json).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-subjects", type=int, default=40)
    parser.add_argument("--train-subjects", type=int, default=24)
    parser.add_argument("--views", nargs="+", default=list(VIEWS), help="e.g. 000 090 180")
    parser.add_argument("--types", nargs="+", default=list(TYPES), help="e.g. nm-01 bg-01")
    parser.add_argument("--frames", nargs=2, type=int, default=(20, 40), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    partition = generate_synthetic_casiab(
        args.out,
        num_subjects=args.num_subjects,
        train_subjects=args.train_subjects,
        views=args.views,
        types=args.types,
        frames=args.frames,
        seed=args.seed,
    )
    count = len(args.views) * len(args.types) * args.num_subjects
    print(
        f"wrote {count} sequences to {args.out} in {time.perf_counter() - began:.1f} s; "
        f"partition: {partition}"
    )
    return partition


if __name__ == "__main__":
    main()
