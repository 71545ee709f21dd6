"""Bad input on fabricated trees: each problem names the path and the fix (strict), or becomes a
counted skip listed in the report (``strict=False``)."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from raw_releases import (
    CASIAB_PARTITION,
    write_cuhk03_config,
    write_cuhk03_mat,
    write_person_mat,
)
from rich.console import Console

from metareid.data.reid.release_formats import CUHKSYSU, MSMT17
from metareid.prepare.casiab import check_casiab, prepare_casiab
from metareid.prepare.cuhk03 import prepare_cuhk03
from metareid.prepare.cuhksysu import prepare_cuhksysu
from metareid.prepare.market1501 import prepare_market1501
from metareid.prepare.msmt17 import prepare_msmt17
from metareid.prepare.oumvlp_grew import prepare_oumvlp
from metareid.prepare.report import MANIFEST_NAME, PrepareError

QUIET = {"show_progress": False}


def prepare_gait(raw, out, strict=True, partition=CASIAB_PARTITION):
    return prepare_casiab(raw, out, partition=partition, strict=strict, **QUIET)


def assert_names_path_and_fix(error: PrepareError, path) -> None:
    assert str(path) in str(error) and "Fix:" in str(error)


def strict_then_lenient(prepare, raw, tmp_path, match: str, culprit, **kwargs):
    """Prepare ``raw`` strictly into ``tmp_path/strict``, which must stop at ``culprit`` naming it
    and the fix, then with ``strict=False`` into ``tmp_path/lenient``; the lenient report."""
    with pytest.raises(PrepareError, match=match) as caught:
        prepare(raw, tmp_path / "strict", **kwargs)
    assert_names_path_and_fix(caught.value, culprit)
    return prepare(raw, tmp_path / "lenient", strict=False, **kwargs)


# --------------------------------------------------------------------------- wrong directory depth
def test_raw_one_level_too_high_names_the_folder_to_pass(casiab_raw, tmp_path):
    with pytest.raises(PrepareError, match="one level deeper") as caught:
        prepare_gait(casiab_raw.parent, tmp_path / "out", strict=False)  # fatal even non-strict
    assert f"pass --raw {casiab_raw}" in str(caught.value)


def test_raw_subject_folder_names_its_parent(casiab_raw, tmp_path):
    with pytest.raises(PrepareError, match="one subject's folder") as caught:
        prepare_gait(casiab_raw / "001", tmp_path / "out")
    assert f"pass --raw {casiab_raw}" in str(caught.value)


def test_unextracted_subject_archives_are_recognised(tmp_path):
    raw = tmp_path / "GaitDatasetB-silh"
    raw.mkdir()
    (raw / "001.tar.gz").write_bytes(b"")
    with pytest.raises(PrepareError, match="not extracted") as caught:
        prepare_gait(raw, tmp_path / "out")
    assert "tar xzf" in str(caught.value)


def test_frames_without_view_level_are_a_depth_problem(casiab_raw, tmp_path):
    misplaced = casiab_raw / "002" / "nm-01" / "002-nm-01-000-009.png"
    shutil.copy(casiab_raw / "002" / "nm-01" / "000" / "002-nm-01-000-001.png", misplaced)
    report = strict_then_lenient(
        prepare_gait, casiab_raw, tmp_path, "wrong directory depth", misplaced
    )
    assert [p.path for p in report.problems] == [str(misplaced)]
    assert report.counts["sequences written"] == 11


def test_check_flags_pkl_at_wrong_depth(casiab_raw, tmp_path):
    out = tmp_path / "out"
    prepare_gait(casiab_raw, out)
    stray = out / "001" / "nm-01" / "000.pkl"
    shutil.move(out / "001" / "nm-01" / "000" / "000.pkl", stray)
    shutil.rmtree(out / "001" / "nm-01" / "000")
    report = check_casiab(out, expect="manifest", **QUIET)
    assert str(stray) in [p.path for p in report.problems]
    assert [(c.name, c.found, c.expected) for c in report.mismatches] == [("train_sequences", 7, 8)]


def test_market_split_folder_given_instead_of_root(market_raw, tmp_path):
    with pytest.raises(PrepareError, match="one split folder") as caught:
        prepare_market1501(market_raw / "query", tmp_path / "out", **QUIET)
    assert f"pass {market_raw}" in str(caught.value)


def test_oumvlp_single_view_folder_names_its_parent(oumvlp_raw, tmp_path):
    with pytest.raises(PrepareError, match="wrong directory depth") as caught:
        prepare_oumvlp(oumvlp_raw / "Silhouette_000-00", tmp_path / "out", **QUIET)
    assert f"pass --raw {oumvlp_raw}" in str(caught.value)


# --------------------------------------------------------------------------- partition id absent
def test_partition_id_absent_from_raw_release(casiab_raw, tmp_path):
    partition = {"TRAIN_SET": ["001", "002", "004"], "TEST_SET": ["003"]}
    absent = casiab_raw / "004"
    report = strict_then_lenient(
        prepare_gait, casiab_raw, tmp_path, "partition id 004", absent, partition=partition
    )
    assert [p.path for p in report.problems] == [str(casiab_raw / "004")]
    assert report.counts["train_ids"] == 2


def test_check_reports_partition_id_absent_from_prepared_tree(casiab_raw, tmp_path):
    out = tmp_path / "out"
    prepare_gait(casiab_raw, out)
    shutil.rmtree(out / "002")
    report = check_casiab(out, expect="none", **QUIET)
    assert not report.ok
    (problem,) = report.problems
    assert problem.path == str(out / "002")
    assert "TRAIN_SET" in problem.message and "--partition" in problem.fix


# --------------------------------------------------------------------------- empty view folder
def test_empty_view_folder_in_raw_release(casiab_raw, tmp_path):
    empty = casiab_raw / "001" / "nm-01" / "036"
    empty.mkdir()
    report = strict_then_lenient(prepare_gait, casiab_raw, tmp_path, "empty view folder", empty)
    assert [p.path for p in report.problems] == [str(empty)]
    assert report.counts["sequences written"] == 11


def test_check_reports_empty_view_folder(casiab_raw, tmp_path):
    out = tmp_path / "out"
    prepare_gait(casiab_raw, out)
    (out / "003" / "cl-01" / "090").mkdir(parents=True)
    report = check_casiab(out, expect="manifest", **QUIET)
    assert [p.path for p in report.problems] == [str(out / "003" / "cl-01" / "090")]


# --------------------------------------------------------------------------- corrupt files
def test_corrupt_png_frame(casiab_raw, tmp_path):
    corrupt = casiab_raw / "002" / "nm-01" / "000" / "002-nm-01-000-002.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated
    report = strict_then_lenient(prepare_gait, casiab_raw, tmp_path, "cannot decode", corrupt)
    assert not (tmp_path / "strict" / "002" / "nm-01" / "000" / "000.pkl").exists()
    assert [p.path for p in report.problems] == [str(corrupt)]
    assert report.counts["frames kept"] == 10 * 3 + 2  # the other two frames are kept


def test_corrupt_jpeg_is_not_placed(market_raw, tmp_path):
    corrupt = market_raw / "bounding_box_train" / "0007_c3s1_000101_01.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:-200])
    report = strict_then_lenient(
        prepare_market1501, market_raw, tmp_path, "cannot decode", corrupt, **QUIET
    )
    assert [p.path for p in report.problems] == [str(corrupt)]
    assert (report.counts["train_images"], report.counts["train_ids"]) == (2, 1)


def test_check_reports_unreadable_pkl(casiab_raw, tmp_path):
    out = tmp_path / "out"
    prepare_gait(casiab_raw, out)
    broken = out / "003" / "nm-01" / "000" / "000.pkl"
    broken.write_bytes(b"not a pickle")
    report = check_casiab(out, expect="manifest", **QUIET)
    assert [p.path for p in report.problems] == [str(broken)]
    assert check_casiab(out, expect="manifest", deep=False, **QUIET).ok  # --quick skips reads


# --------------------------------------------------------------------------- file name patterns
def test_frame_name_not_matching_its_folder(casiab_raw, tmp_path):
    stray = casiab_raw / "001" / "nm-02" / "018" / "001-nm-01-018-004.png"
    shutil.copy(casiab_raw / "001" / "nm-02" / "018" / "001-nm-02-018-001.png", stray)
    report = strict_then_lenient(prepare_gait, casiab_raw, tmp_path, "does not match", stray)
    assert [p.path for p in report.problems] == [str(stray)]
    assert report.counts["frames read"] == 36


def test_reid_names_and_cameras_must_parse(market_raw, tmp_path):
    bad_name = market_raw / "query" / "person.jpg"
    bad_camera = market_raw / "query" / "0012_c9s1_000101_00.jpg"
    for path in (bad_name, bad_camera):
        shutil.copy(market_raw / "query" / "0010_c1s1_001051_00.jpg", path)
    # Files are scanned in sorted order, so the strict run stops at the camera first.
    report = strict_then_lenient(
        prepare_market1501, market_raw, tmp_path, "camera 9 outside 1..6", bad_camera, **QUIET
    )
    assert [p.path for p in report.problems] == [str(bad_camera), str(bad_name)]
    assert "does not match" in report.problems[1].message
    assert report.counts["query_images"] == 2


def test_msmt17_malformed_list_line_and_missing_image(msmt17_raw, tmp_path):
    root = next(msmt17_raw.iterdir())
    with open(root / "list_train.txt", "a") as stream:
        stream.write("0002/0002_000_01_x.jpg\n")  # no pid
        stream.write("0003/0003_000_02_0303morning_0001_0.jpg 3\n")  # image absent
    report = strict_then_lenient(
        prepare_msmt17, msmt17_raw, tmp_path, "list_train.txt:3", root / "list_train.txt", **QUIET
    )
    assert len(report.problems) == 2 and "missing" in report.problems[1].message
    assert report.counts["train_images"] == 2
    # The loader applies the same rules to an unprepared tree.
    with pytest.raises(ValueError, match="list_train.txt:3"):
        MSMT17(msmt17_raw)
    assert MSMT17(msmt17_raw, strict=False).num_skipped == 2


def test_cuhksysu_loader_rejects_names_without_pid(tmp_path):
    folder = tmp_path / "cropped_images"
    folder.mkdir()
    (folder / "00001_s1_0.jpg").write_bytes(b"")
    (folder / "crop.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="crop.jpg"):
        CUHKSYSU(tmp_path)
    assert CUHKSYSU(tmp_path, strict=False).num_skipped == 1


# --------------------------------------------------------------------------- .mat fields
def test_cuhk03_config_without_train_idx(cuhk03_raw, tmp_path):
    config = cuhk03_raw / "cuhk03_new_protocol_config_labeled.mat"
    write_cuhk03_config(config, drop_field="train_idx")
    report = strict_then_lenient(prepare_cuhk03, cuhk03_raw, tmp_path, "train_idx", config, **QUIET)
    out = tmp_path / "lenient"
    assert [p.path for p in report.problems] == [str(config)]
    assert not (out / "splits_new_labeled.json").exists()
    detected = json.loads((out / "splits_new_detected.json").read_text())
    assert len(detected["train"]) == 18


def test_cuhk03_mat_without_detected_boxes(cuhk03_raw, tmp_path):
    mat = cuhk03_raw / "cuhk-03.mat"
    write_cuhk03_mat(mat, box_types=("labeled",))
    report = strict_then_lenient(
        prepare_cuhk03, cuhk03_raw, tmp_path, "'detected' missing", mat, **QUIET
    )
    assert report.counts["labeled_train_images"] == 18
    assert "detected_train_images" not in report.counts


def test_cuhk03_mat_that_is_not_hdf5(cuhk03_raw, tmp_path):
    (cuhk03_raw / "cuhk-03.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(PrepareError, match="v7.3") as caught:
        prepare_cuhk03(cuhk03_raw, tmp_path / "out", strict=False, **QUIET)
    assert_names_path_and_fix(caught.value, cuhk03_raw / "cuhk-03.mat")


def test_person_mat_without_idlocate(cuhksysu_raw, tmp_path):
    person_mat = cuhksysu_raw / "annotation" / "Person.mat"
    write_person_mat(person_mat, drop_scene_field="idlocate")
    report = strict_then_lenient(
        prepare_cuhksysu, cuhksysu_raw, tmp_path, "idlocate", person_mat, **QUIET
    )
    assert len(report.problems) == 2  # one per person
    assert report.counts["train_images"] == 0


def test_crop_box_outside_the_scene(cuhksysu_raw, tmp_path):
    persons = {"p00003": [("s1.jpg", [100, 100, 5, 5]), ("s1.jpg", [1, 1, 4, 6])]}
    write_person_mat(cuhksysu_raw / "annotation" / "Person.mat", persons=persons)
    report = prepare_cuhksysu(cuhksysu_raw, tmp_path / "out", strict=False, **QUIET)
    (problem,) = report.problems
    assert "outside" in problem.message and problem.path.endswith("s1.jpg")
    assert report.counts["train_images"] == 1


def test_report_lists_skipped_problems_with_their_fix(casiab_raw, tmp_path):
    empty = casiab_raw / "002" / "bg-01" / "000"
    empty.mkdir(parents=True)
    report = prepare_gait(casiab_raw, tmp_path / "out", strict=False)
    stream = io.StringIO()
    report.render(Console(file=stream, width=400))
    text = stream.getvalue()
    assert f"{empty}: empty view folder (no PNG frames). Fix: re-extract" in text
    assert "003/nm-02/018" in text  # the sequence without valid frames
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["report"]["problems"][0]["path"] == str(empty)
