"""CASIA-B rank-1 evaluator (metagait spec §8.1-8.2) and the shared distance helpers."""

from __future__ import annotations

import math

import pytest
import torch

from metareid.evaluation.casiab import (
    CONDITION_PROBE_TYPES,
    CONDITIONS,
    GALLERY_TYPES,
    TYPES,
    VIEWS,
    CasiaBIdentification,
    format_casiab_table,
)
from metareid.evaluation.distances import (
    cosine_distance,
    euclidean_distance,
    part_cosine_distance,
    part_euclidean_distance,
)

# ---------------------------------------------------------------------------------------------
# Hand-built feature set with a known answer.
#
# Three subjects; a feature is [subject block (3 dims) | clothing block (3 dims)] and every part
# is a scaled copy of it (part k = (k + 1) * feature), which changes no ranking.
#   gallery (s, v2):  [e_s, C * e_sigma(s)]  where sigma = shift by one if v2 in SHIFTED_GALLERY
#   NM / BG probe:    [e_s, 0]               -> nearest gallery always subject s (100 %)
#   CL probe (s, v1): [0, C * e_tau(s)]      where tau = shift by one if v1 in SHIFTED_CL_PROBE
# A CL probe's nearest gallery at v2 is the subject s' with sigma(s') = tau(s), so it is right
# exactly when [v1 in SHIFTED_CL_PROBE] == [v2 in SHIFTED_GALLERY].
# BG is corrupted for whole probe views: bg-02 of subject 0 at view 1 (5 of 6 right -> 83.33)
# and bg-01 and bg-02 of subject 2 at view 3 (4 of 6 right -> 66.67).
# ---------------------------------------------------------------------------------------------
SUBJECT_IDS = (75, 76, 77)
CLOTHING_SCALE = 3.0
SHIFTED_GALLERY = {0, 5}
SHIFTED_CL_PROBE = {0, 1, 2}
WRONG_BG = {(0, "bg-02", 1): 1, (2, "bg-01", 3): 0, (2, "bg-02", 3): 0}  # -> subject used
NUM_PARTS = 2


def unit(index: int) -> torch.Tensor:
    return torch.eye(3)[index]


def hand_feature(subject: int, type_name: str, view: int) -> torch.Tensor:
    shift = (subject + 1) % 3
    if type_name in GALLERY_TYPES:
        clothing = shift if view in SHIFTED_GALLERY else subject
        vector = torch.cat([unit(subject), CLOTHING_SCALE * unit(clothing)])
    elif type_name.startswith("cl"):
        clothing = shift if view in SHIFTED_CL_PROBE else subject
        vector = torch.cat([torch.zeros(3), CLOTHING_SCALE * unit(clothing)])
    else:
        shown = WRONG_BG.get((subject, type_name, view), subject)
        vector = torch.cat([unit(shown), torch.zeros(3)])
    return torch.stack([(part + 1) * vector for part in range(NUM_PARTS)])


ALL_VIEWS = tuple(range(len(VIEWS)))


def hand_built_set(views=ALL_VIEWS, drop=None):
    """(embeddings [N, parts, 6], subjects, type_index, view_index) for the construction.

    ``drop(subject, type_name, view)`` returning true leaves that sequence out.
    """
    rows = [
        (subject, type_id, view)
        for subject in range(3)
        for type_id, type_name in enumerate(TYPES)
        for view in views
        if drop is None or not drop(subject, type_name, view)
    ]
    embeddings = torch.stack([hand_feature(s, TYPES[t], v) for s, t, v in rows])
    subjects = torch.tensor([SUBJECT_IDS[s] for s, _, _ in rows])
    type_index = torch.tensor([t for _, t, _ in rows])
    view_index = torch.tensor([v for _, _, v in rows])
    return embeddings, subjects, type_index, view_index


def expected_cell(condition: str, probe_view: int, gallery_view: int) -> float:
    if condition == "NM":
        return 100.0
    if condition == "BG":
        return {1: 83.33, 3: 66.67}.get(probe_view, 100.0)
    shifted_probe = probe_view in SHIFTED_CL_PROBE
    return 100.0 if shifted_probe == (gallery_view in SHIFTED_GALLERY) else 0.0


def nan_mean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def reference_summary(acc: list) -> dict:
    """Include / exclude means from a nested-list [3][V][V] matrix, NaN cells skipped."""
    num_views = len(acc[0])
    per_view = [
        [nan_mean([row[g] for g in range(num_views) if g != p]) for p, row in enumerate(matrix)]
        for matrix in acc
    ]
    summary = {}
    for c, name in enumerate(CONDITIONS):
        summary[name] = nan_mean(per_view[c])
        summary[f"{name}_include"] = nan_mean([x for row in acc[c] for x in row])
    summary["Mean"] = nan_mean([summary[name] for name in CONDITIONS])
    summary["per_view"] = per_view
    return summary


