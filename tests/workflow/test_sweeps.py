"""Sweeps without a server: wandb sweep files and the Hydra Optuna search, on the tiny demos.

A wandb agent turns each sampled point into ``/usr/bin/env python src/train.py key=value ...``;
these tests sample points themselves, build the command line with wandb's own argument builder,
check that Hydra composes it into the intended config, and run it (with the real recipe swapped
for the matching synthetic demo and tiny sizes appended).
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from hydra_helpers import CONF, REPO, TINY_GAIT, TINY_REID, compose_config
from train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# wandb sweep files live outside conf/: they are not Hydra configs (nor a selectable group).
SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
SEARCH_FILES = sorted((CONF / "hparams_search").glob("*.yaml"))

SWEEP_KEYS = {"project", "entity", "name", "description", "program", "method", "metric"}
SWEEP_KEYS |= {"parameters", "command", "early_terminate", "run_cap"}
# Parameter forms this project uses, by wandb's distribution name.
DISTRIBUTIONS = {"constant", "categorical", "uniform", "int_uniform", "log_uniform_values"}
# Config groups that sweep files select; their value is an option name, not a config value.
GROUP_PARAMETERS = {"experiment", "logger"}

# The real recipes need prepared datasets; the sweeps' runs use the synthetic demos instead.
DEMO_OF = {"metagait_casiab": "demo_metagait", "dr50_mix": "demo_dr50"}
SWEEP_REID = [
    *(o for o in TINY_REID if not o.startswith("experiment=")),
    "model.initial_basic_steps=1",
    # Iteration 0 (basic + meta step) and iteration 1 (basic step): max_steps counts iterations.
    "trainer.max_steps=2",
]


# ----------------------------------------------------------------------- wandb sweep helpers
def distribution_of(name: str, parameter: dict) -> str:
    """wandb's reading of a parameter spec (explicit ``distribution`` or inferred from keys)."""
    assert isinstance(parameter, dict), f"parameter {name}: expected a mapping, got {parameter!r}"
    if "distribution" in parameter:
        return parameter["distribution"]
    if "value" in parameter:
        return "constant"
    if "values" in parameter:
        return "categorical"
    if isinstance(parameter.get("min"), int) and isinstance(parameter.get("max"), int):
        return "int_uniform"
    return "uniform"


def validate_sweep(spec: dict, path: Path) -> None:
    """The checks wandb's sweep schema makes, for the parameter forms used here."""
    unknown = set(spec) - SWEEP_KEYS
    assert not unknown, f"{path.name}: unknown top-level keys {sorted(unknown)}"
    assert spec["method"] in {"grid", "random", "bayes"}, f"{path.name}: method"
    assert set(spec["metric"]) <= {"name", "goal", "target"}, f"{path.name}: metric keys"
    assert spec["metric"]["goal"] in {"maximize", "minimize"}, f"{path.name}: metric.goal"
    assert (REPO / spec["program"]).is_file(), f"{path.name}: program {spec['program']}"
    command = spec["command"]
    assert isinstance(command, list) and all(isinstance(c, str) for c in command), path.name
    assert command[-1] == "${args_no_hyphens}", f"{path.name}: Hydra needs key=value overrides"
    assert "${program}" in command and "${interpreter}" in command, path.name
    for name, parameter in spec["parameters"].items():
        distribution = distribution_of(name, parameter)
        assert distribution in DISTRIBUTIONS, f"{path.name}: {name}: {distribution}"
        if distribution == "constant":
            assert set(parameter) <= {"value", "distribution"}, f"{path.name}: {name}"
            values = [parameter["value"]]
        elif distribution == "categorical":
            assert set(parameter) <= {"values", "distribution"}, f"{path.name}: {name}"
            values = parameter["values"]
            assert isinstance(values, list) and values, f"{path.name}: {name}: empty values"
        else:
            assert set(parameter) == {"min", "max"} | ({"distribution"} & set(parameter))
            low, high = parameter["min"], parameter["max"]
            # PyYAML reads `1e-4` (no dot) as a string: the sampler would then fail server-side.
            assert all(isinstance(v, int | float) for v in (low, high)), f"{path.name}: {name}"
            assert low < high, f"{path.name}: {name}: min >= max"
            if distribution == "log_uniform_values":
                assert low > 0, f"{path.name}: {name}: log_uniform_values needs min > 0"
            values = [low, high]
        # `None` would reach the command line as "None", which Hydra reads as a string.
        assert all(v is not None for v in values), f'{path.name}: {name}: write "null"'


