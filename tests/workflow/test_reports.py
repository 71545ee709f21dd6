"""Result reports: markdown/JSON tables from hand-built results, figures, and the entry points."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from PIL import Image

from eval import evaluate
from hydra_helpers import TINY_CALLBACKS, TINY_GAIT, TINY_REID, compose_config
from metareid.reporting import (
    gait_markdown,
    markdown_table,
    plot_casiab_heatmap,
    plot_cmc,
    plot_retrieval_examples,
    reid_markdown,
    to_jsonable,
    write_gait_report,
    write_reid_report,
    write_report,
)
from train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NAN = math.nan


def gait_result() -> dict:
    """A CASIA-B result over two views, shaped like ``CasiaBIdentification.compute()``.

    NM probe 090 has no gallery at 090 (NaN cell). Exclude means: NM per view (50, 25) -> 37.5;
    BG (20, 30) -> 25; CL (0, 0) -> 0; Mean 20.83. Include: NM (100+50+25)/3 = 58.33.
    """
    acc = torch.tensor(
        [
            [[100.0, 50.0], [25.0, NAN]],
            [[10.0, 20.0], [30.0, 40.0]],
            [[0.0, 0.0], [0.0, 100.0]],
        ],
        dtype=torch.float64,
    )
    return {
        "NM": 37.5,
        "BG": 25.0,
        "CL": 0.0,
        "Mean": 20.83,
        "NM_include": 58.33,
        "BG_include": 25.0,
        "CL_include": 25.0,
        "acc": acc,
        "per_view": torch.tensor([[50.0, 25.0], [20.0, 30.0], [0.0, 0.0]], dtype=torch.float64),
        "views": ["000", "090"],
        "conditions": ["NM", "BG", "CL"],
    }


def reid_results() -> dict:
    """Two targets as ``ReIDRetrieval.compute()`` returns them (0-d tensors, a CMC tensor)."""
    return {
        "synD": {
            "rank1": torch.tensor(50.0),
            "rank5": torch.tensor(75.0),
            "rank10": torch.tensor(100.0),
            "mAP": torch.tensor(60.0),
            "mINP": torch.tensor(40.0),
            "metric": torch.tensor(55.0),
            "cmc": torch.cat([torch.full((4,), 50.0), torch.full((46,), 100.0)]),
            "num_valid_queries": torch.tensor(8),
        },
        "synE": {
            "rank1": 30.0,
            "rank5": 70.0,
            "rank10": 90.0,
            "mAP": 20.0,
            "mINP": 10.0,
            "metric": 25.0,
            "cmc": [30.0] * 50,
            "num_valid_queries": 4,
        },
    }


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """Cells of the markdown table under ``heading``, keyed by the first cell."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if set(cells[0]) <= set("-:"):
            continue  # the alignment rule
        rows[cells[0]] = cells[1:]
    return rows


# ------------------------------------------------------------------------------------ gait


def test_gait_markdown_tables_hold_the_result_numbers():
    markdown = gait_markdown(gait_result(), metadata={"ckpt_path": "run/last.ckpt", "skip": None})

    assert "- ckpt_path: `run/last.ckpt`" in markdown
    assert "skip" not in markdown  # None-valued metadata is left out
    summary = table_rows(markdown, "## Rank-1 (%)")
    assert summary["Condition"] == ["Exclude identical-view", "Include identical-view"]
    assert summary["NM"] == ["37.50", "58.33"]
    assert summary["CL"] == ["0.00", "25.00"]
    assert summary["Mean"] == ["20.83", "-"]
    per_view = table_rows(markdown, "## Rank-1 per probe view, exclude identical-view (%)")
    assert per_view["Condition"] == ["000", "090", "Mean"]
    assert per_view["BG"] == ["20.00", "30.00", "25.00"]
    nm = table_rows(markdown, "## NM: probe view (rows) × gallery view (columns), rank-1 (%)")
    assert nm["000"] == ["100.00", "50.00"]
    assert nm["090"] == ["25.00", "n/a"]  # the NaN cell
    assert "Other metrics" not in markdown
    # A result without an `empty_cells` entry: its NaN cells are listed from `acc`.
    assert "- cells (condition probe → gallery): NM 090 → 090" in markdown.splitlines()


