"""CUHK03 → PNG crops and the new-protocol (767/700) splits, for labeled and detected boxes.

Inputs (in ``<raw>`` or ``<raw>/cuhk03_release``):

* ``cuhk-03.mat`` (MATLAB v7.3 = HDF5, read with h5py): groups ``labeled`` and ``detected``, each
  a cell of 5 camera pairs; a pair is a ``[persons × 10]`` cell of ``H × W × 3`` uint8 images,
  columns 0–4 from the first camera of the pair and 5–9 from the second, empty cells for missing
  shots.
* ``cuhk03_new_protocol_config_{labeled,detected}.mat`` (MATLAB v5, read with scipy.io):
  ``filelist`` (image names), ``labels``, ``camId`` (1/2) and 1-based ``train_idx``,
  ``query_idx``, ``gallery_idx``.

Output: ``images_<boxes>/<pair>_<person:03d>_<view>_<shot:02d>.png`` (the names the config
files list) and ``splits_new_<boxes>.json`` =
``{"train": [[path, pid, camid], ...], "query": [...], "gallery": [...]}`` with paths relative
to ``<out>``, pids from ``labels`` and ``camid = camId - 1``; read by
:class:`metareid.data.reid.release_formats.CUHK03`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from metareid.data.reid.protocols import release_counts
from metareid.data.reid.release_formats import cuhk03_split_file
from metareid.prepare.market1501 import ImageRecord, count_records, record_paths, verify_images
from metareid.prepare.report import PrepareReport, Problem, fatal, run_parallel

__all__ = ["BOX_TYPES", "CONFIG_FIELDS", "check_cuhk03", "prepare_cuhk03"]

BOX_TYPES = ("labeled", "detected")
MAT_NAME = "cuhk-03.mat"
CONFIG_NAME = "cuhk03_new_protocol_config_{}.mat"
CONFIG_FIELDS = ("filelist", "labels", "camId", "train_idx", "query_idx", "gallery_idx")
SHOTS_PER_VIEW = 5
IMAGE_NAME = re.compile(r"^\d_\d{3}_[12]_\d{2}\.png$")
CONFIG_FIX = (
    "download the new-protocol configs (cuhk03_new_protocol_config_labeled.mat / _detected.mat, "
    "Zhong et al., CVPR 2017 re-ranking release) and place them next to cuhk-03.mat"
)


def _find(raw: Path, name: str) -> Path | None:
    for folder in (raw, raw / "cuhk03_release"):
        if (folder / name).is_file():
            return folder / name
    return None


def _image_name(pair: int, person: int, shot: int) -> str:
    view = 1 if shot < SHOTS_PER_VIEW else 2
    return f"{pair + 1}_{person + 1:03d}_{view}_{shot + 1:02d}.png"


# --------------------------------------------------------------------------- image extraction
@dataclass(frozen=True)
class _PairTask:
    mat_path: str
    boxes: str
    pair: int
    out_folder: str


@dataclass
class _PairResult:
    names: list[str] = field(default_factory=list)
    written: int = 0
    resumed: int = 0
    empty: int = 0
    problems: list[Problem] = field(default_factory=list)


def _extract_pair(task: _PairTask) -> _PairResult:
    """Worker: write every image of one camera pair of one box type (skipping existing files)."""
    result = _PairResult()
    where = f"{task.mat_path}:{task.boxes}[{task.pair}]"
    try:
        with h5py.File(task.mat_path, "r") as mat:
            _extract_pair_from(mat, task, where, result)
    except (OSError, KeyError, ValueError, TypeError) as error:
        # A broken reference or cell inside the file; the pair is reported, not the pool killed.
        result.problems.append(
            Problem(
                where,
                f"unreadable cell ({type(error).__name__}: {error})",
                "re-download cuhk-03.mat",
            )
        )
    return result


def _extract_pair_from(mat: h5py.File, task: _PairTask, where: str, result: _PairResult) -> None:
    out_folder = Path(task.out_folder)
    pair_ref = np.asarray(mat[task.boxes]).ravel()[task.pair]
    # HDF5 stores MATLAB arrays transposed: [10, persons] here, [3, W, H] per image.
    shots = np.asarray(mat[pair_ref]).T
    if shots.ndim != 2 or shots.shape[1] != 2 * SHOTS_PER_VIEW:
        result.problems.append(
            Problem(
                where,
                f"expected a persons × 10 cell, found shape {shots.shape}",
                "re-download cuhk-03.mat",
            )
        )
        return
    for person in range(shots.shape[0]):
        for shot in range(shots.shape[1]):
            pixels = np.asarray(mat[shots[person, shot]])
            if pixels.ndim < 3 or pixels.size == 0:
                result.empty += 1  # MATLAB stores an empty cell as a 2-element placeholder
                continue
            image = pixels.T
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                result.problems.append(
                    Problem(
                        f"{where} person {person + 1} shot {shot + 1}",
                        f"expected an H × W × 3 uint8 image, found {image.shape} {image.dtype}",
                        "re-download cuhk-03.mat",
                    )
                )
                continue
            name = _image_name(task.pair, person, shot)
            result.names.append(name)
            target = out_folder / name
            if target.is_file():
                result.resumed += 1
                continue
            partial = target.with_name(f".{name}.partial")
            Image.fromarray(np.ascontiguousarray(image)).save(partial, format="PNG")
            os.replace(partial, target)
            result.written += 1


def _pair_count(mat_path: Path, boxes: str, report: PrepareReport) -> int | None:
    try:
        with h5py.File(mat_path, "r") as mat:
            if boxes not in mat:
                report.problem(
                    mat_path,
                    f"field {boxes!r} missing (the release has 'labeled' and 'detected')",
                    "re-download cuhk-03.mat, or prepare only the other box type with --boxes",
                )
                return None
            return int(np.asarray(mat[boxes]).size)
    except OSError as error:
        raise fatal(
            mat_path,
            f"not readable as a MATLAB v7.3 (HDF5) file ({error})",
            "re-download cuhk-03.mat from the CUHK03 release (cuhk03_release.zip)",
        ) from error


# --------------------------------------------------------------------------- new-protocol split
def _load_config(path: Path, report: PrepareReport) -> dict[str, np.ndarray] | None:
    try:
        content = scipy.io.loadmat(str(path))
    except (ValueError, NotImplementedError, OSError) as error:
        report.problem(path, f"cannot read the .mat file ({error})", CONFIG_FIX)
        return None
    missing = [name for name in CONFIG_FIELDS if name not in content]
    if missing:
        report.problem(path, f"field(s) {', '.join(missing)} missing", CONFIG_FIX)
        return None
    return {name: content[name] for name in CONFIG_FIELDS}


def _build_split(
    config: dict[str, np.ndarray],
    config_path: Path,
    boxes: str,
    extracted: set[str],
    report: PrepareReport,
) -> dict[str, list[list]] | None:
    names = [str(np.asarray(item).ravel()[0]) for item in config["filelist"].ravel()]
    labels = config["labels"].ravel().astype(np.int64)
    cameras = config["camId"].ravel().astype(np.int64)
    if not len(names) == len(labels) == len(cameras):
        report.problem(
            config_path,
            f"filelist/labels/camId lengths differ ({len(names)}/{len(labels)}/{len(cameras)})",
            CONFIG_FIX,
        )
        return None
    split: dict[str, list[list]] = {}
    for part in ("train", "query", "gallery"):
        entries = []
        for index in config[f"{part}_idx"].ravel().astype(np.int64):
            if not 1 <= index <= len(names):
                report.problem(
                    config_path, f"{part}_idx holds {index}, outside 1..{len(names)}", CONFIG_FIX
                )
                continue
            name = names[index - 1]
            if not IMAGE_NAME.match(name) or name not in extracted:
                report.problem(
                    config_path,
                    f"{part} image {name!r} is not among the images extracted from "
                    f"cuhk-03.mat[{boxes!r}]",
                    "use the config and cuhk-03.mat of the same release",
                )
                continue
            entries.append(
                [f"images_{boxes}/{name}", int(labels[index - 1]), int(cameras[index - 1]) - 1]
            )
        split[part] = entries
    train_ids = {pid for _, pid, _ in split["train"]}
    test_ids = {pid for _, pid, _ in split["query"] + split["gallery"]}
    if train_ids & test_ids:
        report.warn(f"{config_path}: {len(train_ids & test_ids)} ids are in both train and test")
    return split


def _split_records(root: Path, split: dict[str, list[list]]) -> dict[str, list[ImageRecord]]:
    return {
        part: [ImageRecord(root / path, int(pid), int(camid)) for path, pid, camid in entries]
        for part, entries in split.items()
    }


def _prefixed(counts: dict[str, int], boxes: str) -> dict[str, int]:
    return {f"{boxes}_{key}": value for key, value in counts.items()}


def prepare_cuhk03(
    raw: str | Path,
    out: str | Path,
    *,
    boxes: Sequence[str] = BOX_TYPES,
    workers: int = 1,
    strict: bool = True,
    show_progress: bool = True,
) -> PrepareReport:
    """Extract CUHK03 crops from ``cuhk-03.mat`` and write the new-protocol split files.

    Args:
        raw: folder with ``cuhk-03.mat`` and the two config ``.mat`` files (or its parent
            holding ``cuhk03_release/``).
        out: output folder (resumable: existing PNGs are kept).
        boxes: which of ``"labeled"``, ``"detected"`` to prepare.
        workers, strict, show_progress: as for every prepare command.
    """
    raw, out = Path(raw), Path(out)
    report = PrepareReport("cuhk03", strict=strict)
    unknown = set(boxes) - set(BOX_TYPES)
    if unknown:
        raise ValueError(f"boxes must be among {BOX_TYPES}, got {sorted(unknown)}")
    mat_path = _find(raw, MAT_NAME)
    if mat_path is None:
        raise fatal(
            raw,
            f"{MAT_NAME} not found here or in cuhk03_release/",
            "pass the extracted CUHK03 release folder",
        )
    counts: dict[str, int] = {}
    expected: dict[str, int] = {}
    for box_type in boxes:
        config_path = _find(raw, CONFIG_NAME.format(box_type))
        if config_path is None:
            report.problem(
                raw / CONFIG_NAME.format(box_type), "new-protocol config missing", CONFIG_FIX
            )
            continue
        config = _load_config(config_path, report)
        pairs = _pair_count(mat_path, box_type, report)
        if config is None or pairs is None:
            continue
        folder = out / f"images_{box_type}"
        folder.mkdir(parents=True, exist_ok=True)
        tasks = [_PairTask(str(mat_path), box_type, pair, str(folder)) for pair in range(pairs)]
        extracted: set[str] = set()
        results = run_parallel(
            _extract_pair,
            tasks,
            workers=workers,
            description=f"cuhk03 {box_type}: camera pairs",
            show_progress=show_progress,
        )
        for result in results:
            for problem in result.problems:
                report.record(problem)
            extracted.update(result.names)
            report.add(f"{box_type} images written", result.written)
            report.add(f"{box_type} images already prepared (resumed)", result.resumed)
            report.drop(f"{box_type} empty cells in cuhk-03.mat", result.empty)
        split = _build_split(config, config_path, box_type, extracted, report)
        if split is None:
            continue
        split_path = cuhk03_split_file(out, box_type)
        partial = split_path.with_name(f".{split_path.name}.partial")
        partial.write_text(json.dumps(split))
        os.replace(partial, split_path)
        counts.update(_prefixed(count_records(_split_records(out, split)), box_type))
        expected.update(_prefixed(release_counts("cuhk03", box_type), box_type))
    out.mkdir(parents=True, exist_ok=True)
    report.finish_prepare(out, counts, expected)
    return report


def check_cuhk03(
    root: str | Path,
    *,
    expect: str = "release",
    deep: bool = True,
    workers: int = 1,
    show_progress: bool = True,
) -> PrepareReport:
    """Validate the prepared split files: listed images exist and decode, counts per split."""
    root = Path(root)
    report = PrepareReport("cuhk03", action="check", strict=False)
    present = [b for b in BOX_TYPES if cuhk03_split_file(root, b).is_file()]
    if not present:
        raise fatal(
            root,
            "no splits_new_labeled.json or splits_new_detected.json",
            "run `python src/prepare.py cuhk03 --raw <release> --out <this folder>` first",
        )
    counts: dict[str, int] = {}
    expected: dict[str, int] = {}
    for box_type in present:
        split_path = cuhk03_split_file(root, box_type)
        try:
            split = json.loads(split_path.read_text())
            records = _split_records(
                root, {part: split[part] for part in ("train", "query", "gallery")}
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            report.problem(split_path, f"malformed split file ({error})", "re-run prepare cuhk03")
            continue
        existing: dict[str, list[ImageRecord]] = {}
        for part, part_records in records.items():
            existing[part] = []
            for record in part_records:
                if record.path.is_file():
                    existing[part].append(record)
                else:
                    report.problem(
                        record.path,
                        f"listed in {split_path.name} but missing",
                        "re-run prepare cuhk03",
                    )
        if deep:
            paths = sorted(set(record_paths(existing)))
            verify_images(paths, report, workers=workers, show_progress=show_progress)
        counts.update(_prefixed(count_records(existing), box_type))
        expected.update(_prefixed(release_counts("cuhk03", box_type), box_type))
    return report.finish_check(root, counts, expected, expect)