def sample_point(parameters: dict, rng: random.Random) -> dict:
    """One random-search point, as the sweep controller would pick it."""
    point = {}
    for name, parameter in parameters.items():
        distribution = distribution_of(name, parameter)
        if distribution == "constant":
            point[name] = parameter["value"]
        elif distribution == "categorical":
            point[name] = rng.choice(parameter["values"])
        elif distribution == "int_uniform":
            point[name] = rng.randint(parameter["min"], parameter["max"])
        elif distribution == "uniform":
            point[name] = rng.uniform(parameter["min"], parameter["max"])
        else:  # log_uniform_values
            low, high = math.log(parameter["min"]), math.log(parameter["max"])
            point[name] = math.exp(rng.uniform(low, high))
    return point


def agent_command_line(spec: dict, point: dict) -> list[str]:
    """The argv ``wandb agent`` runs for ``point`` (its macro expansion, our interpreter)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    command = create_sweep_command(list(spec["command"]))
    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
    # The agent uses `python` from PATH; the test pins this venv's interpreter.
    macros.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[spec["program"]])
    argv = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def sampled_command_lines(path: Path, count: int = 2) -> tuple[dict, list[list[str]], list]:
    spec = yaml.safe_load(path.read_text())
    rng = random.Random(path.name)
    points = [sample_point(spec["parameters"], rng) for _ in range(count)]
    return spec, [agent_command_line(spec, p) for p in points], points


def overrides_of(argv: list[str]) -> list[str]:
    """The Hydra overrides of an agent command line (everything after the program)."""
    return argv[argv.index("src/train.py") + 1 :]


def on_the_demo(overrides: list[str], gait_root: Path, reid_root: Path) -> list[str]:
    """Swap the real recipe for its synthetic demo and append tiny sizes."""
    demo = []
    for override in overrides:
        key, _, value = override.partition("=")
        demo.append(f"{key}={DEMO_OF.get(value, value)}" if key == "experiment" else override)
    if "experiment=demo_dr50" in demo:
        tiny = [*SWEEP_REID, f"data.synthetic.root={reid_root}"]
    else:
        tiny = [*TINY_GAIT, f"data.root={gait_root}"]
    return [*demo, *tiny, "callbacks=none", "trainer.log_every_n_steps=1"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.update(WANDB_CONSOLE="off", PROJECT_ROOT=str(REPO), HYDRA_FULL_ERROR="1")
    env.pop("WANDB_API_KEY", None)
    return env


@pytest.fixture(scope="module")
def synthetic_reid_root(tmp_path_factory) -> Path:
    # One folder per session for test_wandb and test_sweeps (same TINY_REID sizes): the data
    # module generates the domains on first use only.
    return tmp_path_factory.getbasetemp() / "synthetic_reid_tiny"


# ----------------------------------------------------------------------------- wandb sweeps
def test_there_is_a_sweep_per_task():
    programs = {p.stem: yaml.safe_load(p.read_text()) for p in SWEEP_FILES}
    assert {"metagait", "dr50"} <= set(programs)
    gait_parameters = set(programs["metagait"]["parameters"])
    assert {"model.optimizer.lr", "model.optimizer.weight_decay"} <= gait_parameters
    assert "model.scheduler.warmup_iters" in gait_parameters
    reid_parameters = set(programs["dr50"]["parameters"])
    assert {"model.meta_interval", "model.inner_lr_scale", "model.adaptor_lr_scale"} <= (
        reid_parameters
    )


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_is_valid_and_its_command_lines_compose(path, tmp_path):
    spec, command_lines, points = sampled_command_lines(path)
    validate_sweep(spec, path)
    for argv, point in zip(command_lines, points, strict=True):
        assert argv[:3] == ["/usr/bin/env", sys.executable, "src/train.py"]
        cfg = compose_config("train", overrides_of(argv), tmp_path / "run")
        assert cfg.hydra.runtime.choices.experiment == point["experiment"]
        assert "wandb" in cfg.logger and "wandb_media" in cfg.callbacks
        for key, value in point.items():
            if key not in GROUP_PARAMETERS:
                assert OmegaConf.select(cfg, key) == pytest.approx(value), key
        # The sweep's metric is one the run reports under that name.
        assert spec["metric"]["name"] in {"test/Mean", "test/mAP"}


def test_gait_sweep_command_line_runs_like_the_agent_would(synthetic_gait_root, tmp_path):
    """The first sampled point, as a real subprocess: argv exactly as the agent builds it."""
    _, command_lines, points = sampled_command_lines(REPO / "sweeps" / "metagait.yaml")
    argv = command_lines[0]
    demo = on_the_demo(overrides_of(argv), synthetic_gait_root, tmp_path)
    result = subprocess.run(
        [*argv[: argv.index("src/train.py") + 1], *demo, f"paths.log_dir={tmp_path / 'logs'}"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "demo_metagait" / "runs").iterdir()
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb")), "offline wandb run"
    recorded = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    lr = float(next(o for o in recorded if o.startswith("model.optimizer.lr=")).split("=")[1])
    assert lr == pytest.approx(points[0]["model.optimizer.lr"])


def test_dr50_sweep_points_reach_the_meta_step(
    synthetic_reid_root, synthetic_gait_root, tmp_path, monkeypatch
):
    """Both sampled points in process; the inner step must use the swept scales."""
    import metareid.tasks.reid as reid_task
    from metareid.callbacks.wandb_media import finish_wandb_runs

    monkeypatch.setenv("WANDB_MODE", "disabled")
    calls = []

    def recording_fast_weights(model, grads, step_size, scale_fn):
        calls.append((step_size, scale_fn("backbone.adaptor1_sub.conv1.weight"), scale_fn("x")))
        return original(model, grads, step_size, scale_fn=scale_fn)

    original = reid_task.fast_weights
    monkeypatch.setattr(reid_task, "fast_weights", recording_fast_weights)
    _, command_lines, points = sampled_command_lines(REPO / "sweeps" / "dr50.yaml")
    for index, (argv, point) in enumerate(zip(command_lines, points, strict=True)):
        calls.clear()
        overrides = on_the_demo(overrides_of(argv), synthetic_gait_root, synthetic_reid_root)
        metrics = train(compose_config("train", overrides, tmp_path / f"point{index}"))
        finish_wandb_runs()
        assert 0.0 <= metrics["test/mAP"] <= 100.0
        # Iteration 0 has a meta step whatever the interval.
        assert len(calls) >= 1
        step_size, adaptor_scale, other_scale = calls[0]
        # Warm-up from 1 % of 0.04 at the first iteration.
        assert step_size == pytest.approx(0.04 * 0.01 * point["model.inner_lr_scale"])
        assert adaptor_scale == point["model.adaptor_lr_scale"] and other_scale == 1.0


# ---------------------------------------------------------------------------- hydra + optuna
@pytest.mark.parametrize("path", SEARCH_FILES, ids=lambda p: p.stem)
def test_optuna_search_spaces_compose(path, tmp_path):
    experiment = ["experiment=demo_dr50"] if "dr50" in path.stem else []
    cfg = compose_config("train", [*experiment, f"hparams_search={path.stem}"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.n_jobs == 1 and sweeper.storage is None
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"{path.name}: {key} is not a config key"
    assert cfg.optimized_metric in {"test/Mean", "test/mAP"}


def test_optuna_multirun_runs_two_trials_on_the_demo(synthetic_gait_root, tmp_path):
    command = [
        sys.executable,
        "src/train.py",
        "-m",
        "hparams_search=metagait_optuna",
        "hydra.sweeper.n_trials=2",
        *TINY_GAIT,
        f"data.root={synthetic_gait_root}",
        "callbacks=none",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    result = subprocess.run(
        command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert set(best.best_params) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.scheduler.warmup_iters",
    }
    assert 0.0 <= best.best_value <= 100.0
    trial_lrs = []
    for trial in ("0", "1"):
        overrides = OmegaConf.load(sweep_dir / trial / ".hydra" / "overrides.yaml")
        lr = next(o for o in overrides if o.startswith("model.optimizer.lr="))
        trial_lrs.append(float(lr.split("=")[1]))
    assert all(1e-4 <= lr <= 3e-3 for lr in trial_lrs) and trial_lrs[0] != trial_lrs[1]