def run_metric(data, **kwargs) -> dict:
    metric = CasiaBIdentification(**kwargs)
    metric.update(*data)
    return metric.compute()


def assert_matches_reference(result: dict, acc: list) -> None:
    torch.testing.assert_close(
        result["acc"], torch.tensor(acc, dtype=torch.float64), equal_nan=True, rtol=0, atol=1e-9
    )
    summary = reference_summary(acc)
    torch.testing.assert_close(
        result["per_view"], torch.tensor(summary["per_view"], dtype=torch.float64), equal_nan=True
    )
    for key in (*CONDITIONS, "Mean", *(f"{name}_include" for name in CONDITIONS)):
        assert result[key] == pytest.approx(summary[key], nan_ok=True), key


@pytest.mark.parametrize("metric", ["euc", "cos"])
def test_hand_built_full_protocol(metric):
    result = run_metric(hand_built_set(), metric=metric)
    views = ALL_VIEWS
    acc = [[[expected_cell(c, p, g) for g in views] for p in views] for c in CONDITIONS]
    assert result["views"] == list(VIEWS)
    assert result["acc"].shape == (3, 11, 11)
    assert_matches_reference(result, acc)
    # The same numbers written out by hand (see the construction above):
    assert result["NM"] == 100.0 and result["NM_include"] == 100.0
    assert result["acc"][1, 1, 7].item() == 83.33 and result["acc"][1, 3, 0].item() == 66.67
    assert result["BG"] == pytest.approx((9 * 100 + 83.33 + 66.67) / 11)
    # CL per probe view: views 0, 1, 2 are right only against galleries 0 and 5 (minus the
    # identical view); the others are right against the 9 unshifted galleries (minus their own).
    cl_per_view = [10, 20, 20, 80, 80, 90, 80, 80, 80, 80, 80]
    assert result["per_view"][2].tolist() == pytest.approx(cl_per_view)
    assert result["CL"] == pytest.approx(700 / 11)
    assert result["CL_include"] == pytest.approx(78 * 100 / 121)
    assert result["Mean"] == pytest.approx((100 + 1050 / 11 + 700 / 11) / 3)


def drop_gallery_072_and_cl_126(subject, type_name, view):
    return (type_name in GALLERY_TYPES and view == 4) or (type_name.startswith("cl") and view == 7)


def test_missing_cells_are_nan_and_skipped_by_the_means():
    # No gallery at view 4 (a NaN column in every condition) and no CL probe at view 7.
    result = run_metric(hand_built_set(drop=drop_gallery_072_and_cl_126))
    views = ALL_VIEWS
    acc = [
        [
            [
                math.nan if g == 4 or (c == "CL" and p == 7) else expected_cell(c, p, g)
                for g in views
            ]
            for p in views
        ]
        for c in CONDITIONS
    ]
    assert_matches_reference(result, acc)
    assert torch.isnan(result["acc"][:, :, 4]).all()
    assert torch.isnan(result["per_view"][2, 7])
    assert not math.isnan(result["CL"])
    # CL probe view 3: right against the 9 unshifted galleries minus views 3 and 4 -> 7 of 9.
    assert result["per_view"][2, 3].item() == pytest.approx(700 / 9)
    # Written out: CL averages 10 probe views; NM and BG still 11.
    assert result["CL"] == pytest.approx(nan_mean(result["per_view"][2].tolist()))
    assert result["NM"] == 100.0 and torch.isfinite(result["per_view"][:2]).all()
    # 3 sets x 11 probe views of the empty gallery column, plus 10 more cells of the CL row.
    assert result["empty_cells"] == {
        "probe": [["CL", "126"]],
        "gallery": ["072"],
        "absent_views": [],
        "na_cells": 33 + 10,
        "cells": 363,
    }


def test_incomplete_test_set_logs_a_warning_with_the_counts(caplog):
    with caplog.at_level("WARNING", logger="metareid.evaluation.casiab"):
        run_metric(hand_built_set(drop=drop_gallery_072_and_cl_126))
    assert [record.getMessage() for record in caplog.records] == [
        "CasiaBIdentification: incomplete test set, 43 of 363 view-pair cells are n/a: no probe "
        "sequence for CL@126; no gallery sequence at view 072. The means average the remaining "
        "cells (n/a in the tables); strict=true stops instead."
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="metareid.evaluation.casiab"):
        result = run_metric(hand_built_set())
    assert not caplog.records
    assert result["empty_cells"]["na_cells"] == 0


