"""Past one machine (issue 8 §5): hydra-submitit-launcher configs and a local submitit sweep.

``hydra/launcher=submitit_slurm`` is composed and turned into submitit's SLURM executor
parameters exactly as the plugin does before ``sbatch`` (no cluster here); ``submitit_local``
really runs a tiny CPU training job through ``src/train.py -m``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import submitit
from hydra.utils import instantiate
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf
from submitit.slurm.slurm import _make_sbatch_string

from hydra_helpers import REPO, compose_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# The command of README's "Training" section for 2 nodes x 8 GPUs (the data path is not read).
TWO_NODES = [
    "experiment=metagait_casiab",
    "trainer=ddp",
    "trainer.devices=8",
    "trainer.num_nodes=2",
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=gpu",
]


def sbatch_script(launcher_config, monkeypatch) -> str:
    """The sbatch script ``SlurmLauncher.launch`` would submit for this launcher config: the
    plugin's own parameter mapping, then submitit's executor (which validates every key) and its
    script writer. ``srun`` is absent here, so submitit's cluster detection is bypassed."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    params = dict(instantiate(launcher_config).params)
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{key if key in generic else f"slurm_{key}": value for key, value in params.items()}
    )
    slurm = executor._executor
    return _make_sbatch_string(
        command="python -m submitit.core._submit", folder=slurm.folder, **slurm.parameters
    )


def test_slurm_launcher_follows_trainer_nodes_and_devices(tmp_path, monkeypatch):
    cfg = compose_config("train", TWO_NODES, tmp_path / "run")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "16-mixed"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 8)
    script = sbatch_script(launcher, monkeypatch).splitlines()
    # One SLURM task per GPU: Lightning's SLURMEnvironment maps SLURM_PROCID to the global rank.
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --job-name=metagait_casiab",
        "#SBATCH --time=4320",
    ):
        assert line in script, line


def test_slurm_launcher_defaults_to_one_node_without_ddp(tmp_path):
    cfg = compose_config("train", ["hydra/launcher=submitit_slurm"], tmp_path / "run")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (1, 1)


# Two Python start-ups (launcher and job) with torch + Lightning imports: ~30 s on 2 free cores.
@pytest.mark.slow
def test_local_launcher_runs_a_tiny_training_job(tmp_path):
    command = [
        sys.executable,
        "src/train.py",
        "-m",
        "hydra/launcher=submitit_local",
        "debug=tiny",
        "callbacks=none",
        "logger=csv",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"data.root={tmp_path / 'synthetic_casiab'}",
    ]
    env = {"OMP_NUM_THREADS": "1", "PROJECT_ROOT": str(REPO), "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    # submitit's record of the job: it ran to the end and returned optimized_metric (test/Mean).
    (result_file,) = sweep_dir.glob(".submitit/*/*_result.pkl")
    status, job_return = pickle.loads(result_file.read_bytes())
    assert status == "success"
    assert 0.0 <= job_return.return_value <= 100.0
    # The job's own Hydra output folder, with its config and evaluation report.
    job_dir = sweep_dir / "0"
    overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    assert "debug=tiny" in overrides
    (report,) = (job_dir / "report").glob("*_results.json")
    assert report.stat().st_size > 0
