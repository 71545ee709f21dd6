# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 — Results: checkpoints, evaluation, figures
#
# 1. get a MetaGait and a DR50 checkpoint: the ones named by `METAREID_GAIT_CKPT` /
#    `METAREID_REID_CKPT`, or else train them here with `src/train.py`'s `train()` on the embedded
#    synthetic data;
# 2. evaluate each with `src/eval.py`'s `evaluate()`, which writes the run's report (markdown +
#    JSON tables and figures) into `<run dir>/report`;
# 3. read the reports back: the CASIA-B rank-1 heatmap of every probe/gallery view pair and the
#    ReID CMC curve;
# 4. retrieval examples: the top-ranked gallery images of a few queries of the unseen domain.
#
# `METAREID_NOTEBOOK_QUICK=1` (default) trains toy-sized networks for a few steps (up to about a
# minute on 2 CPU cores, near chance accuracy); `0` runs the CPU demos (`experiment=demo_metagait`
# and `demo_dr50`, several minutes each). A checkpoint given through the environment must match
# the model config of the mode (quick: the toy sizes below; full: the demos). Everything is written
# under `METAREID_NOTEBOOK_OUT` (default `outputs/notebooks/03_results` in the repository).

# %%
import json
import os
import sys
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

import metareid
from metareid.checkpoints import network_from_config
from metareid.evaluation.distances import cosine_distance
from metareid.reporting import (
    REPORT_DIRNAME,
    plot_casiab_heatmap,
    plot_cmc,
    plot_retrieval_examples,
)

QUICK = os.environ.get("METAREID_NOTEBOOK_QUICK", "1") != "0"
ROOT = Path(os.environ.get("PROJECT_ROOT") or Path(metareid.__file__).resolve().parents[2])
OUT = Path(os.environ.get("METAREID_NOTEBOOK_OUT") or ROOT / "outputs" / "notebooks" / "03_results")
OUT.mkdir(parents=True, exist_ok=True)
if not (ROOT / "conf").is_dir():
    raise FileNotFoundError(
        f"{ROOT / 'conf'} not found: set PROJECT_ROOT to the metareid repository checkout"
    )
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
if str(ROOT / "src") not in sys.path:  # the entry points src/train.py and src/eval.py
    sys.path.insert(0, str(ROOT / "src"))

from eval import evaluate  # noqa: E402
from train import train  # noqa: E402

print(f"quick={QUICK}, outputs -> {OUT}")


