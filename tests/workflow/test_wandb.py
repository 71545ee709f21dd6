"""wandb logging: mode resolution, media helpers, and offline / disabled runs of both tasks."""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hydra_helpers import TINY_CALLBACKS, TINY_GAIT, TINY_REID
from metareid.callbacks.wandb_media import (
    MATCH_COLOUR,
    MISMATCH_COLOUR,
    QUERY_COLOUR,
    finish_wandb_runs,
    image_grid,
    rank_gallery,
    rank_list_grid,
    resolve_wandb_mode,
    silhouette_strip,
    wandb_logger,
)
from train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WANDB_LOG_BLOCK = 32768  # the LevelDB log block size of wandb's run files


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    """No API key, no netrc entry, no WANDB_MODE: the factory must pick offline."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    # Keep wandb from wrapping pytest's captured stdout.
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    finish_wandb_runs()


# ------------------------------------------------------------------------------- mode choice
@pytest.mark.parametrize(
    ("env", "netrc_host", "mode", "expected"),
    [
        ({}, None, None, "offline"),
        ({"WANDB_API_KEY": "k" * 40}, None, None, "online"),
        ({}, "api.wandb.ai", None, "online"),
        ({}, "wandb.example.org", None, "offline"),
        ({"WANDB_BASE_URL": "https://wandb.example.org"}, "wandb.example.org", None, "online"),
        ({"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "disabled"}, None, None, "disabled"),
        ({"WANDB_MODE": "Offline"}, "api.wandb.ai", None, "offline"),
        ({"WANDB_MODE": "disabled"}, None, "online", "online"),
    ],
)
def test_mode_comes_from_argument_then_env_then_credentials(
    no_wandb_credentials, monkeypatch, tmp_path, env, netrc_host, mode, expected
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if netrc_host:
        netrc_file = tmp_path / "netrc"
        netrc_file.write_text(f"machine {netrc_host}\n  login user\n  password {'p' * 40}\n")
        netrc_file.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc_file))
    assert resolve_wandb_mode(mode) == expected


def test_unknown_modes_are_rejected_naming_their_source(no_wandb_credentials, monkeypatch):
    with pytest.raises(ValueError, match="logger.wandb.mode is 'upload'"):
        resolve_wandb_mode("upload")
    monkeypatch.setenv("WANDB_MODE", "of")
    with pytest.raises(ValueError, match="WANDB_MODE environment variable"):
        resolve_wandb_mode()
    with pytest.raises(TypeError, match="logger.wandb.mode=offline"):
        wandb_logger(offline=True, project="x")


# ----------------------------------------------------------------------------- media helpers
def test_silhouette_strip_puts_sequences_in_rows_and_frames_in_columns():
    # Pixel value encodes (sequence, frame): 0.1 * sequence + 0.02 * frame.
    sequence = torch.arange(3.0)[:, None, None, None]
    frame = torch.arange(4.0)[None, :, None, None]
    sils = (0.1 * sequence + 0.02 * frame).expand(3, 4, 2, 5).clone()
    strip = silhouette_strip(sils, max_sequences=2, max_frames=3)
    assert strip.shape == (2 * 2, 3 * 5) and strip.dtype == np.uint8
    assert strip[0, 0] == 0 and strip[0, 5] == 5  # frame 1: 0.02 * 255 = 5.1
    assert strip[2, 0] == 26 and strip[3, 14] == 36  # sequence 1: 25.5 -> 26; +2 frames
    with pytest.raises(ValueError, match=r"\[n, s, h, w\]"):
        silhouette_strip(sils[0])


def test_image_grid_tiles_row_major_and_pads_the_last_row():
    images = torch.arange(5, dtype=torch.uint8)[:, None, None, None].expand(5, 3, 2, 1) * 50
    grid = image_grid(images, max_images=5, columns=2)
    assert grid.shape == (3 * 2, 2 * 1, 3)
    assert grid[:, :, 0].tolist() == [[0, 50], [0, 50], [100, 150], [100, 150], [200, 0], [200, 0]]
    assert image_grid(images.float(), max_images=2, columns=8).shape == (2, 2, 3)


def test_rank_gallery_orders_by_distance_and_skips_same_camera_matches():
    # 1-D features on the unit circle: cosine distance follows the angle.
    angles = torch.tensor([0.0, 0.1, 0.2, 0.5, 1.0])
    gallery = torch.stack([angles.cos(), angles.sin()], dim=1)
    gallery_pids = torch.tensor([7, 7, 3, 7, 5])
    gallery_camids = torch.tensor([0, 1, 1, 2, 0])
    query = torch.tensor([[1.0, 0.0]])
    indices, is_match = rank_gallery(
        query, gallery, torch.tensor([7]), torch.tensor([0]), gallery_pids, gallery_camids, 3
    )
    # Gallery 0 is the same person in the same camera: junk, like in the CMC protocol.
    assert indices.tolist() == [[1, 2, 3]]
    assert is_match.tolist() == [[True, False, True]]
    indices, _ = rank_gallery(
        query, gallery, torch.tensor([7]), torch.tensor([0]), gallery_pids, gallery_camids, 9
    )
    assert indices.shape == (1, 4)  # only four non-junk candidates


def test_rank_list_grid_frames_query_hits_and_misses():
    query = torch.full((1, 3, 2, 2), 9.0)
    ranked = torch.full((1, 2, 3, 2, 2), 60.0)
    grid = rank_list_grid(query, ranked, torch.tensor([[True, False]]), border=1)
    assert grid.shape == (4, 3 * 4, 3)
    assert tuple(grid[0, 0]) == QUERY_COLOUR and tuple(grid[1, 1]) == (9, 9, 9)
    assert tuple(grid[0, 4]) == MATCH_COLOUR and tuple(grid[1, 5]) == (60, 60, 60)
    assert tuple(grid[3, 11]) == MISMATCH_COLOUR


# ------------------------------------------------------------------------------ offline runs
def read_run_file(path: Path) -> dict:
    """Config, history and media of an offline ``run-*.wandb`` file.

    The file is a LevelDB-format log (7-byte wandb header, 32 KiB blocks of records with a
    7-byte checksum/length/type header; types 1 = full, 2-4 = first/middle/last fragment)
    holding ``wandb.proto`` ``Record`` messages.
    """
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a wandb run file"
    config, history = {}, defaultdict(list)
    position, pending = 7, b""
    while position + 7 <= len(raw):
        left_in_block = WANDB_LOG_BLOCK - position % WANDB_LOG_BLOCK
        if left_in_block < 7:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        pending += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        if record.HasField("config"):
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif record.HasField("history"):
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history[key].append(json.loads(item.value_json))
    return {"config": config, "history": dict(history)}


def single_offline_run(output_dir: Path) -> Path:
    runs = sorted((output_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {output_dir}, found {runs}"
    return runs[0]


def table(run_dir: Path, key: str) -> dict:
    files = sorted((run_dir / "files" / "media" / "table").glob(f"{key}_*.table.json"))
    assert files, f"no table {key} in {run_dir}"
    return json.loads(files[-1].read_text())


def image(run_dir: Path, key: str) -> np.ndarray:
    files = sorted((run_dir / "files" / "media" / "images").glob(f"{key}_*.png"))
    assert files, f"no image {key} in {run_dir}"
    return np.asarray(Image.open(files[0]))


@pytest.fixture
def gait_overrides(synthetic_gait_root: Path) -> list[str]:
    return [
        *TINY_GAIT,
        f"data.root={synthetic_gait_root}",
        *TINY_CALLBACKS,
        "+callbacks.lr_monitor._target_=pytorch_lightning.callbacks.LearningRateMonitor",
        "logger=wandb",
        "callbacks.wandb_media.every_n_steps=2",
    ]


def test_gait_run_writes_config_scalars_images_and_view_tables_offline(
    no_wandb_credentials, make_config, gait_overrides
):
    cfg = make_config("train", gait_overrides)
    assert cfg.callbacks.wandb_media._target_.endswith("WandbMedia"), "logger=wandb adds it"
    metrics = train(cfg)
    assert finish_wandb_runs() == 0  # train() already finished and flushed its run
    run_dir = single_offline_run(Path(cfg.paths.output_dir))
    run = read_run_file(next(run_dir.glob("run-*.wandb")))

    assert run["config"]["model"]["optimizer"]["lr"] == 1.0e-3  # the resolved Hydra config
    assert run["config"]["data"]["p"] == 3
    history = run["history"]
    assert len(history["train/loss"]) == 4  # log_every_n_steps=1, 4 steps
    assert history["lr-Adam"][0] == pytest.approx(1.0e-3 * 0.01)  # warm-up starts at 1 %
    assert history["test/Mean"][-1] == pytest.approx(metrics["test/Mean"])
    assert history["train/inputs/_type"] == ["images/separated"] * 2  # batches 0 and 2

    # 3 x 2 sequences, 4 shown; 6 frames of 64 x 44 (64 wide minus the 10-pixel side cuts).
    assert image(run_dir, "train/inputs").shape == (4 * 64, 6 * 44)
    per_view = table(run_dir, "test/per_view_accuracy")
    assert per_view["columns"] == ["condition", "000", "090", "180", "mean"]
    assert [row[0] for row in per_view["data"]] == ["NM", "BG", "CL"]
    mean_of_conditions = np.mean([row[-1] for row in per_view["data"]])
    assert mean_of_conditions == pytest.approx(metrics["test/Mean"], abs=0.01)
    matrix = table(run_dir, "test/view_accuracy")
    assert len(matrix["data"]) == 3 * 3 * 3  # conditions x probe views x gallery views
    assert sorted((run_dir / "files" / "media" / "table" / "val").glob("*.table.json"))


def test_disabled_mode_trains_without_writing_a_run(
    no_wandb_credentials, monkeypatch, make_config, gait_overrides
):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = make_config("train", [*gait_overrides, "trainer.max_steps=2"])
    metrics = train(cfg)
    assert "test/Mean" in metrics and "train/loss" in metrics
    assert not list(Path(cfg.paths.output_dir).glob("wandb/*run-*"))


@pytest.fixture(scope="module")
def synthetic_reid_root(tmp_path_factory) -> Path:
    # One folder per session for test_wandb and test_sweeps (same TINY_REID sizes): the data
    # module generates the domains on first use only.
    return tmp_path_factory.getbasetemp() / "synthetic_reid_tiny"


def test_reid_run_logs_retrieval_table_cmc_and_rank_lists(
    no_wandb_credentials, make_config, synthetic_reid_root
):
    cfg = make_config(
        "train",
        [
            *TINY_REID,
            f"data.synthetic.root={synthetic_reid_root}",
            "model.initial_basic_steps=1",
            "trainer.max_steps=3",
            "trainer.log_every_n_steps=1",
            "callbacks=none",
            "logger=wandb",
            "callbacks.wandb_media.every_n_steps=1000",
            "callbacks.wandb_media.rank_list_queries=3",
            "callbacks.wandb_media.rank_list_top_k=4",
        ],
    )
    metrics = train(cfg)
    finish_wandb_runs()
    run_dir = single_offline_run(Path(cfg.paths.output_dir))
    run = read_run_file(next(run_dir.glob("run-*.wandb")))

    retrieval = table(run_dir, "test/retrieval")
    assert retrieval["columns"][:3] == ["target", "rank1", "rank5"]
    (row,) = retrieval["data"]
    assert row[0] == "synD"
    assert row[1] == pytest.approx(metrics["test/synD/rank1"], abs=1e-4)
    # The CMC chart's data: rank k -> CMC@k, starting at Rank-1 and never decreasing.
    assert "test/cmc_table/_type" in run["history"]
    curve = [value for _, target, value in table(run_dir, "test/cmc_table")["data"]]
    assert curve[0] == pytest.approx(metrics["test/synD/rank1"], abs=1e-4)
    assert curve[4] == pytest.approx(metrics["test/synD/rank5"], abs=1e-4)
    assert all(b >= a for a, b in zip(curve, curve[1:], strict=False))

    assert image(run_dir, "train/inputs").shape == (64, 8 * 32, 3)  # batch 0: 8 images
    # 3 queries x (query + top 4), 64 x 32 images inside 2-pixel frames.
    rank_list = image(run_dir, "test/synD/rank_list")
    assert rank_list.shape == (3 * 68, 5 * 36, 3)
    (caption,) = run["history"]["test/synD/rank_list/captions"][0]
    hits_per_query = json.loads(caption.rpartition(": ")[2])
    corners = rank_list[::68, ::36]  # top-left border pixel of every tile
    assert all(tuple(c) == QUERY_COLOUR for c in corners[:, 0])
    assert [sum(tuple(c) == MATCH_COLOUR for c in row[1:]) for row in corners] == hits_per_query
    assert all(tuple(c) in (MATCH_COLOUR, MISMATCH_COLOUR) for c in corners[:, 1:].reshape(-1, 3))


def test_cmc_chart_stops_at_the_gallery_size(monkeypatch):
    import wandb

    from metareid.callbacks.wandb_media import WandbMedia

    charts, logged = [], []
    monkeypatch.setattr(
        wandb.plot, "line_series", lambda **kwargs: charts.append(kwargs) or "chart"
    )

    class _Logger:
        def log_table(self, **kwargs):
            pass

        def log_metrics(self, metrics, step):
            logged.append(metrics)

    cmc = torch.linspace(0.5, 1.0, 50)
    results = {
        "synD": {"rank1": 50.0, "cmc": cmc, "num_gallery": 12},
        "synE": {"rank1": 60.0, "cmc": cmc, "num_gallery": 30},
    }
    WandbMedia._log_retrieval(_Logger(), results, "test", step=3)
    (chart,) = charts
    assert chart["xs"] == list(range(1, 13))  # the smaller gallery bounds the shared axis
    assert [len(curve) for curve in chart["ys"]] == [12, 12]
    assert logged == [{"test/cmc": "chart"}]
