"""CASIA-B silhouettes → 64×64 uint8 pkl tree, plus the gait machinery OU-MVLP and GREW reuse.

Raw layout (``GaitDatasetB-silh``): ``<raw>/<id>/<type>/<view>/<id>-<type>-<view>-<frame>.png``,
e.g. ``001/bg-01/000/001-bg-01-000-001.png``. Output: ``<out>/<id>/<type>/<view>/<view>.pkl``
holding ``uint8 [T, 64, 64]``, plus ``<out>/partition.json`` (the partition the counts refer to).

Frame alignment follows the 2021 OpenGait/GaitSet pretreatment (metagait.md §9.2): drop frames
whose pixel sum is ≤ 10,000, crop to the rows holding foreground, bicubic-resize to height 64
keeping the aspect ratio, centre a 64-column window on the column-mass median and zero-pad 32
columns on both sides when that window reaches a border. A sequence without any surviving frame
produces no file and is listed in the report.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from metareid.data.gait.packed import (
    PACKED_DIR,
    has_packed_store,
    packed_dir,
    read_packed_index,
)
from metareid.data.gait.safe_pickle import load_silhouette_pickle
from metareid.prepare.report import PrepareReport, Problem, fatal, run_parallel

__all__ = [
    "CASIAB_RELEASE_COUNTS",
    "CASIAB_TYPES",
    "CASIAB",
    "CASIAB_VIEWS",
    "EMPTY_FRAME_SUM",
    "GaitRelease",
    "RawSequence",
    "align_silhouette",
    "bicubic_matrix",
    "casiab_default_partition",
    "check_casiab",
    "check_gait_tree",
    "count_gait_tree",
    "finish_gait_prepare",
    "list_entries",
    "load_partition",
    "prepare_casiab",
    "prepare_gait_sequences",
    "require_partition_ids",
    "resize_bicubic",
    "resolve_partition",
]

CASIAB_TYPES = tuple([f"nm-0{i}" for i in range(1, 7)] + ["bg-01", "bg-02", "cl-01", "cl-02"])
CASIAB_VIEWS = tuple(f"{angle:03d}" for angle in range(0, 181, 18))
# What the raw release gives after OpenGait's pretreatment (metagait.md §9.3); the training count
# after pretreatment is not published, so only ids and the test total are checked.
CASIAB_RELEASE_COUNTS = {"train_ids": 74, "test_ids": 50, "test_sequences": 5485}

EMPTY_FRAME_SUM = 10_000
OUTPUT_SIZE = 64
SHORT_SEQUENCE = 5
PARTITION_NAME = "partition.json"
BUNDLED_PARTITION = (
    Path(__file__).resolve().parents[1]
    / "data"
    / "gait"
    / "partitions"
    / "CASIA-B_include_005.json"
)

SUBJECT_PATTERN = re.compile(r"^\d{3}$")
TYPE_PATTERN = re.compile(r"^(nm-0[1-6]|bg-0[12]|cl-0[12])$")
VIEW_PATTERN = re.compile(r"^\d{3}$")
FRAME_PATTERN = re.compile(r"^(\d{3})-([a-z]{2}-\d{2})-(\d{3})-(\d{3})\.png$")
# Archive debris that is never data.
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})

RELEASE_FIX = (
    "re-extract GaitDatasetB-silh.zip so that frames sit in <raw>/<id>/<type>/<view>/ "
    "(e.g. 001/bg-01/000/001-bg-01-000-001.png)"
)


# --------------------------------------------------------------------------- frame alignment
def _cubic_kernel(distance: np.ndarray, a: float = -0.75) -> np.ndarray:
    d = np.abs(distance)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation weights ``[out_size, in_size]`` of 1-D bicubic resampling.

    Same convention as OpenCV's ``INTER_CUBIC`` and ``torch`` ``bicubic`` with
    ``align_corners=False``: half-pixel centres, kernel parameter a = -0.75, no antialiasing,
    out-of-range taps clamped to the border pixel.
    """
    scale = in_size / out_size
    source = (np.arange(out_size) + 0.5) * scale - 0.5
    base = np.floor(source)
    frac = source - base
    weights = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    for tap in (-1, 0, 1, 2):
        index = np.clip(base + tap, 0, in_size - 1).astype(np.int64)
        np.add.at(weights, (rows, index), _cubic_kernel(frac - tap))
    return weights


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a ``uint8 [H, W]`` image to ``uint8 [height, width]``.

    Rounds to nearest and saturates like OpenCV on uint8 images (OpenCV's fixed-point weights can
    differ by one grey level on a few pixels).
    """
    rows = bicubic_matrix(image.shape[0], height)
    cols = bicubic_matrix(image.shape[1], width)
    resized = rows @ image.astype(np.float64) @ cols.T
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def align_silhouette(frame: np.ndarray, size: int = OUTPUT_SIZE) -> np.ndarray | None:
    """Crop, rescale and horizontally centre one silhouette (metagait.md §9.2 steps 3–8).

    Args:
        frame: ``uint8 [H, W]`` grey silhouette that passed the near-empty test.
        size: output height and width.

    Returns:
        ``uint8 [size, size]``, or ``None`` when no column centre exists (nothing left after the
        resize).
    """
    rows = np.flatnonzero(frame.sum(axis=1))
    if rows.size == 0:
        return None
    cropped = frame[rows[0] : rows[-1] + 1]
    height, width = cropped.shape
    # The reference multiplies by the ratio (not the width), which decides int() at boundaries.
    new_width = max(1, int(size * (width / height)))
    resized = resize_bicubic(cropped, size, new_width)
    column_mass = resized.sum(axis=0, dtype=np.int64).cumsum()
    past_half = np.flatnonzero(column_mass > column_mass[-1] / 2)
    if past_half.size == 0:
        return None
    centre = int(past_half[0])
    half = size // 2
    left, right = centre - half, centre + half
    if left <= 0 or right >= new_width:
        resized = np.pad(resized, ((0, 0), (half, half)))
        left, right = left + half, right + half
    return np.ascontiguousarray(resized[:, left:right], dtype=np.uint8)


def _read_grey(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


# --------------------------------------------------------------------------- one sequence
@dataclass(frozen=True)
class RawSequence:
    """One raw sequence: where its frames are and where its pkl goes.

    ``subject/condition/view`` becomes ``<out>/<subject>/<condition>/<view>/<view>.pkl``.
    """

    subject: str
    condition: str
    view: str
    frames: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.subject}/{self.condition}/{self.view}"


@dataclass(frozen=True)
class _SequenceTask:
    sequence: RawSequence
    output: str
    partial_dir: str
    align: bool
    strict: bool
    size: int = OUTPUT_SIZE


@dataclass
class _SequenceResult:
    name: str
    frames_read: int = 0
    frames_kept: int = 0
    near_empty: int = 0
    no_centre: int = 0
    written: bool = False
    problems: list[Problem] = field(default_factory=list)


def _process_sequence(task: _SequenceTask) -> _SequenceResult:
    """Worker: align (or just stack) every frame of a sequence and pickle the stack."""
    result = _SequenceResult(task.sequence.name)
    kept: list[np.ndarray] = []
    for path in sorted(task.sequence.frames):
        try:
            frame = _read_grey(path)
        except (OSError, SyntaxError, ValueError) as error:
            result.problems.append(
                Problem(path, f"cannot decode the image ({error})", "replace it from the archive")
            )
            continue
        result.frames_read += 1
        if task.align:
            if int(frame.sum(dtype=np.int64)) <= EMPTY_FRAME_SUM:
                result.near_empty += 1
                continue
            aligned = align_silhouette(frame, task.size)
            if aligned is None:
                result.no_centre += 1
                continue
            kept.append(aligned)
        else:
            if kept and frame.shape != kept[0].shape:
                result.problems.append(
                    Problem(
                        path,
                        f"frame size {frame.shape} differs from the sequence's {kept[0].shape}",
                        "replace the frame from the archive",
                    )
                )
                continue
            kept.append(frame)
    result.frames_kept = len(kept)
    # In strict mode a failed sequence must stay unwritten so that a re-run retries it.
    if kept and not (task.strict and result.problems):
        _write_pickle(np.stack(kept).astype(np.uint8), Path(task.output), Path(task.partial_dir))
        result.written = True
    return result


def _write_pickle(array: np.ndarray, target: Path, partial_dir: Path) -> None:
    # Written beside the tree and renamed, so an interrupted run never leaves a truncated pkl
    # that the resumed run would take as finished.
    partial_dir.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=partial_dir, suffix=".pkl")
    with os.fdopen(handle, "wb") as stream:
        pickle.dump(array, stream)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temporary, target)


def prepare_gait_sequences(
    sequences: list[RawSequence],
    out: Path,
    report: PrepareReport,
    *,
    align: bool = True,
    workers: int = 1,
    show_progress: bool = True,
) -> None:
    """Turn raw sequences into ``<out>/<subject>/<condition>/<view>/<view>.pkl`` (resumable).

    Sequences whose pkl already exists are skipped. Decoding problems go through
    ``report.problem`` (fatal when strict); near-empty frames and sequences without a valid frame
    are counted drops.
    """
    partial_dir = out / ".partial"
    tasks = []
    for sequence in sequences:
        target = (
            out / sequence.subject / sequence.condition / sequence.view / f"{sequence.view}.pkl"
        )
        if target.is_file():
            report.add("sequences already prepared (resumed)")
            continue
        tasks.append(
            _SequenceTask(
                sequence, str(target), str(partial_dir), align=align, strict=report.strict
            )
        )
    results = run_parallel(
        _process_sequence,
        tasks,
        workers=workers,
        description=f"{report.dataset}: sequences",
        show_progress=show_progress,
    )
    short = []
    for result in results:
        for problem in result.problems:
            report.record(problem)
        report.add("frames read", result.frames_read)
        report.add("frames kept", result.frames_kept)
        report.drop(f"near-empty frames (pixel sum <= {EMPTY_FRAME_SUM:,})", result.near_empty)
        report.drop("frames without a column centre", result.no_centre)
        if result.written:
            report.add("sequences written")
            if result.frames_kept < SHORT_SEQUENCE:
                short.append(f"{result.name} has only {result.frames_kept} valid frames")
        elif result.frames_kept == 0:
            report.dropped_sequences.append(result.name)
    report.warnings.extend(sorted(short))
    shutil.rmtree(partial_dir, ignore_errors=True)


# --------------------------------------------------------------------------- partitions
def load_partition(path: str | Path) -> dict[str, list[str]]:
    """Read an OpenGait partition JSON ``{"TRAIN_SET": [...], "TEST_SET": [...]}``."""
    path = Path(path)
    fix = 'give a JSON file {"TRAIN_SET": ["001", ...], "TEST_SET": [...]} with --partition'
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise fatal(path, "partition file not found", fix) from error
    except json.JSONDecodeError as error:
        raise fatal(path, f"partition file is not valid JSON ({error})", fix) from error
    partition = {}
    for key in ("TRAIN_SET", "TEST_SET"):
        ids = content.get(key) if isinstance(content, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise fatal(path, f"key {key!r} missing or not a list of id strings", fix)
        partition[key] = list(ids)
    return partition


def casiab_default_partition() -> dict[str, list[str]]:
    """The 74/50 split that keeps subject 005 in training (``CASIA-B_include_005.json``)."""
    if BUNDLED_PARTITION.is_file():
        return load_partition(BUNDLED_PARTITION)
    return {
        "TRAIN_SET": [f"{i:03d}" for i in range(1, 75)],
        "TEST_SET": [f"{i:03d}" for i in range(75, 125)],
    }


def _write_partition(out: Path, partition: Mapping[str, list[str]]) -> None:
    (out / PARTITION_NAME).write_text(json.dumps(dict(partition), indent=1))


# --------------------------------------------------------------------------- prepared-tree checks
def _is_ignored(entry: Path) -> bool:
    return entry.name.startswith(".") or entry.name in IGNORED_NAMES


def list_entries(folder: Path) -> list[Path]:
    """Sorted entries of ``folder`` without hidden files and archive debris."""
    return sorted(entry for entry in folder.iterdir() if not _is_ignored(entry))


def _scan_pkl_tree(root: Path, report: PrepareReport) -> dict[str, dict[str, list[Path]]]:
    """Map subject → {"condition/view": [pkl files]} for ``root/<subject>/<cond>/<view>/*.pkl``."""
    depth_fix = (
        "the tree must be <root>/<id>/<type>/<view>/<view>.pkl; move or delete it, or re-run "
        "prepare into an empty --out folder"
    )
    tree: dict[str, dict[str, list[Path]]] = {}
    for subject in list_entries(root):
        if subject.name == PACKED_DIR and has_packed_store(root):
            continue  # the packed store (checked on its own)
        if subject.is_file():
            if subject.name != PARTITION_NAME:
                report.problem(subject, "unexpected file at the dataset root", depth_fix)
            continue
        sequences = tree.setdefault(subject.name, {})
        for condition in list_entries(subject):
            if not condition.is_dir():
                report.problem(condition, "file found where a type folder belongs", depth_fix)
                continue
            for view in list_entries(condition):
                if not view.is_dir():
                    report.problem(view, "file found where a view folder belongs", depth_fix)
                    continue
                entries = list_entries(view)
                pkls = [e for e in entries if e.is_file() and e.suffix == ".pkl"]
                for extra in entries:
                    if extra not in pkls:
                        report.problem(extra, "not a .pkl file inside a view folder", depth_fix)
                if not entries:
                    report.problem(
                        view,
                        "empty view folder (loaders skip it: the sequence is missing)",
                        "delete the folder and re-run prepare to rebuild the sequence",
                    )
                    continue
                if pkls:
                    sequences[f"{condition.name}/{view.name}"] = pkls
    return tree


@dataclass(frozen=True)
class _PklCheck:
    path: str
    height: int
    width: int | None


def _check_pkl(task: _PklCheck) -> Problem | None:
    fix = "delete it and re-run prepare (finished sequences are kept)"
    try:
        array = load_silhouette_pickle(task.path)
    except ValueError as error:  # names the file (and a refused global) already
        return Problem(task.path, str(error).removeprefix(f"{task.path}: "), fix)
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3:
        kind = getattr(array, "dtype", type(array).__name__)
        return Problem(task.path, f"expected a uint8 array [T, H, W], found {kind}", fix)
    frames, height, width = array.shape
    if frames < 1 or height != task.height or (task.width is not None and width != task.width):
        expected = f"[T>=1, {task.height}, {task.width or 'W'}]"
        return Problem(task.path, f"shape {list(array.shape)}, expected {expected}", fix)
    return None


def count_gait_tree(
    tree: Mapping[str, Mapping[str, list[Path]]], partition: Mapping[str, list[str]]
) -> dict[str, int]:
    """Identities and sequences per split (only partition ids on disk count)."""
    counts = {}
    for split, key in (("train", "TRAIN_SET"), ("test", "TEST_SET")):
        present = [subject for subject in partition[key] if subject in tree]
        counts[f"{split}_ids"] = len(present)
        counts[f"{split}_sequences"] = sum(len(tree[subject]) for subject in present)
    return counts


def check_gait_tree(
    root: str | Path,
    *,
    dataset: str,
    partition: Mapping[str, list[str]],
    release_counts: Mapping[str, int] | None = None,
    expect: str = "release",
    deep: bool = True,
    frame_width: int | None = OUTPUT_SIZE,
    workers: int = 1,
    show_progress: bool = True,
    report: PrepareReport | None = None,
) -> PrepareReport:
    """Validate a pkl tree against its partition and expected counts, modifying nothing.

    Args:
        root: prepared tree ``<root>/<id>/<type>/<view>/<view>.pkl``.
        dataset: name shown in the report.
        partition: ``{"TRAIN_SET": [...], "TEST_SET": [...]}``.
        release_counts: counts of the full official release (for ``expect="release"``).
        expect: ``"release"``, ``"manifest"`` (counts the prepare step stored) or ``"none"``.
        deep: unpickle every file and check dtype and shape ``[T, 64, frame_width]``.
        frame_width: expected width, ``None`` to accept any.
        workers: processes for the deep check.
        show_progress: draw a progress bar.
        report: report to fill (a new non-strict check report by default).

    Returns:
        The report; ``report.ok`` is false when something needs attention.
    """
    root = Path(root)
    report = report or PrepareReport(dataset, action="check", strict=False)
    if not root.is_dir():
        raise fatal(root, "prepared folder does not exist", "pass the --out folder of prepare")
    tree = _scan_pkl_tree(root, report)
    _report_partition_coverage(
        root,
        partition,
        set(tree),
        report,
        absent="has no folder",
        absent_fix="prepare the missing subject from the raw release, or pass the partition "
        "that matches this tree with --partition",
        unused="subject folder(s) not in the partition",
    )
    if deep:
        tasks = [
            _PklCheck(str(pkl), OUTPUT_SIZE, frame_width)
            for sequences in tree.values()
            for pkls in sequences.values()
            for pkl in pkls
        ]
        checks = run_parallel(
            _check_pkl,
            tasks,
            workers=workers,
            description=f"{dataset}: reading pkl files",
            show_progress=show_progress,
        )
        for problem in checks:
            if problem is not None:
                report.record(problem)
        report.add("pkl files read", len(tasks))
    return report.finish_check(root, count_gait_tree(tree, partition), release_counts, expect)


def _report_partition_coverage(
    folder: Path,
    partition: Mapping[str, list[str]],
    present: set[str],
    report: PrepareReport,
    *,
    absent: str,
    absent_fix: str,
    unused: str,
) -> None:
    """A problem per partition id not in ``present``, one warning for ids in neither split."""
    for key in ("TRAIN_SET", "TEST_SET"):
        for subject in partition[key]:
            if subject not in present:
                report.problem(
                    folder / subject, f"partition id {subject} ({key}) {absent}", absent_fix
                )
    outside = sorted(present - set(partition["TRAIN_SET"]) - set(partition["TEST_SET"]))
    if outside:
        report.warn(f"{len(outside)} {unused}: {', '.join(outside[:10])}")


# --------------------------------------------------------------------------- CASIA-B
def _diagnose_casiab_root(raw: Path) -> None:
    """Fail early, with the folder to pass instead, when ``raw`` is not the dataset root."""
    if not raw.is_dir():
        raise fatal(raw, "raw folder does not exist", "pass the extracted silhouette folder")
    children = list_entries(raw)
    folders = [c for c in children if c.is_dir()]
    subjects = [c for c in folders if SUBJECT_PATTERN.match(c.name)]
    wrong_depth = "wrong directory depth (expected <raw>/<id>/<type>/<view>/*.png)"
    if subjects:
        sample = list_entries(subjects[0])
        if any(TYPE_PATTERN.match(c.name) for c in sample):
            return
        if any(c.suffix == ".png" for c in sample):
            raise fatal(
                raw,
                f"{wrong_depth}; this looks like a type folder (<id>/<type>)",
                f"pass --raw {raw.parent.parent}",
            )
    if any(TYPE_PATTERN.match(c.name) for c in folders):
        message, fix = "this looks like one subject's folder (<id>)", f"pass --raw {raw.parent}"
    elif any(c.suffix == ".png" for c in children):
        message = "PNG frames directly inside it: this looks like a view folder"
        fix = f"pass --raw {raw.parent.parent.parent}"
    elif any(c.name.endswith((".tar.gz", ".tgz")) for c in children):
        message = "only archives here: the per-subject archives of the release are not extracted"
        fix = f"extract them in place (cd {raw} && for f in *.tar.gz; do tar xzf $f; done)"
    elif len(folders) == 1 and any(SUBJECT_PATTERN.match(c.name) for c in list_entries(folders[0])):
        message, fix = "the subject folders are one level deeper", f"pass --raw {folders[0]}"
    else:
        message, fix = "no subject folders (001 ... 124) found", RELEASE_FIX
    raise fatal(raw, f"{wrong_depth}; {message}", fix)


def _scan_casiab_raw(raw: Path, report: PrepareReport) -> list[RawSequence]:
    _diagnose_casiab_root(raw)
    depth_fix = RELEASE_FIX
    sequences = []
    for subject in list_entries(raw):
        if not subject.is_dir():
            continue
        if not SUBJECT_PATTERN.match(subject.name):
            report.warn(f"ignored folder {subject} (not a 3-digit subject id)")
            continue
        for condition in list_entries(subject):
            if not condition.is_dir():
                if condition.suffix == ".png":
                    report.problem(condition, "PNG frame directly in a subject folder", depth_fix)
                continue
            if not TYPE_PATTERN.match(condition.name):
                report.problem(
                    condition,
                    f"unknown walking condition {condition.name!r} (expected one of "
                    f"{', '.join(CASIAB_TYPES)})",
                    "rename or remove the folder",
                )
                continue
            for view in list_entries(condition):
                if not view.is_dir():
                    if view.suffix == ".png":
                        report.problem(
                            view, "wrong directory depth: frame outside a view folder", depth_fix
                        )
                    continue
                if not VIEW_PATTERN.match(view.name):
                    report.problem(view, "view folder name is not 3 digits", depth_fix)
                    continue
                sequence = _scan_casiab_view(view, subject.name, condition.name, report)
                if sequence is not None:
                    sequences.append(sequence)
    return sequences


def _scan_casiab_view(
    view: Path, subject: str, condition: str, report: PrepareReport
) -> RawSequence | None:
    frames = []
    for entry in list_entries(view):
        if entry.is_dir():
            report.problem(entry, "wrong directory depth: folder inside a view folder", RELEASE_FIX)
            continue
        if entry.suffix.lower() != ".png":
            report.add("non-PNG files ignored")
            continue
        match = FRAME_PATTERN.match(entry.name)
        if match is None or match.groups()[:3] != (subject, condition, view.name):
            report.problem(
                entry,
                f"file name does not match '{subject}-{condition}-{view.name}-<frame>.png'",
                "rename the frame after its folder, or move it to the folder it names",
            )
            continue
        frames.append(str(entry))
    if frames:
        return RawSequence(subject, condition, view.name, tuple(frames))
    report.problem(
        view,
        "empty view folder (no PNG frames)",
        "re-extract this sequence from the archive",
    )
    return None


def require_partition_ids(
    raw: Path, partition: Mapping[str, list[str]], on_disk: set[str], report: PrepareReport
) -> None:
    """A problem per partition id without raw sequences; a warning for ids outside it."""
    _report_partition_coverage(
        raw,
        partition,
        on_disk,
        report,
        absent="is absent from the raw release",
        absent_fix="extract the missing part of the archive, or pass a matching --partition",
        unused="subject(s) prepared but in neither split",
    )


def finish_gait_prepare(
    out: Path,
    report: PrepareReport,
    partition: Mapping[str, list[str]],
    release_counts: Mapping[str, int] | None,
) -> None:
    """Write the partition and manifest and count the result per split."""
    _write_partition(out, partition)
    tree = _scan_pkl_tree(out, PrepareReport(report.dataset, action="check", strict=False))
    # The release counts describe the whole dataset; a partial preparation is not compared.
    complete = all(s in tree for key in ("TRAIN_SET", "TEST_SET") for s in partition[key])
    expected = release_counts if complete else None
    report.finish_prepare(out, count_gait_tree(tree, partition), expected)


def resolve_partition(
    partition: str | Path | Mapping[str, list[str]] | None,
) -> dict[str, list[str]]:
    """A partition given as a path or a mapping; ``None`` gives the CASIA-B default."""
    if partition is None:
        return casiab_default_partition()
    if isinstance(partition, Mapping):
        return {key: list(partition[key]) for key in ("TRAIN_SET", "TEST_SET")}
    return load_partition(partition)


@dataclass(frozen=True)
class GaitRelease:
    """What sets one gait dataset apart when it is prepared into, or checked as, a pkl tree.

    ``prepare`` and ``check`` are the dataset's commands (``prepare_casiab = CASIAB.prepare``).

    Attributes:
        dataset: name in reports and on the command line (``casiab``, ``oumvlp``, ``grew``).
        scan_raw: ``(raw, report) -> [RawSequence]`` of the raw release; raises
            :class:`~metareid.prepare.report.PrepareError` for a root at the wrong depth.
        default_partition: the partition when none is given (and a checked tree has no
            ``partition.json``).
        release_counts: counts of the full official release (compared when complete).
        align: apply the CASIA-B frame alignment; ``False`` stores frames as read.
        frame_width: width every prepared frame must have; ``None`` accepts any.
    """

    dataset: str
    scan_raw: Callable[[Path, PrepareReport], list[RawSequence]]
    default_partition: Callable[[], dict[str, list[str]]]
    release_counts: Mapping[str, int]
    align: bool = True
    frame_width: int | None = OUTPUT_SIZE

    def _partition(
        self, partition: str | Path | Mapping[str, list[str]] | None
    ) -> dict[str, list[str]]:
        return self.default_partition() if partition is None else resolve_partition(partition)

    def prepare(
        self,
        raw: str | Path,
        out: str | Path,
        *,
        partition: str | Path | Mapping[str, list[str]] | None = None,
        workers: int = 1,
        strict: bool = True,
        show_progress: bool = True,
        packed: bool = False,
    ) -> PrepareReport:
        """Turn the raw release into the pkl tree the gait DataModule reads.

        Args:
            raw: the extracted release (layouts: see the module docstrings).
            out: output folder (created; finished sequences of an earlier run are kept).
            partition: JSON path or dict; default ``default_partition()``.
            workers: processes.
            strict: stop at the first problem (else skip and list it).
            show_progress: draw progress bars.
            packed: also write the packed store ``<out>/packed`` (see :meth:`pack`).

        Returns:
            The report (also stored in ``<out>/.metareid_prepare.json``).
        """
        raw, out = Path(raw), Path(out)
        report = PrepareReport(self.dataset, strict=strict)
        split = self._partition(partition)
        sequences = self.scan_raw(raw, report)
        require_partition_ids(raw, split, {sequence.subject for sequence in sequences}, report)
        out.mkdir(parents=True, exist_ok=True)
        prepare_gait_sequences(
            sequences, out, report, align=self.align, workers=workers, show_progress=show_progress
        )
        finish_gait_prepare(out, report, split, self.release_counts)
        if packed:
            self.pack(out, report=report)
        return report

    def pack(self, root: str | Path, *, report: PrepareReport | None = None) -> PrepareReport:
        """Write the packed store ``<root>/packed`` of a prepared tree (replacing an older one).

        One memory-mapped uint8 array of every frame, already cut to 44 columns, plus its
        index; the gait DataModule reads it instead of the pkl files when present
        (``data.format=auto``). The tree is checked like a loader checks it first.
        """
        from metareid.data.gait.casiab import pack_gait_tree

        root = Path(root)
        report = report or PrepareReport(self.dataset, action="pack", strict=True)
        partition = root / PARTITION_NAME
        if not partition.is_file():
            raise fatal(root, f"no {PARTITION_NAME}", "prepare the tree first (--raw/--out)")
        try:
            store = pack_gait_tree(root, self.dataset, partition)
        except (ValueError, OSError) as error:
            raise fatal(
                root, f"cannot pack the tree: {error}", "fix the tree or re-run prepare"
            ) from None
        index = read_packed_index(store)
        report.add("packed sequences", len(index.lengths))
        report.add("packed frames", index.total_frames)
        blank, single = int(index.blank.sum()), int((index.lengths == 1).sum())
        if blank or single:
            report.warn(f"packed store: {blank} all-blank and {single} 1-frame sequences")
        return report

    def check(
        self,
        root: str | Path,
        *,
        partition: str | Path | Mapping[str, list[str]] | None = None,
        expect: str = "release",
        deep: bool = True,
        workers: int = 1,
        show_progress: bool = True,
    ) -> PrepareReport:
        """Validate a prepared tree (see :func:`check_gait_tree`).

        The partition defaults to ``<root>/partition.json`` when present, else
        ``default_partition()``.
        """
        root = Path(root)
        if partition is None and (root / PARTITION_NAME).is_file():
            partition = root / PARTITION_NAME
        split = self._partition(partition)
        report = PrepareReport(self.dataset, action="check", strict=False)
        store_counts = _check_packed_store(root, split, report) if has_packed_store(root) else None
        check_gait_tree(
            root,
            dataset=self.dataset,
            partition=split,
            release_counts=self.release_counts,
            expect=expect,
            deep=deep,
            frame_width=self.frame_width,
            workers=workers,
            show_progress=show_progress,
            report=report,
        )
        if store_counts is not None:
            tree_counts = {
                f"packed {split}_sequences": report.counts.get(f"{split}_sequences", 0)
                for split in ("train", "test")
            }
            report.compare(store_counts, tree_counts, "pkl tree (re-run --pack after changes)")
        return report


def _check_packed_store(
    root: Path, partition: Mapping[str, list[str]], report: PrepareReport
) -> dict[str, int] | None:
    """Problems of ``<root>/packed``: unreadable or inconsistent with the tree's partition."""
    fix = "rebuild it with `python src/prepare.py <dataset> --pack <root>`"
    try:
        index = read_packed_index(packed_dir(root))
    except ValueError as error:
        report.problem(packed_dir(root), str(error), fix)
        return None
    stored = set(index.subjects)
    for key in ("TRAIN_SET", "TEST_SET"):
        absent = [subject for subject in partition[key] if subject not in stored]
        if absent:
            report.problem(
                packed_dir(root),
                f"{len(absent)} {key} id(s) of the partition are not in the packed store "
                f"(e.g. {', '.join(absent[:5])}); it is older than the tree or partition",
                fix,
            )
    report.add("packed sequences", len(index.lengths))
    report.add("packed all-blank sequences", int(index.blank.sum()))
    report.add("packed 1-frame sequences", int((index.lengths == 1).sum()))
    members = {key: set(partition[key]) for key in ("TRAIN_SET", "TEST_SET")}
    return {
        f"packed {split}_sequences": sum(subject in members[key] for subject in index.subjects)
        for split, key in (("train", "TRAIN_SET"), ("test", "TEST_SET"))
    }


def pack_gait_dataset(dataset: str, root: str | Path) -> PrepareReport:
    """``prepare.py <dataset> --pack <root>``: the packed store of a prepared gait tree."""
    from metareid.prepare.oumvlp_grew import GREW, OUMVLP

    releases = {release.dataset: release for release in (CASIAB, OUMVLP, GREW)}
    if dataset not in releases:
        raise fatal(Path(root), f"--pack applies to the gait datasets {sorted(releases)}", "")
    return releases[dataset].pack(root)


CASIAB = GaitRelease("casiab", _scan_casiab_raw, casiab_default_partition, CASIAB_RELEASE_COUNTS)
#: Pretreat CASIA-B (``<raw>/<id>/<type>/<view>/*.png``); partition default
#: ``CASIA-B_include_005`` (74 train / 50 test ids).
prepare_casiab = CASIAB.prepare
#: Validate a prepared CASIA-B tree.
check_casiab = CASIAB.check
