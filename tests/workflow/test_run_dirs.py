"""Coming back to a run by its folder: resume in place, eval by run_dir=, outputs inside the run."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_helpers import REPO, TINY_CALLBACKS, TINY_GAIT
from metareid.utils.run_dirs import apply_run_dir, run_folder_of


def _cli(script: str, overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT_ROOT": str(REPO), "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, str(REPO / "src" / script), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _metrics_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def trained_run(synthetic_gait_root, tmp_path_factory) -> tuple[Path, list[str]]:
    logs = tmp_path_factory.mktemp("logs")
    common = [f"paths.log_dir={logs}", f"data.root={synthetic_gait_root}"]
    _cli("train.py", [*TINY_GAIT, *TINY_CALLBACKS, *common], cwd=logs)
    (run,) = (logs / "train" / "runs").iterdir()
    return run, common


def test_training_names_its_folder_and_logs_the_tables(trained_run):
    run, _ = trained_run
    log_text = (run / "train.log").read_text()
    assert f"Run folder: {run}" in log_text
    assert "NM" in log_text and "CL" in log_text  # the CASIA-B table, not only stdout


def test_resume_continues_in_the_same_folder_csv_and_config(trained_run):
    run, common = trained_run
    original_config = (run / ".hydra" / "config.yaml").read_text()
    steps_before = sorted({int(r["step"]) for r in _metrics_rows(run) if r.get("train/loss")})
    assert steps_before[-1] == 3  # steps 0..3 of a 4-step run
    ckpt = run / "checkpoints" / "last.ckpt"
    _cli(
        "train.py",
        [*TINY_GAIT, *TINY_CALLBACKS, *common, f"ckpt_path={ckpt}", "trainer.max_steps=6"],
        cwd=run.parent,
    )
    assert [p.name for p in run.parent.iterdir()] == [run.name]  # no new run folder
    assert (run / ".hydra" / "config.yaml").read_text() == original_config
    assert list((run / ".hydra").glob("resumed_*/config.yaml"))
    train_steps = [int(r["step"]) for r in _metrics_rows(run) if r.get("train/loss")]
    assert train_steps == list(range(6))  # one history: before and after the resume, no repeats


def test_eval_by_run_dir_needs_no_model_overrides_and_writes_inside_the_run(trained_run):
    run, common = trained_run
    # The tiny run's network (channels 4/8/8, 4 parts) differs from the default model config:
    # only the run's saved config can rebuild it.
    _cli("eval.py", [f"run_dir={run}", f"paths.log_dir={common[0].split('=', 1)[1]}"], cwd=run)
    (eval_dir,) = (run / "eval").iterdir()
    assert (eval_dir / "report").is_dir() and (eval_dir / "eval.log").is_file()
    assert "test/Mean" in (eval_dir / "eval.log").read_text()


def test_apply_run_dir_takes_the_run_config_and_reapplies_dotted_overrides(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "step_000002.ckpt").write_bytes(b"x")
    saved = {"model": {"net": {"channels": [4, 8, 8]}, "lr": 0.1}, "data": {"p": 3}, "seed": 7}
    OmegaConf.save(OmegaConf.create(saved), run / ".hydra" / "config.yaml")
    cfg = OmegaConf.create(
        {"model": {"net": {"channels": [32, 64, 128]}}, "data": {"p": 8}, "seed": 42,
         "run_dir": str(run), "ckpt_path": None, "ckpt": "step_000002.ckpt"}
    )
    out = apply_run_dir(cfg, overrides=[f"run_dir={run}", "model.lr=0.5", "ckpt=step_000002.ckpt"])
    assert out.model.net.channels == [4, 8, 8] and out.data.p == 3 and out.seed == 7
    assert out.model.lr == 0.5
    assert out.ckpt_path == str(run.resolve() / "checkpoints" / "step_000002.ckpt")

    with pytest.raises(ValueError, match="model=metagait"):
        apply_run_dir(OmegaConf.create({**cfg, "ckpt_path": None}), overrides=["model=metagait"])
    with pytest.raises(FileNotFoundError, match="step_000002.ckpt"):
        apply_run_dir(
            OmegaConf.create({**cfg, "ckpt_path": None, "ckpt": "nope.ckpt"}), overrides=[]
        )
    with pytest.raises(FileNotFoundError, match="training run"):
        apply_run_dir(OmegaConf.create({**cfg, "run_dir": str(tmp_path)}), overrides=[])


def test_run_folder_of_recognises_only_checkpoints_inside_a_run(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("{}")
    assert run_folder_of(run / "checkpoints" / "last.ckpt") == run.resolve()
    assert run_folder_of(tmp_path / "weights" / "last.ckpt") is None
    assert run_folder_of("last") is None and run_folder_of(None) is None


def test_a_run_folder_keeps_one_wandb_run_id(tmp_path):
    from metareid.callbacks.wandb_media import WANDB_ID_FILE, wandb_run_id

    first = wandb_run_id(tmp_path / "run")
    assert (tmp_path / "run" / WANDB_ID_FILE).read_text().strip() == first
    assert wandb_run_id(tmp_path / "run") == first  # the resumed job continues that run
    assert wandb_run_id(tmp_path / "other") != first


def test_a_checkpoint_that_does_not_fit_names_the_config_keys_and_run_dir(trained_run, make_config):
    from eval import evaluate
    from metareid.checkpoints import CheckpointError

    run, common = trained_run
    cfg = make_config("eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", common[1]])
    with pytest.raises(CheckpointError) as error:
        evaluate(cfg)
    message = str(error.value)
    assert "model.net.channels: run [4, 8, 8], here [8, 16, 32]" in message
    assert f"run_dir={run}" in message
    assert len(message) < 2000  # one readable message, not a key dump