def test_strict_raises_naming_the_empty_cells_and_absent_views():
    with pytest.raises(ValueError, match=r"no probe sequence for CL@126; no gallery .* view 072"):
        run_metric(hand_built_set(drop=drop_gallery_072_and_cl_126), strict=True)
    absent = r"incomplete test set, views absent from the data: 018, 036, 054, 072, 108"
    with pytest.raises(ValueError, match=absent):
        run_metric(hand_built_set(views=(0, 5, 10)), strict=True)
    assert run_metric(hand_built_set(), strict=True)["empty_cells"]["na_cells"] == 0


def test_subset_of_views():
    present = (0, 5, 10)
    result = run_metric(hand_built_set(views=present))
    assert result["views"] == ["000", "090", "180"]
    acc = [[[expected_cell(c, p, g) for g in present] for p in present] for c in CONDITIONS]
    assert result["acc"].shape == (3, 3, 3)
    assert_matches_reference(result, acc)
    # CL: view 0 (shifted probe) is right only on gallery 0 and 5; views 5 and 10 only on 10.
    assert result["acc"][2].tolist() == [[100, 100, 0], [0, 0, 100], [0, 0, 100]]


def test_euclidean_and_cosine_can_disagree():
    # Gallery subject 0 points the same way as the probe but is far; subject 1 is near.
    embeddings = torch.tensor([[[10.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    subjects = torch.tensor([0, 1, 0])
    type_index = torch.tensor([TYPES.index("nm-01"), TYPES.index("nm-01"), TYPES.index("nm-05")])
    view_index = torch.tensor([2, 2, 2])
    data = (embeddings, subjects, type_index, view_index)
    euclidean, cosine = run_metric(data, metric="euc"), run_metric(data, metric="cos")
    assert euclidean["acc"][0, 0, 0].item() == 0.0
    assert cosine["acc"][0, 0, 0].item() == 100.0
    assert cosine["NM_include"] == 100.0
    # A single view has no other-view cell, and no BG / CL probe exists.
    assert math.isnan(cosine["NM"]) and math.isnan(cosine["Mean"])
    assert math.isnan(cosine["BG_include"])


def random_set(seed: int, num_subjects=4, views=(1, 3, 4, 9), parts=3, channels=4, keep=0.8):
    generator = torch.Generator().manual_seed(seed)
    rows = [(s, t, v) for s in range(num_subjects) for t in range(len(TYPES)) for v in views]
    kept = torch.rand(len(rows), generator=generator) < keep
    rows = [row for row, k in zip(rows, kept.tolist(), strict=True) if k]
    subjects = torch.tensor([s for s, _, _ in rows])
    type_index = torch.tensor([t for _, t, _ in rows])
    view_index = torch.tensor([v for _, _, v in rows])
    # Subject centres plus noise, so accuracies are neither 0 nor 100.
    centres = torch.randn(num_subjects, parts, channels, generator=generator)
    noise = torch.randn(len(rows), parts, channels, generator=generator)
    return centres[subjects] + 1.2 * noise, subjects, type_index, view_index


def brute_force_acc(embeddings, subjects, type_index, view_index, metric):
    """Spec §8.2 with explicit loops over conditions, views and probes."""
    views = sorted(set(view_index.tolist()))
    x = embeddings.double()

    def distance(i, j):
        if metric == "euc":
            return torch.linalg.norm(x[i] - x[j], dim=-1).mean().item()
        return 1 - torch.nn.functional.cosine_similarity(x[i], x[j], dim=-1).mean().item()

    types = [TYPES[t] for t in type_index.tolist()]
    acc = []
    for condition in CONDITIONS:
        matrix = []
        for probe_view in views:
            row = []
            for gallery_view in views:
                probes = [
                    i
                    for i, name in enumerate(types)
                    if name in CONDITION_PROBE_TYPES[condition] and view_index[i] == probe_view
                ]
                gallery = [
                    j
                    for j, name in enumerate(types)
                    if name in GALLERY_TYPES and view_index[j] == gallery_view
                ]
                if not probes or not gallery:
                    row.append(math.nan)
                    continue
                hits = 0
                for i in probes:
                    nearest = min(gallery, key=lambda j, i=i: distance(i, j))
                    hits += int(subjects[nearest] == subjects[i])
                row.append(round(100 * hits / len(probes), 2))
            matrix.append(row)
        acc.append(matrix)
    return acc


@pytest.mark.parametrize("metric", ["euc", "cos"])
def test_matches_brute_force_reference_on_random_features(metric):
    data = random_set(seed=4)
    result = run_metric(data, metric=metric, probe_chunk_size=5)
    acc = brute_force_acc(*data, metric=metric)
    assert_matches_reference(result, acc)
    values = result["acc"][~torch.isnan(result["acc"])]
    assert ((values > 0) & (values < 100)).any(), "random set should give partial accuracies"


def test_chunk_size_and_split_updates_do_not_change_the_result():
    embeddings, subjects, type_index, view_index = random_set(seed=5)
    reference = run_metric((embeddings, subjects, type_index, view_index), probe_chunk_size=1000)
    for chunk in (1, 7):
        result = run_metric((embeddings, subjects, type_index, view_index), probe_chunk_size=chunk)
        torch.testing.assert_close(result["acc"], reference["acc"], equal_nan=True)

    metric = CasiaBIdentification()
    half = len(subjects) // 2
    metric.update(embeddings[:half], subjects[:half], type_index[:half], view_index[:half])
    metric.update(embeddings[half:], subjects[half:], type_index[half:], view_index[half:])
    split = metric.compute()
    torch.testing.assert_close(split["acc"], reference["acc"], equal_nan=True)
    torch.testing.assert_close(split["per_view"], reference["per_view"], equal_nan=True)
    assert split["Mean"] == reference["Mean"]

    metric.reset()
    with (
        pytest.warns(UserWarning, match="before the ``update``"),
        pytest.raises(RuntimeError, match="before any update"),
    ):
        metric.compute()


def test_half_precision_embeddings_are_evaluated_in_fp32():
    embeddings, subjects, type_index, view_index = random_set(seed=6)
    upcast = run_metric((embeddings.half().float(), subjects, type_index, view_index))
    from_half = run_metric((embeddings.half(), subjects, type_index, view_index))
    torch.testing.assert_close(from_half["acc"], upcast["acc"], equal_nan=True)
    assert from_half["acc"].dtype == torch.float64


def test_update_rejects_bad_input():
    metric = CasiaBIdentification()
    good = (torch.randn(2, 3, 4), torch.tensor([1, 2]), torch.tensor([0, 4]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[batch, parts, channels\]"):
        metric.update(torch.randn(2, 4), *good[1:])
    with pytest.raises(ValueError, match="view_index"):
        metric.update(*good[:3], torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="type_index"):
        metric.update(good[0], good[1], torch.tensor([0]), good[3])
    with pytest.raises(ValueError, match="metric"):
        CasiaBIdentification(metric="manhattan")


def test_format_table():
    def drop(subject, type_name, view):
        return type_name.startswith("cl") and view == 7

    text = format_casiab_table(run_metric(hand_built_set(drop=drop)))
    lines = text.splitlines()
    assert lines[0] == "===Rank-1 (Include identical-view cases)==="
    assert lines[2] == "===Rank-1 (Exclude identical-view cases)==="
    assert lines[3].startswith("NM: 100.00, BG: 95.45, CL: ")
    assert "Mean: " in lines[3]
    assert lines[4] == "===Rank-1 of each angle (Exclude identical-view cases)==="
    assert lines[5].split() == ["view", *VIEWS, "mean"]
    cl_row = lines[8].split()
    assert cl_row[:4] == ["CL:", "10.00", "20.00", "20.00"]
    assert cl_row[8] == "n/a"  # probe view 7 has no CL probe
    # Columns line up: every table row has the header's width.
    assert len({len(line) for line in lines[5:9]}) == 1
    assert lines[9:] == ["n/a: 11 of 363 view-pair cells are n/a: no probe sequence for CL@126"]


def test_part_distances_against_loops():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 5, generator=generator)
    y = torch.randn(6, 3, 5, generator=generator)
    euclidean = torch.stack(
        [torch.stack([torch.linalg.norm(a - b, dim=-1).mean() for b in y]) for a in x]
    )
    cosine = torch.stack(
        [
            torch.stack([1 - torch.nn.functional.cosine_similarity(a, b, dim=-1).mean() for b in y])
            for a in x
        ]
    )
    torch.testing.assert_close(part_euclidean_distance(x, y), euclidean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part_cosine_distance(x, y), cosine, rtol=1e-5, atol=1e-5)


def test_flat_distances_hand_values():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # |(3,4)-(0,0)| = 5, |(3,4)-(0,2)| = sqrt(13), |(1,0)-(0,0)| = 1, |(1,0)-(0,2)| = sqrt(5)
    expected = torch.tensor([[5.0, math.sqrt(13)], [1.0, math.sqrt(5)]])
    torch.testing.assert_close(euclidean_distance(x, y), expected)
    torch.testing.assert_close(euclidean_distance(x, y, squared=True), expected**2)
    # cos((3,4), (0,2)) = 0.8, cos((1,0), (0,2)) = 0; a zero vector has cosine 0 with anything.
    torch.testing.assert_close(cosine_distance(x, y), torch.tensor([[1.0, 0.2], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="equal dim"):
        cosine_distance(x, torch.zeros(2, 3))
