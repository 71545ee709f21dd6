"""OU-MVLP (single-view galleries, 14 views) and GREW (rank-k, whole gallery) evaluators."""

from __future__ import annotations

import math

import pytest
import torch

from metareid.evaluation.casiab import (
    OUMVLP_GALLERY_TYPES,
    OUMVLPIdentification,
    SingleViewGalleryIdentification,
    format_view_pair_table,
)
from metareid.evaluation.grew import GREWIdentification, format_rank_table

NUM_VIEWS = 14
WALK_00, WALK_01 = 0, 1

# ---------------------------------------------------------------------------------------------
# OU-MVLP hand-built set. Features are points on a line, copied into 2 parts (part k scaled by
# k + 1, which changes no ranking). Subject s: gallery (walk 01) at 10 s, probe (walk 00) at
# 10 s + 2, so every probe's nearest gallery is its own subject...
#   except at gallery views CONFUSED, where subject 0's gallery sits at 11: the subject-1 probe
#   (12) then lands on subject 0 and the subject-0 probe (2) on subject 1 (10 is nearer than 11).
#   At those gallery views a cell is 1/3 right (33.33), or 0/2 at probe view 5, where subject 2
#   has no probe.
# Gallery view 7 has no gallery sequence at all: its column is NaN.
# ---------------------------------------------------------------------------------------------
CONFUSED = {2, 9}
NO_PROBE_OF_SUBJECT_2 = 5
NO_GALLERY = 7


def point(x: float, parts: int = 2) -> torch.Tensor:
    return torch.stack([torch.tensor([(k + 1) * x]) for k in range(parts)])  # [parts, 1]


def oumvlp_hand_set():
    rows = []  # (subject, walk, view, position)
    for subject in range(3):
        for view in range(NUM_VIEWS):
            if view != NO_GALLERY:
                moved = subject == 0 and view in CONFUSED
                rows.append((subject, WALK_01, view, 11.0 if moved else 10.0 * subject))
            if not (subject == 2 and view == NO_PROBE_OF_SUBJECT_2):
                rows.append((subject, WALK_00, view, 10.0 * subject + 2))
    embeddings = torch.stack([point(x) for *_, x in rows])
    # OU-MVLP ids are integers such as 10306.
    subjects = torch.tensor([10306 - 2 * s for s, *_ in rows])
    type_index = torch.tensor([w for _, w, _, _ in rows])
    view_index = torch.tensor([v for _, _, v, _ in rows])
    return embeddings, subjects, type_index, view_index


def expected_oumvlp_cell(probe_view: int, gallery_view: int) -> float:
    if gallery_view == NO_GALLERY:
        return math.nan
    if gallery_view in CONFUSED:
        return 0.0 if probe_view == NO_PROBE_OF_SUBJECT_2 else 33.33
    return 100.0


def nan_mean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def test_oumvlp_hand_built_protocol():
    metric = OUMVLPIdentification(probe_chunk_size=4)
    metric.update(*oumvlp_hand_set())
    result = metric.compute()
    views = range(NUM_VIEWS)
    acc = [[expected_oumvlp_cell(p, g) for g in views] for p in views]
    assert result["conditions"] == ["NM"]
    assert result["views"] == ["000", "015", "030", "045", "060", "075", "090",
                               "180", "195", "210", "225", "240", "255", "270"]  # fmt: skip
    assert result["acc"].shape == (1, 14, 14)
    torch.testing.assert_close(
        result["acc"][0], torch.tensor(acc, dtype=torch.float64), equal_nan=True, rtol=0, atol=0
    )
    per_view = [nan_mean([acc[p][g] for g in views if g != p]) for p in views]
    torch.testing.assert_close(result["per_view"][0], torch.tensor(per_view, dtype=torch.float64))
    # Written out: probe view 0 sees 12 gallery views (not itself, not 7), 2 of them confused.
    assert result["per_view"][0, 0].item() == pytest.approx((10 * 100 + 2 * 33.33) / 12)
    assert result["per_view"][0, 2].item() == pytest.approx((11 * 100 + 33.33) / 12)
    assert result["per_view"][0, 5].item() == pytest.approx(1000 / 12)
    assert result["per_view"][0, 7].item() == pytest.approx((11 * 100 + 2 * 33.33) / 13)
    assert result["NM"] == pytest.approx(nan_mean(per_view)) and result["Mean"] == result["NM"]
    assert result["NM_include"] == pytest.approx(
        (13 * (11 * 100 + 2 * 33.33) + (11 * 100)) / (14 * 13)
    )
    assert set(result) == {
        "NM", "Mean", "NM_include", "acc", "per_view", "views", "conditions", "empty_cells"
    }  # fmt: skip
    # Probe view 5 lacks one subject only: not an empty cell.
    assert result["empty_cells"] == {
        "probe": [], "gallery": ["180"], "absent_views": [], "na_cells": 14, "cells": 196
    }  # fmt: skip


