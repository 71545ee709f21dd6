"""Start-up check that every ReID image decodes, so a bad file fails before training, not mid-run.

Each image gets a cheap header-level decode (:func:`check_image`): JPEGs are loaded in draft mode
(libjpeg's 1/8 DCT scaling, which still reads the whole entropy-coded stream, so a truncated file
fails), other formats are verified by Pillow (PNG checks every chunk's CRC). Files are checked by a
thread pool, and the outcome of each is cached by file size and modification time in
``<dataset root>/.metareid_image_check.json`` (see :func:`cache_locations`), so a second start
only stats the files.

:func:`drop_undecodable_images` applies the strict / counted-skip contract of the gait data:
``strict=True`` raises :class:`UndecodableImagesError` naming the files and the fix;
``strict=False`` removes them from the dataset's lists and returns them for the summary.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from metareid.data.reid.dataset import ReIDDataset

__all__ = [
    "CACHE_NAME",
    "UndecodableImage",
    "UndecodableImagesError",
    "cache_locations",
    "check_image",
    "drop_undecodable_images",
    "find_undecodable_images",
]

log = logging.getLogger(__name__)

CACHE_NAME = ".metareid_image_check.json"
# Stored in the cache file; bump it when check_image changes what it accepts, so that earlier
# verdicts are not reused.
CHECK_VERSION = 1
# Files named in an error message; the rest are counted.
NAMED_IN_MESSAGE = 5
# Below this many files to check, a thread pool costs more than it saves.
MIN_FILES_FOR_POOL = 64
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class UndecodableImage:
    """An image file that cannot be read, with the reason (the decoder's error)."""

    path: Path
    reason: str


class UndecodableImagesError(ValueError):
    """Images of a dataset split cannot be decoded; the message names them and the fix."""


@functools.cache
def _converts_to_rgb(mode: str) -> bool:
    try:
        Image.new(mode, (1, 1)).convert("RGB")
    except (ValueError, OSError):
        return False
    return True


def check_image(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as a ReID image, or ``None`` when it decodes.

    Any mode Pillow converts to RGB is accepted (grayscale, palette, RGBA, CMYK ...), at any size:
    the loader converts and resizes. Only JPEGs get a (draft, 1/8-scale) pixel decode; other
    formats get Pillow's ``verify``.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            if not _converts_to_rgb(image.mode):
                return f"pixel mode {image.mode!r} cannot be converted to RGB"
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))  # the smallest scale libjpeg offers
                image.load()
            else:
                image.verify()
    except _DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


def cache_locations(root: Path) -> list[Path]:
    """Where the verdicts for the images under ``root`` are cached, in order of preference.

    The dataset root first; for a read-only root (a shared copy), a file named after the root
    in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``metareid/``).
    """
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / CACHE_NAME, user_cache / "metareid" / "image_check" / f"{digest}.json"]


def _read_cache(root: Path) -> dict[str, list[Any]]:
    for location in cache_locations(root):
        if not location.is_file():
            continue
        try:
            content = json.loads(location.read_text())
        except (OSError, ValueError) as error:
            log.warning("Ignoring the unreadable image-check cache %s (%s).", location, error)
            continue
        if isinstance(content, dict) and content.get("version") == CHECK_VERSION:
            entries = content.get("entries")
            if isinstance(entries, dict):
                return entries
    return {}


def _write_cache(root: Path, entries: dict[str, list[Any]]) -> None:
    """Write the verdicts atomically (temporary file, then rename) to the first writable
    location: an interrupted write leaves the previous cache, never half of one."""
    text = json.dumps({"version": CHECK_VERSION, "entries": entries}, separators=(",", ":"))
    for location in cache_locations(root):
        try:
            location.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(
                prefix=f".{location.name}.", suffix=".tmp", dir=location.parent
            )
            try:
                with os.fdopen(handle, "w") as file:
                    file.write(text)
                os.replace(temporary, location)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as error:
            log.debug("Cannot write the image-check cache %s (%s).", location, error)
            continue
        return
    log.warning(
        "Cannot write the image-check cache for %s anywhere (%s); the images will be checked "
        "again at the next start.",
        root,
        ", ".join(str(location) for location in cache_locations(root)),
    )


