"""MSMT17 (V1 or V2) → a validated V1-layout tree.

Raw: ``MSMT17_V1/{train,test}/`` or ``MSMT17_V2/{mask_train_v2,mask_test_v2}/`` next to
``list_{train,val,query,gallery}.txt`` (lines ``<relative path> <pid>``, paths relative to the
training folder for train/val and to the test folder for query/gallery). The camera is the third
``_`` field of the file name (1–15).

Output: ``<out>/{train,test}/`` (symlinks by default) and the four list files rewritten with only
the lines whose image passed validation, i.e. the layout
:class:`metareid.data.reid.release_formats.MSMT17` reads whatever the release version was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from metareid.data.reid.protocols import release_counts
from metareid.data.reid.release_formats import MSMT17_IMAGE_FOLDERS, parse_msmt17_line
from metareid.prepare.market1501 import (
    ImageRecord,
    count_records,
    record_paths,
    transfer_images,
    verify_images,
)
from metareid.prepare.report import PrepareReport, fatal

__all__ = ["check_msmt17", "prepare_msmt17"]

# split → (list file, index of the image folder in MSMT17_IMAGE_FOLDERS values)
LISTS = {
    "train": ("list_train.txt", 0),
    "val": ("list_val.txt", 0),
    "query": ("list_query.txt", 1),
    "gallery": ("list_gallery.txt", 1),
}
OPTIONAL_SPLITS = ("val",)
OUTPUT_FOLDERS = MSMT17_IMAGE_FOLDERS["MSMT17_V1"]


@dataclass(frozen=True)
class _Entry:
    relative: str
    pid: int
    camid: int
    source: Path


def _resolve_root(raw: Path) -> tuple[Path, tuple[str, str]]:
    if not raw.is_dir():
        raise fatal(
            raw, "MSMT17 folder does not exist", "pass the extracted MSMT17_V1 or _V2 folder"
        )
    for candidate in (raw / "MSMT17_V1", raw / "MSMT17_V2", raw):
        if (candidate / "list_train.txt").is_file():
            for folders in MSMT17_IMAGE_FOLDERS.values():
                if (candidate / folders[0]).is_dir() and (candidate / folders[1]).is_dir():
                    return candidate, folders
    image_folders = {name for folders in MSMT17_IMAGE_FOLDERS.values() for name in folders}
    layout = (
        "expected list_train.txt next to train/ and test/ (V1) "
        "or mask_train_v2/ and mask_test_v2/ (V2)"
    )
    if raw.name in image_folders:
        raise fatal(raw, f"wrong directory depth: {layout}", f"pass {raw.parent}")
    nested = [c for c in sorted(raw.iterdir()) if c.is_dir() and (c / "list_train.txt").is_file()]
    if nested:
        raise fatal(raw, f"wrong directory depth: {layout}", f"pass {nested[0]}")
    raise fatal(raw, layout, "re-extract the MSMT17 archive")


def _read_list(
    root: Path, folders: tuple[str, str], split: str, report: PrepareReport
) -> list[_Entry] | None:
    list_name, folder_index = LISTS[split]
    list_path = root / list_name
    if not list_path.is_file():
        if split in OPTIONAL_SPLITS:
            report.warn(f"{list_path} is missing; the val split is empty")
            return None
        report.problem(list_path, "list file missing", "copy it from the MSMT17 release")
        return None
    entries = []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            relative, pid, camid = parse_msmt17_line(line)
        except ValueError as error:
            report.problem(f"{list_path}:{number}", str(error), "correct or delete the line")
            continue
        source = root / folders[folder_index] / relative
        if not source.is_file():
            report.problem(
                source,
                f"listed in {list_name} line {number} but missing",
                "re-extract the image folder, or delete the line",
            )
            continue
        entries.append(_Entry(relative, pid, camid, source))
    return entries


def _records(entries: dict[str, list[_Entry] | None]) -> dict[str, list[ImageRecord]]:
    return {
        split: [ImageRecord(e.source, e.pid, e.camid) for e in split_entries]
        for split, split_entries in entries.items()
        if split_entries is not None
    }


def prepare_msmt17(
    raw: str | Path,
    out: str | Path,
    *,
    link: str = "symlink",
    workers: int = 1,
    strict: bool = True,
    show_progress: bool = True,
) -> PrepareReport:
    """Validate MSMT17 and write it to ``out`` in the V1 layout with cleaned list files.

    Args:
        raw: ``MSMT17_V1``/``MSMT17_V2`` or their parent.
        out: output folder (resumable).
        link: ``"symlink"``, ``"hardlink"`` or ``"copy"``.
        workers, strict, show_progress: as for every prepare command.
    """
    report = PrepareReport("msmt17", strict=strict)
    root, folders = _resolve_root(Path(raw))
    out = Path(out)
    entries = {split: _read_list(root, folders, split, report) for split in LISTS}
    targets = {}
    for split, split_entries in entries.items():
        output_folder = OUTPUT_FOLDERS[LISTS[split][1]]
        for entry in split_entries or []:
            targets[entry.source] = out / output_folder / entry.relative
    transfer_images(
        targets.items(), report, link=link, workers=workers, show_progress=show_progress
    )
    written = {}
    for split, split_entries in entries.items():
        if split_entries is None:
            continue
        kept = [e for e in split_entries if targets[e.source].is_file()]
        _write_list(out / LISTS[split][0], [f"{e.relative} {e.pid}" for e in kept])
        written[split] = [ImageRecord(targets[e.source], e.pid, e.camid) for e in kept]
    report.finish_prepare(out, count_records(written), release_counts("msmt17"))
    return report


def _write_list(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(f"{line}\n" for line in lines))
    os.replace(partial, path)


def check_msmt17(
    root: str | Path,
    *,
    expect: str = "release",
    deep: bool = True,
    workers: int = 1,
    show_progress: bool = True,
) -> PrepareReport:
    """Validate an MSMT17 tree (prepared or raw): list lines, listed files, images, counts."""
    report = PrepareReport("msmt17", action="check", strict=False)
    root, folders = _resolve_root(Path(root))
    entries = {split: _read_list(root, folders, split, report) for split in LISTS}
    records = _records(entries)
    if deep:
        verify_images(record_paths(records), report, workers=workers, show_progress=show_progress)
    return report.finish_check(root, count_records(records), release_counts("msmt17"), expect)