def test_oumvlp_strict_names_the_empty_gallery_view():
    metric = OUMVLPIdentification(strict=True)
    metric.update(*oumvlp_hand_set())
    with pytest.raises(ValueError, match="14 of 196 .* no gallery sequence at view 180"):
        metric.compute()


def test_oumvlp_table_has_one_row_and_no_mean():
    metric = OUMVLPIdentification()
    metric.update(*oumvlp_hand_set())
    lines = format_view_pair_table(metric.compute()).splitlines()
    assert lines[1].startswith("NM: ") and "," not in lines[1]
    assert lines[3].startswith("NM: ") and "Mean" not in lines[3]
    assert lines[5].split()[1:4] == ["000", "015", "030"] and len(lines[5].split()) == 16
    nm_row = lines[6].split()
    assert nm_row[0] == "NM:" and nm_row[6] == "83.33"  # probe view 5 = 1000 / 12
    assert len(lines[5]) == len(lines[6])
    assert lines[7:] == ["n/a: 14 of 196 view-pair cells are n/a: no gallery sequence at view 180"]


def test_oumvlp_rejects_casiab_indices():
    metric = OUMVLPIdentification()
    with pytest.raises(ValueError, match="view_index must index .*evaluator"):
        metric.update(
            torch.zeros(1, 2, 3), torch.tensor([1]), torch.tensor([0]), torch.tensor([14])
        )
    with pytest.raises(ValueError, match="type_index"):
        metric.update(torch.zeros(1, 2, 3), torch.tensor([1]), torch.tensor([4]), torch.tensor([0]))


def test_generic_protocol_matches_brute_force_with_custom_vocabulary():
    types = ("a", "b", "c")
    views = ("v0", "v1", "v2", "v3")
    probe_sets = {"B": ("b",), "BC": ("b", "c")}
    generator = torch.Generator().manual_seed(3)
    n = 90
    subjects = torch.randint(0, 5, (n,), generator=generator)
    type_index = torch.randint(0, 3, (n,), generator=generator)
    view_index = torch.randint(0, 4, (n,), generator=generator)
    centres = torch.randn(5, 2, 3, generator=generator)
    embeddings = centres[subjects] + 0.9 * torch.randn(n, 2, 3, generator=generator)
    metric = SingleViewGalleryIdentification(
        types=types, views=views, gallery_types=("a",), probe_sets=probe_sets, probe_chunk_size=7
    )
    metric.update(embeddings, subjects, type_index, view_index)
    result = metric.compute()

    def distance(i, j):
        return torch.linalg.norm(embeddings[i] - embeddings[j], dim=-1).mean().item()

    for c, names in enumerate(probe_sets.values()):
        wanted = [types.index(t) for t in names]
        for p in range(4):
            for g in range(4):
                probes = [i for i in range(n) if type_index[i] in wanted and view_index[i] == p]
                gallery = [j for j in range(n) if type_index[j] == 0 and view_index[j] == g]
                cell = result["acc"][c, p, g].item()
                if not probes or not gallery:
                    assert math.isnan(cell)
                    continue
                hits = sum(
                    int(subjects[min(gallery, key=lambda j, i=i: distance(i, j))] == subjects[i])
                    for i in probes
                )
                assert cell == round(100 * hits / len(probes), 2)
    values = result["acc"][~torch.isnan(result["acc"])]
    assert ((values > 0) & (values < 100)).any()
    assert result["conditions"] == ["B", "BC"] and "BC_include" in result


def test_unknown_gallery_type_fails_at_construction():
    with pytest.raises(ValueError, match=r"types \['nm-01'\] are not among"):
        SingleViewGalleryIdentification(
            types=("00", "01"), views=("000",), gallery_types=("nm-01",), probe_sets={"NM": ("00",)}
        )
    assert OUMVLP_GALLERY_TYPES == ("01",)


# ---------------------------------------------------------------------------------------------
# GREW hand-built set: 1-D features. Gallery (type 01) of subject s at x = s, s = 0..5.
#   probe (type 02) of subject 0 at 0.1  -> nearest 0                       : rank 1
#   probe of subject 1 at 2.3            -> order 2, 3, 1                   : rank 3
#   probe of subject 2 at 4.6            -> order 5, 4, 3, 2                : rank 4
#   probe of subject 9 (not in gallery)  -> never found
# A training sequence (00) of subject 1 at 2.3 and an unlabelled probe (03) would change the
# answers if they were wrongly taken into the gallery or the probe set.
# ---------------------------------------------------------------------------------------------
GREW_TYPE = {"00": 0, "01": 1, "02": 2, "03": 3}