def _cache_key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _check_with_cache(
    paths: Sequence[Path], root: Path, cached: dict[str, list[Any]]
) -> list[tuple[str, list[Any] | None, str | None]]:
    """``(key, new cache entry or None, reason or None)`` per path; a file whose size and mtime
    match its cached entry is not opened."""
    outcomes = []
    for path in paths:
        key = _cache_key(path, root)
        try:
            stat = os.stat(path)
        except OSError as error:  # missing file, dangling symlink: nothing to cache
            outcomes.append((key, None, f"cannot read the file ({type(error).__name__})"))
            continue
        entry = cached.get(key)
        if (
            isinstance(entry, list)
            and len(entry) == 3
            and entry[:2] == [stat.st_size, stat.st_mtime_ns]
        ):
            outcomes.append((key, None, entry[2]))
            continue
        reason = check_image(path)
        outcomes.append((key, [stat.st_size, stat.st_mtime_ns, reason], reason))
    return outcomes


def find_undecodable_images(
    paths: Sequence[str | Path], root: str | Path, workers: int | None = None
) -> list[UndecodableImage]:
    """Check every image (cached verdicts for unchanged files) and return the bad ones in order.

    Args:
        paths: image files.
        root: folder whose cache holds the verdicts (the dataset root; paths under it are
            cached relative to it).
        workers: checking threads (default: the CPU count, at most 16).
    """
    root = Path(root)
    paths = [Path(path) for path in paths]
    cached = _read_cache(root)
    workers = workers or min(16, os.cpu_count() or 1)
    if workers > 1 and len(paths) >= MIN_FILES_FOR_POOL:
        # Several chunks per thread, so that one slow chunk does not hold the others up.
        chunk = -(-len(paths) // (workers * 8))
        chunks = [paths[start : start + chunk] for start in range(0, len(paths), chunk)]
        with ThreadPoolExecutor(workers, thread_name_prefix="image-check") as pool:
            outcomes = [
                outcome
                for part in pool.map(lambda part: _check_with_cache(part, root, cached), chunks)
                for outcome in part
            ]
    else:
        outcomes = _check_with_cache(paths, root, cached)
    fresh = {key: entry for key, entry, _ in outcomes if entry is not None}
    if fresh:
        log.info("Checked %d new or changed images under %s.", len(fresh), root)
        _write_cache(root, {**cached, **fresh})
    return [
        UndecodableImage(path, reason)
        for path, (_, _, reason) in zip(paths, outcomes, strict=True)
        if reason is not None
    ]


def _dataset_root(dataset: ReIDDataset, paths: Sequence[Path]) -> Path:
    root = getattr(dataset, "root", None)
    if root is not None and Path(root).is_dir():
        return Path(root)
    common = Path(os.path.commonpath([str(path) for path in paths]))
    return common if common.is_dir() else common.parent


def drop_undecodable_images(
    dataset: ReIDDataset, splits: Sequence[str], *, strict: bool, role: str
) -> list[UndecodableImage]:
    """Check the images of ``dataset``'s ``splits``; raise or drop the undecodable ones.

    Args:
        dataset: its ``train`` / ``query`` / ``gallery`` lists are filtered in place when
            ``strict`` is ``False``.
        splits: names of the lists to check (``("train",)`` for a source).
        strict: raise :class:`UndecodableImagesError` (naming the first files, the count and
            the fix) instead of dropping.
        role: ``"source"`` or ``"target"``, for the message.

    Returns:
        The dropped images (empty when all decode).
    """
    paths = [item.path for split in splits for item in getattr(dataset, split)]
    if not paths:
        return []
    bad = find_undecodable_images(paths, _dataset_root(dataset, paths))
    if not bad:
        return []
    where = f"{role} {dataset.name} ({'/'.join(splits)})"
    if strict:
        named = "\n".join(f"  {image.path}: {image.reason}" for image in bad[:NAMED_IN_MESSAGE])
        more = len(bad) - NAMED_IN_MESSAGE
        raise UndecodableImagesError(
            f"{len(bad)} image(s) of {where} cannot be decoded:\n{named}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nReplace or remove them, or set data.strict=false to skip them (they are then "
            "counted in the start-up summary)."
        )
    dropped = {image.path for image in bad}
    for split in splits:
        kept = [item for item in getattr(dataset, split) if item.path not in dropped]
        setattr(dataset, split, kept)
    log.warning(
        "%s: skipped %d undecodable image(s) (data.strict=false), e.g. %s: %s",
        where,
        len(bad),
        bad[0].path,
        bad[0].reason,
    )
    return bad