def evaluated_incomplete_set() -> dict:
    """CasiaBIdentification over views 000/018/036, two subjects: no gallery sequence at 018,
    no CL probe at 036."""
    from metareid.evaluation.casiab import GALLERY_TYPES, TYPES, CasiaBIdentification

    rows = [
        (subject, type_id, view)
        for subject in range(2)
        for type_id, name in enumerate(TYPES)
        for view in range(3)
        if not (name in GALLERY_TYPES and view == 1) and not (name.startswith("cl") and view == 2)
    ]
    metric = CasiaBIdentification()
    metric.update(
        torch.stack([torch.eye(2)[subject][None] for subject, _, _ in rows]),
        torch.tensor([subject for subject, _, _ in rows]),
        torch.tensor([type_id for _, type_id, _ in rows]),
        torch.tensor([view for _, _, view in rows]),
    )
    return metric.compute()


def test_gait_report_prints_and_lists_the_empty_cells(tmp_path):
    files = write_gait_report(evaluated_incomplete_set(), tmp_path)

    markdown = files["markdown"].read_text()
    per_view = table_rows(markdown, "## Rank-1 per probe view, exclude identical-view (%)")
    # Probe view 000 averages gallery 036 only (018 is empty); CL has no probe at 036.
    assert per_view["NM"] == ["100.00", "100.00", "100.00", "100.00"]
    assert per_view["CL"] == ["100.00", "100.00", "n/a", "100.00"]
    cl = table_rows(markdown, "## CL: probe view (rows) × gallery view (columns), rank-1 (%)")
    assert cl["036"] == ["n/a", "n/a", "n/a"] and cl["000"] == ["100.00", "n/a", "100.00"]
    lines = markdown.splitlines()
    section = lines[lines.index("## Empty cells (n/a)") + 2 :]
    assert section[:5] == [
        "11 of 27 probe view × gallery view cells have no probe or no gallery sequence; the "
        "means above average the remaining cells.",
        "",
        "- no probe sequence (condition at probe view): CL at 036",
        "- no gallery sequence at view: 018",
        "- views absent from the test data: 054, 072, 090, 108, 126, 144, 162, 180",
    ]
    stored = json.loads(files["json"].read_text())
    assert stored["empty_cells"] == {
        "probe": [["CL", "036"]],
        "gallery": ["018"],
        "absent_views": ["054", "072", "090", "108", "126", "144", "162", "180"],
        "na_cells": 11,
        "cells": 27,
    }
    assert stored["acc"][2][2] == [None, None, None] and stored["per_view"][2][2] is None


def test_gait_report_json_round_trips_and_nan_becomes_null(tmp_path):
    files = write_gait_report(gait_result(), tmp_path / "report", metadata={"task_name": "eval"})

    assert set(files) == {"markdown", "json", "heatmap"}
    stored = json.loads(files["json"].read_text())  # strict JSON: no NaN literal
    assert stored["kind"] == "gait" and stored["metadata"] == {"task_name": "eval"}
    assert stored["conditions"] == ["NM", "BG", "CL"] and stored["views"] == ["000", "090"]
    assert stored["NM"] == 37.5 and stored["CL_include"] == 25.0
    assert stored["acc"][0] == [[100.0, 50.0], [25.0, None]]
    assert stored["per_view"][1] == [20.0, 30.0]
    assert "NaN" not in files["json"].read_text()
    with Image.open(files["heatmap"]) as image:
        assert image.format == "PNG" and image.width > image.height > 100


def test_heatmap_shows_every_condition_and_masks_empty_cells():
    figure = plot_casiab_heatmap(gait_result())

    panels = [axis for axis in figure.axes if axis.images]
    assert [axis.get_title() for axis in panels] == [
        "NM (excl. 37.50)",
        "BG (excl. 25.00)",
        "CL (excl. 0.00)",
    ]
    nm = panels[0].images[0].get_array()
    assert nm.mask.tolist() == [[False, False], [False, True]]
    assert nm[0, 1] == 50.0
    assert [label.get_text() for label in panels[0].get_xticklabels()] == ["000", "090"]
    assert [text.get_text() for text in panels[1].texts] == ["10", "20", "30", "40"]


