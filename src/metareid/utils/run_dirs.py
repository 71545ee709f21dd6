"""Run folders: where a run writes, and how to come back to a finished one.

A training run lives in ``logs/<task>/runs/<timestamp>/`` (``.hydra/`` config, ``checkpoints/``,
``csv/metrics.csv``, ``<task>.log``, ``report/``). Two things keep its history in one place:

* **Resume in place.** ``train.py ckpt_path=<run>/checkpoints/last.ckpt`` continues in ``<run>``
  (same CSV, same wandb run id, same log file) instead of opening a new folder that splits the
  history. The resumed job's Hydra files go to ``<run>/.hydra/resumed_<timestamp>/`` so the
  original ``.hydra/config.yaml`` stays the run's config.
* **Come back by folder.** ``eval.py`` / ``export.py`` / ``extract.py run_dir=<run>`` take that
  run's saved ``model``, ``data`` and ``seed`` (so no override has to be typed again) and its
  ``checkpoints/last.ckpt`` (or ``ckpt=<name>``); dotted overrides on the command line still apply
  on top. Their outputs go inside the run: ``<run>/<task>/<timestamp>/``.

The choice of folder is made by the ``metareid_run_dir`` / ``metareid_hydra_subdir`` resolvers in
``conf/hydra/default.yaml``; they are registered when this module is imported, which the entry
points do before Hydra composes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

HYDRA_SUBDIR = ".hydra"
CHECKPOINT_SUBDIR = "checkpoints"
DEFAULT_CHECKPOINT = "last.ckpt"
# The run's settings that evaluation, export and extraction reuse.
REUSED_KEYS = ("model", "data", "seed")
# Overrides that name a whole group: with run_dir they would replace the run's own choice.
REUSED_GROUPS = ("model", "data", "experiment")


def run_folder_of(ckpt_path: str | Path | None) -> Path | None:
    """The run a checkpoint belongs to: ``<run>/checkpoints/x.ckpt`` next to ``<run>/.hydra``."""
    if not ckpt_path or str(ckpt_path) in ("last", "best", "None", "null"):
        return None
    path = Path(str(ckpt_path)).expanduser()
    if path.parent.name != CHECKPOINT_SUBDIR:
        return None
    run = path.parent.parent
    return run.resolve() if (run / HYDRA_SUBDIR / "config.yaml").is_file() else None


def _run_dir(
    task_name: str, ckpt_path: str | None, run_dir: str | None, stamp: str, log_dir: str
) -> str:
    if run_dir:
        return str(Path(run_dir).expanduser().resolve() / task_name / stamp)
    resumed = run_folder_of(ckpt_path)
    if resumed is not None:
        # Training continues in the run; evaluating one of its checkpoints writes inside it.
        return str(resumed) if task_name == "train" else str(resumed / task_name / stamp)
    return str(Path(log_dir) / task_name / "runs" / stamp)


def _hydra_subdir(task_name: str, ckpt_path: str | None, stamp: str) -> str:
    if task_name == "train" and run_folder_of(ckpt_path) is not None:
        return f"{HYDRA_SUBDIR}/resumed_{stamp}"
    return HYDRA_SUBDIR


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("metareid_run_dir", _run_dir, replace=True)
    OmegaConf.register_new_resolver("metareid_hydra_subdir", _hydra_subdir, replace=True)


register_resolvers()


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def apply_run_dir(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """Fill ``cfg`` from the run named by ``cfg.run_dir`` (no-op when it is unset).

    Args:
        cfg: the composed config of eval / export / extract.
        overrides: the command line's overrides (default: Hydra's); the dotted ones under the
            reused keys are applied again on top of the run's values.

    Returns:
        ``cfg`` with the run's ``model``, ``data`` and ``seed``, and ``ckpt_path`` set to
        ``<run>/checkpoints/<ckpt or last.ckpt>`` unless ``ckpt_path`` was given.
    """
    run_dir = cfg.get("run_dir")
    if not run_dir:
        return cfg
    run = Path(str(run_dir)).expanduser().resolve()
    saved_path = run / HYDRA_SUBDIR / "config.yaml"
    if not saved_path.is_file():
        raise FileNotFoundError(
            f"run_dir={run_dir}: {saved_path} does not exist. run_dir must be a training run "
            "folder (logs/train/runs/<timestamp>, the folder holding .hydra/ and checkpoints/)."
        )
    saved = OmegaConf.load(saved_path)
    overrides = _command_line_overrides() if overrides is None else overrides
    group_choices = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in REUSED_GROUPS]
    if group_choices:
        raise ValueError(
            f"{', '.join(group_choices)}: with run_dir= the model, data and experiment come from "
            f"the run ({saved_path}); drop these group overrides or drop run_dir= and give the "
            "full configuration."
        )
    with open_dict(cfg):
        for key in REUSED_KEYS:
            if key in saved:
                cfg[key] = saved[key]
        for override in overrides:
            key, _, value = override.lstrip("+").partition("=")
            if value and key.split(".", 1)[0] in REUSED_KEYS:
                OmegaConf.update(cfg, key, _parse(value), force_add=True)
        if not cfg.get("ckpt_path"):
            name = cfg.get("ckpt") or DEFAULT_CHECKPOINT
            cfg.ckpt_path = str(run / CHECKPOINT_SUBDIR / name)
    if not Path(cfg.ckpt_path).is_file():
        available = sorted(p.name for p in (run / CHECKPOINT_SUBDIR).glob("*.ckpt"))
        raise FileNotFoundError(
            f"{cfg.ckpt_path} does not exist. Checkpoints of this run: "
            f"{', '.join(available) or 'none'}; pick one with ckpt=<name>."
        )
    log.info("Run %s: model/data/seed from %s, weights %s", run, saved_path, cfg.ckpt_path)
    return cfg


def _parse(value: str):
    """A command-line value as Hydra would type it (``[4,8]`` a list, ``0.1`` a float ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"key={value}")
    return parsed.value()


def _leaves(node, prefix: str) -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def _plain(cfg, key: str):
    node = OmegaConf.select(cfg, key, default=None)
    if node is None or not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # an interpolation into hydra:/paths that only resolves inside the run
        return OmegaConf.to_container(node, resolve=False)


def model_config_differences(run: Path, cfg: DictConfig, limit: int = 8) -> list[str]:
    """``model.*`` settings where the run's saved config differs from ``cfg`` (what explains a
    checkpoint that does not fit the network built here), as ``key: run X, here Y`` lines."""
    saved = OmegaConf.load(run / HYDRA_SUBDIR / "config.yaml")
    theirs = _leaves(_plain(saved, "model"), "model")
    ours = _leaves(_plain(cfg, "model"), "model")
    keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    # Network settings first: they decide the shapes.
    keys.sort(key=lambda k: not k.startswith("model.net."))
    return [f"{k}: run {theirs.get(k, '(unset)')}, here {ours.get(k, '(unset)')}" for k in keys][
        :limit
    ]


def explain_misfit(ckpt_path: str | Path, cfg: DictConfig) -> str:
    """The hint added to a does-not-fit error: the config keys behind it and ``run_dir=``."""
    run = run_folder_of(ckpt_path)
    if run is None:
        return (
            " If it comes from a metareid training run, evaluate with run_dir=<that run folder> "
            "(its model settings are reused), or repeat its model overrides."
        )
    differences = model_config_differences(run, cfg)
    listed = "; ".join(differences) if differences else "no model.* difference found"
    return (
        f" The run {run} was trained with other model settings ({listed}). Use run_dir={run} "
        "to evaluate with its own config."
    )
