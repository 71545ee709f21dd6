"""Interrupted, corrupt, foreign and malicious checkpoints through every loading path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import train as train_entry
from eval import evaluate
from hydra_helpers import TINY_CALLBACKS, TINY_GAIT
from metareid import checkpoint_io
from metareid.checkpoint_io import AtomicSafeCheckpointIO, atomic_torch_save, temporary_path
from metareid.checkpoints import (
    CheckpointError,
    lightning_checkpoint,
    load_checkpoint_file,
    network_from_config,
)
from metareid.utils.errors import ConfigValueError
from train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _RunsShell:
    """Pickles as ``os.system(command)``: loading it with pickle runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint whose unpickling creates ``marker``."""
    checkpoint = lightning_checkpoint({"w": torch.zeros(1)})
    checkpoint["hyper_parameters"] = {"payload": _RunsShell(f"touch {marker}")}
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def malicious(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """``(checkpoint, marker)``, with torch's weights_only default switched off as an older torch
    (or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) has it: only an explicit weights_only=True holds."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    return write_malicious_checkpoint(tmp_path / "crafted.ckpt", marker), marker


@pytest.fixture
def gait_overrides(synthetic_gait_root: Path) -> list[str]:
    return [*TINY_GAIT, f"data.root={synthetic_gait_root}", "logger=[]", "report=false"]


# ------------------------------------------------------------------------ atomic writes


def test_an_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, target)

    def dies_half_way(obj, file):  # what kill -9 during torch.save leaves behind
        file.write(b"PK\x03\x04 partial zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert int(load_checkpoint_file(target)["step"]) == 1
    assert temporary_path(target).exists()  # the partial file, never renamed into place
    atomic_torch_save({"step": torch.tensor(3)}, target)  # the next save replaces both
    assert int(load_checkpoint_file(target)["step"]) == 3
    assert not temporary_path(target).exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"], ids=["empty", "truncated"])
def test_a_bad_checkpoint_names_itself_and_the_newest_loadable_one(tmp_path, content):
    older, newer = tmp_path / "step_1.ckpt", tmp_path / "step_2.ckpt"
    atomic_torch_save({"step": 1}, older)
    atomic_torch_save({"step": 2}, newer)
    os.utime(older, (1, 1))  # older on disk too
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        AtomicSafeCheckpointIO().load_checkpoint(bad)
    message = str(caught.value)
    assert str(bad) in message and f"ckpt_path={newer}" in message
    assert ("empty (0 bytes)" if not content else "truncated or corrupt") in message


def test_a_resume_from_a_bad_checkpoint_is_a_clear_error(make_config, gait_overrides, tmp_path):
    """Before: a bare EOFError with no path, from Lightning's own torch.load."""
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    cfg = make_config("train", [*gait_overrides, "callbacks=none", f"ckpt_path={empty}"])
    with pytest.raises(CheckpointError, match=rf"{empty}: not a readable.*empty \(0 bytes\)"):
        train(cfg)


# ------------------------------------------------------------------ untrusted checkpoints


def test_the_refusal_names_the_global_with_torch_2_13_wording(malicious):
    """torch 2.13 says "unsupported GLOBAL posix.system whose module posix is blocked"; the old
    pattern missed it and dropped both the name and the trust hint."""
    path, marker = malicious
    with pytest.raises(CheckpointError, match=r"such as posix\.system.*trust_pickle=true"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_no_entry_point_runs_code_from_a_checkpoint(malicious, make_config, gait_overrides):
    path, marker = malicious
    paths = [
        lambda: evaluate(make_config("eval", [*gait_overrides, f"ckpt_path={path}"])),
        lambda: train(make_config("train", [*gait_overrides, f"ckpt_path={path}"])),
        lambda: network_from_config(make_config("eval", gait_overrides).model.net, path),  # export
        lambda: AtomicSafeCheckpointIO().load_checkpoint(path),  # every trainer.fit/test load
    ]
    for load in paths:
        with pytest.raises(CheckpointError, match="posix.system"):
            load()
    assert not marker.exists()
    import convert
    from export import export
    from extract import extract

    export_cfg = make_config("export", [f"ckpt_path={path}", f"output_dir={path.parent}"])
    with pytest.raises(CheckpointError, match="posix.system"):
        export(export_cfg)
    extract_cfg = make_config("extract", [f"ckpt_path={path}", f"input={path.parent}"])
    with pytest.raises(CheckpointError, match="posix.system"):
        extract(extract_cfg)
    assert not marker.exists()

    args = ["opengait", "--src", str(path), "--out", str(path.with_suffix(".out"))]
    assert convert.main(args) == 1
    assert not marker.exists() and not path.with_suffix(".out").exists()
    # The trust switch is the only way out.
    with pytest.raises(CheckpointError, match="does not fit"):
        network_from_config(make_config("eval", gait_overrides).model.net, path, trust_pickle=True)
    assert marker.exists()


# ------------------------------------------------------------ checkpoints of another kind


def test_eval_of_a_foreign_checkpoint_is_one_short_message(make_config, gait_overrides, tmp_path):
    other_model = tmp_path / "other.ckpt"
    torch.save(lightning_checkpoint({f"layer{i}.weight": torch.zeros(2) for i in range(500)}),
               other_model)
    with pytest.raises(CheckpointError) as caught:
        evaluate(make_config("eval", [*gait_overrides, f"ckpt_path={other_model}"]))
    message = str(caught.value)
    assert "does not fit GaitModule" in message and "another model config" in message
    assert len(message) < 2000  # was a 29 KB key list

    opengait = tmp_path / "GaitGL-80000.pt"
    torch.save({"model": {"conv3d.0.conv3d.weight": torch.zeros(1)}, "iteration": 80000}, opengait)
    with pytest.raises(CheckpointError, match=r"src/convert.py \{opengait,acl\} --src"):
        evaluate(make_config("eval", [*gait_overrides, f"ckpt_path={opengait}"]))


# ------------------------------------------------------------------------- ckpt_path=last


def test_ckpt_path_last_without_a_checkpoint_is_an_error(make_config, gait_overrides):
    """Before: a warning, then training from scratch."""
    cfg = make_config("train", [*gait_overrides, *TINY_CALLBACKS, "ckpt_path=last"])
    with pytest.raises(ConfigValueError, match="allow_fresh_start=true"):
        train(cfg)


def test_fresh_start_allowed_and_test_false_without_validation_exits_0(
    make_config, gait_overrides
):
    """Before: main raised KeyError for the unlogged optimized_metric (exit 1) after training."""
    cfg = make_config(
        "train",
        [
            *gait_overrides,
            *TINY_CALLBACKS,
            "ckpt_path=last",
            "allow_fresh_start=true",
            "test=false",
            "++trainer.limit_val_batches=0",
            "trainer.max_steps=2",
        ],
    )
    assert train_entry.main(cfg) is None
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert load_checkpoint_file(last)["global_step"] == 2
