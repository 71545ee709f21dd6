"""CUHK-SYSU as a ReID training domain: ``cropped_images/<pid>_<scene>_<n>.jpg``.

The person-search release has no cropped folder (dr50.md §6 item 1), so this module crops one:
``annotation/Person.mat`` lists every annotated identity (``Person`` struct array with fields
``idname`` such as ``p00001``, ``nAppear``, ``scene``; each ``scene`` entry has ``imname``,
``idlocate`` = ``[x, y, w, h]`` in pixels and ``ishard``), and the scene images live in
``Image/SSM/``. Every annotated box is cut out and saved as
``cropped_images/<pid:05d>_<scene stem>_<n>.jpg`` (``n`` = the appearance index of that person).

When ``<raw>`` already holds a ``cropped_images/`` folder (a copy distributed with other code),
the images are validated and placed by link or copy instead.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from metareid.data.reid.protocols import release_counts
from metareid.data.reid.release_formats import cuhksysu_pid
from metareid.prepare.market1501 import (
    ImageRecord,
    count_records,
    record_paths,
    scan_image_folder,
    transfer_images,
    verify_images,
)
from metareid.prepare.report import PrepareReport, Problem, fatal, run_parallel

__all__ = ["PERSON_FIELDS", "SCENE_FIELDS", "check_cuhksysu", "crop_name", "prepare_cuhksysu"]

CROPPED = "cropped_images"
PERSON_FIELDS = ("idname", "scene")
SCENE_FIELDS = ("imname", "idlocate")
PERSON_FIX = (
    "use annotation/Person.mat of the CUHK-SYSU person-search release (struct 'Person' with "
    "fields idname, nAppear, scene{imname, idlocate, ishard})"
)
JPEG_QUALITY = 95


def crop_name(pid: int, scene: str, appearance: int) -> str:
    """File name of one crop, e.g. ``crop_name(1, "s15.jpg", 0) == "00001_s15_0.jpg"``."""
    return f"{pid:05d}_{Path(scene).stem}_{appearance}.jpg"


# --------------------------------------------------------------------------- Person.mat
@dataclass(frozen=True)
class _Crop:
    box: tuple[int, int, int, int]  # x, y, width, height
    target: str
    label: str  # for messages: "<idname> appearance <n>"


@dataclass(frozen=True)
class _SceneTask:
    scene: str
    crops: tuple[_Crop, ...]


@dataclass
class _SceneResult:
    written: int = 0
    problems: list[Problem] = field(default_factory=list)


def _text(value) -> str:
    return str(np.asarray(value).ravel()[0])


def _read_persons(
    person_mat: Path, report: PrepareReport
) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """(idname, [(scene image name, box)]) for every person; problems for missing fields."""
    try:
        content = scipy.io.loadmat(str(person_mat))
    except (ValueError, NotImplementedError, OSError) as error:
        report.problem(person_mat, f"cannot read the .mat file ({error})", PERSON_FIX)
        return []
    persons = content.get("Person")
    names = getattr(getattr(persons, "dtype", None), "names", None) or ()
    missing = [f for f in PERSON_FIELDS if f not in names]
    if persons is None or missing:
        what = "variable 'Person'" if persons is None else f"field(s) {', '.join(missing)}"
        report.problem(person_mat, f"{what} missing", PERSON_FIX)
        return []
    parsed = []
    for person in persons.ravel():
        idname = _text(person["idname"])
        scenes = np.asarray(person["scene"]).ravel()
        scene_names = scenes.dtype.names or ()
        missing = [f for f in SCENE_FIELDS if f not in scene_names]
        if missing:
            report.problem(
                person_mat,
                f"person {idname}: scene field(s) {', '.join(missing)} missing",
                PERSON_FIX,
            )
            continue
        parsed.append(
            (
                idname,
                [
                    (_text(s["imname"]), np.asarray(s["idlocate"], dtype=float).ravel())
                    for s in scenes
                ],
            )
        )
    return parsed


def _crop_scene(task: _SceneTask) -> _SceneResult:
    """Worker: cut every box of one scene image and save the crops as JPEG."""
    result = _SceneResult()
    try:
        with Image.open(task.scene) as opened:
            scene = opened.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        result.problems.append(
            Problem(
                task.scene,
                f"cannot decode the scene image ({error})",
                "replace it from the archive",
            )
        )
        return result
    for crop in task.crops:
        x, y, width, height = crop.box
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + width, scene.width), min(y + height, scene.height)
        if right <= left or bottom <= top:
            result.problems.append(
                Problem(
                    task.scene,
                    f"box [x={x}, y={y}, w={width}, h={height}] of {crop.label} lies outside the "
                    f"{scene.width}×{scene.height} image",
                    "check the annotation in Person.mat",
                )
            )
            continue
        target = Path(crop.target)
        partial = target.with_name(f".{target.name}.partial")
        scene.crop((left, top, right, bottom)).save(partial, format="JPEG", quality=JPEG_QUALITY)
        os.replace(partial, target)
        result.written += 1
    return result


def _crop_from_annotations(
    raw: Path, out: Path, report: PrepareReport, workers: int, show_progress: bool
) -> None:
    person_mat = raw / "annotation" / "Person.mat"
    scene_dir = raw / "Image" / "SSM"
    folder = out / CROPPED
    folder.mkdir(parents=True, exist_ok=True)
    by_scene: dict[str, list[_Crop]] = defaultdict(list)
    for idname, appearances in _read_persons(person_mat, report):
        digits = re.search(r"\d+", idname)
        if digits is None:
            report.problem(person_mat, f"idname {idname!r} holds no number", PERSON_FIX)
            continue
        pid = int(digits.group())
        for number, (scene, box) in enumerate(appearances):
            label = f"{idname} appearance {number}"
            if box.size != 4 or not np.all(np.isfinite(box)):
                report.problem(
                    person_mat, f"{label}: idlocate {box.tolist()} is not [x y w h]", PERSON_FIX
                )
                continue
            target = folder / crop_name(pid, scene, number)
            if target.is_file():
                report.add("crops already prepared (resumed)")
                continue
            source = scene_dir / scene
            if not source.is_file():
                report.problem(source, f"scene image of {label} missing", "re-extract Image/SSM/")
                continue
            x, y, width, height = (int(round(v)) for v in box)
            by_scene[str(source)].append(_Crop((x, y, width, height), str(target), label))
    tasks = [_SceneTask(scene, tuple(crops)) for scene, crops in sorted(by_scene.items())]
    results = run_parallel(
        _crop_scene,
        tasks,
        workers=workers,
        description="cuhksysu: scenes",
        show_progress=show_progress,
    )
    for result in results:
        for problem in result.problems:
            report.record(problem)
        report.add("crops written", result.written)


# --------------------------------------------------------------------------- cropped folder
def _cropped_folder(root: Path) -> Path | None:
    for candidate in (root / CROPPED, root / "cuhk_sysu" / CROPPED):
        if candidate.is_dir():
            return candidate
    return None


def _crop_identity(name: str) -> tuple[int, int]:
    # Every crop counts as camera 0: the person-search release has no camera annotation.
    return cuhksysu_pid(name), 0


def _scan_cropped(folder: Path, report: PrepareReport) -> list[ImageRecord]:
    return scan_image_folder(folder, report, _crop_identity, f"{CROPPED}/")


def prepare_cuhksysu(
    raw: str | Path,
    out: str | Path,
    *,
    link: str = "symlink",
    workers: int = 1,
    strict: bool = True,
    show_progress: bool = True,
) -> PrepareReport:
    """Crop (or validate and link) CUHK-SYSU into ``<out>/cropped_images``.

    Args:
        raw: the person-search release (``annotation/Person.mat`` + ``Image/SSM/``), or a folder
            that already holds ``cropped_images/``.
        out: output folder (resumable: existing crops are kept).
        link: how existing crops are placed (``"symlink"``, ``"hardlink"``, ``"copy"``).
        workers, strict, show_progress: as for every prepare command.
    """
    raw, out = Path(raw), Path(out)
    report = PrepareReport("cuhksysu", strict=strict)
    if not raw.is_dir():
        raise fatal(raw, "CUHK-SYSU folder does not exist", "pass the extracted release folder")
    existing = _cropped_folder(raw)
    if existing is not None:
        records = _scan_cropped(existing, report)
        pairs = [(r.path, out / CROPPED / r.path.name) for r in records]
        transfer_images(pairs, report, link=link, workers=workers, show_progress=show_progress)
    elif (raw / "annotation" / "Person.mat").is_file() and (raw / "Image" / "SSM").is_dir():
        _crop_from_annotations(raw, out, report, workers, show_progress)
    else:
        nested = [
            c
            for c in sorted(raw.iterdir())
            if c.is_dir() and (c / "annotation" / "Person.mat").is_file()
        ]
        fix = f"pass {nested[0]}" if nested else "extract the CUHK-SYSU person-search release"
        raise fatal(
            raw,
            "wrong directory depth: expected annotation/Person.mat and Image/SSM/ "
            "(or cropped_images/)",
            fix,
        )
    final = _scan_cropped(out / CROPPED, PrepareReport("cuhksysu", "check", strict=False))
    # Only a copied cropped folder should match fast-reid's counts; fresh crops of Person.mat
    # may legitimately differ.
    expected = release_counts("cuhksysu") if existing is not None else None
    report.finish_prepare(out, count_records({"train": final}), expected, "fast-reid cropped copy")
    return report


def check_cuhksysu(
    root: str | Path,
    *,
    expect: str = "release",
    deep: bool = True,
    workers: int = 1,
    show_progress: bool = True,
) -> PrepareReport:
    """Validate ``cropped_images/``: names carry a pid, images decode, counts.

    ``expect="release"`` compares with fast-reid's cropped copy (11,934 ids / 34,574 images); a
    crop of ``Person.mat`` may legitimately differ, use ``expect="manifest"`` for it.
    """
    root = Path(root)
    report = PrepareReport("cuhksysu", action="check", strict=False)
    folder = _cropped_folder(root)
    if folder is None:
        raise fatal(root, "no cropped_images/ folder", "run `python src/prepare.py cuhksysu` first")
    splits = {"train": _scan_cropped(folder, report)}
    if deep:
        verify_images(record_paths(splits), report, workers=workers, show_progress=show_progress)
    return report.finish_check(root, count_records(splits), release_counts("cuhksysu"), expect)