def grew_hand_set():
    rows = [(s, "01", float(s)) for s in range(6)]
    rows += [(0, "02", 0.1), (1, "02", 2.3), (2, "02", 4.6), (9, "02", 7.5)]
    rows += [(1, "00", 2.3), (12, "03", 0.1)]
    embeddings = torch.stack([point(x) for _, _, x in rows])
    subjects = torch.tensor([s for s, _, _ in rows])
    type_index = torch.tensor([GREW_TYPE[t] for _, t, _ in rows])
    view_index = torch.arange(len(rows))  # GREW's view index carries no meaning
    return embeddings, subjects, type_index, view_index


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_grew_rank_k_on_hand_built_set(chunk):
    metric = GREWIdentification(ranks=(1, 2, 3, 4, 5), probe_chunk_size=chunk)
    metric.update(*grew_hand_set())
    result = metric.compute()
    assert [result[f"Rank-{k}"] for k in (1, 2, 3, 4, 5)] == [25.0, 25.0, 50.0, 75.0, 75.0]
    assert result["cmc"].tolist() == [25.0, 25.0, 50.0, 75.0, 75.0]
    assert result["sizes"] == {"probes": 4, "gallery": 6}


def test_grew_default_ranks_beyond_the_gallery_size():
    metric = GREWIdentification()
    data = grew_hand_set()
    half = 5
    metric.update(*(t[:half] for t in data))  # split updates accumulate
    metric.update(*(t[half:] for t in data))
    result = metric.compute()
    assert set(result) == {"Rank-1", "Rank-5", "Rank-10", "Rank-20", "cmc", "sizes"}
    assert (result["Rank-1"], result["Rank-5"]) == (25.0, 75.0)
    # 6 gallery sequences: ranks 7..20 can find nothing new.
    assert result["Rank-10"] == result["Rank-20"] == 75.0 and result["cmc"].shape == (20,)


def test_grew_rounding_and_cosine():
    # Three probes, one right at rank 1: 33.33 after rounding to 2 decimals.
    embeddings = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.1]], [[5.0, 0.2]], [[0.1, 1]]])
    subjects = torch.tensor([0, 1, 0, 1, 2])
    type_index = torch.tensor([1, 1, 2, 2, 2])
    data = (embeddings, subjects, type_index, torch.zeros(5, dtype=torch.long))
    euclidean = GREWIdentification(ranks=(1,))
    euclidean.update(*data)
    assert euclidean.compute()["Rank-1"] == 33.33
    # Cosine ignores the length of (5, 0.2), which points at subject 0's gallery: still wrong.
    cosine = GREWIdentification(ranks=(1, 2), metric="cos")
    cosine.update(*data)
    assert cosine.compute()["cmc"].tolist() == [33.33, 66.67]


def test_grew_without_probes_is_nan_and_bad_input_is_rejected(caplog):
    metric = GREWIdentification(ranks=(1, 5))
    embeddings, subjects, type_index, view_index = grew_hand_set()
    keep = type_index != GREW_TYPE["02"]
    without_probes = (embeddings[keep], subjects[keep], type_index[keep], view_index[keep])
    metric.update(*without_probes)
    with caplog.at_level("WARNING", logger="metareid.evaluation.grew"):
        result = metric.compute()
    assert math.isnan(result["Rank-1"]) and math.isnan(result["Rank-5"])
    assert [record.getMessage() for record in caplog.records] == [
        "GREWIdentification: incomplete test set, 0 probe sequences (types 02) and 6 gallery "
        "sequences (types 01); every rank-k accuracy is n/a; strict=true stops instead."
    ]
    assert format_rank_table(result).splitlines() == [
        "===Rank-k (0 probes, 6 gallery sequences)===",
        "Rank-1: n/a, Rank-5: n/a",
    ]
    strict = GREWIdentification(ranks=(1, 5), strict=True)
    strict.update(*without_probes)
    with pytest.raises(ValueError, match="0 probe sequences .* every rank-k accuracy is n/a"):
        strict.compute()
    with pytest.raises(ValueError, match="type_index must index"):
        metric.update(torch.zeros(1, 1, 1), torch.tensor([0]), torch.tensor([4]), torch.tensor([0]))
    with pytest.raises(ValueError, match="ranks must be positive"):
        GREWIdentification(ranks=(0, 5))
    metric.reset()
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="before any update"):
        metric.compute()


def test_grew_table():
    metric = GREWIdentification(ranks=(1, 5))
    metric.update(*grew_hand_set())
    assert metric.format_table(metric.compute()).splitlines() == [
        "===Rank-k (4 probes, 6 gallery sequences)===",
        "Rank-1: 25.00, Rank-5: 75.00",
    ]