def test_heatmap_reads_the_json_layout_and_other_evaluators_rows():
    """A one-condition result (OU-MVLP style) loaded back from JSON lists."""
    result = {
        "NM": 50.0,
        "acc": [[[None, 100.0, 0.0], [50.0, None, 50.0], [0.0, 100.0, None]]],
        "views": ["000", "015", "030"],
        "conditions": ["NM"],
    }
    figure = plot_casiab_heatmap(result)
    (panel,) = [axis for axis in figure.axes if axis.images]
    assert panel.images[0].get_array().mask.diagonal().all()


@pytest.mark.parametrize(
    "result, message",
    [
        ({"NM": 1.0, "views": ["000"]}, r"needs result\['acc'\]"),
        ({"acc": np.zeros((3, 2, 2)), "views": ["000", "018", "036"]}, r"len\(result\['views'\]\)"),
        ({"acc": np.zeros((2, 2)), "views": ["000", "018"]}, r"3 dimensions"),
    ],
)
def test_heatmap_rejects_results_it_cannot_draw(result, message):
    with pytest.raises(ValueError, match=message):
        plot_casiab_heatmap(result)


def test_gait_report_of_another_evaluator_lists_its_metrics(tmp_path):
    """A GREW-style result: Rank-k floats, a CMC tensor and a nested size dict, no view matrix."""
    result = {
        "Rank-1": 50.0,
        "Rank-5": 87.5,
        "cmc": torch.tensor([50.0, 62.5, 75.0, 75.0, 87.5], dtype=torch.float64),
        "sizes": {"probes": 8, "gallery": 8},
    }
    files = write_report(result, tmp_path)

    assert set(files) == {"markdown", "json"}  # no view matrix, no heatmap
    others = table_rows(files["markdown"].read_text(), "## Other metrics")
    assert others == {"Metric": ["Value"], "Rank-1": ["50.00"], "Rank-5": ["87.50"]}
    stored = json.loads(files["json"].read_text())
    assert stored["sizes"] == {"probes": 8, "gallery": 8}
    assert stored["cmc"] == [50.0, 62.5, 75.0, 75.0, 87.5]
    assert "conditions" not in stored


# ------------------------------------------------------------------------------------ ReID


def test_reid_markdown_rows_queries_and_mean():
    rows = table_rows(reid_markdown(reid_results()), "## Retrieval (%)")

    assert rows["Target"] == [
        "Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric = (mAP + R1) / 2", "Queries"
    ]  # fmt: skip
    assert rows["synD"] == ["50.00", "75.00", "100.00", "60.00", "40.00", "55.00", "8"]
    assert rows["synE"] == ["30.00", "70.00", "90.00", "20.00", "10.00", "25.00", "4"]
    # Unweighted mean over targets: (50 + 30) / 2, (60 + 20) / 2, ...
    assert rows["Mean"] == ["40.00", "72.50", "95.00", "40.00", "25.00", "40.00", "-"]


def test_single_target_has_no_mean_row():
    results = {"synD": reid_results()["synD"]}
    assert "Mean" not in table_rows(reid_markdown(results), "## Retrieval (%)")


def test_reid_report_json_and_cmc_figure(tmp_path):
    files = write_reid_report(reid_results(), tmp_path / "report", metadata={"ckpt_path": "x"})

    assert set(files) == {"markdown", "json", "cmc"}
    stored = json.loads(files["json"].read_text())
    assert stored["kind"] == "reid" and stored["metadata"] == {"ckpt_path": "x"}
    target = stored["targets"]["synD"]
    assert target["rank1"] == 50.0 and target["num_valid_queries"] == 8
    assert target["cmc"][:5] == [50.0, 50.0, 50.0, 50.0, 100.0] and len(target["cmc"]) == 50
    assert stored["mean"]["mAP"] == 40.0 and stored["mean"]["rank1"] == 40.0
    with Image.open(files["cmc"]) as image:
        assert image.format == "PNG"


