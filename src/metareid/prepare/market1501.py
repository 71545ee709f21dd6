"""Market-1501 and DukeMTMC-reID (one format), plus the image helpers every ReID command uses.

Both releases are already in the layout the loaders read, so preparing them means validating
every file (name pattern, camera range, decodable image) and placing the good ones into
``<out>/{bounding_box_train,query,bounding_box_test}`` by symlink (default), hard link or copy.
Market-1501's 500k distractor set (``images/``) is added with ``with_distractors=True``.

File names: Market ``0002_c1s1_000451_03.jpg`` (cameras 1–6), Duke ``0001_c2_f0046182.jpg``
(cameras 1–8); pid -1 marks junk boxes (kept on disk like the release, excluded from counts), pid 0
Market distractors.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from metareid.data.reid.dataset import IMAGE_SUFFIXES
from metareid.data.reid.protocols import release_counts
from metareid.prepare.report import PrepareReport, Problem, fatal, run_parallel

__all__ = [
    "LINK_MODES",
    "ImageRecord",
    "check_dukemtmc",
    "check_market1501",
    "count_records",
    "place_file",
    "prepare_dukemtmc",
    "prepare_market1501",
    "record_paths",
    "scan_image_folder",
    "scan_market_folder",
    "transfer_images",
    "verify_image",
    "verify_images",
]

LINK_MODES = ("symlink", "hardlink", "copy")
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
DISTRACTOR_FOLDER = "images"
NAME_PATTERN = re.compile(r"^([-\d]+)_c(\d)")
JUNK_PID = -1


@dataclass(frozen=True)
class ImageRecord:
    """A validated image: where it is, who it shows, which 0-based camera took it."""

    path: Path
    pid: int
    camid: int


# --------------------------------------------------------------------------- shared image helpers
def verify_image(path: str | Path) -> str | None:
    """Fully decode an image; the error text when that fails, else ``None``."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def place_file(source: Path, target: Path, link: str) -> None:
    """Put ``source`` at ``target`` as a symlink, hard link or copy (copies land atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        target.unlink()  # a dangling symlink of an earlier run
    if link == "symlink":
        os.symlink(Path(source).resolve(), target)
    elif link == "hardlink":
        os.link(source, target)
    elif link == "copy":
        # Hidden and with a non-image suffix, so a loader never picks up a half-written copy.
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    else:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")


@dataclass(frozen=True)
class _ImageTask:
    source: str
    target: str | None
    link: str


def _verify_and_place(task: _ImageTask) -> Problem | None:
    error = verify_image(task.source)
    if error is not None:
        return Problem(
            task.source, f"cannot decode the image ({error})", "replace it from the archive"
        )
    if task.target is not None:
        place_file(Path(task.source), Path(task.target), task.link)
    return None


def transfer_images(
    pairs: Iterable[tuple[Path, Path]],
    report: PrepareReport,
    *,
    link: str = "symlink",
    workers: int = 1,
    show_progress: bool = True,
) -> None:
    """Verify and place every (source, target) pair; existing valid targets are kept (resume)."""
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    tasks = []
    for source, target in pairs:
        if target.is_file():
            report.add("images already prepared (resumed)")
        else:
            tasks.append(_ImageTask(str(source), str(target), link))
    outcomes = run_parallel(
        _verify_and_place,
        tasks,
        workers=workers,
        description=f"{report.dataset}: images",
        show_progress=show_progress,
    )
    for problem in outcomes:
        if problem is None:
            report.add("images written")
        else:
            report.record(problem)


def verify_images(
    paths: Sequence[Path], report: PrepareReport, *, workers: int = 1, show_progress: bool = True
) -> None:
    """Decode every image and record the ones that fail."""
    tasks = [_ImageTask(str(path), None, "symlink") for path in paths]
    outcomes = run_parallel(
        _verify_and_place,
        tasks,
        workers=workers,
        description=f"{report.dataset}: decoding images",
        show_progress=show_progress,
    )
    for problem in outcomes:
        if problem is not None:
            report.record(problem)
    report.add("images decoded", len(tasks))


def count_records(splits: Mapping[str, Sequence[ImageRecord]]) -> dict[str, int]:
    """``<split>_images`` and ``<split>_ids`` of every split, junk (pid -1) excluded."""
    counts = {}
    for split, records in splits.items():
        kept = [r for r in records if r.pid != JUNK_PID]
        counts[f"{split}_images"] = len(kept)
        counts[f"{split}_ids"] = len({r.pid for r in kept})
    return counts


def record_paths(splits: Mapping[str, Sequence[ImageRecord]]) -> list[Path]:
    """The image paths of every split, split after split."""
    return [record.path for records in splits.values() for record in records]


def scan_image_folder(
    folder: Path,
    report: PrepareReport,
    identify: Callable[[str], tuple[int, int]],
    folder_role: str,
) -> list[ImageRecord]:
    """Records of the images directly in ``folder``, in name order.

    Args:
        folder: the folder to scan.
        report: receives a problem per sub-folder and per bad name, a count of non-image files.
        identify: file name → ``(pid, 0-based camid)``; raises ``ValueError`` whose message
            says what is wrong with the name.
        folder_role: how messages call the folder (``"a split folder"``).
    """
    records = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            report.problem(
                entry, f"wrong directory depth: folder inside {folder_role}", "move its images up"
            )
            continue
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            report.add("non-image files ignored")  # e.g. the Thumbs.db files in Market-1501
            continue
        try:
            pid, camid = identify(entry.name)
        except ValueError as error:
            report.problem(entry, str(error), "rename or remove the file")
            continue
        records.append(ImageRecord(entry, pid, camid))
    return records


# --------------------------------------------------------------------------- Market-style folders
def _resolve_root(raw: Path, inner: str, folders: Sequence[str], what: str) -> Path:
    if not raw.is_dir():
        raise fatal(raw, f"{what} folder does not exist", "pass the extracted release folder")
    for candidate in (raw, raw / inner):
        if all((candidate / folder).is_dir() for folder in folders):
            return candidate
    layout = f"<root>/{{{','.join(folders)}}}"
    if raw.name in folders:
        raise fatal(
            raw,
            f"wrong directory depth: this is one split folder of {layout}",
            f"pass {raw.parent}",
        )
    nested = [
        child
        for child in sorted(raw.iterdir())
        if child.is_dir() and all((child / folder).is_dir() for folder in folders)
    ]
    if nested:
        raise fatal(
            raw,
            "wrong directory depth: the split folders are one level deeper",
            f"pass {nested[0]}",
        )
    missing = [f for f in folders if not (raw / f).is_dir()]
    raise fatal(
        raw, f"missing {', '.join(missing)} (expected {layout})", "re-extract the release zip"
    )


def _market_identity(name: str, cameras: int) -> tuple[int, int]:
    match = NAME_PATTERN.match(name)
    if match is None:
        raise ValueError(
            "file name does not match '<pid>_c<camera>...' (e.g. 0002_c1s1_000451_03.jpg)"
        )
    camera = int(match.group(2))
    if not 1 <= camera <= cameras:
        raise ValueError(f"camera {camera} outside 1..{cameras}")
    return int(match.group(1)), camera - 1


def scan_market_folder(folder: Path, cameras: int, report: PrepareReport) -> list[ImageRecord]:
    """Parse every image name in one split folder; bad names and cameras are problems."""
    identify = partial(_market_identity, cameras=cameras)
    return scan_image_folder(folder, report, identify, "a split folder")


@dataclass(frozen=True)
class _MarketFormat:
    dataset: str
    inner: str
    cameras: int


MARKET = _MarketFormat("market1501", "Market-1501-v15.09.15", 6)
DUKE = _MarketFormat("dukemtmc", "DukeMTMC-reID", 8)


def _scan_splits(
    root: Path, fmt: _MarketFormat, report: PrepareReport, with_distractors: bool
) -> dict[str, list[ImageRecord]]:
    splits = {
        split: scan_market_folder(root / folder, fmt.cameras, report)
        for split, folder in SPLIT_FOLDERS.items()
    }
    if with_distractors:
        splits["distractors"] = scan_market_folder(root / DISTRACTOR_FOLDER, fmt.cameras, report)
    for split in ("train", "query", "gallery"):
        report.drop(
            f"junk boxes (pid -1) in {split}", sum(r.pid == JUNK_PID for r in splits[split])
        )
    return splits


def _folders(with_distractors: bool) -> list[str]:
    return [*SPLIT_FOLDERS.values()] + ([DISTRACTOR_FOLDER] if with_distractors else [])


def _prepare_market_style(
    fmt: _MarketFormat,
    raw: Path,
    out: Path,
    *,
    with_distractors: bool,
    link: str,
    workers: int,
    strict: bool,
    show_progress: bool,
) -> PrepareReport:
    report = PrepareReport(fmt.dataset, strict=strict)
    folders = _folders(with_distractors)
    root = _resolve_root(Path(raw), fmt.inner, folders, fmt.dataset)
    splits = _scan_splits(root, fmt, report, with_distractors)
    out = Path(out)
    folder_of = dict(SPLIT_FOLDERS, distractors=DISTRACTOR_FOLDER)
    pairs = [
        (record.path, out / folder_of[split] / record.path.name)
        for split, records in splits.items()
        for record in records
    ]
    transfer_images(pairs, report, link=link, workers=workers, show_progress=show_progress)
    # Count what actually landed in the output (failed images are absent in non-strict mode).
    final = _scan_splits(
        out, fmt, PrepareReport(fmt.dataset, "check", strict=False), with_distractors
    )
    report.finish_prepare(out, count_records(final), release_counts(fmt.dataset))
    return report


def _check_market_style(
    fmt: _MarketFormat,
    root: Path,
    *,
    expect: str,
    deep: bool,
    with_distractors: bool,
    workers: int,
    show_progress: bool,
) -> PrepareReport:
    report = PrepareReport(fmt.dataset, action="check", strict=False)
    root = _resolve_root(Path(root), fmt.inner, _folders(with_distractors), fmt.dataset)
    splits = _scan_splits(root, fmt, report, with_distractors)
    if deep:
        verify_images(record_paths(splits), report, workers=workers, show_progress=show_progress)
    return report.finish_check(root, count_records(splits), release_counts(fmt.dataset), expect)


def prepare_market1501(
    raw: str | Path,
    out: str | Path,
    *,
    with_distractors: bool = False,
    link: str = "symlink",
    workers: int = 1,
    strict: bool = True,
    show_progress: bool = True,
) -> PrepareReport:
    """Validate Market-1501 and place it into ``out`` in the layout ``Market1501`` reads.

    Args:
        raw: ``Market-1501-v15.09.15`` (or its parent).
        out: output folder (resumable).
        with_distractors: also take ``images/`` (the Market-1501+500k distractors).
        link: ``"symlink"``, ``"hardlink"`` or ``"copy"``.
        workers, strict, show_progress: as for every prepare command.
    """
    return _prepare_market_style(
        MARKET,
        Path(raw),
        Path(out),
        with_distractors=with_distractors,
        link=link,
        workers=workers,
        strict=strict,
        show_progress=show_progress,
    )


def prepare_dukemtmc(
    raw: str | Path,
    out: str | Path,
    *,
    link: str = "symlink",
    workers: int = 1,
    strict: bool = True,
    show_progress: bool = True,
) -> PrepareReport:
    """Validate DukeMTMC-reID and place it into ``out`` (layout of ``DukeMTMC``)."""
    return _prepare_market_style(
        DUKE,
        Path(raw),
        Path(out),
        with_distractors=False,
        link=link,
        workers=workers,
        strict=strict,
        show_progress=show_progress,
    )


def check_market1501(
    root: str | Path,
    *,
    expect: str = "release",
    deep: bool = True,
    with_distractors: bool = False,
    workers: int = 1,
    show_progress: bool = True,
) -> PrepareReport:
    """Validate a Market-1501 tree: names, cameras, decodable images, counts per split."""
    return _check_market_style(
        MARKET,
        Path(root),
        expect=expect,
        deep=deep,
        with_distractors=with_distractors,
        workers=workers,
        show_progress=show_progress,
    )


def check_dukemtmc(
    root: str | Path,
    *,
    expect: str = "release",
    deep: bool = True,
    workers: int = 1,
    show_progress: bool = True,
) -> PrepareReport:
    """Validate a DukeMTMC-reID tree (see :func:`check_market1501`)."""
    return _check_market_style(
        DUKE,
        Path(root),
        expect=expect,
        deep=deep,
        with_distractors=False,
        workers=workers,
        show_progress=show_progress,
    )