# %%
def compose_run(config_name: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """The config ``python src/<config_name>.py <overrides>`` runs, writing into ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir / "logs")
    return cfg


QUIET = ["trainer.enable_progress_bar=false", "logger=[]"]
# Checkpoints at the end of training only (save_last), no LR monitor (it needs a logger).
CHECKPOINT_ONLY = [
    "callbacks=none",
    "+callbacks.model_checkpoint._target_=pytorch_lightning.callbacks.ModelCheckpoint",
    "+callbacks.model_checkpoint.dirpath=${paths.output_dir}/checkpoints",
    "+callbacks.model_checkpoint.save_last=true",
    "+callbacks.model_checkpoint.save_top_k=0",
]

# %% [markdown]
# ## 1. MetaGait on the synthetic CASIA-B

# %%
GAIT = [f"data.root={OUT / 'data' / 'synthetic_casiab'}", "data.num_workers=0", *QUIET]
if QUICK:
    # `debug=tiny` (conf/debug/data/tiny_casiab_synthetic.yaml) with a few more subjects and views
    # for a readable heatmap, and 12 steps.
    GAIT += [
        "debug=tiny",
        "data.synthetic.num_subjects=8",
        "data.synthetic.train_subjects=4",
        "data.synthetic.views=[000,054,090,126,180]",
        "data.p=4",
        "data.frames_num_fixed=8",
        "data.test_batch_size=16",
        "trainer.max_steps=12",
        "trainer.val_check_interval=12",
        "+trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=4",
    ]
else:
    GAIT += ["experiment=demo_metagait"]

gait_ckpt = os.environ.get("METAREID_GAIT_CKPT")
if not gait_ckpt:
    gait_train_cfg = compose_run(
        "train", [*GAIT, *CHECKPOINT_ONLY, "test=false"], OUT / "gait_train"
    )
    train(gait_train_cfg)
    gait_ckpt = str(OUT / "gait_train" / "checkpoints" / "last.ckpt")
print("checkpoint:", gait_ckpt)

gait_eval_cfg = compose_run("eval", [*GAIT, f"ckpt_path={gait_ckpt}"], OUT / "gait_eval")
gait_metrics = evaluate(gait_eval_cfg)
gait_report = OUT / "gait_eval" / REPORT_DIRNAME
print(sorted(path.name for path in gait_report.iterdir()))

# %%
print((gait_report / "gait_results.md").read_text())

# %% [markdown]
# The heatmap from the JSON report: rows are probe views, columns gallery views; the diagonal
# (identical view) is excluded from the headline numbers.

# %%
gait_result = json.loads((gait_report / "gait_results.json").read_text())
heatmap = plot_casiab_heatmap(gait_result, title=f"MetaGait, {Path(gait_ckpt).name}")
heatmap.savefig(OUT / "casiab_heatmap.png", dpi=120)
heatmap  # noqa: B018 (the notebook displays the figure)

# %% [markdown]
# ## 2. DR50 on the synthetic domains (synA + synB + synC → unseen synD)

# %%
REID = ["experiment=demo_dr50", f"data.synthetic.root={OUT / 'data' / 'synthetic_reid'}", *QUIET]
if QUICK:
    # `debug=tiny` (conf/debug/data/tiny_reid_synthetic.yaml): 8 ids a domain, 1/8 width, 2 epochs.
    REID += [
        "debug=tiny",
        "model.initial_basic_steps=2",
        "+trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=4",
    ]

reid_ckpt = os.environ.get("METAREID_REID_CKPT")
if not reid_ckpt:
    reid_train_cfg = compose_run(
        "train", [*REID, *CHECKPOINT_ONLY, "test=false"], OUT / "reid_train"
    )
    train(reid_train_cfg)
    reid_ckpt = str(OUT / "reid_train" / "checkpoints" / "last.ckpt")
print("checkpoint:", reid_ckpt)

reid_eval_cfg = compose_run("eval", [*REID, f"ckpt_path={reid_ckpt}"], OUT / "reid_eval")
reid_metrics = evaluate(reid_eval_cfg)
reid_report = OUT / "reid_eval" / REPORT_DIRNAME
print((reid_report / "reid_results.md").read_text())

# %%
reid_result = json.loads((reid_report / "reid_results.json").read_text())
cmc = plot_cmc(reid_result["targets"], max_rank=20, title="DR50 CMC on the unseen domain")
cmc.savefig(OUT / "reid_cmc.png", dpi=120)
cmc  # noqa: B018 (the notebook displays the figure)

# %% [markdown]
# ### Retrieval examples
#
# The network alone (`network_from_config` + the checkpoint), on the target domain's query and
# gallery. As in the protocol, gallery images of the query's identity *and* camera are not
# ranked; a green frame marks the query's identity, a red one another person.

# %%
net = network_from_config(reid_eval_cfg.model.net, reid_ckpt)
datamodule = hydra.utils.instantiate(reid_eval_cfg.data, seed=reid_eval_cfg.seed)
datamodule.prepare_data()
datamodule.setup("test")
target_name, test_set = next(iter(datamodule.test_sets.items()))
with torch.no_grad():
    batches = list(DataLoader(test_set, batch_size=64))
    features = torch.cat([net(batch["image"].float()) for batch in batches])
images = torch.cat([batch["image"] for batch in batches])
pids = torch.cat([batch["pid"] for batch in batches])
camids = torch.cat([batch["camid"] for batch in batches])
query, gallery = slice(0, test_set.num_query), slice(test_set.num_query, None)

distances = cosine_distance(features[query], features[gallery])
same_camera_match = (pids[query, None] == pids[None, gallery]) & (
    camids[query, None] == camids[None, gallery]
)
distances = distances.masked_fill(same_camera_match, float("inf"))
TOP_K, SHOWN = 5, 4
ranking = distances.argsort(dim=1)[:SHOWN, :TOP_K]
is_match = pids[gallery][ranking] == pids[query][:SHOWN, None]
print(f"{target_name}: {test_set.num_query} queries, {len(test_set) - test_set.num_query} gallery")
print("rank-1 hits among the shown queries:", is_match[:, 0].tolist())

examples = plot_retrieval_examples(
    images[query][:SHOWN],
    images[gallery],
    ranking,
    is_match,
    query_captions=[
        f"id {p} c{c}" for p, c in zip(pids[query].tolist(), camids[query].tolist(), strict=True)
    ],
    gallery_captions=[
        f"id {p} c{c}"
        for p, c in zip(pids[gallery].tolist(), camids[gallery].tolist(), strict=True)
    ],
)
examples.savefig(OUT / "retrieval_examples.png", dpi=120)
examples  # noqa: B018 (the notebook displays the figure)

# %%
plt.close("all")
print("figures:", sorted(path.name for path in OUT.glob("*.png")))