def test_cmc_curves_start_at_rank_one_and_are_labelled():
    figure = plot_cmc(reid_results(), max_rank=10)

    (axis,) = figure.axes
    first, second = axis.get_lines()
    assert first.get_xdata().tolist() == list(range(1, 11))
    assert first.get_ydata().tolist() == [50.0] * 4 + [100.0] * 6
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels == ["synD (R1 50.00, mAP 60.00)", "synE (R1 30.00, mAP 20.00)"]


def test_cmc_stops_at_the_gallery_size_on_integer_ticks():
    results = reid_results()
    results["synD"]["num_gallery"] = torch.tensor(7)  # the evaluator's 50-rank curve is padded
    results["synE"]["sizes"] = {"gallery": 3}  # the GREW-style spelling
    figure = plot_cmc(results)

    (axis,) = figure.axes
    first, second = axis.get_lines()
    assert first.get_xdata().tolist() == list(range(1, 8))
    assert second.get_xdata().tolist() == [1, 2, 3]
    # Three ranks: matplotlib's default locator would put ticks at 1.25, 1.5, ...
    (axis,) = plot_cmc({"synE": results["synE"]}).axes
    axis.figure.canvas.draw()
    ticks = [tick for tick in axis.get_xticks() if 1 <= tick <= 3]
    assert ticks == [1.0, 2.0, 3.0]
    # Without a stated gallery size the whole curve is drawn.
    (axis,) = plot_cmc(reid_results()).axes
    assert len(axis.get_lines()[0].get_xdata()) == 50


def test_report_figures_carry_the_run_title(tmp_path, monkeypatch):
    import metareid.reporting as reporting

    assert reporting.run_title({"task_name": "eval", "ckpt_path": "/runs/x/last.ckpt"}) == (
        "eval · last.ckpt"
    )
    assert reporting.run_title({"task_name": "demo", "weights": "end of training"}) == (
        "demo · end of training"
    )
    assert reporting.run_title({"data": "x"}) is None
    figures = {}
    monkeypatch.setattr(
        reporting, "_save_figure", lambda figure, path: figures.setdefault(path.name, figure)
    )
    metadata = {"task_name": "eval", "ckpt_path": "run/step_000400.ckpt"}
    write_gait_report(gait_result(), tmp_path, metadata=metadata)
    write_reid_report(reid_results(), tmp_path, metadata=metadata)
    assert figures["gait_heatmap.png"].get_suptitle() == "eval · step_000400.ckpt"
    assert figures["reid_cmc.png"].axes[0].get_title() == "CMC · eval · step_000400.ckpt"


def test_cmc_needs_a_curve_per_target():
    with pytest.raises(ValueError, match="'synD' has no 'cmc'"):
        plot_cmc({"synD": {"rank1": 1.0}})


def test_write_report_picks_the_family_and_skips_empty_results(tmp_path):
    assert write_report({}, tmp_path / "empty") == {}
    assert not (tmp_path / "empty").exists()
    assert set(write_report(reid_results(), tmp_path / "reid")) == {"markdown", "json", "cmc"}
    assert set(write_report(gait_result(), tmp_path / "gait")) == {"markdown", "json", "heatmap"}


# --------------------------------------------------------------------------------- helpers


def test_to_jsonable_converts_tensors_and_non_finite_numbers():
    value = {
        "t": torch.tensor([1.5, NAN]),
        "n": np.float32(2.5),
        "i": np.int64(3),
        "inf": math.inf,
        "p": Path("a/b"),
        "nested": ({"x": torch.tensor(4)},),
    }
    assert to_jsonable(value) == {
        "t": [1.5, None],
        "n": 2.5,
        "i": 3,
        "inf": None,
        "p": "a/b",
        "nested": [{"x": 4}],
    }
    with pytest.raises(TypeError, match="cannot write a object"):
        to_jsonable({"bad": object()})


def test_markdown_table_alignment_and_row_check():
    assert markdown_table(["a", "b"], [["x", "1"]]).splitlines() == [
        "| a | b |",
        "| --- | ---: |",
        "| x | 1 |",
    ]
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b"], [["x"]])


