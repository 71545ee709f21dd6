"""OU-MVLP and GREW silhouettes → the same ``<id>/<type>/<view>/<view>.pkl`` tree as CASIA-B.

These are the datasets of GaitGL's large (256-channel) variant. Both are rearranged into the
three-level layout OpenGait uses and written with a ``partition.json`` that reproduces OpenGait's
partition files, so the gait DataModule reads them like CASIA-B.

OU-MVLP raw: ``<raw>/Silhouette_<view>-<seq>/<subject>/<frame>.png`` (e.g.
``Silhouette_000-00/00001/0001.png``) → ``<out>/<subject>/<seq>/<view>/<view>.pkl``, frames
aligned exactly like CASIA-B. Partition: odd ids up to 10305 train (5,153), the rest test (5,154).

GREW raw: ``<raw>/train/<subject>/<seq>/*.png``, ``<raw>/test/gallery/<subject>/<seq>/*.png``,
``<raw>/test/probe/<seq>/*.png`` (``distractor/`` ignored, ``*gei.png`` skipped) →
``<subject>train/00/<seq>/``, ``<subject>/<01|02>/<seq>/`` (the two gallery sequences of a subject
in sorted order) and ``probe/03/<seq>/``. GREW frames are already normalised, so they are stored
as read, without the CASIA-B alignment. Partition: ``00001train … 20000train`` train,
``00001 … 06000`` and ``probe`` test.
"""

from __future__ import annotations

import re
from pathlib import Path

from metareid.prepare.casiab import GaitRelease, RawSequence, list_entries
from metareid.prepare.report import PrepareReport, fatal

__all__ = [
    "GREW",
    "GREW_RELEASE_COUNTS",
    "OUMVLP",
    "OUMVLP_RELEASE_COUNTS",
    "OUMVLP_VIEWS",
    "check_grew",
    "check_oumvlp",
    "grew_partition",
    "oumvlp_partition",
    "prepare_grew",
    "prepare_oumvlp",
]

OUMVLP_VIEWS = tuple(f"{a:03d}" for a in [*range(0, 91, 15), *range(180, 271, 15)])
OUMVLP_SUBJECTS = 10_307
OUMVLP_RELEASE_COUNTS = {"train_ids": 5153, "test_ids": 5154}
GREW_TRAIN_SUBJECTS = 20_000
GREW_TEST_SUBJECTS = 6_000
GREW_RELEASE_COUNTS = {"train_ids": 20_000, "test_ids": 6_001}
GREW_PROBE = "probe"

OUMVLP_FOLDER = re.compile(r"^Silhouette_(\d{3})-(\d{2})$")
OUMVLP_SUBJECT = re.compile(r"^\d{5}$")
OUMVLP_FRAME = re.compile(r"^\d{4}\.png$")


def oumvlp_partition() -> dict[str, list[str]]:
    """OpenGait's ``OUMVLP.json``: odd ids 00001…10305 train; even ids and 10307 test."""
    ids = range(1, OUMVLP_SUBJECTS + 1)
    return {
        "TRAIN_SET": [f"{i:05d}" for i in ids if i % 2 == 1 and i < OUMVLP_SUBJECTS],
        "TEST_SET": [f"{i:05d}" for i in ids if i % 2 == 0 or i == OUMVLP_SUBJECTS],
    }


def grew_partition() -> dict[str, list[str]]:
    """OpenGait's ``GREW.json``: 20,000 ``<id>train`` subjects; 6,000 test subjects + ``probe``."""
    return {
        "TRAIN_SET": [f"{i:05d}train" for i in range(1, GREW_TRAIN_SUBJECTS + 1)],
        "TEST_SET": [f"{i:05d}" for i in range(1, GREW_TEST_SUBJECTS + 1)] + [GREW_PROBE],
    }


def _png_frames(folder: Path, report: PrepareReport, pattern: re.Pattern[str] | None) -> list[str]:
    frames = []
    for entry in list_entries(folder):
        if entry.is_dir():
            report.problem(
                entry,
                "wrong directory depth: folder inside a sequence folder",
                "move its frames up into the sequence folder or delete it",
            )
            continue
        if entry.suffix.lower() != ".png" or entry.name.endswith("gei.png"):
            report.add("non-silhouette files ignored")
            continue
        if pattern is not None and not pattern.match(entry.name):
            report.problem(
                entry, f"file name does not match {pattern.pattern!r}", "rename or remove it"
            )
            continue
        frames.append(str(entry))
    if not frames:
        report.problem(
            folder, "empty sequence folder (no PNG frames)", "re-extract it from the archive"
        )
    return frames