def test_retrieval_examples_frame_matches_green_and_others_red():
    queries = torch.zeros(2, 3, 8, 4, dtype=torch.uint8)
    gallery = torch.full((3, 3, 8, 4), 255, dtype=torch.uint8)
    figure = plot_retrieval_examples(
        queries,
        gallery,
        ranking=[[2, 0], [1, 2]],
        is_match=[[True, False], [False, True]],
        query_captions=["id 1", "id 2"],
        gallery_captions=["g0", "g1", "g2"],
    )

    axes = figure.axes
    assert len(axes) == 2 * 3
    assert [axis.get_title() for axis in axes[:3]] == ["query id 1", "#1 g2", "#2 g0"]
    frame = [axis.spines["top"].get_edgecolor() for axis in axes]
    assert frame[1] == to_rgba("tab:green") and frame[2] == to_rgba("tab:red")
    assert frame[4] == to_rgba("tab:red") and frame[5] == to_rgba("tab:green")
    assert axes[1].images[0].get_array().max() == 1.0  # 0-255 shown as [0, 1]
    with pytest.raises(ValueError, match=r"\[queries, k\]"):
        plot_retrieval_examples(queries, gallery, [[0, 1]], [[True]])


# ------------------------------------------------------------------------------ end to end


def test_train_and_eval_write_the_gait_report(synthetic_gait_root, tmp_path):
    overrides = [*TINY_GAIT, f"data.root={synthetic_gait_root}"]
    train_cfg = compose_config("train", [*overrides, *TINY_CALLBACKS], tmp_path / "train")
    trained = train(train_cfg)
    train_report = tmp_path / "train" / "report"
    assert json.loads((train_report / "gait_results.json").read_text())["NM"] == pytest.approx(
        trained["test/NM"]
    )

    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    eval_cfg = compose_config("eval", [*overrides, f"ckpt_path={ckpt}"], tmp_path / "eval")
    evaluated = evaluate(eval_cfg)

    report = tmp_path / "eval" / "report"
    assert sorted(p.name for p in report.iterdir()) == [
        "gait_heatmap.png",
        "gait_results.json",
        "gait_results.md",
    ]
    stored = json.loads((report / "gait_results.json").read_text())
    assert stored["metadata"]["ckpt_path"] == str(ckpt)
    assert stored["Mean"] == pytest.approx(evaluated["test/Mean"])
    assert stored["views"] == ["000", "090", "180"]
    assert np.asarray(stored["acc"], dtype=float).shape == (3, 3, 3)
    assert (
        f"| Mean | {evaluated['test/Mean']:.2f} | - |" in (report / "gait_results.md").read_text()
    )


def test_report_can_be_switched_off(synthetic_gait_root, tmp_path):
    overrides = [*TINY_GAIT, f"data.root={synthetic_gait_root}", "train=false", "report=false"]
    overrides.append("callbacks=none")
    train(compose_config("train", overrides, tmp_path / "run"))
    assert not (tmp_path / "run" / "report").exists()


def test_train_and_eval_write_the_reid_report(tmp_path):
    overrides = [
        *TINY_REID,
        f"data.synthetic.root={tmp_path / 'synthetic_reid'}",
        "model.initial_basic_steps=2",
        "trainer.max_epochs=1",
        "+trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
    ]
    train_cfg = compose_config("train", [*overrides, *TINY_CALLBACKS], tmp_path / "train")
    train(train_cfg)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    evaluated = evaluate(
        compose_config("eval", [*overrides, f"ckpt_path={ckpt}"], tmp_path / "eval")
    )

    report = tmp_path / "eval" / "report"
    assert sorted(p.name for p in report.iterdir()) == [
        "reid_cmc.png",
        "reid_results.json",
        "reid_results.md",
    ]
    stored = json.loads((report / "reid_results.json").read_text())
    assert list(stored["targets"]) == ["synD"]
    synd = stored["targets"]["synD"]
    assert synd["rank1"] == pytest.approx(evaluated["test/synD/rank1"])
    assert synd["mAP"] == pytest.approx(evaluated["test/synD/mAP"])
    assert len(synd["cmc"]) == 50 and synd["cmc"][0] == pytest.approx(synd["rank1"])
    assert synd["num_valid_queries"] > 0