# --------------------------------------------------------------------------- OU-MVLP
def _scan_oumvlp_raw(raw: Path, report: PrepareReport) -> list[RawSequence]:
    if not raw.is_dir():
        raise fatal(raw, "raw folder does not exist", "pass the extracted OU-MVLP folder")
    folders = [c for c in list_entries(raw) if c.is_dir()]
    view_folders = [c for c in folders if OUMVLP_FOLDER.match(c.name)]
    if not view_folders:
        layout = "expected <raw>/Silhouette_<view>-<seq>/<subject>/<frame>.png"
        if OUMVLP_FOLDER.match(raw.name):
            fix = f"this is one view folder; pass --raw {raw.parent}"
        elif len(folders) == 1 and any(
            OUMVLP_FOLDER.match(c.name) for c in list_entries(folders[0])
        ):
            fix = f"the view folders are one level deeper; pass --raw {folders[0]}"
        else:
            fix = "extract every Silhouette_<view>-<seq> archive into one folder and pass it"
        raise fatal(raw, f"wrong directory depth: {layout}", fix)
    sequences = []
    for folder in view_folders:
        view, seq = OUMVLP_FOLDER.match(folder.name).groups()
        if view not in OUMVLP_VIEWS:
            report.problem(folder, f"unknown view {view}", "rename or remove the folder")
            continue
        for subject in list_entries(folder):
            if not subject.is_dir() or not OUMVLP_SUBJECT.match(subject.name):
                report.problem(
                    subject,
                    "expected a 5-digit subject folder here (wrong directory depth?)",
                    "the layout is Silhouette_<view>-<seq>/<subject>/<frame>.png",
                )
                continue
            frames = _png_frames(subject, report, OUMVLP_FRAME)
            if frames:
                sequences.append(RawSequence(subject.name, seq, view, tuple(frames)))
    return sequences


OUMVLP = GaitRelease("oumvlp", _scan_oumvlp_raw, oumvlp_partition, OUMVLP_RELEASE_COUNTS)
#: Rearrange and pretreat OU-MVLP (same frame alignment as CASIA-B); partition default
#: :func:`oumvlp_partition`.
prepare_oumvlp = OUMVLP.prepare
#: Validate a prepared OU-MVLP tree.
check_oumvlp = OUMVLP.check


# --------------------------------------------------------------------------- GREW
def _scan_grew_raw(raw: Path, report: PrepareReport) -> list[RawSequence]:
    if not raw.is_dir():
        raise fatal(raw, "raw folder does not exist", "pass the extracted GREW folder")
    train, gallery, probe = raw / "train", raw / "test" / "gallery", raw / "test" / "probe"
    if not (train.is_dir() or gallery.is_dir()):
        nested = [c for c in list_entries(raw) if c.is_dir() and (c / "train").is_dir()]
        fix = (
            f"the dataset is one level deeper; pass --raw {nested[0]}"
            if nested
            else "extract train.zip and test.zip (and their inner .tgz files) into one folder"
        )
        raise fatal(
            raw, "wrong directory depth: expected <raw>/train/ and <raw>/test/{gallery,probe}/", fix
        )
    sequences = []
    for subject in list_entries(train) if train.is_dir() else []:
        for seq in _subject_sequences(subject, report):
            frames = _png_frames(seq, report, None)
            if frames:
                sequences.append(RawSequence(f"{subject.name}train", "00", seq.name, tuple(frames)))
    for subject in list_entries(gallery) if gallery.is_dir() else []:
        for number, seq in enumerate(_subject_sequences(subject, report), start=1):
            frames = _png_frames(seq, report, None)
            if frames:
                sequences.append(
                    RawSequence(subject.name, f"{number:02d}", seq.name, tuple(frames))
                )
    for seq in list_entries(probe) if probe.is_dir() else []:
        if not seq.is_dir():
            continue
        frames = _png_frames(seq, report, None)
        if frames:
            sequences.append(RawSequence(GREW_PROBE, "03", seq.name, tuple(frames)))
    return sequences


def _subject_sequences(subject: Path, report: PrepareReport) -> list[Path]:
    if not subject.is_dir():
        return []
    sequences = []
    for entry in list_entries(subject):
        if entry.is_dir():
            sequences.append(entry)
        elif entry.suffix.lower() == ".png":
            report.problem(
                entry,
                "wrong directory depth: frame directly in a subject folder",
                "frames belong in <subject>/<sequence id>/",
            )
    return sequences


# GREW frames are already normalised: stored as read, so their width is not fixed either.
GREW = GaitRelease(
    "grew", _scan_grew_raw, grew_partition, GREW_RELEASE_COUNTS, align=False, frame_width=None
)
#: Rearrange GREW into the pkl tree (frames stored as released); partition default
#: :func:`grew_partition`.
prepare_grew = GREW.prepare
#: Validate a prepared GREW tree (frame width not checked).
check_grew = GREW.check
